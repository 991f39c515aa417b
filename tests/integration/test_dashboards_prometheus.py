"""Proof on real data: Debian's Prometheus scrapes metrics, then every dashboard query and rule is evaluated.

Two sources of data, same checks:

* **contract** (always runs): `dashboards/synthetic.py` serves every series of `dashboards/METRICS.md` in the
  shapes the Helm chart's monitors produce (honor_labels, DCGM's exported_pod, OpenCost, kube-state-metrics).
  Every panel query of every dashboard must return data, every recording rule must produce series, every alert
  expression must evaluate, every variable must list values, and the preview script must render every panel.
* **components**: the real operator (kopf on the Kubernetes emulator) reconciling two GanTrainingJobs, their real
  `ganops train` processes and `python -m ganops.serving` under light load. ganops' own queries must return data;
  queries that need DCGM, OpenCost, kube-state-metrics or a GPU must evaluate without error. It then renders every
  dashboard from that Prometheus into `reports/dashboards/components/<uid>.png` (or `$GANOPS_DASHBOARD_PREVIEW_DIR`)
  and prints where. Should a component stop exporting a contract series, the tests fail naming it (never a skip):
  the only series allowed to stay empty are those of the named external exporters and GPU-only series
  (tests/support/exporters.py).

Prometheus scrapes every second; the synthetic part takes about 20 s, the real components about a minute.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from dashboards import contract
from dashboards.synthetic import Synthetic, prometheus_config

from tests.support.exporters import EXTERNAL_EXPORTERS, GPU_ONLY, exported_in_source
from tests.support.kube.fixtures import kopf_process, kube_api, kube_api_options  # noqa: F401 (fixtures)

pytest_plugins = ["tests.support.mlflow_server"]  # mlflow_uri: one real MLflow server per session

PROMETHEUS = shutil.which("prometheus")
REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "ganops"
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus is not installed (make system-deps)")

# Grafana's variables for a 1 s scrape interval over a short run.
VARIABLES = {"rate_interval": "10s", "interval": "2s", "range_": "1h"}


# -------------------------------------------------------------------------------------------------- Prometheus
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    """Debian's `prometheus` on 127.0.0.1 with a given config; HTTP API helpers."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self.synthetic_t0: float | None = None  # when the synthetic exporter's clock started (its t = 0)

    def start(self, timeout: float = 30) -> None:
        assert PROMETHEUS is not None
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1d",
             "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
            try:
                if self.http.get("/-/ready").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready after {timeout}s: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        self.http.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def api(self, path: str, **params: Any) -> Any:
        resp = self.http.get(f"/api/v1/{path}", params=params)
        body = resp.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        data = self.api("query", query=expr, **({"time": f"{at:.3f}"} if at is not None else {}))
        return [{"metric": {}, "value": data["result"]}] if data["resultType"] == "scalar" else data["result"]

    def query_range(self, expr: str, seconds: float, step: float = 1.0) -> list[dict[str, Any]]:
        end = time.time()
        return self.api("query_range", query=expr, start=end - seconds, end=end, step=step)["result"]

    def wait_for(self, expr: str, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.query(expr):
                return
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} ({expr})")


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one finite sample (a series of NaN only — a 0/0 ratio — is not data)."""
    for item in result:
        samples = item.get("values") or [item.get("value")]
        if any(s is not None and not math.isnan(float(s[1])) for s in samples):
            return True
    return False


def evaluate(prom: PrometheusServer, q: contract.PanelQuery) -> list[dict[str, Any]]:
    expr = contract.interpolate(q.expr, **VARIABLES)
    return prom.query(expr) if q.instant else prom.query_range(expr, seconds=15)


def needs_ecosystem(expr: str) -> set[str]:
    """Series an expression needs that nobody exports on this machine: those of the named external exporters
    (DCGM, OpenCost, kube-state-metrics) and ganops' GPU-only ones. Prometheus' own `up`/`ALERTS` exist here."""
    return contract.leaf_series(expr) & ({*EXTERNAL_EXPORTERS, *GPU_ONLY} - {"up", "ALERTS"})


# ----------------------------------------------------------------------------------------- contract (synthetic)
@pytest.fixture(scope="module")
def synthetic_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    exporter = Synthetic()
    server = exporter.serve()
    address = f"127.0.0.1:{server.server_address[1]}"
    prom = PrometheusServer(tmp_path_factory.mktemp("prometheus"),
                            prometheus_config(address, "1s", [str(contract.RULES_FILE)]))
    prom.synthetic_t0 = exporter.t0
    try:
        prom.start()
        prom.wait_for('count(up == 1) == 6', 20, "all six synthetic targets up")
        # Enough samples for every rate window and two rule evaluations on top.
        prom.wait_for("min(count_over_time(up[1m])) >= 8", 30, "eight scrapes")
        prom.wait_for("ganops:job_gpu_utilization:ratio", 10, "the recording rules")
        yield prom
    finally:
        prom.stop()
        server.shutdown()


def test_synthetic_targets_are_scraped_with_the_charts_label_shapes(synthetic_prometheus: PrometheusServer) -> None:
    prom = synthetic_prometheus
    targets = prom.api("targets")["activeTargets"]
    assert {t["labels"]["job"]: t["health"] for t in targets} == {
        name: "up" for name in ("ganops-trainer", "ganops-operator", "ganops-serving", "nvidia-dcgm-exporter",
                                "kube-state-metrics", "opencost")}
    # honor_labels keeps the GanTrainingJob's namespace/job; DCGM's workload labels become exported_*.
    assert prom.query('ganops_train_step{namespace="ml", job="faces"}')
    assert prom.query('DCGM_FI_DEV_GPU_UTIL{exported_pod="faces-trainer-0", pod="dcgm-exporter-abcde"}')


def test_rules_load_and_evaluate_without_errors(synthetic_prometheus: PrometheusServer) -> None:
    groups = synthetic_prometheus.api("rules")["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    expected = {r.get("record") or r["alert"] for r in contract.load_rules()}
    assert set(loaded) == expected
    broken = {name: r.get("lastError") for name, r in loaded.items() if r["health"] != "ok"}
    assert not broken, broken


@pytest.mark.parametrize("record", sorted(contract.recorded()))
def test_recording_rule_produces_series(synthetic_prometheus: PrometheusServer, record: str) -> None:
    assert has_data(synthetic_prometheus.query(record)), f"recording rule {record} has no data"


# Every alert expression evaluated at one instant of the synthetic exporter's clock, t = ALERT_T seconds, where
# dashboards/synthetic.py's formulas say what each must return (labels as scraped: trainer and operator with
# honor_labels keep namespace/job of the series; serving gets its target's namespace and job "ganops-serving").
# ALERT_T is 2 s or more away from every step of those formulas (15, 20, 30, 40, 45 s).
ALERT_T = 47.0
SERVING = {"namespace": "ganops", "job": "ganops-serving"}


def _synthetic_t(prom: PrometheusServer, selector: str, at: float) -> float:
    """The synthetic clock when the newest sample of `selector` at `at` was scraped."""
    (sample,) = prom.query(f"max(timestamp({selector}))", at=at)
    assert prom.synthetic_t0 is not None
    return float(sample["value"][1]) - prom.synthetic_t0


def _recorded_at(prom: PrometheusServer, record: str, at: float) -> float:
    """When the rule group last recorded `record` before `at` (its inputs are the samples scraped before then)."""
    (sample,) = prom.query(f"max(timestamp({record}))", at=at)
    return float(sample["value"][1])


def _digits_gpu_ratio(prom: PrometheusServer, at: float) -> float:
    """Digits' GPU has no profiling metric: DCGM_FI_DEV_GPU_UTIL / 100 = (30 + 5 sin(t/5)) / 100, at the scrape
    the recording rule read."""
    recorded = _recorded_at(prom, 'ganops:job_gpu_utilization:ratio{job="digits"}', at)
    t = _synthetic_t(prom, 'DCGM_FI_DEV_GPU_UTIL{exported_pod="digits-trainer-0"}', recorded)
    return (30 + 5 * math.sin(t / 5)) / 100


def _faces_budget_burn(prom: PrometheusServer, at: float) -> float:
    """faces costs 0.02 USD per second of the synthetic clock against a budget of 1 USD."""
    recorded = _recorded_at(prom, 'ganops:job_budget_burn:ratio{job="faces"}', at)
    return 0.02 * _synthetic_t(prom, 'ganops_job_cost_usd_total{job="faces"}', recorded) / 1.0


# alert → [(labels the result must carry, expected value or f(prom, at), absolute tolerance)]; [] = must not hold
ExpectedValue = float | Callable[[PrometheusServer, float], float]
ALERT_EXPECTATIONS: dict[str, list[tuple[dict[str, str], ExpectedValue, float]]] = {
    # job "old" is Failed in the operator's phase series
    "GanJobFailed": [({"namespace": "ml", "job": "old"}, 1.0, 0.0)],
    # checkpoints every 5 s, and no trainer has been running for an hour
    "GanCheckpointStale": [],
    # no Diverged / DiscriminatorOverpowering events
    "GanTrainingDiverged": [],
    "GanDiscriminatorOverpowering": [],
    # faces rolls back at t = 20 and 40: two rollbacks (increase() extrapolates a little)
    "GanTrainingRolledBack": [({"namespace": "ml", "job": "faces"}, 2.0, 0.2)],
    # faces' ModeCollapseSuspected counter is floor(t / 15) = 3, born within the 15 min window: counted by value
    "GanModeCollapseSuspected": [({"namespace": "ml", "job": "faces"}, 3.0, 0.0)],
    # digits' GPU (DCGM_FI_DEV_GPU_UTIL 30 ± 5 %) is under 40 %; faces' (profiling metric, 75 ± 15 %) is not
    # (tolerances: 0.5 s between a scrape's timestamp and the exporter reading its clock)
    "GanGPUUnderutilized": [({"namespace": "ml", "job": "digits"}, _digits_gpu_ratio, 5e-3)],
    # faces costs 0.02 USD/s of a 1 USD budget: about 0.94 at t = 47, over 80 % (digits: 0.01 USD/s of 10 USD)
    "GanBudgetBurnHigh": [({"namespace": "ml", "job": "faces"}, _faces_budget_burn, 0.01)],
    # 5xx share 0.02 / (1 + 0.02 + 0.05) = 1.87 %: above 0.5 % (slow burn), below 3 % and 7.2 % (fast burn)
    "GanServingAvailabilityBudgetBurnFast": [],
    "GanServingAvailabilityBudgetBurnSlow": [(SERVING, 0.02 / 1.07, 1e-9)],
    # share over 500 ms: 1 - (0.97 × 1.02 + 0.05) / 1.07 = 2.86 %, under the 5 % budget
    "GanServingLatencyBudgetBurnFast": [],
    "GanServingLatencyBudgetBurnSlow": [],
    # the largest block share is nsfw's 3 %, under 5 %
    "GanSafetyBlockRateSpike": [],
    "GanModelNotReady": [],
    # faces failed one load at t = 30 (digits none)
    "GanModelLoadFailing": [({**SERVING, "model": "faces"}, 1.0, 0.1)],
    # faces' store errors are floor(t / 20) = 2 in 10 min, under 10
    "GanModelRegistryUnreachable": [],
    # audit segment writes fail floor(t / 10) = 4 times in 10 min (>= 3); no record was dropped (queue_full 0)
    "GanAuditLogFailing": [({**SERVING, "reason": "write_error"}, 4.0, 0.5)],
    "GanOperatorDown": [],
    # reconcile errors floor(t / 10) against 5 reconciles/s: about 2 %, under 10 %
    "GanOperatorReconcileErrors": [],
}


@pytest.fixture(scope="module")
def alert_instant(synthetic_prometheus: PrometheusServer) -> float:
    """t = ALERT_T on the synthetic clock, once Prometheus has stored the scrapes up to it."""
    assert synthetic_prometheus.synthetic_t0 is not None
    at = synthetic_prometheus.synthetic_t0 + ALERT_T
    synthetic_prometheus.wait_for(f"timestamp(up) >= {at}", ALERT_T + 30, f"scrapes past t = {ALERT_T} s")
    return at


def test_every_alert_has_an_expectation() -> None:
    assert set(ALERT_EXPECTATIONS) == set(contract.alerts())


@pytest.mark.parametrize("alert", sorted(contract.alerts()))
def test_alert_expression_evaluates(synthetic_prometheus: PrometheusServer, alert_instant: float, alert: str) -> None:
    """Each alert's expression over the scraped synthetic series returns exactly the series (and values) that
    dashboards/synthetic.py's formulas put over or under its threshold at t = ALERT_T."""
    prom = synthetic_prometheus
    result = prom.query(contract.alerts()[alert]["expr"], at=alert_instant)  # raises on a PromQL error
    expected = ALERT_EXPECTATIONS[alert]
    assert len(result) == len(expected), f"{alert}: {[(r['metric'], r['value'][1]) for r in result]}"
    for labels, value, tolerance in expected:
        matching = [r for r in result if labels.items() <= r["metric"].items()]
        assert len(matching) == 1, f"{alert}: no single series with {labels} in {[r['metric'] for r in result]}"
        want = value(prom, alert_instant) if callable(value) else value
        assert float(matching[0]["value"][1]) == pytest.approx(want, abs=tolerance), (alert, labels)


@pytest.mark.parametrize("q", contract.panel_queries(), ids=lambda q: f"{q.dashboard}:{q.panel_id}:{q.ref_id}")
def test_panel_query_returns_data(synthetic_prometheus: PrometheusServer, q: contract.PanelQuery) -> None:
    result = evaluate(synthetic_prometheus, q)
    assert has_data(result), f"{q.where} returned no data: {contract.interpolate(q.expr, **VARIABLES)}"


@pytest.mark.parametrize("dashboard,variable,query", contract.variable_queries())
def test_variable_lists_values(synthetic_prometheus: PrometheusServer, dashboard: str, variable: str,
                               query: str) -> None:
    selector, label = contract.label_values_selector(query)
    result = synthetic_prometheus.query(f"count by ({label}) ({contract.interpolate(selector)})")
    assert [r["metric"].get(label) for r in result if r["metric"].get(label)], f"{dashboard}: ${variable} is empty"


def test_preview_renders_every_panel(synthetic_prometheus: PrometheusServer, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "dashboards_preview.py"), "--prometheus", synthetic_prometheus.url,
         "--out", str(tmp_path), "--range", "30s", "--scrape-interval", "1s", "--strict"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr + (tmp_path / "index.md").read_text()
    for dash in contract.load_dashboards().values():
        png = tmp_path / f"{dash['uid']}.png"
        assert png.is_file() and png.stat().st_size > 20_000, png
    index = (tmp_path / "index.md").read_text()
    assert "| no data" not in index and "| error" not in index


# -------------------------------------------------------------------------------------------- real components
# Series each component must export: dashboards/METRICS.md's sections, declared (quoted) in the component's source.
COMPONENT_SERIES = {name: (SRC / name, sorted(series)) for name, series in contract.series_by_component().items()
                    if name in ("trainer", "operator", "serving")}
ENTRY_POINTS = {"trainer": SRC / "trainer" / "telemetry.py", "operator": SRC / "operator" / "main.py",
                "serving": SRC / "serving" / "app.py"}


def missing_components() -> list[str]:
    problems = []
    for name, (_, series) in COMPONENT_SERIES.items():
        entry = ENTRY_POINTS[name]
        if not entry.is_file():
            problems.append(f"{name} ({entry.relative_to(REPO)} missing)")
            continue
        absent = [s for s in series if not exported_in_source(s, name)]
        if absent:
            problems.append(f"{name} (does not export {', '.join(absent)})")
    if not (SRC / "serving" / "__main__.py").is_file() and (SRC / "serving" / "app.py").is_file():
        problems.append("serving (no src/ganops/serving/__main__.py for `python -m ganops.serving`)")
    return problems


def test_every_component_exports_its_contract_series() -> None:
    """A component that stops exporting a contract series fails here, by name (the real-components test below
    would fail on the same gap, more slowly)."""
    assert missing_components() == []


def _wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not up after {timeout}s: {log.read_text()[-3000:]}")


def _start(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env={**os.environ, **env}, cwd=cwd, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM everything at once (a trainer checkpoints and exits 0), then wait; SIGKILL what lingers."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _trainer_env(tmp_path: Path, name: str, port: int) -> dict[str, str]:
    return {"GANOPS_NAMESPACE": "ml", "GANOPS_JOB_NAME": name, "GANOPS_METRICS_PORT": str(port),
            "GANOPS_METRICS_ADDR": "127.0.0.1", "GANOPS_CHECKPOINT_URI": f"file://{tmp_path / 'checkpoints'}",
            "MLFLOW_TRACKING_URI": f"file://{tmp_path / 'mlruns'}", "GANOPS_LOG_LEVEL": "WARNING",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # two trainers and Prometheus share two cores


def _serving_env(port: int, checkpoint_root: Path, model: str) -> dict[str, str]:
    return {"GANOPS_SERVING_HOST": "127.0.0.1", "GANOPS_SERVING_PORT": str(port),
            "GANOPS_SERVING_CHECKPOINT_URI": f"file://{checkpoint_root}", "GANOPS_SERVING_MODEL_NAME": model,
            "GANOPS_SERVING_POLL_INTERVAL_S": "3600", "OMP_NUM_THREADS": "1"}  # one stable version, as in production


class Traffic:
    """POST /v1/generate in a background thread until stopped: steady load while Prometheus scrapes."""

    def __init__(self, base_url: str, interval: float = 0.25) -> None:
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._client = httpx.Client(base_url=base_url, timeout=60)
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                self.statuses.append(self._client.post("/v1/generate", json={"n": 1 + i % 4, "seed": i}).status_code)
            except httpx.HTTPError:
                self.statuses.append(0)
            i += 1
            self._stop.wait(interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._client.close()


def _wait_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} not written after {timeout}s")
        time.sleep(0.3)


@dataclass
class Components:
    prom: PrometheusServer
    operator_url: str


PRICE = 36.0  # USD per GPU-hour: a cent per second per job, so the cost panels move within seconds


def _component_jobs(mlflow_uri: str) -> dict[str, dict[str, Any]]:
    """The GanTrainingJobs of the real-components run: two that keep training - digits with FID/KID/precision/recall
    and grid25 with modes - and a short digits job that succeeds and is promoted to `ml.dash@production`, the version
    serving then serves."""
    from tests.support.jobs import digits_job, grid_job

    common: dict[str, Any] = {"resources": {"gpusPerReplica": 1},
                              "budget": {"maxCostUSD": 10.0, "pricePerGPUHour": PRICE}}
    jobs = {
        "dash": digits_job("dash", training={"steps": 100000, "batchSize": 16, "seed": 5, "logEverySteps": 5},
                           checkpoint={"everySteps": 10},
                           evaluation={"everySteps": 10, "numSamples": 256, "featureExtractor": "digits",
                                       "metrics": ["fid", "kid", "precision_recall"]},
                           promotion={"modelName": "dash"}, **common),
        "grid-dash": grid_job("grid-dash", training={"steps": 100000, "batchSize": 64, "seed": 3,
                                                     "logEverySteps": 5},
                              checkpoint={"everySteps": 20}, evaluation={"everySteps": 20, "numSamples": 500},
                              **common),
        "promo": digits_job("promo", training={"steps": 20, "batchSize": 16, "seed": 7, "logEverySteps": 5},
                            checkpoint={"everySteps": 10},
                            evaluation={"everySteps": 10, "numSamples": 256, "featureExtractor": "digits",
                                        "metrics": ["fid", "kid", "precision_recall"]},
                            tracking={"mlflowUri": mlflow_uri}, promotion={"modelName": "dash"}, **common),
    }
    for job in jobs.values():
        job["metadata"]["namespace"] = "ml"
    return jobs


@pytest.fixture
def components(tmp_path: Path, kube_api: Any, kopf_process: Any, mlflow_uri: str) -> Iterator[Components]:  # noqa: F811
    """The real operator (kopf on the Kubernetes emulator) reconciling three GanTrainingJobs, their trainers as
    local `ganops train` processes (the pods the emulator cannot run: the test plays the kubelet and the Job
    controller), the operator's promotion through a real MLflow server, and `python -m ganops.serving` following
    `ml.dash@production` under light load, all scraped every second by Debian's Prometheus with the chart's label
    settings (honor_labels for trainer and operator)."""
    from ganops.api.crd import build_crd
    from tests.support.jobs import write_job
    from tests.support.kube.workloads import complete_job, start_job_pods

    jobs = _component_jobs(mlflow_uri)
    ports = {name: free_port() for name in (*jobs, "operator", "serving")}
    checkpoints = tmp_path / "checkpoints"
    kube_api.register_crd(build_crd())
    kopf_process(["ganops.operator.main"], env={"GANOPS_OPERATOR_METRICS_PORT": str(ports["operator"]),
                                                  "GANOPS_OPERATOR_RESYNC_SECONDS": "1",
                                                  "GANOPS_CHECKPOINT_URI": f"file://{checkpoints}",
                                                  "GANOPS_MLFLOW_URI": mlflow_uri})
    procs: list[subprocess.Popen[bytes]] = []
    serving: subprocess.Popen[bytes] | None = None
    for name, job in jobs.items():
        kube_api.create(job)
        job_file = write_job(job, tmp_path / f"{name}.yaml")
        procs.append(_start([sys.executable, "-m", "ganops.cli", "train", "--job", str(job_file), "--no-progress",
                             "--work-dir", str(tmp_path / "work" / name)],
                            _trainer_env(tmp_path, name, ports[name]), tmp_path, tmp_path / f"{name}.log"))
    # Serving starts now (its safety models load meanwhile) and polls the registry until ml.dash@production exists.
    serving = _start([sys.executable, "-m", "ganops.serving"],
                     {"GANOPS_SERVING_HOST": "127.0.0.1", "GANOPS_SERVING_PORT": str(ports["serving"]),
                      "GANOPS_SERVING_MODEL": "ml.dash@production", "GANOPS_SERVING_MLFLOW_URI": mlflow_uri,
                      "GANOPS_SERVING_POLL_INTERVAL_S": "1", "GANOPS_SERVING_SHUTDOWN_TIMEOUT_S": "2",
                      "OMP_NUM_THREADS": "1"},
                     tmp_path, tmp_path / "serving.log")
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(contract.RULES_FILE)],
              "scrape_configs": [
                  {"job_name": "ganops-trainer", "honor_labels": True,
                   "static_configs": [{"targets": [f"127.0.0.1:{ports[n]}" for n in jobs]}]},
                  {"job_name": "ganops-operator", "honor_labels": True,
                   "static_configs": [{"targets": [f"127.0.0.1:{ports['operator']}"],
                                       "labels": {"namespace": "ganops-system"}}]},
                  {"job_name": "ganops-serving",
                   "static_configs": [{"targets": [f"127.0.0.1:{ports['serving']}"],
                                       "labels": {"namespace": "ganops"}}]}]}
    (tmp_path / "prom").mkdir()
    prom = PrometheusServer(tmp_path / "prom", config)
    stops: list[Callable[[], None]] = []
    try:
        for name in jobs:  # play the Job controller and the kubelet: the pods run (as the local processes)
            kube_api.wait_for(lambda n=name: kube_api.get_or_none("batch/v1", "Job", "ml", n), timeout=60,
                              message=f"the operator's Job for {name}")
            start_job_pods(kube_api, "ml", name)
        for name, proc in zip(jobs, procs, strict=True):
            _wait_http(f"http://127.0.0.1:{ports[name]}/metrics", 120, proc, tmp_path / f"{name}.log")
        prom.start()  # scrape from here on: the rate windows fill while serving comes up
        promo = procs[list(jobs).index("promo")]
        if promo.wait(180) != 0:
            raise RuntimeError(f"the promo trainer failed: {(tmp_path / 'promo.log').read_text()[-3000:]}")
        complete_job(kube_api, "ml", "promo")  # its pod exited 0: the operator judges and promotes it
        kube_api.wait_for(lambda: (kube_api.get("ganops.io/v1alpha1", "gtj", "ml", "promo").get("status") or {}).get(
            "promotedVersion"), timeout=60, message="promo promoted to ml.dash@production")
        _wait_ready(f"http://127.0.0.1:{ports['serving']}/readyz", 120, serving, tmp_path / "serving.log")
        traffic = Traffic(f"http://127.0.0.1:{ports['serving']}")  # for the SLIs, stages, batching and safety
        stops.append(traffic.stop)
        prom.wait_for("count(up == 1) == 4", 30, "the running trainers, the operator and serving scraped")
        prom.wait_for('changes(ganops_eval_fid{job="dash"}[5m]) >= 1', 180, "two FID evaluations")
        prom.wait_for('ganops_eval_modes{job="grid-dash"}', 120, "a modes evaluation")
        prom.wait_for('count(ganops_operator_job_phase{namespace="ml", phase="Running"} == 1) == 2', 60,
                      "the operator's Running for both jobs")
        prom.wait_for("min(count_over_time(ganops_serving_samples_total[5m])) >= 8", 30,
                      "eight scrapes of serving under load")
        yield Components(prom, f"http://127.0.0.1:{ports['operator']}/metrics")
        assert traffic.statuses and set(traffic.statuses) == {200}, traffic.statuses
    finally:
        for stop in stops:
            stop()
        prom.stop()
        _stop_all([*procs, *([serving] if serving is not None else [])])


def _wait_ready(url: str, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until `url` answers 200 (readiness, not just a listening port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout}s: {log.read_text()[-3000:]}")


def preview_dir() -> Path:
    """Where the real-components run leaves its preview PNGs (CI keeps `reports/`)."""
    return Path(os.environ.get("GANOPS_DASHBOARD_PREVIEW_DIR", REPO / "reports" / "dashboards" / "components"))


@pytest.mark.slow
def test_every_query_on_real_components(components: Components, request: pytest.FixtureRequest) -> None:
    """Every panel query, variable and rule against the real trainer, operator and serving: ganops' own queries
    return data, DCGM/OpenCost/kube-state-metrics ones evaluate without error. Then the preview renders every
    dashboard from this Prometheus into `reports/dashboards/components/<uid>.png`."""
    assert not missing_components(), missing_components()
    prom = components.prom
    out = preview_dir()
    preview = subprocess.Popen(  # renders while the queries below are evaluated
        [sys.executable, str(REPO / "scripts" / "dashboards_preview.py"), "--prometheus", prom.url, "--out",
         str(out), "--range", "2m", "--scrape-interval", "1s"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    failures = []
    evaluated = with_data = 0
    for q in contract.panel_queries():
        try:
            result = evaluate(prom, q)
        except AssertionError as exc:
            failures.append(f"{q.where}: error {exc}")
            continue
        evaluated += 1
        with_data += has_data(result)
        if not needs_ecosystem(q.expr) and not has_data(result):
            failures.append(f"{q.where}: no data from {contract.interpolate(q.expr, **VARIABLES)}")
    for dashboard, variable, query in contract.variable_queries():
        selector, label = contract.label_values_selector(query)
        evaluated += 1
        listed = prom.query(f"count by ({label}) ({contract.interpolate(selector)})")
        if not needs_ecosystem(selector) and not any(r["metric"].get(label) for r in listed):
            failures.append(f"{dashboard}: ${variable} lists nothing ({query})")
    for rule in contract.load_rules():
        try:
            result = prom.query(rule["expr"])
        except AssertionError as exc:
            failures.append(f"rule {rule.get('record') or rule['alert']}: error {exc}")
            continue
        evaluated += 1
        if "record" in rule and not needs_ecosystem(rule["expr"]) and not has_data(result):
            failures.append(f"recording rule {rule['record']}: no data")
    broken = {r["name"]: r.get("lastError") for g in prom.api("rules")["groups"] for r in g["rules"]
              if r["health"] != "ok"}

    preview_log, _ = preview.communicate(timeout=300)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # into CI's log, even with output captured
            reporter.write_line(f"\nreal components: {evaluated} queries evaluated ({with_data} panel queries "
                                f"with data); dashboard previews: {out}/<uid>.png, panel status: {out}/index.md")
    # The operator's job-level series as Prometheus stored them: the GanTrainingJob's namespace/job survive.
    phases = prom.query('ganops_operator_job_phase{namespace="ml"} == 1')
    assert {(r["metric"]["job"], r["metric"]["phase"]) for r in phases} == {
        ("dash", "Running"), ("grid-dash", "Running"), ("promo", "Succeeded")}
    promoted = prom.query('ganops_operator_promotions_total{job="promo", outcome="promoted"}')
    assert [(r["metric"]["model"], r["value"][1]) for r in promoted] == [("ml.dash", "1")]
    quality = prom.query('ganops_model_version_quality{job="promo"}')
    assert {r["metric"]["metric"] for r in quality} == {"fid", "kid", "precision", "recall"}
    assert prom.query('ganops_model_info{model="ml.dash", alias="production"}'), "serving follows ml.dash@production"
    budget = prom.query('ganops_job_budget_usd{namespace="ml", job="dash"}')
    assert [float(r["value"][1]) for r in budget] == [10.0]
    assert {r["metric"]["outcome"] for r in prom.query('ganops_operator_promotions_total{job="dash"}')} == {
        "promoted", "rejected"}

    assert preview.returncode == 0, preview_log
    for dash in contract.load_dashboards().values():
        assert (out / f"{dash['uid']}.png").stat().st_size > 20_000, dash["uid"]
    assert not broken, broken
    assert not failures, "\n".join(failures)


def test_component_readiness_check_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure of the component checks says which component lacks which series."""
    folder, series = COMPONENT_SERIES["serving"]
    monkeypatch.setitem(COMPONENT_SERIES, "serving", (folder, [*series, "ganops_serving_nobody_exports_total"]))
    assert missing_components() == ["serving (does not export ganops_serving_nobody_exports_total)"]
