"""Delete a GanTrainingJob and re-apply it under the same name, on the real control plane (issue 14, finding 2).

The real garbage collector removes the deleted job's ConfigMap and Job some time after the job itself goes (and a
finalizer can hold them longer); meanwhile a create of the same name answers 409. The re-applied job has a new uid:
it must neither patch the old ConfigMap (the GC deletes it anyway, under the new job's pods) nor read the old Job
as its own. A finalizer holds the old children here, so the window is as long as the test needs, not a race.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from tests.integration.controlplane.conftest import OperatorFactory
from tests.integration.controlplane.test_operator import GTJ, _diagnostics, _status
from tests.support.controlplane import ControlPlane, wait_gone
from tests.support.jobs import grid_job
from tests.support.kube.client import KubeClient
from tests.support.node import Node

HOLD = "ganops.io/test-hold"


def _owner_uids(obj: dict[str, Any]) -> list[str]:
    return [ref["uid"] for ref in obj["metadata"].get("ownerReferences") or []]


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def test_reapplied_job_waits_for_its_namesakes_children_and_never_adopts_them(
        control_plane: ControlPlane, cp_kube: KubeClient, cp_namespace: str, cp_node: Node,
        start_operator: OperatorFactory, tmp_path: Path) -> None:
    ns, name = cp_namespace, "again"
    operator = start_operator()
    first = grid_job(name)
    first["metadata"]["namespace"] = ns
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(first))
    diagnostics = _diagnostics(cp_kube, ns, name, operator, cp_node)
    cp_kube.wait_for(lambda: _status(cp_kube, ns, name).get("phase") == "Succeeded", timeout=240,
                     message=diagnostics)
    old_uid = cp_kube.get(GTJ, "GanTrainingJob", ns, name)["metadata"]["uid"]
    old_file = cp_kube.get("v1", "ConfigMap", ns, f"{name}-spec")["data"]

    # hold the old children, delete their owner, and let the real garbage collector start deleting them
    for api, kind, child in (("v1", "ConfigMap", f"{name}-spec"), ("batch/v1", "Job", name)):
        cp_kube.patch(api, kind, ns, child, {"metadata": {"finalizers": [HOLD]}})
    control_plane.kubectl("delete", "gtj", name, "-n", ns, "--wait=false")
    wait_gone(cp_kube, GTJ, "GanTrainingJob", ns, name, timeout=60)

    def collected() -> bool:
        return all(cp_kube.get(api, kind, ns, child)["metadata"].get("deletionTimestamp")
                   for api, kind, child in (("v1", "ConfigMap", f"{name}-spec"), ("batch/v1", "Job", name)))

    cp_kube.wait_for(collected, timeout=90, message="the garbage collector deleting the old children")

    # re-applied, with another spec
    second = grid_job(name, training={"steps": 30})
    second["metadata"]["namespace"] = ns
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(second))
    new_uid = cp_kube.get(GTJ, "GanTrainingJob", ns, name)["metadata"]["uid"]
    assert new_uid != old_uid

    cp_kube.wait_for(lambda: _status(cp_kube, ns, name).get("phase"), timeout=60, message=diagnostics)
    time.sleep(3)  # a few resyncs (1 s) while the name is held
    held = cp_kube.get("v1", "ConfigMap", ns, f"{name}-spec")
    assert held["data"] == old_file, "the old job's ConfigMap was patched with the new job's file"
    assert _owner_uids(held) == [old_uid]
    ready = _condition(_status(cp_kube, ns, name), "ChildrenReady")
    assert (ready.get("status"), ready.get("reason")) == ("False", "NameInUse"), ready
    assert f"ConfigMap {name}-spec" in ready["message"] and old_uid in ready["message"], ready
    status = _status(cp_kube, ns, name)
    assert status.get("phase") != "Succeeded" and status.get("attempt") == 1, status
    old_job = cp_kube.get("batch/v1", "Job", ns, name)
    assert _owner_uids(old_job) == [old_uid]  # no Job of the new owner could be created beside it

    # released: the old children go, the new job gets its own and trains its own 30 steps
    for api, kind, child in (("v1", "ConfigMap", f"{name}-spec"), ("batch/v1", "Job", name)):
        cp_kube.patch(api, kind, ns, child, {"metadata": {"finalizers": None}})
    cp_kube.wait_for(lambda: _status(cp_kube, ns, name).get("phase") == "Succeeded", timeout=240,
                     message=diagnostics)
    status = _status(cp_kube, ns, name)
    assert status["step"] == 30 and status["attempt"] == 1, status
    assert status["restarts"] == {"preemptions": 0, "failures": 0}, status
    assert _owner_uids(cp_kube.get("v1", "ConfigMap", ns, f"{name}-spec")) == [new_uid]
    assert _owner_uids(cp_kube.get("batch/v1", "Job", ns, name)) == [new_uid]
