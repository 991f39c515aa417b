"""Cost accrual and the budget guard (pure functions).

Cost accrues from what the operator observes - GPUs per replica × price × each pod's running time - and from the
trainer's own figures in latest.json; the larger of the two counts (neither can double-count the other), and the
figure never goes down. The per-pod running times of the current attempt are kept in `status.accounting` so that
a pod that disappears (deleted, evicted) keeps what it cost; they are banked when the next attempt starts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ganops.api.spec import Cost, GanTrainingJobSpec, GpuAccounting
from ganops.checkpoints import LatestRecord
from ganops.cost import CostFigures, budget_fraction, price_per_gpu_hour
from ganops.operator.observe import PodView


@dataclass(frozen=True)
class Accounting:
    attempt: int = 0
    banked_gpu_seconds: float = 0.0
    pods: Mapping[str, float] = field(default_factory=dict)  # GPU-seconds of each pod of `attempt`

    @property
    def gpu_seconds(self) -> float:
        return self.banked_gpu_seconds + sum(self.pods.values())

    @classmethod
    def from_status(cls, recorded: GpuAccounting | None) -> Accounting:
        """From `status.accounting` (none yet: nothing banked)."""
        if recorded is None:
            return cls()
        return cls(recorded.attempt, recorded.banked_gpu_seconds, dict(recorded.pods))

    def as_status(self) -> GpuAccounting:
        """For `status.accounting`: milliseconds, pods by name."""
        return GpuAccounting(
            attempt=self.attempt,
            banked_gpu_seconds=round(self.banked_gpu_seconds, 3),
            pods={name: round(seconds, 3) for name, seconds in sorted(self.pods.items())},
        )


def accrue(
    accounting: Accounting, attempt: int, pods: Sequence[PodView], gpus_per_replica: int, now: dt.datetime
) -> Accounting:
    """Fold the running time of `attempt`'s pods in; a new attempt banks the previous one's pods first."""
    banked = accounting.banked_gpu_seconds
    per_pod = dict(accounting.pods)
    if attempt != accounting.attempt:
        banked += sum(per_pod.values())
        per_pod = {}
    for pod in pods:
        if pod.attempt != attempt:
            continue
        seconds = pod.run_seconds(now) * gpus_per_replica
        if seconds > 0 or pod.name in per_pod:  # no entry for what costs nothing (CPU jobs, pending pods)
            per_pod[pod.name] = max(per_pod.get(pod.name, 0.0), seconds)
    return Accounting(attempt, banked, per_pod)


def figures(
    spec: GanTrainingJobSpec,
    accounting: Accounting,
    record: LatestRecord | None,
    previous: Cost | None = None,
    table: dict[str, float] | None = None,
) -> CostFigures:
    """The job's cost: max(observed, the trainer's latest.json, what status already said)."""
    gpu_hours = accounting.gpu_seconds / 3600.0
    usd = gpu_hours * price_per_gpu_hour(spec, table)
    if record is not None:
        gpu_hours = max(gpu_hours, record.cost_gpu_hours or 0.0)
        usd = max(usd, record.cost_usd or 0.0)
    if previous is not None:
        gpu_hours = max(gpu_hours, previous.gpu_hours)
        usd = max(usd, previous.usd)
    return CostFigures(gpu_hours=gpu_hours, usd=usd)


@dataclass(frozen=True)
class BudgetVerdict:
    fraction: float | None  # None: the job has no budget
    warn: bool
    exceeded: bool

    def describe(self, spec: GanTrainingJobSpec, cost: CostFigures) -> str:
        limits = []
        if spec.budget.max_cost_usd is not None:
            limits.append(f"${cost.usd:.2f} of ${spec.budget.max_cost_usd:.2f}")
        if spec.budget.max_gpu_hours is not None:
            limits.append(f"{cost.gpu_hours:.3f} of {spec.budget.max_gpu_hours:g} GPU-hours")
        if self.fraction is None or not limits:
            return "no budget is set"
        return f"{100 * self.fraction:.0f}% of the budget spent ({', '.join(limits)})"


def verdict(spec: GanTrainingJobSpec, cost: CostFigures, warning_fraction: float = 0.8) -> BudgetVerdict:
    fraction = budget_fraction(spec, cost)
    if fraction is None:
        return BudgetVerdict(None, False, False)
    return BudgetVerdict(fraction, fraction >= warning_fraction, fraction >= 1.0)
