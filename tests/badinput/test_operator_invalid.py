"""The bad-input corpus applied to a cluster whose API server did not stop it (an old CRD, validation off): the real
operator (kopf on the Kubernetes emulator) marks each resource InvalidSpec with a short message naming the field,
creates no children for it, and a good job applied next to them runs undisturbed."""

from __future__ import annotations

from typing import Any

import pytest

from ganops.api.crd import build_crd
from tests.badinput.corpus import CASES, good
from tests.support.kube import KopfRunner, KopfRunnerFactory, KubeAPI
from tests.support.kube.workloads import complete_job, start_job_pods

pytest_plugins = ["tests.support.kube.fixtures"]

GTJ = "ganops.io/v1alpha1"
NS = "untrusted"
# What can reach the operator: YAML objects with a name that JSON can carry.
SENT = [case for case in CASES if case.field is not None and case.crd != "unsendable" and case.name != "missing-name"]


@pytest.fixture
def operator(kube_api: KubeAPI, kopf_runner: KopfRunnerFactory, monkeypatch: pytest.MonkeyPatch,
             s3_bucket: str) -> KopfRunner:
    for name, value in {"GANOPS_OPERATOR_RESYNC_SECONDS": "0.3", "GANOPS_OPERATOR_METRICS_PORT": "0",
                        "GANOPS_CHECKPOINT_URI": f"{s3_bucket}/checkpoints"}.items():
        monkeypatch.setenv(name, value)
    kube_api.register_crd(build_crd())
    return kopf_runner(["ganops.operator.main"])


def status_of(kube: KubeAPI, name: str) -> dict[str, Any]:
    return dict(kube.get(GTJ, "gtj", NS, name).get("status") or {})


def invalid_condition(kube: KubeAPI, name: str) -> dict[str, Any] | None:
    found = [c for c in status_of(kube, name).get("conditions") or [] if c["type"] == "InvalidSpec"]
    return found[0] if found and found[0]["status"] == "True" else None


def test_each_malformed_resource_is_invalid_and_the_good_job_next_to_it_runs(
    kube_api: KubeAPI, operator: KopfRunner, figures: dict[str, Any]
) -> None:
    kube_api.create({**good("good"), "metadata": {"name": "good", "namespace": NS}})
    for case in SENT:
        obj = case.obj()
        obj["metadata"]["namespace"] = NS
        kube_api.create(obj)

    kube_api.wait_for(lambda: kube_api.get_or_none("batch/v1", "Job", NS, "good"), message="the good job's Job")
    start_job_pods(kube_api, NS, "good")
    kube_api.wait_for(lambda: status_of(kube_api, "good").get("phase") == "Running", message="good: Running")

    problems = []
    for case in SENT:
        name = case.obj()["metadata"]["name"]
        assert case.field is not None
        condition = kube_api.wait_for(lambda n=name: invalid_condition(kube_api, n), timeout=30,  # type: ignore[misc]
                                      message=f"{name}: InvalidSpec")
        status = status_of(kube_api, name)
        message = condition["message"]
        if case.field not in message:
            problems.append(f"{name}: the message does not name {case.field}: {message[:200]!r}")
        if len(message) > 1024 or len(status.get("message") or "") > 1100:
            problems.append(f"{name}: a {len(message)}-character message (echoes a huge value?)")
        if status.get("phase") != "Failed":
            problems.append(f"{name}: phase {status.get('phase')}")
        if kube_api.get_or_none("batch/v1", "Job", NS, name) or kube_api.get_or_none("v1", "ConfigMap", NS,
                                                                                        f"{name}-spec"):
            problems.append(f"{name}: children were created for an invalid spec")
    events = {e.involved_name for e in kube_api.events(NS) if e.reason == "InvalidSpec"}
    missing_events = sorted({c.obj()["metadata"]["name"] for c in SENT} - events)
    figures.update(badinput_operator_invalid=len(SENT) - len(problems), badinput_operator_checked=len(SENT))
    assert problems == [] and missing_events == [], (problems, missing_events)

    # The good one was never disturbed: one Job, runs to the end.
    complete_job(kube_api, NS, "good")
    kube_api.wait_for(lambda: status_of(kube_api, "good").get("phase") == "Succeeded", timeout=20,
                      message="good: Succeeded")
    assert len(kube_api.list("batch/v1", "jobs", NS)) == 1
    assert not operator.error_records, operator.messages()
