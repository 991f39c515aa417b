"""A real `ganops train` process scraped by a real Prometheus: every trainer series, as the dashboards query it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.jobs import grid_job, write_job

if TYPE_CHECKING:
    from tests.support.prometheus import PrometheusServer

pytest_plugins = ["tests.support.prometheus"]

BIN = Path(sys.executable).parent
PRICE = 3600.0  # USD per GPU-hour: one dollar per second of training makes cost easy to check


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _values(result: list[dict[str, Any]]) -> list[float]:
    assert len(result) == 1, result
    return [float(v) for _, v in result[0]["values"]]


def last(selector: str) -> str:
    """The newest sample of the last 30 s: a scrape that timed out on a busy machine leaves a staleness marker that
    would empty an instant query; range selectors skip it."""
    return f"last_over_time({selector}[30s])"


def _ends(result: list[dict[str, Any]]) -> tuple[tuple[float, float], tuple[float, float]]:
    values = result[0]["values"]
    return (float(values[0][0]), float(values[0][1])), (float(values[-1][0]), float(values[-1][1]))


def _span(result: list[dict[str, Any]]) -> float:
    if len(result) != 1:
        return 0.0
    (t0, _), (t1, _) = _ends(result)
    return t1 - t0


def test_prometheus_scrapes_a_training_run(prometheus: PrometheusServer, tmp_path: Path) -> None:
    port = _free_port()
    target = f"127.0.0.1:{port}"
    # this run's series only (the session's Prometheus may have scraped other trainers before)
    sel = f'{{namespace="team-a", job="grid", scrape_target="{target}"}}'
    mine = f'scrape_target="{target}"'
    job = grid_job(
        training={"steps": 1_000_000, "logEverySteps": 20},
        checkpoint={"everySteps": 100},
        evaluation={"everySteps": 100, "numSamples": 500, "metrics": ["modes"]},
        # a "GPU" job on a CPU machine: cost accrues, yet there is no GPU for NVML to report
        resources={"gpusPerReplica": 1},
        budget={"pricePerGPUHour": PRICE},
    )
    env = {**os.environ, "GANOPS_METRICS_PORT": str(port), "GANOPS_CHECKPOINT_URI": f"file://{tmp_path}/ckpt",
           "GANOPS_NAMESPACE": "team-a", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    prometheus.set_targets([target])
    log = (tmp_path / "trainer.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "ganops"), "train", "--job", str(write_job(job, tmp_path / "j.yaml")),
         "--work-dir", str(tmp_path / "w"), "--no-progress"],
        env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    try:
        prometheus.wait_for_target_up(target, timeout=60)
        # at least three scrapes of a moving step counter, an evaluation and a checkpoint
        steps = prometheus.wait_for_query(
            f"ganops_train_step{sel}[60s]", lambda r: len(r) == 1 and len(set(_values(r))) >= 3, timeout=60
        )
        prometheus.wait_for_query(f"ganops_eval_modes{sel}", timeout=60)
        prometheus.wait_for_query(f"ganops_checkpoint_last_success_timestamp_seconds{sel}", timeout=60)
        prometheus.wait_for_query(f"ganops_train_diversity_ratio{sel}", timeout=30)

        values = _values(steps)
        assert values == sorted(values) and values[-1] > values[0], values

        loss = prometheus.query(last(f"ganops_train_loss{sel}"))
        assert {r["metric"]["network"] for r in loss} == {"generator", "discriminator"}
        grad = prometheus.query(last(f"ganops_train_grad_norm{sel}"))
        assert {r["metric"]["network"] for r in grad} == {"generator", "discriminator"}
        assert all(float(r["value"][1]) >= 0 for r in grad)
        rate = prometheus.query_value(last(f"ganops_train_images_per_second{sel}"))
        assert rate is not None and rate > 0

        modes = prometheus.query_value(last(f"ganops_eval_modes{sel}"))
        quality = prometheus.query_value(last(f"ganops_eval_high_quality_ratio{sel}"))
        assert modes is not None and 0 <= modes <= 25
        assert quality is not None and 0.0 <= quality <= 1.0
        for absent in ("fid", "kid", "precision", "recall"):  # not requested by the job: absent, not zero
            assert prometheus.query(f"ganops_eval_{absent}{{{mine}}}") == [], absent

        stamp = prometheus.query_value(last(f"ganops_checkpoint_last_success_timestamp_seconds{sel}"))
        assert stamp is not None and abs(time.time() - stamp) < 120

        # cost: one "GPU" at $1/s, live and monotonic
        cost = prometheus.wait_for_query(f"ganops_job_cost_usd_total{sel}[60s]", lambda r: _span(r) >= 4)
        usd = _values(cost)
        assert usd == sorted(usd) and usd[-1] > 0
        (t0, v0), (t1, v1) = _ends(cost)
        assert (v1 - v0) / (t1 - t0) == pytest.approx(1.0, rel=0.5)  # dollars per second of wall time
        price = prometheus.query_value(
            last(f"ganops_job_cost_usd_total{sel}") + " / " + last(f"ganops_job_gpu_hours_total{sel}")
        )
        assert price == pytest.approx(PRICE)

        diversity = prometheus.query_value(last(f"ganops_train_diversity_ratio{sel}"))
        assert diversity is not None and diversity >= 0
        accuracy = prometheus.query_value(last(f"ganops_train_discriminator_accuracy{sel}"))
        assert accuracy is not None and 0.0 <= accuracy <= 1.0
        assert prometheus.query_value(last(f"ganops_train_rollbacks_total{sel}")) == 0.0
        events = prometheus.query(last(f"ganops_train_health_events_total{sel}"))  # every known type, born at 0
        assert {r["metric"]["type"] for r in events} >= {
            "ModeCollapseSuspected", "DiscriminatorOverpowering", "DivergenceRollback", "Diverged"}

        # no GPU here: the GPU series do not exist at all (not zeros)
        assert prometheus.series(f'{{__name__=~"ganops_gpu_.+", {mine}}}') == []
        # every series carries the job's identity, as the trainer exposes it (honor_labels)
        every = prometheus.series(f'{{__name__=~"ganops_.+", {mine}}}')
        assert {"ganops_train_step", "ganops_train_loss", "ganops_job_cost_usd_total"} <= {s["__name__"] for s in every}
        for series in every:
            assert series["namespace"] == "team-a" and series["job"] == "grid", series

        exposition = _scrape(target)
        promtool = shutil.which("promtool")
        if promtool:  # the exposition passes Prometheus' own lint
            check = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True)
            problems = [line for line in (check.stdout + check.stderr).splitlines() if line.strip()
                        # DESIGN names this series in GPU-hours, the unit prices and budgets use
                        and not line.startswith("ganops_job_gpu_hours_total use base unit")]
            assert problems == [], problems
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
            prometheus.set_targets([])
    # the endpoint is gone with the process
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def _scrape(target: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text
