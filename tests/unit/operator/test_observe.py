"""Views of pods and Jobs (`ganops.operator.observe`), budget accrual, gates, merge patches."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest
from pydantic import ValidationError

from ganops.api.loader import spec_from_object
from ganops.api.spec import Cost, GanTrainingJobStatus, GpuAccounting
from ganops.checkpoints import LatestRecord
from ganops.cost import CostFigures
from ganops.operator import budget
from ganops.operator.controller import merge_patch
from ganops.operator.observe import JobView, PodView, job_view, parse_time, pod_view
from tests.support.jobs import grid_job

NOW = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


def test_pod_view_reads_phase_disruption_exit_code_and_times() -> None:
    body: dict[str, Any] = {
        "metadata": {"name": "j-1-abc", "labels": {"ganops.io/attempt": "3"},
                     "annotations": {"batch.kubernetes.io/job-completion-index": "1"}},
        "status": {
            "phase": "Failed", "reason": "Evicted", "startTime": "2025-01-01T11:00:00Z",
            "conditions": [{"type": "Ready", "status": "False"},
                           {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}],
            "containerStatuses": [
                {"name": "sidecar", "state": {"running": {}}},
                {"name": "trainer", "state": {"terminated": {"exitCode": 143, "reason": "Error",
                                                             "startedAt": "2025-01-01T11:00:05Z",
                                                             "finishedAt": "2025-01-01T11:30:05Z"}}},
            ],
        },
    }
    view = pod_view(body)
    assert (view.name, view.attempt, view.index, view.phase, view.reason) == ("j-1-abc", 3, 1, "Failed", "Evicted")
    assert view.disruption == "EvictionByEvictionAPI" and view.exit_code == 143 and view.terminal
    assert view.run_seconds(NOW) == 1800.0  # until it finished, not until now

    running = pod_view({"metadata": {"name": "p"}, "status": {"phase": "Running",
                                                                "startTime": "2025-01-01T11:59:00Z"}})
    assert running.run_seconds(NOW) == 60.0 and running.attempt == 0 and running.disruption is None
    assert pod_view({"metadata": {"name": "p"}}).run_seconds(NOW) == 0.0  # pending: no time
    assert pod_view({"metadata": {"name": "p", "deletionTimestamp": "x"}, "status": {}}).deleting


def test_job_view_reads_conditions_and_launch_counters() -> None:
    view = job_view({
        "metadata": {"name": "j", "uid": "u1", "labels": {"ganops.io/attempt": "2"},
                     "annotations": {"ganops.io/restarts": '{"preemptions": 1, "failures": 2}'}},
        "spec": {"suspend": True},
        "status": {"active": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                                                "message": "m"}, {"type": "Complete", "status": "False"}]},
    })
    assert view == JobView(name="j", attempt=2, uid="u1", suspended=True, active=1, failed_reason="PodFailurePolicy",
                           failed_message="m", restarts={"preemptions": 1, "failures": 2})
    assert job_view({"metadata": {"name": "j", "annotations": {"ganops.io/restarts": "not json"}}}).restarts == {}
    assert job_view({"metadata": {"name": "j"}, "status": {"conditions": [
        {"type": "Complete", "status": "True"}]}}).complete


def test_parse_time() -> None:
    assert parse_time("2025-01-01T12:00:00Z") == NOW
    assert parse_time("2025-01-01T12:00:00") == NOW
    assert parse_time("garbage") is None and parse_time(None) is None


# ------------------------------------------------------------------------------------------------ budget


def _pod(name: str, attempt: int, minutes: float, *, finished: bool = False) -> PodView:
    started = NOW - dt.timedelta(minutes=minutes)
    return PodView(name=name, attempt=attempt, index=0, phase="Succeeded" if finished else "Running",
                   started=started, finished=NOW if finished else None)


def test_accrual_keeps_pod_time_and_banks_it_per_attempt() -> None:
    acc = budget.accrue(budget.Accounting(), 1, [_pod("a", 1, 30), _pod("b", 1, 30), _pod("old", 0, 99)], 2, NOW)
    assert acc.gpu_seconds == pytest.approx(2 * 2 * 1800)  # the other attempt's pod is not counted here
    # A pod that disappears keeps what it cost; a stale, shorter reading never lowers it.
    acc = budget.accrue(acc, 1, [_pod("a", 1, 10)], 2, NOW)
    assert acc.gpu_seconds == pytest.approx(2 * 2 * 1800)
    acc = budget.accrue(acc, 2, [_pod("c", 2, 6)], 2, NOW)
    assert acc.banked_gpu_seconds == pytest.approx(7200) and acc.pods == {"c": pytest.approx(720)}
    assert budget.Accounting.from_status(acc.as_status()) == acc
    written = GanTrainingJobStatus(accounting=acc.as_status()).to_wire()
    assert written == {"accounting": {"attempt": 2, "bankedGpuSeconds": 7200.0, "pods": {"c": 720.0}}}
    assert budget.Accounting.from_status(None) == budget.Accounting()
    with pytest.raises(ValidationError, match="accounting"):  # junk never reaches the decision: refused at the edge
        GanTrainingJobStatus.from_wire({"accounting": "junk"})


def test_cost_figures_take_the_larger_of_observed_and_reported() -> None:
    spec = spec_from_object(grid_job("g", resources={"gpusPerReplica": 1, "spot": True},
                                     budget={"pricePerGPUHour": 4.0, "spotDiscount": 0.5,
                                             "maxCostUSD": 10, "maxGPUHours": 2})["spec"])
    acc = budget.Accounting(1, 3600.0, {})
    assert budget.figures(spec, acc, None).as_wire() == {"usd": 2.0, "gpuHours": 1.0}
    reported = LatestRecord(step=1, uri="x", cost_usd=9.0, cost_gpu_hours=0.2)
    figures = budget.figures(spec, acc, reported)
    assert (figures.usd, figures.gpu_hours) == (9.0, 1.0)
    assert budget.figures(spec, acc, None, Cost(usd=11.0, gpu_hours=0.0)).usd == 11.0  # never goes down
    verdict = budget.verdict(spec, figures)
    assert verdict.fraction == pytest.approx(0.9) and verdict.warn and not verdict.exceeded
    assert budget.verdict(spec, budget.figures(spec, budget.Accounting(1, 7200.0), None)).exceeded  # 2 GPU-hours
    unbounded = spec_from_object(grid_job("g")["spec"])
    assert budget.verdict(unbounded, figures) == budget.BudgetVerdict(None, False, False)


def _running(name: str, attempt: int, seconds: float) -> PodView:
    return PodView(name=name, attempt=attempt, index=0, phase="Running",
                   started=NOW - dt.timedelta(seconds=seconds))


def test_accrual_counts_only_running_time_of_this_attempt_in_any_order() -> None:
    pods = [_pod("old", 0, 99), _running("a", 1, 0.25), PodView(name="pending", attempt=1, index=1, phase="Pending")]
    acc = budget.accrue(budget.Accounting(), 1, pods, 2, NOW)
    # another attempt's pod first does not end the walk; a quarter second counts; a pending pod gets no entry
    assert acc == budget.Accounting(1, 0.0, {"a": 0.5})
    assert budget.accrue(budget.Accounting(), 1, [_running("b", 1, 0)], 1, NOW).pods == {}
    acc = budget.accrue(acc, 1, [_running("a", 1, 0.1)], 2, NOW)  # a stale reading never lowers a pod's time
    assert acc.pods == {"a": 0.5}


def test_accounting_status_form_and_defaults() -> None:
    acc = budget.Accounting(3, 1.23456, {"b": 2.0004, "a": 1.9996})
    recorded = acc.as_status()
    assert recorded == GpuAccounting(attempt=3, banked_gpu_seconds=1.235, pods={"a": 2.0, "b": 2.0})
    assert list(recorded.pods) == ["a", "b"]  # sorted: the status does not churn with dict order
    assert budget.Accounting() == budget.Accounting(0, 0.0, {})
    assert budget.Accounting.from_status(None) == budget.Accounting(0, 0.0, {})
    assert budget.Accounting.from_status(GpuAccounting(attempt=2, banked_gpu_seconds=5.0, pods={"a": 1.0})) == (
        budget.Accounting(2, 5.0, {"a": 1.0}))
    assert budget.Accounting(1, 2.0, {"a": 3.0, "b": 4.0}).gpu_seconds == 9.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        acc.attempt = 4  # type: ignore[misc]


def test_cost_figures_take_each_figure_from_its_largest_source() -> None:
    spec = spec_from_object(grid_job("g", resources={"gpusPerReplica": 1}, budget={"pricePerGPUHour": 2.0})["spec"])
    observed = budget.Accounting(1, 360.0, {})  # 0.1 GPU-hours, $0.2
    assert budget.figures(spec, observed, LatestRecord(step=1, uri="x")) == CostFigures(gpu_hours=0.1, usd=0.2)
    assert budget.figures(spec, observed, LatestRecord(step=1, uri="x", cost_gpu_hours=0.5)) == CostFigures(
        gpu_hours=0.5, usd=0.2)
    # what status already said: each figure separately (an unset one is 0: no floor)
    assert budget.figures(spec, observed, None, Cost(usd=11.0)) == CostFigures(gpu_hours=0.1, usd=11.0)
    assert budget.figures(spec, observed, None, Cost(gpu_hours=0.7)) == CostFigures(gpu_hours=0.7, usd=0.2)
    assert budget.figures(spec, observed, None, Cost(usd=0.1, gpu_hours=0.05)) == CostFigures(
        gpu_hours=0.1, usd=0.2)


def test_budget_verdict_boundaries_and_description() -> None:
    both = spec_from_object(grid_job("g", budget={"maxCostUSD": 10, "maxGPUHours": 2})["spec"])
    full = CostFigures(gpu_hours=1.0, usd=10.0)
    verdict = budget.verdict(both, full)
    assert verdict == budget.BudgetVerdict(1.0, True, True)  # exactly the budget: exceeded
    assert verdict.describe(both, full) == "100% of the budget spent ($10.00 of $10.00, 1.000 of 2 GPU-hours)"
    usd_only = spec_from_object(grid_job("g", budget={"maxCostUSD": 10})["spec"])
    assert budget.verdict(usd_only, CostFigures(gpu_hours=9.0, usd=8.0)) == budget.BudgetVerdict(0.8, True, False)
    assert budget.verdict(usd_only, CostFigures(gpu_hours=9.0, usd=7.9)).warn is False
    assert budget.verdict(usd_only, full).describe(usd_only, full) == "100% of the budget spent ($10.00 of $10.00)"
    hours_only = spec_from_object(grid_job("g", budget={"maxGPUHours": 4})["spec"])
    assert budget.verdict(hours_only, full).describe(hours_only, full) == (
        "25% of the budget spent (1.000 of 4 GPU-hours)")
    none = spec_from_object(grid_job("g")["spec"])  # a budget removed from a BudgetExceeded job: BudgetRaised
    assert budget.verdict(none, full).describe(none, full) == "no budget is set"
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.warn = False  # type: ignore[misc]


def test_merge_patch() -> None:
    old = {"phase": "Running", "conditions": [{"type": "A"}], "accounting": {"pods": {"a": 1.0, "b": 2.0}}, "x": 1}
    new = {"phase": "Pending", "conditions": [{"type": "A"}, {"type": "B"}], "accounting": {"pods": {"c": 3.0}}}
    patch = merge_patch(old, new)
    assert patch == {"x": None, "phase": "Pending", "conditions": [{"type": "A"}, {"type": "B"}],
                     "accounting": {"pods": {"a": None, "b": None, "c": 3.0}}}
    assert merge_patch(new, json.loads(json.dumps(new))) == {}
