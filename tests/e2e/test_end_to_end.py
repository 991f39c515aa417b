"""One job from `kubectl apply` to a served, watermarked image, on real servers on 127.0.0.1.

- Kubernetes: the emulator (`tests.support.kube`) with CRD admission, and the real operator as `kopf run`;
- a test-only node (`tests.support.node`) that plays the Job controller and the kubelet: every pod the operator's
  Jobs produce runs as a local process started from the pod's own command, env (the S3 credentials come from the
  Secret through `envFrom`) and volumes (the job file ConfigMap), so the operator's rendered pod is what trains;
- moto's S3 server (checkpoints, MLflow's artifacts, the serving audit log), `mlflow server` with S3 artifacts,
  Debian's `prometheus` with the dashboards' rules, and the serving app under uvicorn following `digits-e2e@production`.

The flow: apply a 2-D grid job and a digits job → their pods start → checkpoints land in S3 → the status shows
step, quality and cost → both succeed → promotion passes the gates and moves each model's alias → the running
server hot-swaps to the promoted version → `/v1/generate` returns filtered, watermarked samples that
`/v1/watermark/verify` attributes to that version → Prometheus holds every series the dashboards read from these
components (`dashboards/contract.py`) → no alert fires, and no alert condition holds at the end of the healthy run.
"""

from __future__ import annotations

import base64
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from dashboards import contract

from ganops import storage, tracking
from ganops.api.crd import build_crd
from ganops.serving.app import create_app
from ganops.serving.settings import ServingSettings
from tests.support.kube import KopfProcess, KopfProcessFactory, KubeAPI
from tests.support.kube.admission import schema_admission
from tests.support.mlflow_server import MlflowServer
from tests.support.moto_server import MotoS3Server
from tests.support.node import Node
from tests.support.prometheus import PrometheusServer, prometheus_executable
from tests.support.serving import ServerThread, api_keys_file, free_port

pytest_plugins = ["tests.support.kube.fixtures"]
pytestmark = [
    pytest.mark.skipif(prometheus_executable() is None, reason="Debian's prometheus is not installed "
                                                               "(make system-deps)"),
    pytest.mark.timeout(420),
]

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "ganops"
NS = "ml-e2e"
GTJ = "ganops.io/v1alpha1"
S3_SECRET = "ganops-s3"
API_KEY = "e2e-key-0123456789abcdef"
WATERMARK_KEY = "hex:" + "5a" * 32

# Two tiny jobs, sized for two busy cores: about 20 s each on a quiet machine. Their gates pass for these
# seeds and lengths, and fail for an untrained generator (digits at step 200: FID ≈ 114; grid: 1-13 modes).
JOBS = f"""
apiVersion: ganops.io/v1alpha1
kind: GanTrainingJob
metadata: {{name: grid-e2e, namespace: {NS}}}
spec:
  model: {{architecture: mlp, imageSize: 2, latentDim: 2, width: 128, depth: 3, ema: {{decay: 0.99}}}}
  loss: {{type: non-saturating, r1: 0.1}}
  optimizer: {{lrGenerator: 0.001, lrDiscriminator: 0.001, betas: [0.5, 0.999]}}
  dataset: {{uri: "builtin:grid25"}}
  training: {{steps: 1500, batchSize: 256, seed: 1, logEverySteps: 10}}
  checkpoint: {{everySteps: 500}}
  evaluation: {{everySteps: 500, numSamples: 1000, metrics: [modes], featureExtractor: raw}}
  resources: {{gpusPerReplica: 1, cpu: "1", memory: 1Gi}}
  budget: {{maxCostUSD: 5, pricePerGPUHour: 2.0}}
  promotion: {{modelName: grid-e2e, alias: production, gates: {{minModes: 15}}}}
---
apiVersion: ganops.io/v1alpha1
kind: GanTrainingJob
metadata: {{name: digits-e2e, namespace: {NS}}}
spec:
  model: {{architecture: dcgan, imageSize: 8, channels: 1, latentDim: 32, width: 32}}
  dataset: {{uri: "builtin:digits"}}
  training: {{steps: 600, batchSize: 64, seed: 0, logEverySteps: 10}}
  checkpoint: {{everySteps: 200}}
  evaluation: {{everySteps: 200, numSamples: 500, metrics: [fid, kid, precision_recall], featureExtractor: digits}}
  resources: {{gpusPerReplica: 1, cpu: "1", memory: 1Gi}}
  budget: {{maxCostUSD: 5, pricePerGPUHour: 2.0}}
  promotion: {{modelName: digits-e2e, alias: production, gates: {{maxFID: 100}}}}
"""
STEPS = {"grid-e2e": 1500, "digits-e2e": 600}
CHECKPOINT_EVERY = {"grid-e2e": 500, "digits-e2e": 200, "digits-e2e-b": 200}
MODEL = {"grid-e2e": "grid-e2e", "digits-e2e": "digits-e2e", "digits-e2e-b": "digits-e2e"}
# Applied once digits-e2e@production is served: another seed of the same job, for the same model (FID ≈ 87 at
# step 600). Its promotion moves the alias from version 1 to version 2 under load.
SECOND_DIGITS = yaml.safe_load(JOBS.split("---")[1])
SECOND_DIGITS["metadata"]["name"] = "digits-e2e-b"
SECOND_DIGITS["spec"]["training"]["seed"] = 1


@pytest.fixture
def kube_api_options() -> dict[str, Any]:
    return {"admission": schema_admission}  # the CRD's schema and CEL rules judge the applied files


def poll(check: Callable[[], T | None], timeout: float, what: str | Callable[[], str], interval: float = 0.25) -> T:
    """Call `check` until it returns something truthy; fail with `what` (and the last value) after `timeout`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            text = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:.0f} s: {text} (last: {last!r})")
        time.sleep(interval)


# ------------------------------------------------------------------------------------------------ Prometheus


class ComponentsPrometheus(PrometheusServer):
    """Prometheus scraping the three components as the Helm chart's monitors do (METRICS.md): scrape jobs named
    `ganops-trainer` / `ganops-operator` (honor_labels) and `ganops-serving`, targets from file_sd files."""

    def config(self) -> dict[str, Any]:
        def job(name: str, honor: bool) -> dict[str, Any]:
            return {"job_name": name, "scrape_interval": self.scrape_interval, "scrape_timeout": self.scrape_interval,
                    "honor_labels": honor,
                    "file_sd_configs": [{"files": [str(self.root / f"{name}.json")], "refresh_interval": "1s"}]}

        return {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.evaluation_interval},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [job("ganops-trainer", True), job("ganops-operator", True),
                               job("ganops-serving", False)],
        }

    def set_job_targets(self, job: str, targets: list[tuple[str, dict[str, str]]]) -> None:
        path = self.root / f"{job}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [t], "labels": labels} for t, labels in targets]))
        tmp.replace(path)


class PodMonitor:
    """The trainer PodMonitor's discovery: Running pods labelled `ganops.io/job`, at `<podIP>:<metrics port>`."""

    def __init__(self, kube: KubeAPI, prom: ComponentsPrometheus) -> None:
        self.kube = kube
        self.prom = prom
        self.seen: set[str] = set()  # every target ever discovered
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-monitor", daemon=True)
        self._last: list[tuple[str, dict[str, str]]] | None = None

    def start(self) -> PodMonitor:
        self.prom.set_job_targets("ganops-trainer", [])
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            try:
                pods = self.kube.list("v1", "Pod", NS, label_selector="ganops.io/job")
            except Exception:  # the emulator is shutting down or busy: next round
                continue
            targets = []
            for pod in pods:
                status = pod.get("status") or {}
                ports = [port for c in pod["spec"]["containers"] for port in c.get("ports") or []
                         if port.get("name") == "metrics"]
                if status.get("phase") == "Running" and status.get("podIP") and ports:
                    target = f"{status['podIP']}:{ports[0]['containerPort']}"
                    targets.append((target, {"pod": pod["metadata"]["name"]}))
                    self.seen.add(target)
            if targets != self._last:
                self.prom.set_job_targets("ganops-trainer", targets)
                self._last = targets


class Traffic:
    """A client generating in a background thread until stopped; records (status, served version) per request."""

    def __init__(self, base_url: str, key: str) -> None:
        self.seen: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._client = httpx.Client(base_url=base_url, timeout=60, headers={"Authorization": f"Bearer {key}"})
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seed = 0
        while not self._stop.is_set():
            try:
                response = self._client.post("/v1/generate", json={"n": 1 + seed % 4, "seed": seed})
                version = response.json().get("version", "?") if response.status_code == 200 else "?"
                self.seen.append((response.status_code, version))
            except httpx.HTTPError as exc:
                self.seen.append((-1, type(exc).__name__))
            seed += 1
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._client.close()


# ------------------------------------------------------------------------------------------------ the platform


@dataclass
class Platform:
    kube: KubeAPI
    node: Node
    operator: KopfProcess
    s3: MotoS3Server
    bucket: str
    mlflow: MlflowServer
    prom: ComponentsPrometheus
    serving: ServerThread
    client: httpx.Client
    grid_serving: ServerThread
    grid_client: httpx.Client
    trainer_port: int
    pod_ips: dict[str, str]

    @property
    def checkpoints(self) -> str:
        return f"s3://{self.bucket}/checkpoints"

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.kube.get(GTJ, "gtj", NS, name).get("status") or {})

    def diagnostics(self, what: str = "") -> str:
        statuses = {name: (self.kube.get_or_none(GTJ, "gtj", NS, name) or {}).get("status") for name in MODEL}
        return (f"{what}\nstatuses: {json.dumps(statuses, indent=1, default=str)[-4000:]}\n"
                f"node errors: {self.node.pod_errors} {self.node.failures}\n"
                f"operator log:\n{self.operator.output[-3000:]}\npods:\n{self.node.all_logs(2500)}")


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


@pytest.fixture
def platform(tmp_path: Path, kube_api: KubeAPI, kopf_process: KopfProcessFactory,
             moto_s3: MotoS3Server) -> Iterator[Platform]:
    bucket = moto_s3.create_bucket("e2e")
    # MLflow's artifact store is S3 too (proxied: clients never need its credentials). It starts in the
    # background while the rest comes up.
    mlflow = MlflowServer(root=tmp_path / "mlflow", artifacts_destination=f"s3://{bucket}/mlflow",
                          env=moto_s3.env()).launch()
    prom = ComponentsPrometheus(root=tmp_path / "prometheus", rule_files=[contract.RULES_FILE])
    stack: list[Callable[[], None]] = [mlflow.stop]
    try:
        kube_api.register_crd(build_crd())
        kube_api.ensure_namespace(NS)
        # The platform's S3 credentials, as an admin would install them; the operator only names the Secret.
        creds = {k: v for k, v in moto_s3.env().items() if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                                 "AWS_DEFAULT_REGION")}
        kube_api.create({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                         "metadata": {"name": S3_SECRET, "namespace": NS},
                         "data": {k: base64.b64encode(v.encode()).decode() for k, v in creds.items()}})
        venv_bin = str(Path(sys.executable).parent)
        node = Node(kube_api, tmp_path / "node", job_selector="ganops.io/job", namespaces=(NS,),
                    image_env={"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                               # the trainer image on two shared cores: one torch thread per pod
                               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
                    pod_network_env=lambda ip: {"GANOPS_METRICS_ADDR": ip}).start()
        stack.append(node.stop)
        mlflow.wait()
        operator_port, trainer_port = free_port(), free_port()
        operator = kopf_process(["ganops.operator.main"], namespaces=[NS], env={
            "GANOPS_CHECKPOINT_URI": f"s3://{bucket}/checkpoints",
            "GANOPS_S3_SECRET": S3_SECRET,
            "GANOPS_S3_ENDPOINT_URL": moto_s3.endpoint_url,
            "GANOPS_MLFLOW_URI": mlflow.url,
            "GANOPS_OPERATOR_RESYNC_SECONDS": "1",
            "GANOPS_OPERATOR_METRICS_PORT": str(operator_port),
            "GANOPS_TERMINATION_GRACE_SECONDS": "20",
            # Each pod listens on its own pod IP (see the node), on a port no other test on this machine uses.
            "GANOPS_TRAINER_METRICS_PORT": str(trainer_port),
        })
        prom.start()
        stack.append(prom.stop)
        prom.set_job_targets("ganops-operator", [(f"127.0.0.1:{operator_port}", {"namespace": "ganops-system"})])
        monitor = PodMonitor(kube_api, prom).start()
        stack.append(monitor.stop)
        keys = api_keys_file(tmp_path / "api-keys", {"e2e": API_KEY})
        settings = ServingSettings(
            model="digits-e2e@production", mlflow_uri=mlflow.url, poll_interval_s=0.5, api_keys_file=keys,
            require_api_keys=True, limits={"rate_limit_per_second": 0},
            safety={"audit_uri": f"s3://{bucket}/audit", "watermark_key": WATERMARK_KEY,
                    "require_watermark_key": True},
        )
        serving = ServerThread(create_app(settings)).start()
        stack.append(serving.stop)
        grid_serving = ServerThread(create_app(settings.model_copy(update={"model": "grid-e2e@production"}))).start()
        stack.append(grid_serving.stop)
        prom.set_job_targets("ganops-serving", [(f"127.0.0.1:{serving.port}", {"namespace": "ganops"}),
                                                (f"127.0.0.1:{grid_serving.port}", {"namespace": "ganops"})])
        auth = {"Authorization": f"Bearer {API_KEY}"}
        client = httpx.Client(base_url=serving.url, timeout=60, headers=auth)
        grid_client = httpx.Client(base_url=grid_serving.url, timeout=60, headers=auth)
        stack += [client.close, grid_client.close]
        yield Platform(kube_api, node, operator, moto_s3, bucket, mlflow, prom, serving, client, grid_serving,
                       grid_client, trainer_port, {})
    finally:
        for stop in reversed(stack):
            stop()


# ------------------------------------------------------------------------------------------------ the flow


@pytest.mark.slow
def test_jobs_train_promote_and_serve_end_to_end(platform: Platform) -> None:
    p = platform
    started = time.time()
    marks: dict[str, float] = {}

    def mark(what: str) -> None:
        marks[what] = round(time.time() - started, 1)
    # The serving app is up before anything is promoted: live, not ready.
    assert p.client.get("/healthz").status_code == 200
    assert p.client.get("/readyz").status_code == 503

    # kubectl apply -f jobs.yaml
    for doc in yaml.safe_load_all(JOBS):
        p.kube.create(doc)

    # The operator renders one Indexed Job per GanTrainingJob; the node starts each pod from that spec.
    def running_pods() -> dict[str, dict[str, Any]] | None:
        pods = {pod["metadata"]["labels"]["ganops.io/job"]: pod
                for pod in p.kube.list("v1", "Pod", NS, label_selector="ganops.io/job")
                if (pod.get("status") or {}).get("phase") in ("Running", "Succeeded")}
        return pods if set(pods) == set(STEPS) else None

    pods = poll(running_pods, 60, partial(p.diagnostics, "both trainer pods running"))
    mark("pods running")
    for name, pod in pods.items():
        container = p.node.container(NS, pod["metadata"]["name"])
        assert container is not None
        rendered = pod["spec"]["containers"][0]
        assert rendered["command"][:2] == ["ganops", "train"]  # the operator's command is what runs
        assert container.argv[:2] == ["ganops", "train"] and container.argv[3].endswith("/job-file/job.yaml")
        job_file = yaml.safe_load(Path(container.argv[3]).read_text())  # the ConfigMap, mounted
        assert (job_file["metadata"]["name"], job_file["metadata"]["namespace"]) == (name, NS)
        assert container.env["AWS_ACCESS_KEY_ID"] == "testing"  # from the Secret, through envFrom
        assert container.env["GANOPS_JOB_NAME"] == name and container.env["JOB_COMPLETION_INDEX"] == "0"
        assert container.env["GANOPS_S3_ENDPOINT_URL"] == p.s3.endpoint_url
        assert "AWS_ENDPOINT_URL_S3" not in container.env  # nothing leaks from the test process
        assert pod["status"]["podIP"] == container.pod_ip
        p.pod_ips[name] = container.pod_ip

    # Checkpoints land in S3 (verified uploads: latest.json last), and the status follows them.
    store = storage.open_store(p.checkpoints)

    def healthy(name: str) -> None:
        """A healthy run has no failed attempt: stop waiting at the first one (the pods' logs say why)."""
        status = p.status(name)
        if status.get("phase") in ("Failed", "BudgetExceeded") or (status.get("restarts") or {}).get("failures"):
            raise AssertionError(p.diagnostics(f"{name}: {status.get('phase')}, restarts {status.get('restarts')}"))

    def checkpoint_of(name: str) -> dict[str, Any] | None:
        healthy(name)
        uri = f"{p.checkpoints}/{NS}/{name}/latest.json"
        return store.get_json(uri) if store.exists(uri) else None

    for name in STEPS:
        first = poll(partial(checkpoint_of, name), 150, partial(p.diagnostics, f"a checkpoint of {name}"))
        assert first["uri"].startswith(f"{p.checkpoints}/{NS}/{name}/step-")
    mark("first checkpoints")

    def finished(name: str) -> dict[str, Any] | None:
        healthy(name)
        status = p.status(name)
        return status if status.get("phase") == "Succeeded" and status.get("promotedVersion") else None

    statuses = {name: poll(partial(finished, name), 240, partial(p.diagnostics, f"{name} Succeeded and promoted"))
                for name in STEPS}
    mark("succeeded and promoted")
    for name, status in statuses.items():
        assert status["step"] == STEPS[name]
        assert status["lastCheckpoint"]["uri"] == f"{p.checkpoints}/{NS}/{name}/step-{STEPS[name]:09d}"
        assert status["restarts"] == {"preemptions": 0, "failures": 0}
        assert status["cost"]["gpuHours"] > 0 and status["cost"]["usd"] == pytest.approx(
            status["cost"]["gpuHours"] * 2.0, rel=0.05)
        assert status["cost"]["usd"] < 5  # the budget
        assert status["mlflowRunId"]
        assert _condition(status, "Promoted")["status"] == "True"
        steps = sorted(storage.open_store(p.checkpoints).list(f"{p.checkpoints}/{NS}/{name}/"))
        assert any(f"step-{STEPS[name]:09d}/manifest.json" in key for key in steps), steps
    assert statuses["digits-e2e"]["metrics"]["fid"] < 100
    assert statuses["grid-e2e"]["metrics"]["modes"] >= 15
    # Every pod ran to completion as the Job controller and kubelet report it.
    for name in STEPS:
        job = p.kube.get("batch/v1", "Job", NS, name)
        assert _condition(job["status"], "Complete").get("status") == "True", job["status"]
        (pod,) = p.kube.list("v1", "Pod", NS, label_selector=f"ganops.io/job={name}")
        assert pod["status"]["phase"] == "Succeeded"
        assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0

    # The trainer kept to its volumes: nothing written where the pod's root filesystem is read-only.
    for name, pod in pods.items():
        container = p.node.container(NS, pod["metadata"]["name"])
        assert container is not None and container.rootfs is not None
        assert container.rootfs_writes() == [], (name, container.rootfs_writes())
    # One Event per transition, in order.
    for name in STEPS:
        reasons = [e.reason for e in p.kube.events(NS, involved_name=name)]
        expected = ["Created", "Running", "Succeeded", "Promoted"]
        assert [r for r in reasons if r in expected] == expected, reasons
        assert not {"Warning"} & {e.type for e in p.kube.events(NS, involved_name=name)}, reasons

    # Promotion moved each model's alias to a version whose checkpoint is the job's best one, in S3.
    for name, status in statuses.items():
        alias = tracking.get_alias(p.mlflow.url, name, "production")
        assert alias is not None and alias.version == status["promotedVersion"]
        assert alias.checkpoint_uri.startswith(f"{p.checkpoints}/{NS}/{name}/step-")
        assert alias.tags["ganops.job"] == f"{NS}/{name}" and alias.tags["ganops.gates"] == "passed"

    # One MLflow run per job with its metrics; its artifacts went through the server into S3.
    from mlflow.tracking import MlflowClient

    mlflow_client = MlflowClient(tracking_uri=p.mlflow.url)
    for name, status in statuses.items():
        run = mlflow_client.get_run(status["mlflowRunId"])
        assert run.info.status == "FINISHED", run.info
        uid = p.kube.get(GTJ, "gtj", NS, name)["metadata"]["uid"]
        assert run.data.tags.get("ganops.job") == f"{NS}/{name}" and run.data.tags.get("ganops.jobUid") == uid
        quality = {"digits-e2e": "fid", "grid-e2e": "modes"}[name]
        assert any(key.split("/")[-1] == quality for key in run.data.metrics), (name, run.data.metrics)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri  # proxied
        assert mlflow_client.list_artifacts(run.info.run_id), f"{name}: no artifacts"
    stored = storage.open_store(f"s3://{p.bucket}/mlflow").list(f"s3://{p.bucket}/mlflow/")
    for status in statuses.values():
        assert any(status["mlflowRunId"] in key for key in stored), (status["mlflowRunId"], stored[:10])

    # The running server follows digits-e2e@production: it hot-swaps to the promoted version by itself.
    digits_version = statuses["digits-e2e"]["promotedVersion"]

    def ready() -> dict[str, Any] | None:
        body: dict[str, Any] = p.client.get("/readyz").json()
        return body if body.get("ready") and body.get("version") == digits_version else None

    poll(ready, 60, "the server loads the promoted version")
    mark("served")
    models = p.client.get("/v1/models").json()["models"]
    assert [(m["name"], m["version"], m["alias"]) for m in models] == [("digits-e2e", digits_version, "production")]
    served = tracking.get_alias(p.mlflow.url, "digits-e2e", "production")
    assert served is not None and models[0]["checkpoint_uri"] == served.checkpoint_uri

    # /v1/generate: every sample passed the safety pipeline and carries this server's watermark.
    generated = p.client.post("/v1/generate", json={"n": 8, "seed": 1234, "format": "png"})
    assert generated.status_code == 200, generated.text
    body = generated.json()
    assert body["version"] == digits_version and body["watermarked"] is True and body["blocked"] == 0
    assert len(body["samples"]) == 8
    for sample in body["samples"]:
        assert sample["allowed"] and sample["data"]
        assert {v["filter"] for v in sample["verdicts"]} >= {"degenerate"}
        assert all(v["outcome"] == "pass" for v in sample["verdicts"]), sample["verdicts"]
        verified = p.client.post("/v1/watermark/verify", json={"image": sample["data"]})
        assert verified.status_code == 200, verified.text
        assert verified.json()["present"] is True and verified.json()["model"] == f"digits-e2e:{digits_version}"
    assert p.client.post("/v1/generate", json={"n": 1}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert "degenerate" in models[0]["filters"] and models[0]["skipped_filters"].get("nsfw") == "below_min_size"

    # The grid model is served by its own server, also following its alias: points, and a watermarked scatter plot.
    grid_version = statuses["grid-e2e"]["promotedVersion"]
    poll(lambda: p.grid_client.get("/readyz").json().get("version") == grid_version, 60,
         "the grid server loads the promoted version")
    scatter = p.grid_client.post("/v1/generate", json={"n": 64, "seed": 7, "grid": True})
    assert scatter.status_code == 200, scatter.text
    points = scatter.json()
    assert points["version"] == grid_version and points["blocked"] == 0 and len(points["samples"]) == 64
    coordinates = [s["point"] for s in points["samples"]]
    assert all(len(c) == 2 and all(math.isfinite(v) for v in c) for c in coordinates)
    assert max(abs(v) for c in coordinates for v in c) > 0.5  # spread over the grid, not collapsed at the origin
    verified = p.grid_client.post("/v1/watermark/verify", json={"image": points["grid"]["data"]}).json()
    assert verified["present"] is True and verified["model"] == f"grid-e2e:{grid_version}"
    # Each server only vouches for its own outputs' model.
    assert p.client.post("/v1/watermark/verify", json={"image": points["grid"]["data"]}).json()["model"] != \
        f"digits-e2e:{digits_version}"

    # A better run of the same model is promoted while clients keep generating: the server swaps from version 1
    # to version 2 in place, with no failed request, and each client sees version 1, then only version 2.
    traffic = Traffic(p.serving.url, API_KEY)
    poll(lambda: len(traffic.seen) >= 3, 30, "traffic before the second promotion")
    p.kube.create({**SECOND_DIGITS, "metadata": {**SECOND_DIGITS["metadata"]}})
    second = poll(partial(finished, "digits-e2e-b"), 240, partial(p.diagnostics, "digits-e2e-b promoted"))
    statuses["digits-e2e-b"] = second
    assert second["promotedVersion"] != digits_version
    alias = tracking.get_alias(p.mlflow.url, "digits-e2e", "production")
    assert alias is not None and alias.version == second["promotedVersion"]
    assert alias.checkpoint_uri.startswith(f"{p.checkpoints}/{NS}/digits-e2e-b/step-")
    poll(lambda: traffic.seen and traffic.seen[-1] == (200, second["promotedVersion"]), 60,
         "the server swaps to version 2")
    swapped = len(traffic.seen)
    poll(lambda: len(traffic.seen) >= swapped + 5, 60, "five more answers after the swap (none may be version 1)")
    traffic.stop()
    mark("swapped to the second version")
    outcomes = list(traffic.seen)
    assert {status for status, _ in outcomes} == {200}, outcomes
    versions = [version for _, version in outcomes]
    assert set(versions) == {digits_version, second["promotedVersion"]}, versions
    assert versions == sorted(versions, key=lambda v: v == second["promotedVersion"]), versions  # no flapping
    assert p.client.get("/readyz").json()["version"] == second["promotedVersion"]

    check_prometheus(p, started, statuses)
    # The safety pipeline does filter: near-identical samples (a tiny truncation) are withheld by the degenerate
    # filter (duplicates of each other, or a collapsed batch), and every withheld sample is audited in S3 under its
    # request id. (After the alert checks: a burst of blocks is what the block-rate alert is for.)
    duplicates = p.client.post("/v1/generate", json={"n": 4, "seed": 5, "truncation": 0.001})
    assert duplicates.status_code == 200, duplicates.text
    answer = duplicates.json()
    withheld = [s for s in answer["samples"] if not s["allowed"]]
    assert len(withheld) == answer["blocked"] >= 3, answer["samples"]
    assert all(s["blocked_by"] == "degenerate" and s["data"] is None for s in withheld), withheld
    audit_root = f"s3://{p.bucket}/audit"
    (record_uri,) = poll(lambda: [u for u in storage.open_store(audit_root).list(audit_root + "/")
                                  if answer["request_id"] in u], 30, "the audit record in S3")
    records = [json.loads(line) for line in storage.open_store(audit_root).get_bytes(record_uri).splitlines()]
    assert sorted(r["sample_index"] for r in records) == [s["index"] for s in withheld]
    assert {(r["filter"], r["outcome"], r["version"]) for r in records} == {
        ("degenerate", "block", second["promotedVersion"])}

    # A healthy run logs no error: not in the operator, not in any pod.
    logs = {"operator": p.operator.output} | {path.parent.name: path.read_text(errors="replace")
                                              for path in p.node.root.glob(f"{NS}/*/log")}
    errors = {who: [line for line in text.splitlines() if " ERROR " in line or line.startswith("Traceback")]
              for who, text in logs.items()}
    assert not {who: lines for who, lines in errors.items() if lines}, errors
    mark("prometheus checked")
    print(f"\ne2e seconds since apply: {marks}")


# ------------------------------------------------------------------------------------------------ Prometheus checks


def _exported_by_source(name: str) -> bool:
    """Whether some component's source mentions the series (counters without their `_total`)."""
    stem = name.removesuffix("_total")
    return any(stem in path.read_text() for path in SRC.rglob("*.py"))


def _series(prom: PrometheusServer, name: str, since: float) -> list[dict[str, str]]:
    names = "|".join([name, *(name + s for s in contract.HISTOGRAM_SUFFIXES)])
    return prom.series(f'{{__name__=~"{names}"}}', start=since)


def check_prometheus(p: Platform, since: float, statuses: dict[str, dict[str, Any]]) -> None:
    prom = p.prom
    # Everything was scraped: both trainer pods (found by the PodMonitor, at their pod IPs), operator, serving.
    for name, ip in p.pod_ips.items():
        scraped = prom.series(f'ganops_train_step{{namespace="{NS}", job="{name}"}}', start=since)
        assert {s["instance"] for s in scraped} == {f"{ip}:{p.trainer_port}"}, (name, scraped)
    prom.wait_for_query('up{job="ganops-operator"} == 1', timeout=30)
    prom.wait_for_query('up{job="ganops-serving"} == 1', timeout=30)
    prom.wait_for_query("ganops_serving_ready == 1", timeout=30)
    serving_now = statuses["digits-e2e-b"]["promotedVersion"]
    prom.wait_for_query(f'ganops_model_info{{model="digits-e2e", version="{serving_now}"}} == 1', timeout=30)

    # The trainers' series carry their GanTrainingJob's namespace and job (honor_labels) and show progress while
    # the pods ran. (A pod exits right after its last checkpoint, usually before the next scrape: the final figures
    # reach Prometheus through the operator, from the status, below.)
    for name in statuses:
        top = prom.query(f'max_over_time(ganops_train_step{{namespace="{NS}", job="{name}"}}[10m])')
        assert top and float(top[0]["value"][1]) >= CHECKPOINT_EVERY[name], (name, top)
        cost = prom.query(f'max_over_time(ganops_job_cost_usd_total{{namespace="{NS}", job="{name}"}}[10m])')
        assert cost and float(cost[0]["value"][1]) > 0, (name, cost)
    assert prom.query(f'ganops_eval_fid{{namespace="{NS}", job="digits-e2e"}}[10m]')
    assert prom.query(f'ganops_eval_modes{{namespace="{NS}", job="grid-e2e"}}[10m]')
    for name, status in statuses.items():
        prom.wait_for_query(f'ganops_operator_job_phase{{namespace="{NS}", job="{name}", phase="Succeeded"}} == 1',
                            timeout=30)
        version = status["promotedVersion"]
        quality = {r["metric"]["metric"]: float(r["value"][1]) for r in prom.wait_for_query(
            f'ganops_model_version_quality{{namespace="{NS}", job="{name}", model="{MODEL[name]}", '
            f'version="{version}"}}',
            timeout=30)}
        promoted_metrics = status.get("promotedMetrics") or {}
        shared = set(quality) & set(promoted_metrics)
        assert shared, (name, quality, promoted_metrics)
        for metric in shared:
            assert quality[metric] == pytest.approx(promoted_metrics[metric]), (name, metric, quality)
        promoted = prom.query(f'ganops_operator_promotions_total{{namespace="{NS}", job="{name}", '
                              f'outcome="promoted"}}')
        assert promoted and float(promoted[0]["value"][1]) == 1, (name, promoted)

    # Every series the dashboards and rules read from ganops' own components exists (METRICS.md via contract.py).
    components = contract.series_by_component()
    wanted = (components["trainer"] | components["operator"] | components["serving"]) - contract.GPU_ONLY
    absent = sorted(name for name in wanted if not _series(prom, name, since))
    unimplemented = [name for name in absent if not _exported_by_source(name)]
    broken = [name for name in absent if name not in unimplemented]
    assert not unimplemented, f"dashboard series that no component exports: {unimplemented}"
    assert not broken, f"exported by the code but not in Prometheus after the run: {broken}"

    # Rules loaded and healthy; no alert fired at any time, and no alert condition holds now.
    rules = {r.get("name"): r for g in prom.rules() for r in g["rules"]}
    assert set(rules) == set(contract.recorded()) | set(contract.alerts())
    unhealthy = {name: r.get("lastError") for name, r in rules.items() if r.get("health") != "ok"}
    assert not unhealthy, unhealthy
    fired = prom.query('count_over_time(ALERTS{alertstate="firing"}[15m])')
    assert not fired, [f["metric"] for f in fired]
    holding = {name: [r["metric"] for r in prom.query(rule["expr"])] for name, rule in contract.alerts().items()}
    holding = {name: series for name, series in holding.items() if series}
    assert not holding, f"alert conditions hold at the end of a healthy run: {holding}"


def test_exported_by_source_finds_counters_without_their_suffix() -> None:
    assert _exported_by_source("ganops_train_step")
    assert _exported_by_source("ganops_job_cost_usd_total")  # the counter is declared as ganops_job_cost_usd
    assert not _exported_by_source("ganops_no_such_series_total")


def test_contract_lists_series_for_every_component() -> None:
    components = contract.series_by_component()
    assert {"trainer", "operator", "serving"} <= set(components)
    assert all(components[c] for c in ("trainer", "operator", "serving"))
