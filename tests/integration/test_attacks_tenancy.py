"""Issue 13, the tenancy half, as attacks: a user who may create GanTrainingJobs in their own namespace tries to
move another namespace's model, to make the operator send its credentials to a server of their choosing, to shape
the pods the operator creates, and to get secrets into MLflow. Each attack runs against real servers - the kopf
operator on the Kubernetes emulator (CRD admission on: defaults, OpenAPI and CEL rules as the API server applies
them), a real `mlflow server`, moto's S3 - and each test fails when its defence is removed (docs/security.md,
"Tenancy and the operator's identity").

The tests play the trainer (latest.json and manifests into S3) and the kubelet / Job controller, as
test_operator.py does.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from ganops import storage, tracking
from ganops.api.crd import build_crd
from ganops.api.loader import job_from_object
from ganops.checkpoints import latest_uri
from ganops.operator import metrics
from ganops.tracking import Tracker
from ganops.tracking.lineage import flatten_spec, lineage_tags
from tests.support.jobs import digits_job, grid_job
from tests.support.kube import KopfRunner, KopfRunnerFactory, KubeAPI
from tests.support.kube.admission import schema_admission
from tests.support.kube.emulator import KubeApiError
from tests.support.kube.workloads import complete_job, start_job_pods

pytest_plugins = ["tests.support.kube.fixtures", "tests.support.mlflow_server", "tests.support.figures"]

GTJ = "ganops.io/v1alpha1"
RESYNC = "0.3"
TOKEN = "tok-operator-SECRET-7f3a9c"  # the operator's MLflow credential: it must never leave for a user's server


@pytest.fixture
def kube_api_options() -> dict[str, Any]:
    return {"admission": schema_admission}  # what the API server does with the CRD: defaults, schema, CEL


@pytest.fixture
def checkpoints(s3_bucket: str) -> str:
    return f"{s3_bucket}/checkpoints"


def start_operator(kube: KubeAPI, kopf_runner: KopfRunnerFactory, monkeypatch: pytest.MonkeyPatch,
                   checkpoints: str, mlflow_uri: str, **env: str) -> KopfRunner:
    for name, value in {"GANOPS_OPERATOR_RESYNC_SECONDS": RESYNC, "GANOPS_OPERATOR_METRICS_PORT": "0",
                        "GANOPS_CHECKPOINT_URI": checkpoints, "GANOPS_MLFLOW_URI": mlflow_uri,
                        "MLFLOW_TRACKING_TOKEN": TOKEN, **env}.items():
        monkeypatch.setenv(name, value)
    kube.register_crd(build_crd())
    return kopf_runner(["ganops.operator.main"])


def gtj(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    job = grid_job(name, **spec)
    job["metadata"]["namespace"] = namespace
    return job


def status_of(kube: KubeAPI, namespace: str, name: str) -> dict[str, Any]:
    return dict(kube.get(GTJ, "gtj", namespace, name).get("status") or {})


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def wait_status(kube: KubeAPI, namespace: str, name: str, check: Callable[[dict[str, Any]], Any], what: str,
                timeout: float = 60.0) -> dict[str, Any]:
    kube.wait_for(lambda: check(status_of(kube, namespace, name)), timeout=timeout,
                  message=f"{namespace}/{name}: {what} (status: {status_of(kube, namespace, name)})")
    return status_of(kube, namespace, name)


def warnings(kube: KubeAPI, namespace: str, name: str, reason: str) -> list[str]:
    return [e.message for e in kube.events(namespace, involved_name=name) if e.type == "Warning" and e.reason == reason]


def wait_reconciles(kube: KubeAPI, more: int, timeout: float = 20.0) -> None:
    count = lambda: metrics.REGISTRY.get_sample_value("ganops_operator_reconcile_seconds_count") or 0.0  # noqa: E731
    target = count() + more + 1
    kube.wait_for(lambda: count() >= target, timeout=timeout, message=f"{more} more reconciles")


def annotate(kube: KubeAPI, namespace: str, name: str, key: str, value: str) -> None:
    kube.patch(GTJ, "gtj", namespace, name, {"metadata": {"annotations": {key: value}}})


def train(kube: KubeAPI, checkpoints: str, namespace: str, name: str, modes: float = 24.0) -> None:
    """Play the trainer and the kubelet: the job's pods run, write a checkpoint (manifest, then latest.json) and
    exit 0 at the last step."""
    kube.wait_for(lambda: kube.get_or_none("batch/v1", "Job", namespace, name), message=f"Job {namespace}/{name}")
    start_job_pods(kube, namespace, name)
    root = latest_uri(checkpoints, namespace, name).rsplit("/", 1)[0]
    manifest = {"formatVersion": 1, "step": 20, "time": "2024-01-01T00:00:00Z", "files": {}, "sizes": {},
                "metric": -modes, "metrics": {"modes": modes},
                "model": {"architecture": "mlp", "latentDim": 2, "imageSize": 2, "channels": 3}}
    store = storage.open_store(checkpoints)
    store.put_json(f"{root}/step-000000020/manifest.json", manifest)
    store.put_json(latest_uri(checkpoints, namespace, name), {
        "step": 20, "uri": f"{root}/step-000000020", "time": "2024-01-01T00:00:00Z", "manifestSha256": "ab" * 32,
        "metrics": {"modes": modes}})
    complete_job(kube, namespace, name)


# ------------------------------------------------------------------------------------------------ 1. takeover


def test_team_b_cannot_move_defaults_model_by_auto_promotion_force_or_rollback(
    kube_api: KubeAPI, kopf_runner: KopfRunnerFactory, monkeypatch: pytest.MonkeyPatch, checkpoints: str,
    mlflow_uri: str, figures: dict[str, Any],
) -> None:
    """Issue 13, finding 1: team-b's job with `modelName: digits` and no gates moved `digits@production`, which
    default's job owned. Now every name is `<namespace>.<model>`: team-b's job registers `team-b.<model>`, and a
    job naming `default.<model>` is refused - auto, force and rollback alike - with a Warning naming the owner."""
    start_operator(kube_api, kopf_runner, monkeypatch, checkpoints, mlflow_uri)
    bare = f"digits-{uuid.uuid4().hex[:6]}"
    owned = f"default.{bare}"
    gates = {"minModes": 20}
    for name in ("digits", "digits-v2"):  # default's model gets two versions; production follows the newer
        kube_api.create(gtj("default", name, promotion={"modelName": bare, "gates": gates}))
        train(kube_api, checkpoints, "default", name)
        wait_status(kube_api, "default", name, lambda s: condition(s, "Promoted").get("status") == "True",
                    "promoted")
    production = tracking.get_alias(mlflow_uri, owned, "production")
    assert production is not None and production.version == "2"
    assert production.tags["ganops.job"] == "default/digits-v2"

    # (a) The same bare name, no gates: team-b gets a model of its own, default's does not move.
    kube_api.create(gtj("team-b", "attack", promotion={"modelName": bare}))
    train(kube_api, checkpoints, "team-b", "attack", modes=1.0)
    attack = wait_status(kube_api, "team-b", "attack", lambda s: condition(s, "Promoted").get("status") == "True",
                         "team-b's own promotion")
    assert condition(attack, "Promoted")["message"].startswith(f"team-b.{bare}@production → version 1")

    # (b) Naming default's model outright: refused before anything reaches the registry, the owner named.
    kube_api.create(gtj("team-b", "takeover", promotion={"modelName": owned}))
    train(kube_api, checkpoints, "team-b", "takeover", modes=1.0)
    refused = wait_status(kube_api, "team-b", "takeover",
                          lambda s: condition(s, "Promoted").get("reason") == "NotOwner", "auto promotion refused")
    assert "belongs to namespace default" in condition(refused, "Promoted")["message"]
    kube_api.wait_for(lambda: warnings(kube_api, "team-b", "takeover", "PromotionRefused"), message="a Warning")
    assert "namespace default" in warnings(kube_api, "team-b", "takeover", "PromotionRefused")[0]

    # (c) Forced, (d) rolled back to default's older version 1: refused the same way.
    annotate(kube_api, "team-b", "takeover", "ganops.io/promote", "force")
    kube_api.wait_for(lambda: len(warnings(kube_api, "team-b", "takeover", "PromotionRefused")) >= 2,
                      message="force refused")
    annotate(kube_api, "team-b", "takeover", "ganops.io/rollback-to", "1")
    kube_api.wait_for(lambda: warnings(kube_api, "team-b", "takeover", "RollbackRefused"), message="rollback refused")
    assert "belongs to namespace default" in warnings(kube_api, "team-b", "takeover", "RollbackRefused")[0]
    # team-b's force and rollback on its own model stay its own business.
    annotate(kube_api, "team-b", "attack", "ganops.io/rollback-to", "1")
    wait_status(kube_api, "team-b", "attack", lambda s: condition(s, "Promoted").get("reason") == "RolledBack",
                "team-b rolls back its own model")

    # default's production never moved, and nothing of team-b's was registered under default's name.
    production = tracking.get_alias(mlflow_uri, owned, "production")
    assert production is not None and production.version == "2"
    assert {v.tags["ganops.job"] for v in tracking.list_versions(mlflow_uri, owned)} == {
        "default/digits", "default/digits-v2"}
    assert tracking.list_versions(mlflow_uri, bare) == []  # and the bare name, the old target, is untouched
    figures["attack"] = ("team-b's job names default's model (bare, then default.<model>): auto promotion, force, "
                         "rollback (moved default's production before)")
    figures["refusals"] = sum(len(warnings(kube_api, "team-b", "takeover", r))
                              for r in ("PromotionRefused", "RollbackRefused"))
    figures["default_production_version"] = production.version


def test_a_model_holding_another_namespaces_versions_is_refused_by_its_lineage(
    kube_api: KubeAPI, kopf_runner: KopfRunnerFactory, monkeypatch: pytest.MonkeyPatch, checkpoints: str,
    mlflow_uri: str, figures: dict[str, Any],
) -> None:
    """The second line (a name that got the wrong owner's versions by hand or in a migration): before moving an
    alias, the operator reads the versions' `ganops.job` lineage and refuses a model another namespace's jobs
    registered into, naming that namespace."""
    start_operator(kube_api, kopf_runner, monkeypatch, checkpoints, mlflow_uri)
    bare = f"mixed-{uuid.uuid4().hex[:6]}"
    planted = tracking.register_version(mlflow_uri, f"team-b.{bare}", "s3://elsewhere/default/x/step-000000010",
                                        tags={"ganops.job": "default/x"})
    tracking.set_alias(mlflow_uri, f"team-b.{bare}", "production", planted)
    kube_api.create(gtj("team-b", "mixed", promotion={"modelName": bare}))
    train(kube_api, checkpoints, "team-b", "mixed")
    refused = wait_status(kube_api, "team-b", "mixed",
                          lambda s: condition(s, "Promoted").get("reason") == "NotOwner", "refused by lineage")
    assert "namespace default" in condition(refused, "Promoted")["message"]
    annotate(kube_api, "team-b", "mixed", "ganops.io/rollback-to", planted)
    kube_api.wait_for(lambda: warnings(kube_api, "team-b", "mixed", "RollbackRefused"), message="rollback refused")
    assert "default/x" in warnings(kube_api, "team-b", "mixed", "RollbackRefused")[0]
    assert [v.version for v in tracking.list_versions(mlflow_uri, f"team-b.{bare}")] == [planted]
    figures["attack"] = "promote into, and roll back to, a model holding another namespace's versions"
    figures["versions_after"] = 1


def test_a_job_cannot_lower_the_platforms_minimum_gates_not_even_by_force(
    kube_api: KubeAPI, kopf_runner: KopfRunnerFactory, monkeypatch: pytest.MonkeyPatch, checkpoints: str,
    mlflow_uri: str, figures: dict[str, Any],
) -> None:
    """A job with no gates (the issue's attacker) is judged by GANOPS_MIN_GATES all the same, and `promote: force`
    skips only the job's own gates: below the floor nothing moves."""
    start_operator(kube_api, kopf_runner, monkeypatch, checkpoints, mlflow_uri, GANOPS_MIN_GATES="minModes=20")
    bare = f"weak-{uuid.uuid4().hex[:6]}"
    kube_api.create(gtj("team-b", "weak", promotion={"modelName": bare, "gates": {"minModes": 0}}))
    train(kube_api, checkpoints, "team-b", "weak", modes=5.0)
    rejected = wait_status(kube_api, "team-b", "weak",
                           lambda s: condition(s, "PromotionRejected").get("status") == "True", "rejected")
    assert "modes 5 < minModes 20" in condition(rejected, "PromotionRejected")["message"]
    annotate(kube_api, "team-b", "weak", "ganops.io/promote", "force")
    kube_api.wait_for(lambda: any("below the platform's minimum gates" in m for m in
                                  warnings(kube_api, "team-b", "weak", "PromotionRejected")), timeout=60,
                      message="force refused below the floor")
    assert tracking.get_alias(mlflow_uri, f"team-b.{bare}", "production") is None
    figures["attack"] = "a job with minModes 0 below GANOPS_MIN_GATES minModes=20, then promote: force"
    figures["alias_moved"] = False


# ------------------------------------------------------------------------------------------------ 2. exfiltration


@dataclass
class Listener:
    """An HTTP server on 127.0.0.1 that records every request (what a user would point mlflowUri at)."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def listener() -> Iterator[Listener]:
    recorded = Listener()

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            recorded.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                      "body": self.rfile.read(length).decode(errors="replace") if length else ""})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _record  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    recorded.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=recorded.server.serve_forever, daemon=True)
    thread.start()
    yield recorded
    recorded.server.shutdown()
    recorded.server.server_close()


def test_the_operator_never_contacts_a_user_chosen_mlflow(
    kube_api: KubeAPI, kopf_runner: KopfRunnerFactory, monkeypatch: pytest.MonkeyPatch, checkpoints: str,
    mlflow_uri: str, listener: Listener, figures: dict[str, Any],
) -> None:
    """Issue 13, finding 2: a job's `spec.tracking.mlflowUri` was the operator's promotion target, and the operator
    sent its MLFLOW_TRACKING_TOKEN there. Now a job naming a server the platform did not list is refused
    (`InvalidSpec`, no pods: their namespace Secret would go there too), and the operator promotes and rolls back
    only on the platform's MLflow: the listener records nothing, whatever the job and its annotations ask."""
    start_operator(kube_api, kopf_runner, monkeypatch, checkpoints, mlflow_uri)
    # Credentials in the URL never pass admission (CEL, as the API server runs it).
    with pytest.raises(KubeApiError) as refused:
        kube_api.create(gtj("team-b", "userinfo", tracking={"mlflowUri": listener.url.replace("//", "//u:pw@")}))
    assert refused.value.status == 422 and "spec.tracking.mlflowUri must be an http(s)://" in refused.value.message

    kube_api.create(gtj("team-b", "exfil", tracking={"mlflowUri": listener.url}, promotion={"modelName": "exfil"}))
    kube_api.wait_for(lambda: condition(status_of(kube_api, "team-b", "exfil"), "InvalidSpec") or kube_api.get_or_none(
        "batch/v1", "Job", "team-b", "exfil"), message="refused or started")
    if kube_api.get_or_none("batch/v1", "Job", "team-b", "exfil") is not None:  # the defence is gone: finish the
        train(kube_api, checkpoints, "team-b", "exfil")                       # job so promotion would run
    annotate(kube_api, "team-b", "exfil", "ganops.io/promote", "force")
    annotate(kube_api, "team-b", "exfil", "ganops.io/rollback-to", "1")
    wait_reconciles(kube_api, 3, timeout=30)

    assert listener.requests == [], [(r["method"], r["path"], r["headers"].get("Authorization"))
                                     for r in listener.requests]
    status = status_of(kube_api, "team-b", "exfil")
    message = condition(status, "InvalidSpec").get("message", "")
    assert status.get("phase") == "Failed" and f"spec.tracking.mlflowUri {listener.url!r}" in message
    assert "is not an MLflow server of this platform" in message
    assert kube_api.get_or_none("batch/v1", "Job", "team-b", "exfil") is None  # no pods carried a Secret there
    figures["attack"] = ("spec.tracking.mlflowUri at a listener on 127.0.0.1, then promote: force and rollback-to "
                         "(the operator sent its MLflow token there before)")
    figures["listener_requests"] = len(listener.requests)
    figures["userinfo_uri_status"] = refused.value.status


# ------------------------------------------------------------------------------------------------ 3. pods


def test_pod_shaping_fields_outside_the_admin_policy_get_invalid_spec(
    kube_api: KubeAPI, kopf_runner: KopfRunnerFactory, monkeypatch: pytest.MonkeyPatch, checkpoints: str,
    mlflow_uri: str, figures: dict[str, Any],
) -> None:
    """Issue 13, finding 8 (operator part): users chose image, priorityClassName, nodeSelector and tolerations of
    pods the operator creates for them. Now the admin lists what is allowed; anything else is `InvalidSpec` with the
    reason, and no Job exists. Within the policy, the job runs - behind its own default-deny NetworkPolicy."""
    egress = [{"to": [{"ipBlock": {"cidr": "10.0.5.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]}]
    start_operator(kube_api, kopf_runner, monkeypatch, checkpoints, mlflow_uri,
                   GANOPS_ALLOWED_IMAGES="registry.internal/ganops/", GANOPS_ALLOWED_PRIORITY_CLASSES="ml-batch",
                   GANOPS_ALLOWED_NODE_SELECTORS="pool=gpu", GANOPS_ALLOWED_TOLERATIONS="dedicated=ml:NoSchedule",
                   GANOPS_TRAINER_NETWORK_POLICY=json.dumps({"egress": egress, "metricsFrom": []}))
    kube_api.create(gtj("team-b", "deputy", resources={
        "image": "docker.io/attacker/miner:latest", "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
        "tolerations": [{"operator": "Exists"}]}))
    status = wait_status(kube_api, "team-b", "deputy", lambda s: s.get("phase") == "Failed", "refused")
    message = condition(status, "InvalidSpec")["message"]
    for reason in ("spec.resources.image 'docker.io/attacker/miner:latest' is not allowed",
                   "spec.resources.priorityClassName 'system-cluster-critical' is not allowed",
                   "spec.resources.nodeSelector node-role.kubernetes.io/control-plane= is not allowed",
                   "spec.resources.tolerations[0] {'operator': 'Exists'} is not allowed"):
        assert reason in message, message
    kube_api.wait_for(lambda: warnings(kube_api, "team-b", "deputy", "InvalidSpec"), message="an InvalidSpec Event")
    assert kube_api.get_or_none("batch/v1", "Job", "team-b", "deputy") is None
    assert kube_api.get_or_none("v1", "ConfigMap", "team-b", "deputy-spec") is None

    kube_api.create(gtj("team-b", "fine", resources={
        "image": "registry.internal/ganops/trainer:1", "priorityClassName": "ml-batch", "nodeSelector": {"pool": "gpu"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]}))
    job = kube_api.wait_for(lambda: kube_api.get_or_none("batch/v1", "Job", "team-b", "fine"), message="started")
    assert job["spec"]["template"]["spec"]["priorityClassName"] == "ml-batch"
    policy = kube_api.get("networking.k8s.io/v1", "NetworkPolicy", "team-b", "fine-trainer")
    assert policy["spec"]["podSelector"]["matchLabels"]["ganops.io/job"] == "fine"
    assert policy["spec"]["ingress"] == [] and policy["spec"]["egress"] == egress  # one replica: no peers at all
    figures["attack"] = ("image, priorityClassName, nodeSelector and tolerations outside the admin's lists (the "
                         "operator created such pods before)")
    figures["reasons_named"] = 4
    figures["jobs_created"] = 0


# ------------------------------------------------------------------------------------------------ 4. MLflow params


PRESIGNED = ("s3://datasets/digits.zip?X-Amz-Algorithm=AWS4-HMAC-SHA256"
             "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20240101%2Fus-east-1%2Fs3%2Faws4_request"
             "&X-Amz-Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
             "&X-Amz-Security-Token=FQoGZXIvYXdzEJr")
SECRETS = ("AKIAIOSFODNN7EXAMPLE", "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
           "FQoGZXIvYXdzEJr", "hunter2")


def test_mlflow_params_and_tags_hold_no_secret_from_a_presigned_dataset_uri(
    kube_api: KubeAPI, mlflow_uri: str, figures: dict[str, Any]
) -> None:
    """Issue 13, finding 7: user-info in mlflowUri and presigned query strings in dataset.uri were logged as run
    params. Admission now refuses such URIs; and whatever still reaches the trainer (an older CRD, a hand-edited job
    file) is redacted on its way to MLflow: the real server's params and tags carry none of the secrets."""
    kube_api.register_crd(build_crd())
    leaky = digits_job("leaky")
    leaky["metadata"]["namespace"] = "team-b"
    leaky["spec"]["dataset"]["uri"] = PRESIGNED
    with pytest.raises(KubeApiError) as refused:
        kube_api.create(leaky)
    assert refused.value.status == 422 and "spec.dataset.uri must be one of" in refused.value.message

    job = job_from_object(digits_job("leaky"))
    spec = job.spec.model_copy(update={
        "dataset": job.spec.dataset.model_copy(update={"uri": PRESIGNED}),
        "tracking": job.spec.tracking.model_copy(update={"mlflow_uri": "https://bob:hunter2@mlflow.example"}),
    })
    tracker = Tracker.open(mlflow_uri, f"leaky-{uuid.uuid4().hex[:8]}", "leaky", tags=lineage_tags(spec, job="b/x"))
    tracker.log_params(flatten_spec(spec))
    tracker.log_params({"raw.datasetUri": PRESIGNED})  # a caller that skips flatten_spec: the tracker redacts too
    tracker.set_tags({"ganops.source": PRESIGNED})
    assert tracker.finish(timeout=30)
    assert tracker.run_id is not None
    run = MlflowClient(tracking_uri=mlflow_uri).get_run(tracker.run_id)
    assert run.data.params["dataset.uri"] == "s3://datasets/digits.zip?***"
    assert run.data.params["raw.datasetUri"] == "s3://datasets/digits.zip?***"
    for value in (*run.data.params.values(), *run.data.tags.values()):
        assert not any(secret in value for secret in SECRETS), value
    figures["attack"] = "a presigned dataset.uri and user-info in mlflowUri (logged as MLflow params before)"
    figures["admission_status"] = refused.value.status
    figures["values_checked"] = len(run.data.params) + len(run.data.tags)


# ------------------------------------------------------------------------------------------------ migration


def test_migration_qualifies_single_owner_models_and_leaves_taken_over_ones_to_a_human(
    mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from scripts.migrate_model_names import main

    suffix = uuid.uuid4().hex[:6]
    legacy, mixed = f"legacy-{suffix}", f"mixed-{suffix}"
    for model, job in ((legacy, "default/digits"), (legacy, "default/digits-v2"), (mixed, "default/digits"),
                       (mixed, "team-b/attack")):
        version = tracking.register_version(mlflow_uri, model, f"s3://b/{job}/step-000000010",
                                            tags={"ganops.job": job})
        tracking.set_alias(mlflow_uri, model, "production", version)
    assert main(["--tracking-uri", mlflow_uri, "--model", legacy, "--model", mixed]) == 1  # report only
    assert tracking.list_versions(mlflow_uri, f"default.{legacy}") == []
    assert main(["--tracking-uri", mlflow_uri, "--model", legacy, "--model", mixed, "--apply"]) == 1
    out = capsys.readouterr().out
    assert f"renamed {legacy} → default.{legacy}" in out and "versions from namespaces default, team-b" in out
    moved = tracking.get_alias(mlflow_uri, f"default.{legacy}", "production")
    assert moved is not None and moved.version == "2" and moved.tags["ganops.job"] == "default/digits-v2"
    assert len(tracking.list_versions(mlflow_uri, mixed)) == 2  # the taken-over one stays where it is
