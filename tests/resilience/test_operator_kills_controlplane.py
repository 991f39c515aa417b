"""The operator SIGKILLed and restarted at random moments on the real control plane (tests/support/controlplane):
the jobs are applied with the real kubectl, the operator runs as the chart's ServiceAccount (its RBAC), the real Job
controller creates the pods, the real scheduler binds them to the test node, which trains them for real. The kills
land while the operator creates the children, while the pods start and while they train.

Afterwards: each job Succeeded in its first attempt, with exactly one Job and one ConfigMap ever created under its
name (every uid seen by a watch on the API server, which keeps no history of deleted objects), one pod (the real
Job controller's), the Running and Succeeded Events, no traceback. A lost `Created` Event (a kill between creating
the children and posting it; found by this test) is counted in the figures, not asserted: see the comment below.

The emulator version (test_operator_kills.py) stays: it scripts each pod's outcome at a chosen moment (preempted
with DisruptionTarget, failed with exit 1, completed) through two relaunches, and counts children from the
emulator's stored history. The real node runs the real trainer, whose outcome the test cannot pick at a given
instant; the relaunch paths on the real control plane are issue 14's findings 6 and 7 (tests/integration/
controlplane).
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from tests.resilience.report import FULL
from tests.support.controlplane import ControlPlane
from tests.support.controlplane.identity import TokenClient
from tests.support.jobs import grid_job
from tests.support.kube import KopfProcess
from tests.support.kube.client import KubeClient
from tests.support.node import Node

GTJ = "ganops.io/v1alpha1"


class Births:
    """Every uid the API server reports ADDED for a kind in a namespace, by name (a watch in a thread)."""

    def __init__(self, kube: KubeClient, api_version: str, kind: str, namespace: str) -> None:
        self.kube, self.api_version, self.kind, self.namespace = kube, api_version, kind, namespace
        self.uids: dict[str, set[str]] = defaultdict(set)
        self.since = kube.list_raw(api_version, kind, namespace)["metadata"]["resourceVersion"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"births-{kind}")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for event in self.kube.iter_watch(self.api_version, self.kind, self.namespace,
                                                  resource_version=self.since, timeout_seconds=30):
                    meta = (event.get("object") or {}).get("metadata") or {}
                    if meta.get("resourceVersion"):
                        self.since = meta["resourceVersion"]
                    if event.get("type") == "ADDED" and meta.get("name"):
                        self.uids[meta["name"]].add(meta["uid"])
                    if self._stop.is_set():
                        return
            except Exception:  # a watch cut by a busy API server: reopen from the last version seen
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()


def test_operator_sigkilled_on_the_real_control_plane_duplicates_nothing(
    control_plane: ControlPlane, cp_kube: KubeClient, cp_namespace: str, cp_node: Node,
    cp_operator_kube: TokenClient, tmp_path: Path, figures: dict[str, Any],
) -> None:
    ns = cp_namespace
    names = [f"kill-{i}" for i in range(3 if FULL else 1)]
    steps = 200 if FULL else 60
    rng = random.Random(14)
    operator = KopfProcess(cp_operator_kube, ["ganops.operator.main"], namespaces=[ns])
    env = {"GANOPS_CHECKPOINT_URI": f"file://{tmp_path / 'checkpoints'}", "GANOPS_OPERATOR_RESYNC_SECONDS": "1",
           "GANOPS_OPERATOR_METRICS_PORT": "0", "GANOPS_TERMINATION_GRACE_SECONDS": "10"}
    jobs, configmaps = (Births(cp_kube, "batch/v1", "Job", ns), Births(cp_kube, "v1", "ConfigMap", ns))
    kills = 0

    def kill() -> None:
        nonlocal kills
        time.sleep(rng.uniform(0.0, 0.8))  # somewhere in the reconcile the last action triggered
        operator.restart(kill=True, env=env)
        kills += 1

    def statuses() -> dict[str, dict[str, Any]]:
        return {n: dict(cp_kube.get(GTJ, "GanTrainingJob", ns, n).get("status") or {}) for n in names}

    def diagnostics() -> str:
        return f"statuses: {statuses()}\nnode failures: {cp_node.failures}\noperator:\n{operator.output[-3000:]}"

    try:
        operator.start(env)
        manifests = []
        for name in names:
            job = grid_job(name, training={"steps": steps, "logEverySteps": 10}, checkpoint={"everySteps": 20})
            job["metadata"]["namespace"] = ns
            manifests.append(job)
        control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))
        kill()  # while it creates the ConfigMaps and Jobs
        cp_kube.wait_for(lambda: all(cp_kube.get_or_none("batch/v1", "Job", ns, n) for n in names), timeout=90,
                         message=diagnostics)
        kill()  # while the Job controller makes the pods and the scheduler binds them
        cp_kube.wait_for(lambda: all(s.get("phase") in ("Running", "Succeeded") for s in statuses().values()),
                         timeout=120, message=diagnostics)
        while any(s.get("phase") != "Succeeded" for s in statuses().values()) and kills < (8 if FULL else 3):
            kill()  # while the pods train and checkpoint
            time.sleep(rng.uniform(1.0, 3.0))
        def all_succeeded() -> dict[str, dict[str, Any]] | None:
            now = statuses()
            return now if all(v.get("phase") == "Succeeded" for v in now.values()) else None

        final = cp_kube.wait_for(all_succeeded, timeout=240, message=diagnostics)
    finally:
        jobs.stop()
        configmaps.stop()
        output = operator.output
        operator.close()

    duplicates, problems = 0, []
    for name in names:
        status = final[name]
        duplicates += len(jobs.uids[name]) - 1 + len(configmaps.uids[f"{name}-spec"]) - 1
        pods = cp_kube.list("v1", "Pod", ns, label_selector=f"batch.kubernetes.io/job-name={name}")
        reasons = {e.reason for e in cp_kube.events(ns, involved_name=name, involved_kind="GanTrainingJob")}
        expected = {
            "one Job ever": len(jobs.uids[name]) == 1,
            "one ConfigMap ever": len(configmaps.uids[f"{name}-spec"]) == 1,
            "one pod, Succeeded": [p["status"].get("phase") for p in pods] == ["Succeeded"],
            "attempt 1": status.get("attempt") == 1,
            "no restart counted": status.get("restarts") == {"preemptions": 0, "failures": 0},
            "all steps": status.get("step") == steps,
            # Found here (seed 14, first run): a kill after the children were created and before the `Created`
            # Event was posted lost it for good; the restarted operator now announces the children it adopts.
            "events": {"Created", "Running", "Succeeded"} <= reasons,
        }
        problems += [f"{name}: {what} (status {status}, Jobs {jobs.uids[name]}, events {reasons})"
                     for what, ok in expected.items() if not ok]
    figures.update(operator_kills=kills, jobs=len(names), duplicate_children=duplicates,
                   lost_transitions=len(problems))
    assert kills >= 3
    assert problems == [], problems
    assert not cp_node.failures, cp_node.failures
    assert "Traceback" not in output, output[-3000:]
