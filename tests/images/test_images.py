"""The three built images, inspected and run the way the chart and the operator run them (`make images-test`).

Runs under ``GANOPS_IMAGE_TESTS=1`` (what ``make images-test`` sets; a missing image is then a failure); skipped,
with the reason, elsewhere (``make test``), where the storage may hold images older than the checkout.
``GANOPS_IMAGES`` (``make images-test IMAGES=…``) names the images this run built and tests; the steps of the
others skip and say so. CI builds only the operator
image (docs/development.md has the minutes): steps 1-3 for it, and its Job for a trainer image it does not run.

There is no container engine: each container is the image's root file system run by ``scripts/images/runtime.py``
under the pod's securityContext (read-only root, runAsUser/runAsGroup/fsGroup, every capability dropped,
no_new_privs, shells masked) with the pod's volumes bind-mounted where the pod mounts them.

In order (one platform for the module; results go to ``.ganops/images/smoke.json`` for ``reports/images.md``):

1. each image's config: numeric non-root USER equal to the chart's runAsUser, OCI labels, exec-form entrypoint and
   command (no shell), exposed ports equal to the container ports the chart and the operator declare;
2. each image under the chart's securityContext: who the process is, what it can write, that no shell runs;
3. operator: the chart's operator Deployment (default values; only ports, image tags and where MLflow and S3 are
   differ) becomes a Pod in the Kubernetes API emulator, and the test node (`tests/support/node.py`) runs it from
   the operator image; one GanTrainingJob is applied; the operator creates its ConfigMap and Indexed Job;
4. trainer: the node runs that Job's pod (the operator's own pod spec) from the trainer image: ``ganops train``
   writes checkpoints to moto's S3 server and logs to a real ``mlflow server``; the operator sees the Job complete,
   marks the job Succeeded and promotes the model in MLflow (the operator image's MLflow client);
5. serving: the chart's serving Deployment as a Pod from the serving image, following ``<model>@production``:
   ``/readyz`` turns 200, ``POST /v1/generate`` answers PNGs whose watermark ``/v1/watermark/verify`` finds.

The one change to a pod spec: the operator's Pod gets a kubeconfig (a Secret volume and ``KUBECONFIG``) instead of
the in-cluster service account, because the emulator speaks plain HTTP.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import shutil
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from scripts import chart
from scripts.images import IMAGES, REGISTRY, STATE, project_version
from scripts.images.engine import Engine, detect
from scripts.images.runtime import Container, Mount, PodLauncher, Security, _own, available, image_config

from ganops.api.crd import build_crd
from ganops.operator.children import Owner, training_job
from ganops.operator.settings import OperatorConfig
from tests.support.jobs import digits_job
from tests.support.kube import KubeAPI
from tests.support.kube.admission import schema_admission
from tests.support.mlflow_server import MlflowServer, start_mlflow_server
from tests.support.moto_server import MotoS3Server, free_port, running_moto_server
from tests.support.node import NODE_NAME, Node
from tests.support.serving import api_keys_file

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

T = TypeVar("T")
RELEASE_NS = "ganops-system"
JOBS_NS = "ml-smoke"
JOB = "digits-smoke"
MODEL = "digits-smoke"
API_KEY = "smoke-key-0123456789abcdef"
RESULTS = Path(os.environ.get("GANOPS_IMAGES_SMOKE", str(STATE / "smoke.json")))
NODE_ENV = "GANOPS_SMOKE_NODE"  # the node's own marker variable; the image's environment replaces it
READY_TIMEOUT = float(os.environ.get("GANOPS_IMAGES_READY_TIMEOUT", "300"))


def _selected() -> tuple[str, ...]:
    words = tuple(os.environ.get("GANOPS_IMAGES", " ".join(IMAGES)).split())
    unknown = sorted(set(words) - set(IMAGES))
    if unknown or not words:
        raise pytest.UsageError(f"GANOPS_IMAGES={' '.join(words)!r}: name some of {', '.join(IMAGES)} "
                                "(make images-test IMAGES='operator serving')")
    return words


SELECTED = _selected()


def needs(image: str) -> None:
    """Skip, saying why, a step whose image this run does not test."""
    if image not in SELECTED:
        pytest.skip(reason=f"the {image} image is not in this run (GANOPS_IMAGES={' '.join(SELECTED)})")

# What a process learns about itself inside the container (the security probe).
PROBE = r"""
import json, os, subprocess, sys
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
out = {"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
       "cap_eff": status["CapEff"].strip(), "cap_bnd": status["CapBnd"].strip(),
       "no_new_privs": status["NoNewPrivs"].strip(), "python": sys.version.split()[0]}
for path in sys.argv[1:]:
    try:
        with open(os.path.join(path, ".probe"), "w") as f:
            f.write("x")
        os.unlink(os.path.join(path, ".probe"))
        out[path] = "writable"
    except OSError as exc:
        out[path] = exc.strerror
try:
    subprocess.run(["/bin/sh", "-c", "true"], check=False)
    out["shell"] = "ran"
except OSError as exc:
    out["shell"] = exc.strerror
print("PROBE " + json.dumps(out))
"""


# ------------------------------------------------------------------------------------------------ results


@dataclass
class Results:
    """What each smoke step found, written for scripts/images/report.py."""

    steps: dict[str, dict[str, Any]] = field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        details: dict[str, Any] = {}
        started = time.monotonic()
        try:
            yield details
        except BaseException as exc:
            self.steps[name] = {"passed": False, "seconds": round(time.monotonic() - started, 1),
                                "error": "".join(traceback.format_exception_only(exc)).strip()[-1500:], **details}
            self.write()
            raise
        self.steps[name] = {"passed": True, "seconds": round(time.monotonic() - started, 1), **details}
        self.write()

    def write(self) -> None:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                       "steps": self.steps}, indent=2) + "\n")


def poll(check: Callable[[], T | None], timeout: float, what: Callable[[], str], interval: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s: {what()}")
        time.sleep(interval)


# ------------------------------------------------------------------------------------------------ the images


def built_images() -> dict[str, str]:
    """image → the local tag to run: the revision tag `make images` recorded, else `<registry>/<image>:<version>`."""
    record = STATE / "build.json"
    recorded = json.loads(record.read_text()).get("images", {}) if record.exists() else {}
    return {image: (recorded.get(image) or {}).get("tags", [None, None])[-1] or
            f"{REGISTRY}/{image}:{project_version()}" for image in IMAGES}


@pytest.fixture(scope="module")
def engine() -> Engine:
    forced = os.environ.get("GANOPS_IMAGE_TESTS") == "1"
    if not forced:  # images left in the storage by an earlier build may be older than this checkout's tests
        pytest.skip(reason="the images' smoke runs belong to `make images-test` (GANOPS_IMAGE_TESTS=1), "
                           "after `make images`")
    reason = None
    if shutil.which("buildah") is None:
        reason = "buildah is not installed (`make images` installs it; GANOPS_IMAGE_TESTS=1 insists)"
    elif available() is not None:
        reason = available()
    if reason is not None:
        if forced:
            pytest.fail(f"GANOPS_IMAGE_TESTS=1 but {reason}")
        pytest.skip(reason=reason)
    return detect("buildah")


def _from_docker(engine: Engine, ref: str, tmp: Path) -> None:
    """An image Docker built, copied into buildah's storage (the runtime runs buildah's working containers)."""
    if shutil.which("docker") is None:
        return
    archive = tmp / "image.tar"
    if subprocess.run(["docker", "save", "-o", str(archive), ref], capture_output=True, check=False).returncode == 0:
        engine.run("pull", "--quiet", f"docker-archive:{archive}", capture=True, check=False)
        archive.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def images(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    refs = built_images()
    for image in SELECTED:
        if not engine.exists(refs[image]):
            _from_docker(engine, refs[image], tmp_path_factory.mktemp("docker"))
    missing = [refs[image] for image in SELECTED if not engine.exists(refs[image])]
    if missing:
        message = f"images not built: {', '.join(missing)} (run `make images`)"
        if os.environ.get("GANOPS_IMAGE_TESTS") == "1":
            pytest.fail(message)
        pytest.skip(reason=message)
    return refs


@pytest.fixture(scope="module")
def results() -> Results:
    return Results()


def _split(ref: str) -> dict[str, str]:
    name, _, tag = ref.rpartition(":")
    registry, _, repository = name.partition("/")
    return {"registry": registry, "repository": repository, "tag": tag}


# ------------------------------------------------------------------------------------------------ the platform


@dataclass
class Platform:
    tmp: Path
    engine: Engine
    images: dict[str, str]
    kube: KubeAPI
    s3: MotoS3Server
    bucket: str
    mlflow: MlflowServer
    node: Node
    launcher: PodLauncher
    values: dict[str, Any]
    objects: list[dict[str, Any]]
    ports: dict[str, int]
    state: dict[str, Any] = field(default_factory=dict)

    def deployment(self, component: str) -> dict[str, Any]:
        (found,) = [o for o in self.objects if o["kind"] == "Deployment"
                    and o["metadata"]["labels"]["app.kubernetes.io/component"] == component]
        return copy.deepcopy(found)

    def run_deployment(self, component: str, patch: Callable[[dict[str, Any]], None] | None = None) -> str:
        """Create the Deployment's pod template as a Pod bound to the test node (which starts it); its name."""
        deployment = self.deployment(component)
        template = deployment["spec"]["template"]
        name = f"{deployment['metadata']['name']}-smoke"
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": RELEASE_NS, "labels": template["metadata"]["labels"]},
               "spec": {**template["spec"], "nodeName": NODE_NAME}}
        if patch is not None:
            patch(pod)
        self.kube.create(pod)
        return name

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        return self.kube.get("v1", "Pod", namespace, name)

    def logs(self, namespace: str, name: str, chars: int = 4000) -> str:
        """The beginning (the first error) and the end of a pod's output."""
        text = self.node.logs(namespace, name)
        return text if len(text) <= 2 * chars else f"{text[:chars]}\n[…]\n{text[-chars:]}"

    def secret(self, namespace: str, name: str, data: dict[str, str]) -> None:
        self.kube.create({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                          "metadata": {"name": name, "namespace": namespace},
                          "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})


@pytest.fixture(scope="module")
def platform(engine: Engine, images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("images")
    with contextlib.ExitStack() as stack:
        s3 = stack.enter_context(running_moto_server())
        bucket = s3.create_bucket("smoke")
        mlflow = stack.enter_context(start_mlflow_server(tmp / "mlflow"))
        kube = stack.enter_context(KubeAPI(admission=schema_admission))
        kube.register_crd(build_crd())
        for namespace in (RELEASE_NS, JOBS_NS):
            kube.ensure_namespace(namespace)
        launcher = PodLauncher(engine, node_env=[NODE_ENV])
        stack.callback(launcher.close)
        node = Node(kube, tmp / "node", image_env={NODE_ENV: "1"}, job_selector="ganops.io/job",
                    namespaces=(RELEASE_NS, JOBS_NS), launcher=launcher, max_grace_seconds=40).start()
        stack.callback(node.stop)
        ports = {name: free_port() for name in ("operator_metrics", "operator_liveness", "trainer_metrics",
                                                 "serving")}
        # The chart's defaults, except where this machine differs from a cluster: free ports (every pod shares the
        # host's network here), the images just built, and where MLflow and S3 are.
        values = {
            "mlflow": {"uri": mlflow.url},
            "objectStore": {"endpointUrl": s3.endpoint_url},
            "operator": {"image": _split(images["operator"]), "metricsPort": ports["operator_metrics"],
                         "livenessPort": ports["operator_liveness"]},
            "trainer": {"image": _split(images["trainer"]), "checkpointUri": f"s3://{bucket}/runs",
                        "metricsPort": ports["trainer_metrics"]},
            # The ten-step smoke model draws near-constant 8x8 images (std 0.003), which the degenerate filter
            # rightly blocks; `replace` answers a blocked sample with a watermarked grey image instead of no image,
            # so every filter stays on and the answer still carries a watermarked PNG (docs/safety.md).
            "serving": {"image": _split(images["serving"]), "port": ports["serving"],
                        "model": f"{MODEL}@production", "config": {"safety": {"mode": "replace"}}},
        }
        objects = [doc for _, doc in chart.documents(chart.render(values))]
        yield Platform(tmp, engine, images, kube, s3, bucket, mlflow, node, launcher, values, objects, ports)


def _credentials(s3: MotoS3Server) -> dict[str, str]:
    return {k: v for k, v in s3.env().items() if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                       "AWS_DEFAULT_REGION")}


# ------------------------------------------------------------------------------------------------ 1. config


def _chart_ports(objects: list[dict[str, Any]], component: str) -> set[int]:
    return {port["containerPort"] for o in objects if o["kind"] == "Deployment"
            and o["metadata"]["labels"]["app.kubernetes.io/component"] == component
            for c in o["spec"]["template"]["spec"]["containers"] for port in c.get("ports") or []}


@pytest.mark.parametrize("image", IMAGES)
def test_image_config(image: str, engine: Engine, images: dict[str, str], results: Results) -> None:
    needs(image)
    with results.step(f"{image}: config") as details:
        info = engine.config(images[image])
        config = image_config(engine, images[image])
        values = yaml.safe_load((chart.CHART / "values.yaml").read_text())
        uid = values["podSecurityContext"]["runAsUser"]
        details.update(user=config.user, entrypoint=config.entrypoint, cmd=config.cmd, ports=config.exposed_ports,
                       layers=len(info["layers"]), size=info["size"])
        assert config.user == f"{uid}:{uid}", f"USER {config.user!r} is not the chart's {uid}:{uid}"
        for label in ("title", "description", "version", "revision", "created", "source", "licenses"):
            assert config.labels.get(f"org.opencontainers.image.{label}"), f"no org.opencontainers.image.{label}"
        assert config.labels["org.opencontainers.image.version"] == project_version()
        # Exec form, and nothing that needs a shell: the first word is an executable of the image.
        words = [*config.entrypoint, *config.cmd]
        assert words and words[0] not in ("sh", "/bin/sh", "bash", "/bin/bash"), words
        assert "PATH" in config.env and config.env.get("HOME") == "/tmp"
        default_objects = [doc for _, doc in chart.documents(chart.render({}))]
        declared = {"operator": _chart_ports(default_objects, "operator"),
                    "serving": _chart_ports(default_objects, "serving"),
                    "trainer": {OperatorConfig().trainer_metrics_port, OperatorConfig().rendezvous_port}}[image]
        assert {int(p.split("/")[0]) for p in config.exposed_ports} == declared


# ------------------------------------------------------------------------------------------------ 2. security


def _trainer_pod_spec(image: str) -> dict[str, Any]:
    owner = Owner(name=JOB, namespace=JOBS_NS, uid="uid-1")
    job = training_job(owner, _job_spec().spec, OperatorConfig(image=image), attempt=1)
    return dict(job["spec"]["template"]["spec"])


def _job_spec() -> Any:
    from tests.support.jobs import as_job

    return as_job(_job_object())


def _job_object() -> dict[str, Any]:
    obj = digits_job(JOB, promotion={"modelName": MODEL})
    obj["metadata"]["namespace"] = JOBS_NS
    return obj


@pytest.mark.parametrize("image", IMAGES)
def test_image_runs_under_the_charts_security_context(image: str, engine: Engine, images: dict[str, str],
                                                      results: Results, tmp_path: Path) -> None:
    needs(image)
    with results.step(f"{image}: security") as details:
        if image == "trainer":
            pod_spec = _trainer_pod_spec(images[image])
        else:
            objects = [doc for _, doc in chart.documents(chart.render({}))]
            (deployment,) = [o for o in objects if o["kind"] == "Deployment"
                             and o["metadata"]["labels"]["app.kubernetes.io/component"] == image]
            pod_spec = deployment["spec"]["template"]["spec"]
        (container,) = pod_spec["containers"]
        volumes = {v["name"]: v for v in pod_spec["volumes"]}
        empty = [m["mountPath"] for m in container["volumeMounts"] if "emptyDir" in volumes[m["name"]]]
        config = image_config(engine, images[image])
        security = Security.from_pod(pod_spec, container, config.user)
        mounts = []
        for i, target in enumerate(empty):
            folder = tmp_path / f"empty-{i}"
            folder.mkdir()
            _own(folder, security.fs_group, empty_dir=True)
            mounts.append(Mount(folder, target))
        probe = Container(engine, images[image], ["python3", "-c", PROBE, "/", "/opt", *empty], dict(config.env),
                          mounts, security, tmp_path / "probe.log")
        probe.start()
        try:
            code = probe.wait(120)
        finally:
            probe.stop()
        lines = [line for line in probe.log().splitlines() if line.startswith("PROBE ")]
        assert code == 0 and lines, probe.log()
        found = json.loads(lines[-1].removeprefix("PROBE "))
        details.update(security_context={**pod_spec["securityContext"], **container["securityContext"]},
                       probe=found)
        pod_ctx = pod_spec["securityContext"]
        assert (found["uid"], found["gid"]) == (pod_ctx["runAsUser"], pod_ctx["runAsGroup"])
        assert found["groups"] == sorted({pod_ctx["runAsGroup"], pod_ctx["fsGroup"]})
        assert found["cap_eff"] == found["cap_bnd"] == "0000000000000000"
        assert found["no_new_privs"] == "1"
        assert found["/"] == found["/opt"] == "Read-only file system"
        assert all(found[path] == "writable" for path in empty), found
        assert found["shell"] == "Permission denied"  # masked: nothing the image runs may need one
        assert tuple(int(x) for x in found["python"].split(".")[:2]) >= (3, 11), found["python"]


# ------------------------------------------------------------------------------------------------ 3. operator


def test_operator_image_reconciles_a_job(platform: Platform, results: Results) -> None:
    needs("operator")
    p = platform
    with results.step("operator: reconcile") as details:
        # What an admin creates before installing (docs/install.md): the operator's S3 read access and, in the
        # jobs' namespace, the trainer pods' Secrets; the operator's MLflow Secret is optional and left out.
        p.secret(RELEASE_NS, "ganops-operator-s3", _credentials(p.s3))
        p.secret(JOBS_NS, "ganops-s3", _credentials(p.s3))
        p.secret(JOBS_NS, "ganops-mlflow", {"MLFLOW_TRACKING_INSECURE_TLS": "false"})
        p.secret(RELEASE_NS, "smoke-kubeconfig", {"config": p.kube.kubeconfig_path.read_text()})

        def kubeconfig(pod: dict[str, Any]) -> None:
            spec = pod["spec"]
            spec["volumes"].append({"name": "kubeconfig", "secret": {"secretName": "smoke-kubeconfig",
                                                                     "defaultMode": 0o440}})
            (container,) = spec["containers"]
            container["volumeMounts"].append({"name": "kubeconfig", "mountPath": "/var/run/ganops-smoke",
                                              "readOnly": True})
            container["env"].append({"name": "KUBECONFIG", "value": "/var/run/ganops-smoke/config"})

        name = p.run_deployment("operator", kubeconfig)
        p.state["operator_pod"] = name
        liveness = f"http://127.0.0.1:{p.ports['operator_liveness']}/healthz"

        def live() -> bool:
            if (p.pod(RELEASE_NS, name).get("status") or {}).get("phase") in ("Failed", "Succeeded"):
                raise AssertionError(f"the operator exited:\n{p.logs(RELEASE_NS, name)}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(liveness, timeout=2).status_code == 200
            return False

        started = time.monotonic()
        poll(live, READY_TIMEOUT, lambda: f"operator liveness {liveness}:\n{p.logs(RELEASE_NS, name)}")
        details["live_after_s"] = round(time.monotonic() - started, 1)
        p.kube.create(_job_object())
        job = poll(lambda: p.kube.get_or_none("batch/v1", "Job", JOBS_NS, JOB), 120,
                   lambda: f"the trainer Job:\n{p.logs(RELEASE_NS, name)}")
        configmap = p.kube.get("v1", "ConfigMap", JOBS_NS, f"{JOB}-spec")
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["image"] == p.images["trainer"]  # the chart's trainer.image, through the operator
        assert container["command"][:2] == ["ganops", "train"]
        assert yaml.safe_load(configmap["data"]["job.yaml"])["metadata"]["name"] == JOB
        metrics = httpx.get(f"http://127.0.0.1:{p.ports['operator_metrics']}/metrics", timeout=5)
        assert metrics.status_code == 200 and "ganops_" in metrics.text
        details.update(job=f"{JOBS_NS}/{JOB}", trainer_image=container["image"], command=container["command"])
        p.state["job_created"] = True


# ------------------------------------------------------------------------------------------------ 4. trainer


def test_trainer_image_trains_and_the_operator_promotes(platform: Platform, results: Results) -> None:
    needs("trainer")
    p = platform
    if not p.state.get("job_created"):
        pytest.skip(reason="needs the operator's Job (the operator step failed)")
    with results.step("trainer: train") as details:
        def pod() -> dict[str, Any] | None:
            pods = p.kube.list("v1", "Pod", JOBS_NS, label_selector=f"ganops.io/job={JOB}")
            return pods[0] if pods else None

        def finished() -> dict[str, Any] | None:
            found = pod()
            phase = ((found or {}).get("status") or {}).get("phase")
            if phase == "Failed":
                raise AssertionError(f"the trainer pod failed:\n{p.logs(JOBS_NS, found['metadata']['name'])}")
            return found if phase == "Succeeded" else None

        started = time.monotonic()
        trainer_pod = poll(finished, 600, lambda: "the trainer pod to succeed:\n" + p.node.all_logs(3000))
        details["trained_s"] = round(time.monotonic() - started, 1)
        log = p.logs(JOBS_NS, trainer_pod["metadata"]["name"], 3000)
        store = p.s3.client()
        latest_key = f"runs/{JOBS_NS}/{JOB}/latest.json"
        latest = json.loads(store.get_object(Bucket=p.bucket, Key=latest_key)["Body"].read())
        assert latest["uri"].startswith(f"s3://{p.bucket}/runs/{JOBS_NS}/{JOB}/step-"), latest
        details["checkpoint"] = latest["uri"]
        import mlflow

        client = mlflow.MlflowClient(p.mlflow.url)
        runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
        assert runs, f"no MLflow run:\n{log}"
        metrics = runs[0].data.metrics
        assert "loss_g" in metrics and "loss_d" in metrics, metrics
        details["mlflow_run"] = runs[0].info.run_id
        details["mlflow_metrics"] = sorted(metrics)[:12]

    with results.step("operator: promote") as details:
        def promoted() -> dict[str, Any] | None:
            status = p.kube.get("ganops.io/v1alpha1", "GanTrainingJob", JOBS_NS, JOB).get("status") or {}
            if status.get("phase") in ("Failed", "BudgetExceeded"):
                raise AssertionError(f"job {status.get('phase')}: {status}")
            return status if status.get("phase") == "Succeeded" and status.get("promotedVersion") else None

        status = poll(promoted, 180, lambda: "Succeeded and promoted:\n"
                      + p.logs(RELEASE_NS, p.state["operator_pod"], 4000))
        version = client.get_model_version_by_alias(MODEL, "production")
        assert str(version.version) == str(status["promotedVersion"])
        details.update(phase=status["phase"], promoted=f"{MODEL} version {version.version} @production",
                       step=status.get("step"))
        p.state["promoted"] = True


# ------------------------------------------------------------------------------------------------ 5. serving


def test_serving_image_serves_the_checkpoint(platform: Platform, results: Results) -> None:
    needs("serving")
    p = platform
    if not p.state.get("promoted"):
        pytest.skip(reason="needs a promoted model (the trainer or promotion step failed)")
    with results.step("serving: generate") as details:
        # The Secrets the chart's defaults name (docs/install.md): API key hashes, and S3 read access for the
        # checkpoints (serving.s3SecretName). The chart's serving ConfigMap, as Helm would create it.
        keys = api_keys_file(p.tmp / "keys", {"smoke": API_KEY}).read_text()
        p.secret(RELEASE_NS, "ganops-serving-api-keys", {"keys": keys})
        s3_secret = p.deployment("serving")["spec"]["template"]["spec"]["containers"][0].get("envFrom", [])
        secret_names = [ref["secretRef"]["name"] for ref in s3_secret if "secretRef" in ref]
        assert secret_names, "the chart gives serving no S3 credentials (serving.s3SecretName)"
        for secret_name in secret_names:
            p.secret(RELEASE_NS, secret_name, _credentials(p.s3))
        (configmap,) = [o for o in p.objects if o["kind"] == "ConfigMap"
                        and o["metadata"]["labels"]["app.kubernetes.io/component"] == "serving"]
        p.kube.create(configmap)
        name = p.run_deployment("serving")
        url = f"http://127.0.0.1:{p.ports['serving']}"

        def ready() -> bool:
            if (p.pod(RELEASE_NS, name).get("status") or {}).get("phase") in ("Failed", "Succeeded"):
                raise AssertionError(f"serving exited:\n{p.logs(RELEASE_NS, name)}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(url + "/readyz", timeout=3).status_code == 200
            return False

        started = time.monotonic()
        poll(ready, READY_TIMEOUT, lambda: f"serving /readyz:\n{p.logs(RELEASE_NS, name)}", interval=1.0)
        details["ready_after_s"] = round(time.monotonic() - started, 1)
        auth = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=url, timeout=120, headers=auth) as client:
            assert client.post("/v1/generate", json={"n": 1}, headers={"Authorization": "Bearer wrong"}
                               ).status_code == 401
            response = client.post("/v1/generate", json={"n": 4, "seed": 1, "format": "png"})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["model"] == MODEL and str(body["version"]) == "1" and body["watermarked"] is True, body
            samples = [s for s in body["samples"] if s.get("data")]
            assert samples, body
            png = base64.b64decode(samples[0]["data"])
            assert png.startswith(b"\x89PNG"), png[:8]
            mark = client.post("/v1/watermark/verify", json={"image": samples[0]["data"]})
            assert mark.status_code == 200 and mark.json()["present"] is True, mark.text
        details.update(model=f"{body['model']} version {body['version']}", samples=len(samples),
                       watermark=mark.json(), verdicts=sorted({f"{v['filter']} {v['outcome']}" for s in
                                                               body["samples"] for v in s.get("verdicts", [])}))
        p.kube.delete("v1", "Pod", RELEASE_NS, name)
        poll(lambda: not p.launcher.containers[-1].running, 60, lambda: "serving to stop on SIGTERM")
        details["exit_code_on_sigterm"] = p.launcher.containers[-1].process.returncode \
            if p.launcher.containers[-1].process else None
        assert details["exit_code_on_sigterm"] == 0, p.logs(RELEASE_NS, name)
