"""What happened to an attempt, and what to do about it (pure functions).

A pod *disrupted* by the platform - preempted, evicted, its node lost or shut down, or SIGTERMed by the node - is
relaunched for free: the trainer saved a checkpoint on SIGTERM and the next attempt resumes from it. A pod that
*failed* on its own (non-zero exit, no disruption) spends one unit of `spec.runPolicy.backoffLimit`, like Kubeflow's
runPolicy. The trainer exits 0 when it is stopped by SIGTERM after its emergency checkpoint, so "every pod exited 0"
only means success when latest.json says the last step was reached.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ganops.checkpoints import LatestRecord
from ganops.operator.observe import JobView, PodView

# Any True DisruptionTarget pod condition (Kubernetes >= 1.26), whatever its reason, counts as a disruption (see
# `pod_fate`); these are the values of pod.status.reason for pods the platform took away.
DISRUPTION_POD_REASONS = frozenset({"Evicted", "Preempting", "NodeLost", "Shutdown", "NodeShutdown", "Terminated",
                                    "UnexpectedAdmissionError"})
SIGNAL_EXIT_CODES = frozenset({137, 143})  # SIGKILL after the grace period, SIGTERM not handled

OutcomeKind = Literal["missing", "queued", "pending", "running", "succeeded", "disrupted", "failed"]


@dataclass(frozen=True)
class PodFate:
    kind: Literal["pending", "running", "succeeded", "disrupted", "failed"]
    reason: str = ""
    exit_code: int | None = None


def pod_fate(pod: PodView) -> PodFate:
    """Classify one pod."""
    if pod.disruption is not None:
        return PodFate("disrupted", pod.disruption, pod.exit_code)
    if pod.phase == "Failed":
        if pod.reason in DISRUPTION_POD_REASONS:
            return PodFate("disrupted", pod.reason, pod.exit_code)
        if pod.exit_code in SIGNAL_EXIT_CODES and pod.terminated_reason != "OOMKilled":
            return PodFate("disrupted", f"TerminatedBySignal(exit {pod.exit_code})", pod.exit_code)
        reason = pod.terminated_reason or pod.reason or "Error"
        return PodFate("failed", reason, pod.exit_code)
    if pod.phase == "Succeeded":
        return PodFate("succeeded", "Completed", pod.exit_code)
    if pod.phase == "Running":
        return PodFate("running")
    if pod.phase == "Unknown":  # the node stopped reporting: the pod is as good as lost
        return PodFate("disrupted", pod.reason or "NodeUnreachable")
    return PodFate("pending")


@dataclass(frozen=True)
class AttemptOutcome:
    kind: OutcomeKind
    reason: str = ""
    message: str = ""
    exit_code: int | None = None

    @property
    def finished(self) -> bool:
        return self.kind in ("succeeded", "disrupted", "failed")


def attempt_outcome(
    job: JobView | None,
    pods: Sequence[PodView],
    *,
    replicas: int,
    total_steps: int,
    record: LatestRecord | None,
) -> AttemptOutcome:
    """The state of one attempt from its Job and pods (only the pods of that attempt)."""
    if job is None:
        return AttemptOutcome("missing")
    verdict = policy_verdict(job)
    if verdict is not None:
        return verdict
    fates = [(pod, pod_fate(pod)) for pod in sorted(pods, key=lambda p: (p.index, p.name))]
    # A pod the platform took (DisruptionTarget, Evicted, ...) is a disruption; then a pod that failed on its own;
    # only then a pod that merely died of SIGTERM/SIGKILL: when one rank fails, the Job controller kills the others
    # (137/143), and those must not turn a real failure into a free preemption.
    disrupted = [(pod, fate) for pod, fate in fates if fate.kind == "disrupted" and not _by_signal(fate)]
    failed = [(pod, fate) for pod, fate in fates if fate.kind == "failed"]
    signalled = [(pod, fate) for pod, fate in fates if fate.kind == "disrupted" and _by_signal(fate)]
    if disrupted:
        pod, fate = disrupted[0]
        return AttemptOutcome("disrupted", fate.reason, f"pod {pod.name} was disrupted ({fate.reason})",
                              fate.exit_code)
    if failed:
        pod, fate = failed[0]
        code = f"exit code {fate.exit_code}" if fate.exit_code is not None else "no exit code"
        return AttemptOutcome("failed", fate.reason, f"pod {pod.name} failed ({fate.reason}, {code})",
                              fate.exit_code)
    if signalled:
        pod, fate = signalled[0]
        return AttemptOutcome("disrupted", fate.reason, f"pod {pod.name} was disrupted ({fate.reason})",
                              fate.exit_code)
    if job.failed_reason is not None:
        # The Job failed but its pods are gone (or not observed): trust the Job's own account.
        text = f"{job.failed_reason} {job.failed_message}"
        if "DisruptionTarget" in text or job.failed_reason in DISRUPTION_POD_REASONS:
            return AttemptOutcome("disrupted", job.failed_reason, f"Job {job.name} failed: {job.failed_message}")
        return AttemptOutcome("failed", job.failed_reason, f"Job {job.name} failed: {job.failed_message}".strip())
    succeeded = sum(1 for _, fate in fates if fate.kind == "succeeded")
    if job.complete or (replicas > 0 and (succeeded >= replicas or job.succeeded >= replicas)):
        if record is not None and record.step < total_steps:
            return AttemptOutcome(
                "disrupted", "StoppedEarly",
                f"every pod exited 0 but the last checkpoint is at step {record.step} of {total_steps} "
                "(stopped by SIGTERM)",
            )
        return AttemptOutcome("succeeded", "Completed", "every replica finished")
    if any(fate.kind == "running" for _, fate in fates):
        return AttemptOutcome("running")
    if job.suspended and not fates:
        return AttemptOutcome("queued", "Suspended", f"Job {job.name} waits for admission")
    return AttemptOutcome("pending")


# Waiting reasons of a container that will not start by itself (the kubelet retries, nothing changes until someone
# creates the Secret, fixes the image name, ...). ContainerCreating and PodInitializing are ordinary progress.
STUCK_WAITING_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull",
                                   "CreateContainerConfigError", "CreateContainerError", "RunContainerError"})


@dataclass(frozen=True)
class NotStarting:
    reason: str  # the kubelet's waiting reason, Unschedulable, or FailedCreate
    message: str


def not_starting(pods: Sequence[PodView], failed_create: str | None) -> NotStarting | None:
    """Why the attempt's pods are not starting, when the cluster says so: a container stuck waiting (missing
    Secret or ConfigMap, image pull), a pod the scheduler cannot place, or pods the Job controller could not create
    (refused at admission: a missing PriorityClass, a quota). None while they are merely on their way."""
    for pod in sorted(pods, key=lambda p: (p.index, p.name)):
        if pod.phase == "Pending" and pod.waiting_reason in STUCK_WAITING_REASONS:
            return NotStarting(pod.waiting_reason, f"pod {pod.name}: {pod.waiting_message or pod.waiting_reason}")
    for pod in sorted(pods, key=lambda p: (p.index, p.name)):
        if pod.phase == "Pending" and pod.unschedulable is not None:
            return NotStarting("Unschedulable", f"pod {pod.name}: {pod.unschedulable}")
    if failed_create and not any(not pod.terminal for pod in pods):
        return NotStarting("FailedCreate", failed_create)
    return None


def suspended_after_start(job: JobView, pods: Sequence[PodView], *, was_running: bool) -> AttemptOutcome | None:
    """Kueue preempts an admitted workload by suspending its Job in place: the Job controller deletes the pods (the
    trainer checkpoints on SIGTERM and exits 0, so some indexes may even count as completed) and the Job waits to
    be admitted again with what is left. That is a disruption: the attempt is over, the next one starts whole from
    the checkpoint. A Job suspended before it ever ran is merely queued (None)."""
    if not job.suspended or job.deleting or not (was_running or any(pod.started is not None for pod in pods)):
        return None
    return AttemptOutcome("disrupted", "SuspendedByQueue",
                          f"Job {job.name} was suspended after it started (preempted by its queue)")


def _by_signal(fate: PodFate) -> bool:
    return fate.reason.startswith("TerminatedBySignal")


# The Job controller's message when a podFailurePolicy rule fails the Job (pkg/controller/job/pod_failure_policy.go):
# it names the one pod whose failure matched, before it killed the others.
_EXIT_RULE = re.compile(r"Container \S+ for pod (?P<pod>\S+) failed with exit code (?P<code>\d+) matching FailJob rule")
_CONDITION_RULE = re.compile(r"Pod (?P<pod>\S+) has condition (?P<condition>\S+) matching FailJob rule")


def policy_verdict(job: JobView) -> AttemptOutcome | None:
    """The attempt's outcome from the Job's own Failed condition when its podFailurePolicy decided: the pod it names
    is the one that ended the attempt (a DisruptionTarget condition: disrupted; an exit code: failed, unless the
    code is a signal's, which is how a pod the node killed ends). None when the Job did not fail that way."""
    if job.failed_reason != "PodFailurePolicy":
        return None
    text = f"Job {job.name} failed: {job.failed_message}"
    matched = _CONDITION_RULE.search(job.failed_message)
    if matched:
        return AttemptOutcome("disrupted", matched["condition"], text)
    matched = _EXIT_RULE.search(job.failed_message)
    if matched:
        code = int(matched["code"])
        if code in SIGNAL_EXIT_CODES:
            return AttemptOutcome("disrupted", f"TerminatedBySignal(exit {code})", text, code)
        return AttemptOutcome("failed", "Error", text, code)
    return None


@dataclass(frozen=True)
class Decision:
    action: Literal["relaunch", "fail"]
    preemptions: int
    failures: int
    reason: str
    message: str


def decide(outcome: AttemptOutcome, *, preemptions: int, failures: int, backoff_limit: int) -> Decision | None:
    """What to do after a finished attempt that did not succeed; None when there is nothing to decide."""
    if outcome.kind == "disrupted":
        return Decision("relaunch", preemptions + 1, failures, "Preempted",
                        f"{outcome.message}; relaunching from the latest checkpoint (backoff not spent)")
    if outcome.kind == "failed":
        spent = failures + 1
        if spent > backoff_limit:
            return Decision("fail", preemptions, spent, "BackoffLimitExceeded",
                            f"{outcome.message}; {spent} application failure(s), backoffLimit is {backoff_limit}")
        return Decision("relaunch", preemptions, spent, "Failed",
                        f"{outcome.message}; retry {spent} of {backoff_limit}, resuming from the latest checkpoint")
    return None
