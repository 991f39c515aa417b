"""Two tenancy attacks of issue 13 on the real control plane: a namespace user applies GanTrainingJobs with the real
kubectl to the real kube-apiserver (CRD admission with its CEL), and the real operator (`kopf run` as a
subprocess, holding an MLflow token) reconciles them. No training is needed: both are refused before any pod.

* a job's `mlflowUri` names a listener on 127.0.0.1, then asks for `promote: force` and `rollback-to`: the listener
  records zero requests (the operator used to send its token there);
* pod-shaping fields outside the admin's lists: `InvalidSpec` naming each, no Job; a job within them gets its Job and
  a default-deny NetworkPolicy that the real API server accepted.

The same attacks, with training and promotion, run on the emulator in tests/integration/test_attacks_tenancy.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.controlplane import ControlPlane
from tests.support.jobs import grid_job
from tests.support.kube import KopfProcess
from tests.support.kube.client import KubeClient

pytest_plugins = ["tests.support.mlflow_server"]

GTJ = "ganops.io/v1alpha1"
TOKEN = "tok-operator-SECRET-cp-41d2"  # the operator's MLflow credential


@pytest.fixture
def start_operator(cp_kube: KubeClient, cp_namespace: str, tmp_path: Path,
                   mlflow_uri: str) -> Iterator[Callable[..., KopfProcess]]:
    processes: list[KopfProcess] = []

    def start(**env: str) -> KopfProcess:
        process = KopfProcess(cp_kube, ["ganops.operator.main"], namespaces=[cp_namespace])
        processes.append(process)
        return process.start({"GANOPS_CHECKPOINT_URI": f"file://{tmp_path / 'checkpoints'}",
                              "GANOPS_MLFLOW_URI": mlflow_uri, "MLFLOW_TRACKING_TOKEN": TOKEN,
                              "GANOPS_OPERATOR_RESYNC_SECONDS": "1", "GANOPS_OPERATOR_METRICS_PORT": "0", **env})

    yield start
    for process in processes:
        process.close()


@pytest.fixture
def listener() -> Iterator[tuple[str, list[tuple[str, str, str | None]]]]:
    """An HTTP server on 127.0.0.1 recording (method, path, Authorization) of every request."""
    seen: list[tuple[str, str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            seen.append((self.command, self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _record  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def apply(control_plane: ControlPlane, namespace: str, name: str, **spec: Any) -> None:
    job = grid_job(name, **spec)
    job["metadata"]["namespace"] = namespace
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(job))


def invalid_spec(kube: KubeClient, namespace: str, name: str) -> str:
    status = kube.get(GTJ, "GanTrainingJob", namespace, name).get("status") or {}
    found = next((c for c in status.get("conditions") or [] if c["type"] == "InvalidSpec"), {})
    return str(found.get("message", "")) if status.get("phase") == "Failed" else ""


def test_the_operator_never_contacts_a_user_chosen_mlflow(
        control_plane: ControlPlane, cp_kube: KubeClient, cp_namespace: str,
        start_operator: Callable[..., KopfProcess],
        listener: tuple[str, list[tuple[str, str, str | None]]]) -> None:
    url, seen = listener
    ns = cp_namespace
    operator = start_operator()
    apply(control_plane, ns, "exfil", tracking={"mlflowUri": url}, promotion={"modelName": "exfil"})
    message = cp_kube.wait_for(lambda: invalid_spec(cp_kube, ns, "exfil"), timeout=60,
                               message=lambda: f"exfil refused\noperator:\n{operator.output[-3000:]}")
    assert f"spec.tracking.mlflowUri {url!r} is not an MLflow server of this platform" in message
    control_plane.kubectl("annotate", "gtj", "exfil", "-n", ns, "ganops.io/promote=force",
                          "ganops.io/rollback-to=1")
    time.sleep(5.0)  # five resyncs (GANOPS_OPERATOR_RESYNC_SECONDS=1) after the annotations: any call would be made
    assert seen == [], seen  # not one request, with or without the operator's token
    assert cp_kube.get_or_none("batch/v1", "Job", ns, "exfil") is None  # no pod carried a Secret there either


def test_pod_shaping_fields_outside_the_admin_policy_get_invalid_spec(
        control_plane: ControlPlane, cp_kube: KubeClient, cp_namespace: str,
        start_operator: Callable[..., KopfProcess]) -> None:
    ns = cp_namespace
    egress = [{"to": [{"ipBlock": {"cidr": "10.0.5.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]}]
    operator = start_operator(
        GANOPS_ALLOWED_IMAGES="registry.internal/ganops/", GANOPS_ALLOWED_PRIORITY_CLASSES="ml-batch",
        GANOPS_ALLOWED_NODE_SELECTORS="pool=gpu", GANOPS_ALLOWED_TOLERATIONS="dedicated=ml:NoSchedule",
        GANOPS_TRAINER_NETWORK_POLICY=json.dumps({"egress": egress, "metricsFrom": []}))
    apply(control_plane, ns, "deputy", resources={
        "image": "docker.io/attacker/miner:latest", "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"node-role.kubernetes.io/control-plane": ""}, "tolerations": [{"operator": "Exists"}]})
    message = cp_kube.wait_for(lambda: invalid_spec(cp_kube, ns, "deputy"), timeout=60,
                               message=lambda: f"deputy refused\noperator:\n{operator.output[-3000:]}")
    for reason in ("spec.resources.image 'docker.io/attacker/miner:latest' is not allowed",
                   "spec.resources.priorityClassName 'system-cluster-critical' is not allowed",
                   "spec.resources.nodeSelector node-role.kubernetes.io/control-plane= is not allowed",
                   "spec.resources.tolerations[0] {'operator': 'Exists'} is not allowed"):
        assert reason in message, message
    assert cp_kube.get_or_none("batch/v1", "Job", ns, "deputy") is None

    # Within the lists the job starts (its pods wait for a pool=gpu node this cluster has not), behind its own
    # default-deny NetworkPolicy, which the real API server validated and stored.
    apply(control_plane, ns, "fine", resources={
        "image": "registry.internal/ganops/trainer:1", "priorityClassName": "ml-batch",
        "nodeSelector": {"pool": "gpu"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]})
    job = cp_kube.wait_for(lambda: cp_kube.get_or_none("batch/v1", "Job", ns, "fine"), timeout=60,
                           message=lambda: f"fine started\noperator:\n{operator.output[-3000:]}")
    assert job["spec"]["template"]["spec"]["priorityClassName"] == "ml-batch"
    policy = cp_kube.wait_for(lambda: cp_kube.get_or_none("networking.k8s.io/v1", "NetworkPolicy", ns,
                                                          "fine-trainer"), timeout=30, message="the policy")
    assert policy["spec"]["podSelector"]["matchLabels"]["ganops.io/job"] == "fine"
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert policy["spec"].get("ingress", []) == [] and policy["spec"]["egress"] == egress
