"""The operator (a real `kopf run` process on the Kubernetes emulator) SIGKILLed and restarted at random moments
while several jobs go through their whole life: created, running, checkpointing, preempted, relaunched, failing
once, relaunched, finished. Afterwards: one Job per attempt (no duplicate children), every transition recorded
(restart counts exact, backoff spent once, each job Succeeded)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from ganops import storage
from ganops.api.crd import build_crd
from ganops.checkpoints import latest_uri
from tests.resilience.report import FULL
from tests.support.jobs import grid_job
from tests.support.kube import KopfProcess, KopfProcessFactory, KubeAPI
from tests.support.kube.workloads import complete_job, start_job_pods, terminate_pod

pytest_plugins = ["tests.support.kube.fixtures"]

GTJ = "ganops.io/v1alpha1"
NS = "chaos"
STEPS = 100
WAIT_S = 90.0  # a transition may wait for an operator restart on a busy machine


def status_of(kube: KubeAPI, name: str) -> dict[str, Any]:
    return dict(kube.get(GTJ, "gtj", NS, name).get("status") or {})


def attempt_of(kube: KubeAPI, name: str) -> int | None:
    job = kube.get_or_none("batch/v1", "Job", NS, name)
    return int(job["metadata"]["labels"]["ganops.io/attempt"]) if job else None


def uids(kube: KubeAPI, api_version: str, kind: str, name: str) -> set[str]:
    """Every object that ever had this name (the emulator keeps each stored version)."""
    return {v["metadata"]["uid"] for v in kube.history(api_version, kind, NS, name) if v is not None}


def write_latest(checkpoints: str, name: str, step: int) -> None:
    root = latest_uri(checkpoints, NS, name).rsplit("/", 1)[0]
    storage.open_store(checkpoints).put_json(latest_uri(checkpoints, NS, name), {
        "step": step, "uri": f"{root}/step-{step:09d}", "time": "2026-01-01T00:00:00Z", "manifestSha256": "ab" * 32,
    })


class Chaos:
    """Kill the operator (SIGKILL) and start it again at some of the moments the test acts on the cluster."""

    def __init__(self, operator: KopfProcess, rng: random.Random, probability: float, repeat: int) -> None:
        self.operator, self.rng, self.probability, self.repeat = operator, rng, probability, repeat
        self.kills = 0

    def maybe(self) -> None:
        if self.rng.random() >= self.probability:
            return
        for _ in range(self.repeat):
            time.sleep(self.rng.uniform(0.0, 0.8))  # somewhere in the reconcile this action triggered
            self.operator.restart(kill=True)
            self.kills += 1


def test_operator_sigkilled_during_reconciles_duplicates_nothing_and_loses_no_transition(
    kube_api: KubeAPI, kopf_process: KopfProcessFactory, s3_bucket: str, figures: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = [f"job-{i}" for i in range(4 if FULL else 2)]
    checkpoints = f"{s3_bucket}/checkpoints"
    kube_api.register_crd(build_crd())
    for key, value in {"GANOPS_OPERATOR_RESYNC_SECONDS": "0.3", "GANOPS_OPERATOR_METRICS_PORT": "0",
                       "GANOPS_CHECKPOINT_URI": checkpoints}.items():
        monkeypatch.setenv(key, value)  # every start of the operator process inherits these
    operator = kopf_process(["ganops.operator.main"])
    chaos = Chaos(operator, random.Random(8), probability=1.0 if FULL else 0.3, repeat=2 if FULL else 1)

    def each(what: str, check: Callable[[str], Any]) -> None:
        for name in names:
            kube_api.wait_for(lambda n=name: check(n), timeout=WAIT_S,  # type: ignore[misc]
                              message=f"{name}: {what} (status {status_of(kube_api, name)})")

    def running_pods(attempt: int) -> dict[str, str]:
        each(f"attempt {attempt}'s Job", lambda n: attempt_of(kube_api, n) == attempt)
        pods = {name: start_job_pods(kube_api, NS, name)[0] for name in names}
        chaos.maybe()
        each(f"Running in attempt {attempt}",
             lambda n: (s := status_of(kube_api, n)).get("phase") == "Running" and s.get("attempt") == attempt)
        return pods

    for name in names:
        job = grid_job(name, training={"steps": STEPS}, runPolicy={"backoffLimit": 1})
        job["metadata"]["namespace"] = NS
        kube_api.create(job)
    chaos.maybe()

    pods = running_pods(1)
    for name in names:
        write_latest(checkpoints, name, 40)
    each("step 40 from latest.json", lambda n: status_of(kube_api, n).get("step") == 40)
    for name in names:  # preempted: the trainer checkpointed on SIGTERM
        terminate_pod(kube_api, NS, pods[name], exit_code=143, disruption="PreemptionByScheduler")
    chaos.maybe()

    pods = running_pods(2)
    for name in names:  # the application fails once: one unit of backoff
        terminate_pod(kube_api, NS, pods[name], exit_code=1)
    chaos.maybe()

    running_pods(3)
    for name in names:
        write_latest(checkpoints, name, STEPS)
        complete_job(kube_api, NS, name)
    chaos.maybe()
    each("Succeeded", lambda n: status_of(kube_api, n).get("phase") == "Succeeded")

    duplicates = lost = 0
    problems: list[str] = []
    for name in names:
        status = status_of(kube_api, name)
        jobs = uids(kube_api, "batch/v1", "Job", name)
        configmaps = uids(kube_api, "v1", "ConfigMap", f"{name}-spec")
        duplicates += len(jobs) - 3 + len(configmaps) - 1
        reasons = [e.reason for e in kube_api.events(NS, involved_name=name)]
        relaunched = {e.message for e in kube_api.events(NS, involved_name=name) if e.reason == "Relaunched"}
        expected = {
            "restarts": status.get("restarts") == {"preemptions": 1, "failures": 1},
            "attempt": status.get("attempt") == 3,
            "step": status.get("step") == STEPS,
            "events": {"Created", "Running", "Relaunched", "Succeeded"} <= set(reasons),
            "relaunches": len(relaunched) == 2,
        }
        lost += sum(not ok for ok in expected.values())
        problems += [f"{name}: {what} ({status})" for what, ok in expected.items() if not ok]
        if len(jobs) != 3 or len(configmaps) != 1:
            problems.append(f"{name}: {len(jobs)} Jobs for 3 attempts, {len(configmaps)} ConfigMaps")
    figures.update(operator_kills=chaos.kills, jobs=len(names), duplicate_children=duplicates, lost_transitions=lost)
    assert chaos.kills > 0
    assert problems == [], problems
    assert "Traceback" not in operator.output, operator.output[-3000:]
