"""Preemption versus application failure: `ganops.operator.faults`."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from ganops.checkpoints import LatestRecord
from ganops.operator.faults import AttemptOutcome, Decision, PodFate, attempt_outcome, decide, pod_fate
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


# ------------------------------------------------------------------------ pinned by the mutation audit
@pytest.mark.parametrize("reason", ["Evicted", "Preempting", "NodeLost", "Shutdown", "NodeShutdown", "Terminated",
                                    "UnexpectedAdmissionError"])
def test_every_platform_pod_reason_is_a_disruption(reason: str) -> None:
    assert pod_fate(pod("Failed", reason=reason, exit_code=1)) == PodFate("disrupted", reason, 1)
    # the same reason on the Job's Failed condition, its pods gone
    gone = JobView(name="j", attempt=1, failed_reason=reason, failed_message="m")
    assert attempt_outcome(gone, [], replicas=1, total_steps=10, record=None) == AttemptOutcome(
        "disrupted", reason, "Job j failed: m")


def test_outcomes_carry_exactly_their_reason_and_message() -> None:
    def outcome(job: JobView, pods: list[PodView], replicas: int = 1) -> AttemptOutcome:
        return attempt_outcome(job, pods, replicas=replicas, total_steps=10, record=None)

    assert outcome(JOB, [pod("Running")]) == AttemptOutcome("running", "", "", None)
    assert outcome(JOB, [pod("Pending")]) == AttemptOutcome("pending", "", "", None)
    assert outcome(JobView(name="j", attempt=1, suspended=True), []) == AttemptOutcome(
        "queued", "Suspended", "Job j waits for admission")
    assert outcome(JOB, [pod("Succeeded", exit_code=0)]) == AttemptOutcome(
        "succeeded", "Completed", "every replica finished")
    assert outcome(JOB, [pod("Failed", terminated_reason="Error")]) == AttemptOutcome(
        "failed", "Error", "pod p-0 failed (Error, no exit code)")
    # success by the Job's counter when the pods are gone; none with zero replicas and nothing done
    assert outcome(JobView(name="j", attempt=1, succeeded=2), [], replicas=2).kind == "succeeded"
    assert outcome(JobView(name="j", attempt=1, succeeded=1), [], replicas=2).kind == "pending"
    assert outcome(JOB, [], replicas=0) == AttemptOutcome("pending")


@pytest.mark.parametrize(("kind", "finished"), [
    ("missing", False), ("queued", False), ("pending", False), ("running", False),
    ("succeeded", True), ("disrupted", True), ("failed", True),
])
def test_finished_means_the_attempt_is_over(kind: str, finished: bool) -> None:
    assert AttemptOutcome(kind).finished is finished  # type: ignore[arg-type]


def test_a_disruption_relaunches_as_preempted_without_spending_backoff() -> None:
    disrupted = AttemptOutcome("disrupted", "Evicted", "pod p-0 was disrupted (Evicted)")
    assert decide(disrupted, preemptions=0, failures=2, backoff_limit=2) == Decision(
        "relaunch", 1, 2, "Preempted",
        "pod p-0 was disrupted (Evicted); relaunching from the latest checkpoint (backoff not spent)")


def test_verdicts_are_immutable() -> None:
    for value, field in ((PodFate("running"), "kind"), (AttemptOutcome("running"), "kind"),
                         (Decision("fail", 0, 1, "r", "m"), "action")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, field, "x")
