"""The operator's job-level series (`ganops.operator.metrics`): a pure function of spec and status, rendered at
scrape time; and the status decisions that feed them (promotion counts and the promoted version's quality), plus
trainer health records as the trainer itself writes them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import torch
from dashboards import contract
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ganops import storage
from ganops.api.spec import GanTrainingJobSpec, GanTrainingJobStatus
from ganops.checkpoints import LatestRecord, read_latest_record
from ganops.operator import metrics as M
from ganops.operator import reconcile as R
from ganops.operator.conditions import PHASES
from ganops.operator.observe import JobView, PodView
from ganops.operator.plan import JobInput, Observed
from ganops.operator.progress import HEALTH_CONDITIONS
from ganops.operator.promotion import version_metrics
from ganops.operator.registry import PromotionOutcome, apply_promotion
from ganops.trainer import health
from ganops.trainer.checkpoint import CheckpointManager
from tests.support.jobs import as_job, grid_job

NOW = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


def spec_of(**spec: Any) -> GanTrainingJobSpec:
    return as_job(grid_job("gan", **spec)).spec


def render(*series: M.JobSeries) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    collector = M.JobSeriesCollector()
    registry.register(collector)
    for s in series:
        collector.set(s)
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def labels(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"namespace": "ml", "job": "gan", **kw}.items()))


# ------------------------------------------------------------------------------------------------ job_series


def test_series_from_a_running_jobs_status() -> None:
    status = {"phase": "Running", "restarts": {"preemptions": 2, "failures": 1}, "cost": {"usd": 1.5,
                                                                                             "gpuHours": 0.6}}
    s = M.job_series("ml", "gan", spec_of(budget={"maxCostUSD": 20.0}), status)
    assert s.phase == "Running" and s.restarts == {"preemption": 2, "failure": 1}
    assert (s.budget_usd, s.cost_usd, s.gpu_hours) == (20.0, 1.5, 0.6)
    assert s.model == "gan" and s.promotions == {"promoted": 0, "rejected": 0}  # born at 0: increase() sees the 1st
    assert s.version is None and s.quality == {}


@pytest.mark.parametrize(("budget", "resources", "expected"), [
    ({}, {}, None),
    ({"maxCostUSD": 12.5}, {}, 12.5),
    ({"maxGPUHours": 4.0, "pricePerGPUHour": 2.5}, {}, 10.0),
    ({"maxGPUHours": 4.0, "pricePerGPUHour": 2.5, "maxCostUSD": 8.0}, {}, 8.0),  # the guard stops at the first
    ({"maxGPUHours": 4.0, "pricePerGPUHour": 2.5, "maxCostUSD": 80.0}, {}, 10.0),
    ({"maxGPUHours": 4.0, "pricePerGPUHour": 2.0, "spotDiscount": 0.5}, {"spot": True}, 4.0),
    ({"maxGPUHours": 4.0, "pricePerGPUHour": 0.0}, {}, None),  # free GPUs: no USD budget to burn
])
def test_budget_in_usd(budget: dict[str, Any], resources: dict[str, Any], expected: float | None) -> None:
    assert M.budget_usd(spec_of(budget=budget, resources=resources)) == expected


def test_budget_from_the_price_table_by_gpu_type() -> None:
    spec = spec_of(budget={"maxGPUHours": 2.0}, resources={"gpuType": "a100", "gpusPerReplica": 1})
    assert M.budget_usd(spec, {"default": 1.0, "a100": 3.0}) == 6.0


def test_quality_only_for_the_promoted_version_and_the_contracts_metrics() -> None:
    status = {"phase": "Succeeded", "promotedVersion": "7", "promotions": {"promoted": 1, "rejected": 2},
              "promotedMetrics": {"fid": 12.0, "kid": 0.01, "precision": 0.8, "recall": 0.6, "modes": 25.0,
                                  "high_quality": 0.9, "nan": float("nan")}}
    s = M.job_series("ml", "gan", spec_of(promotion={"modelName": "faces"}), status)
    assert s.model == "faces" and s.version == "7" and s.promotions == {"promoted": 1, "rejected": 2}
    assert s.quality == {"fid": 12.0, "kid": 0.01, "precision": 0.8, "recall": 0.6, "modes": 25.0}
    # metrics without a promoted version are not a version's quality
    assert M.job_series("ml", "gan", spec_of(), {"promotedMetrics": {"fid": 1.0}}).quality == {}


def test_an_invalid_spec_still_shows_phase_and_restarts() -> None:
    s = M.job_series("ml", "gan", None, {"phase": "Failed", "restarts": {"failures": "x"}, "cost": "free"})
    assert s.phase == "Failed" and s.restarts == {"preemption": 0, "failure": 0}
    assert s.budget_usd is None and s.cost_usd is None and s.model is None and s.promotions == {}


# ------------------------------------------------------------------------------------------------ exposition


def test_rendered_names_and_labels_are_the_contracts() -> None:
    status = {"phase": "Running", "restarts": {"preemptions": 1}, "cost": {"usd": 2.0, "gpuHours": 1.0},
              "promotedVersion": "3", "promotedMetrics": {"fid": 9.5}}
    got = render(M.job_series("ml", "gan", spec_of(budget={"maxCostUSD": 5.0}), status))
    for phase in PHASES:
        assert got[("ganops_operator_job_phase", labels(phase=phase))] == (1.0 if phase == "Running" else 0.0)
    assert got[("ganops_operator_job_restarts_total", labels(kind="preemption"))] == 1.0
    assert got[("ganops_operator_job_restarts_total", labels(kind="failure"))] == 0.0
    assert got[("ganops_job_budget_usd", labels())] == 5.0
    assert got[("ganops_job_cost_usd_total", labels())] == 2.0
    assert got[("ganops_job_gpu_hours_total", labels())] == 1.0
    assert got[("ganops_operator_promotions_total", labels(model="gan", outcome="promoted"))] == 0.0
    assert got[("ganops_operator_promotions_total", labels(model="gan", outcome="rejected"))] == 0.0
    assert got[("ganops_model_version_quality", labels(model="gan", version="3", metric="fid"))] == 9.5
    assert len(got) == 6 + 2 + 3 + 2 + 1
    operator = contract.series_by_component()["operator"] | {"ganops_job_cost_usd_total", "ganops_job_gpu_hours_total"}
    assert {name for name, _ in got} <= operator  # every name is in dashboards/METRICS.md's operator table


def test_a_job_without_a_phase_has_no_phase_series_and_forget_removes_everything() -> None:
    collector = M.JobSeriesCollector()
    collector.set(M.job_series("ml", "a", spec_of(), {}))
    collector.set(M.job_series("ml", "b", spec_of(), {"phase": "Pending"}))
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert 'ganops_operator_job_phase{job="a"' not in text and 'ganops_operator_job_phase{job="b"' in text
    collector.forget(("ml", "b"))
    text = generate_latest(registry).decode()
    assert 'job="b"' not in text and 'job="a"' in text
    collector.clear()
    assert 'job="' not in generate_latest(registry).decode()


def test_the_operators_registry_carries_the_job_series() -> None:
    M.JOB_SERIES.set(M.job_series("zz-unit", "probe", spec_of(), {"phase": "Pending"}))
    try:
        text = generate_latest(M.REGISTRY).decode()
        assert 'ganops_operator_job_phase{job="probe",namespace="zz-unit",phase="Pending"} 1.0' in text
    finally:
        M.JOB_SERIES.forget(("zz-unit", "probe"))
    assert 'namespace="zz-unit"' not in generate_latest(M.REGISTRY).decode()


# ------------------------------------------------------------------------------------------------ status → series


def test_promotion_outcomes_are_counted_in_status_and_quality_follows_the_promoted_version() -> None:
    st = GanTrainingJobStatus(phase="Succeeded")
    st, _ = apply_promotion(st, PromotionOutcome("rejected", "m", "production", "1", "fid 50 > maxFID 40",
                                                    metrics={"fid": 50.0}), NOW)
    assert st.to_wire()["promotions"] == {"promoted": 0, "rejected": 1} and "promotedMetrics" not in st.to_wire()
    st, _ = apply_promotion(st, PromotionOutcome("promoted", "m", "production", "2", "passed",
                                                    metrics={"fid": 30.0, "recall": 0.5}), NOW)
    assert st.to_wire()["promotions"] == {"promoted": 1, "rejected": 1}
    assert st.to_wire()["promotedVersion"] == "2" and st.to_wire()["promotedMetrics"] == {"fid": 30.0, "recall": 0.5}
    st, _ = apply_promotion(st, PromotionOutcome("unavailable", "m", "production", message="down"), NOW)
    assert st.to_wire()["promotions"] == {"promoted": 1, "rejected": 1}  # not a decision
    # A rollback is not a promotion decision; the quality shown is the version rolled back to, or none.
    st, _ = apply_promotion(st, PromotionOutcome("rolled_back", "m", "production", "1", metrics={"fid": 50.0}),
                              NOW)
    assert st.to_wire()["promotions"] == {"promoted": 1, "rejected": 1}
    assert st.to_wire()["promotedMetrics"] == {"fid": 50.0}
    st, _ = apply_promotion(st, PromotionOutcome("rolled_back", "m", "production", "0"), NOW)
    assert st.to_wire()["promotedVersion"] == "0" and "promotedMetrics" not in st.to_wire()
    s = M.job_series("ml", "gan", spec_of(), st.to_wire())
    assert s.version == "0" and s.quality == {} and s.promotions == {"promoted": 1, "rejected": 1}


def test_version_metrics_from_the_registry_tags() -> None:
    tags = {"ganops.metric.fid": "12.5", "ganops.metric.recall": "0.6", "ganops.metric.bad": "x",
            "ganops.metric.inf": "inf", "ganops.job": "ml/gan"}
    assert version_metrics(tags) == {"fid": 12.5, "recall": 0.6}


def test_reconcile_restarts_reach_the_series() -> None:
    """A preemption decided by `status.reconcile` shows as restarts{kind="preemption"}."""
    spec = spec_of(training={"steps": 100})
    running = {"phase": "Running", "attempt": 1, "startTime": "2025-01-01T11:00:00Z",
               "restarts": {"preemptions": 0, "failures": 0}}
    preempted = PodView("gan-0", 1, 0, "Failed", disruption="PreemptionByScheduler", exit_code=143)
    plan = R.reconcile(JobInput("gan", "ml", "u", 1, spec, GanTrainingJobStatus.from_wire(running)),
                       Observed(job=JobView("gan", 1, "j1", failed=1), pods=(preempted,)), NOW)
    s = M.job_series("ml", "gan", spec, plan.status.to_wire())
    assert s.restarts == {"preemption": 1, "failure": 0} and s.phase == "Pending"


# ------------------------------------------------------------------------------------------------ trainer health


def _trainer_record(tmp_path: Path, events: list[dict[str, Any]], rollbacks: int) -> LatestRecord:
    """latest.json written by the trainer's own CheckpointManager with its HealthRecord, read back by the
    operator's reader."""
    record = health.HealthRecord(rollbacks=rollbacks)
    for ev in events:
        record.add(ev)
    root = f"file://{tmp_path}/ml/gan"
    weights = {name: {"w": torch.zeros(2)} for name in ("generator", "generator_ema", "discriminator")}
    CheckpointManager(root).save(40, weights, {"step": 40}, info={"health": record.checkpoint_info()})
    parsed = read_latest_record(storage.open_store(root), f"{root}/latest.json")
    assert parsed is not None
    return parsed


def test_every_trainer_health_event_type_becomes_its_own_condition(tmp_path: Path) -> None:
    events = [health.health_event(health.COLLAPSE, 10, "diversity 0.05×"),
              health.health_event(health.D_OVERPOWERING, 12, "accuracy 1.0"),
              health.health_event(health.ROLLBACK, 20, "loss_d is nan"),
              health.health_event(health.ROLLBACK, 30, "loss_d is nan"),
              health.health_event(health.DIVERGED, 35, "gave up")]
    record = _trainer_record(tmp_path, events, rollbacks=2)
    spec = spec_of(training={"steps": 100})
    running = {"phase": "Running", "attempt": 1, "startTime": "2025-01-01T11:00:00Z"}
    observed = Observed(job=JobView("gan", 1, "j1", active=1), pods=(PodView("gan-0", 1, 0, "Running"),),
                          record=record)
    plan = R.reconcile(JobInput("gan", "ml", "u", 1, spec, GanTrainingJobStatus.from_wire(running)), observed, NOW)
    conditions = {c["type"]: c for c in plan.status.to_wire()["conditions"]}
    assert conditions["ModeCollapseSuspected"]["message"] == "mode collapse suspected at step 10: diversity 0.05×"
    assert conditions["DiscriminatorOverpowering"]["message"] == "discriminator overpowering at step 12: accuracy 1.0"
    # two rollbacks - the Diverged event is not a third one
    assert conditions["DivergenceRollback"]["message"] == "2 divergence rollback(s), last at step 30: loss_d is nan"
    assert conditions["Diverged"]["message"] == "training diverged at step 35: gave up"
    assert all(conditions[t]["reason"] == "TrainerHealthCheck" for t in HEALTH_CONDITIONS)
    assert sorted(e.reason for e in plan.events if e.type == "Warning") == sorted(HEALTH_CONDITIONS)

    again = R.reconcile(JobInput("gan", "ml", "u", 1, spec, plan.status), observed, NOW)
    assert [e for e in again.events if e.type == "Warning"] == []  # nothing changed: no repeated Events


def test_the_rollback_count_survives_the_trainers_event_window(tmp_path: Path) -> None:
    """The trainer keeps its last 10 events; its rollback count is what the condition reports."""
    events = [health.health_event(health.COLLAPSE, i, "") for i in range(9)]
    events.append(health.health_event(health.ROLLBACK, 50, "|loss_g| > 1e4"))
    record = _trainer_record(tmp_path, events, rollbacks=3)
    assert len(record.health_events) == 10 and record.rollbacks == 3
    running = GanTrainingJobStatus.from_wire({"phase": "Running", "attempt": 1})
    plan = R.reconcile(JobInput("gan", "ml", "u", 1, spec_of(), running),
                       Observed(job=JobView("gan", 1, "j1", active=1), record=record), NOW)
    rollback = next(c for c in plan.status.to_wire()["conditions"] if c["type"] == "DivergenceRollback")
    assert rollback["message"].startswith("3 divergence rollback(s), last at step 50")
