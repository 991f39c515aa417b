"""Preemption versus application failure: `ganops.operator.faults`."""

from __future__ import annotations

from typing import Any

import pytest

from ganops.checkpoints import LatestRecord
from ganops.operator.faults import attempt_outcome, decide, pod_fate
from ganops.operator.observe import JobView, PodView


def pod(phase: str = "Running", **kw: Any) -> PodView:
    return PodView(name=kw.pop("name", "p-0"), attempt=1, index=kw.pop("index", 0), phase=phase, **kw)


@pytest.mark.parametrize(("view", "kind", "reason"), [
    (pod("Pending"), "pending", ""),
    (pod("Running"), "running", ""),
    (pod("Succeeded", exit_code=0), "succeeded", "Completed"),
    # The platform took the pod away: free relaunch.
    (pod("Running", disruption="PreemptionByScheduler"), "disrupted", "PreemptionByScheduler"),
    (pod("Succeeded", exit_code=0, disruption="EvictionByEvictionAPI"), "disrupted", "EvictionByEvictionAPI"),
    (pod("Failed", exit_code=143, disruption="DeletionByTaintManager"), "disrupted", "DeletionByTaintManager"),
    (pod("Failed", exit_code=137, disruption="TerminationByKubelet"), "disrupted", "TerminationByKubelet"),
    (pod("Failed", reason="Evicted", message="The node was low on resource: memory."), "disrupted", "Evicted"),
    (pod("Failed", reason="Shutdown"), "disrupted", "Shutdown"),
    (pod("Failed", reason="NodeLost"), "disrupted", "NodeLost"),
    (pod("Failed", exit_code=143, terminated_reason="Error"), "disrupted", "TerminatedBySignal(exit 143)"),
    (pod("Failed", exit_code=137, terminated_reason="Error"), "disrupted", "TerminatedBySignal(exit 137)"),
    (pod("Unknown"), "disrupted", "NodeUnreachable"),
    # The trainer failed by itself: spends the backoff.
    (pod("Failed", exit_code=1, terminated_reason="Error"), "failed", "Error"),
    (pod("Failed", exit_code=2, terminated_reason="Error"), "failed", "Error"),
    (pod("Failed", exit_code=137, terminated_reason="OOMKilled"), "failed", "OOMKilled"),
    (pod("Failed", exit_code=3), "failed", "Error"),
])
def test_pod_fate(view: PodView, kind: str, reason: str) -> None:
    fate = pod_fate(view)
    assert (fate.kind, fate.reason) == (kind, reason)


JOB = JobView(name="j", attempt=1, uid="u")


def test_attempt_outcomes() -> None:
    def outcome(job: JobView | None, pods: list[PodView], step: int | None = None, replicas: int = 1) -> Any:
        record = LatestRecord(step=step, uri="s3://x") if step is not None else None
        return attempt_outcome(job, pods, replicas=replicas, total_steps=100, record=record)

    assert outcome(None, []).kind == "missing"
    assert outcome(JOB, []).kind == "pending"
    assert outcome(JobView(name="j", attempt=1, suspended=True), []).kind == "queued"
    assert outcome(JOB, [pod("Running"), pod("Pending", name="p-1", index=1)], replicas=2).kind == "running"
    # A disruption anywhere restarts the whole attempt (torch distributed cannot lose a rank).
    mixed = [pod("Running"), pod("Failed", name="p-1", index=1, disruption="PreemptionByScheduler", exit_code=143)]
    result = outcome(JOB, mixed, replicas=2)
    assert result.kind == "disrupted" and "p-1" in result.message
    # Disruption wins over an application failure of another replica that lost its peer.
    both = [pod("Failed", exit_code=1), pod("Failed", name="p-1", index=1, reason="Evicted")]
    assert outcome(JOB, both, replicas=2).kind == "disrupted"
    failed = outcome(JOB, [pod("Failed", exit_code=1, terminated_reason="Error")])
    assert failed.kind == "failed" and failed.exit_code == 1 and "exit code 1" in failed.message
    # Every replica exited 0: success only when latest.json reached the last step.
    done = [pod("Succeeded", exit_code=0)]
    assert outcome(JOB, done, step=100).kind == "succeeded"
    assert outcome(JOB, done).kind == "succeeded"  # no record readable: trust the Job
    early = outcome(JOB, done, step=60)
    assert early.kind == "disrupted" and early.reason == "StoppedEarly"
    assert outcome(JobView(name="j", attempt=1, complete=True), [], step=100).kind == "succeeded"
    assert outcome(JOB, [pod("Succeeded", exit_code=0)], replicas=2).kind == "pending"
    # The Job failed and its pods are gone: its own condition tells.
    gone = JobView(name="j", attempt=1, failed_reason="PodFailurePolicy",
                   failed_message="Container trainer for pod p-0 failed with exit code 1 matching FailJob rule")
    assert outcome(gone, []).kind == "failed"
    evicted = JobView(name="j", attempt=1, failed_reason="PodFailurePolicy",
                      failed_message="Pod p-0 has condition DisruptionTarget matching FailJob rule at index 0")
    assert outcome(evicted, []).kind == "disrupted"


def test_decisions() -> None:
    disrupted = attempt_outcome(JOB, [pod("Failed", reason="Evicted")], replicas=1, total_steps=10, record=None)
    decision = decide(disrupted, preemptions=4, failures=1, backoff_limit=1)
    assert decision is not None and (decision.action, decision.preemptions, decision.failures) == ("relaunch", 5, 1)
    failed = attempt_outcome(JOB, [pod("Failed", exit_code=1)], replicas=1, total_steps=10, record=None)
    first = decide(failed, preemptions=0, failures=0, backoff_limit=1)
    assert first is not None and (first.action, first.failures, first.reason) == ("relaunch", 1, "Failed")
    last = decide(failed, preemptions=0, failures=1, backoff_limit=1)
    assert last is not None and (last.action, last.failures, last.reason) == ("fail", 2, "BackoffLimitExceeded")
    zero = decide(failed, preemptions=0, failures=0, backoff_limit=0)
    assert zero is not None and zero.action == "fail"
    running = attempt_outcome(JOB, [pod()], replicas=1, total_steps=10, record=None)
    assert decide(running, preemptions=0, failures=0, backoff_limit=3) is None
