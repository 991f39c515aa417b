"""The trainer's Prometheus collector driven by hook moments, without a training loop or a server."""

from __future__ import annotations

import sys
import time
import types
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ganops.api.spec import GanTrainingJobSpec
from ganops.trainer.evaluate.report import EvaluationReport
from ganops.trainer.telemetry import TrainingTelemetry, metrics_port_from_env


@dataclass
class FakeManager:
    record: dict[str, Any] | None = None

    def latest_record(self) -> dict[str, Any] | None:
        return self.record


@dataclass
class FakeTrainer:
    spec: GanTrainingJobSpec
    step: int = 0
    elapsed_seconds: float = 0.0
    extra_state: dict[str, Any] = field(default_factory=dict)
    health_events: list[dict[str, Any]] = field(default_factory=list)
    health_state: dict[str, Any] = field(default_factory=dict)
    last_evaluation: EvaluationReport | None = None
    manager: FakeManager = field(default_factory=FakeManager)
    ctx: Any = field(default_factory=lambda: types.SimpleNamespace(dist=types.SimpleNamespace(is_main=True,
                                                                                              world_size=1)))


def spec(**wire: Any) -> GanTrainingJobSpec:
    return GanTrainingJobSpec.model_validate({"dataset": {"uri": "builtin:digits"}, "model": {"channels": 1}, **wire})


def samples(telemetry: TrainingTelemetry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(telemetry.exposition()):
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("namespace", "job")))
            out[(s.name, labels)] = s.value
    return out


def names(telemetry: TrainingTelemetry) -> set[str]:
    return {name for name, _ in samples(telemetry)}


def test_series_appear_as_the_loop_reports_and_unknowns_stay_absent() -> None:
    trainer = FakeTrainer(spec(resources={"gpusPerReplica": 2}, budget={"pricePerGPUHour": 1.8}),
                          step=100, elapsed_seconds=3600.0,
                          health_events=[{"type": "ModeCollapse", "step": 50, "message": "old", "time": "t0"}],
                          health_state={"rollbacks": 1})
    telemetry = TrainingTelemetry(trainer.spec, namespace="ns", job="j", gpu=False)
    assert names(telemetry) == set()  # nothing known before the loop starts

    telemetry(trainer, "start")  # type: ignore[arg-type]
    got = samples(telemetry)
    assert got[("ganops_train_step", ())] == 100
    assert got[("ganops_job_gpu_hours_total", ())] == pytest.approx(2.0, abs=1e-3)  # 1 h earlier × 2 GPUs
    assert got[("ganops_job_cost_usd_total", ())] == pytest.approx(3.6, abs=1e-2)
    assert got[("ganops_train_rollbacks_total", ())] == 1  # the job's count: resumed attempts continue it
    assert not any(n.startswith(("ganops_eval_", "ganops_gpu_", "ganops_train_loss")) for n in names(telemetry))
    # every known event type is born at 0 (increase() sees the first event); the restored event is not recounted
    assert {labels[0][1]: v for (n, labels), v in got.items() if n == "ganops_train_health_events_total"} == {
        "ModeCollapseSuspected": 0, "DiscriminatorOverpowering": 0, "DivergenceRollback": 0, "Diverged": 0}

    trainer.step = 120
    trainer.extra_state["last_values"] = {"loss_g": 0.7, "loss_d": 1.3, "grad_norm_g": 2.0, "grad_norm_d": 4.0}
    trainer.health_state = {"diversity": 0.8, "d_accuracy": 0.6, "collapse_suspected": False, "rollbacks": 1}
    telemetry(trainer, "log")  # type: ignore[arg-type]
    got = samples(telemetry)
    assert got[("ganops_train_step", ())] == 120
    assert got[("ganops_train_loss", (("network", "generator"),))] == 0.7
    assert got[("ganops_train_loss", (("network", "discriminator"),))] == 1.3
    assert got[("ganops_train_grad_norm", (("network", "discriminator"),))] == 4.0
    assert got[("ganops_train_images_per_second", ())] > 0
    assert got[("ganops_train_diversity_ratio", ())] == 0.8
    assert got[("ganops_train_discriminator_accuracy", ())] == 0.6

    report = EvaluationReport(extractor="raw", num_real=10, num_fake=10, step=120,
                              metrics={"modes": 24, "high_quality": 0.9, "fid": "insufficient samples (n=10)"})
    trainer.last_evaluation = report
    telemetry(trainer, "evaluated")  # type: ignore[arg-type]
    got = samples(telemetry)
    assert got[("ganops_eval_modes", ())] == 24 and got[("ganops_eval_high_quality_ratio", ())] == 0.9
    assert "ganops_eval_fid" not in names(telemetry)  # not a number: absent, not zero

    trainer.health_events.append({"type": "DivergenceRollback", "step": 130, "message": "diverged", "time": "t1"})
    trainer.health_state["rollbacks"] = 2
    telemetry(trainer, "health")  # type: ignore[arg-type]
    telemetry(trainer, "health")  # type: ignore[arg-type]  # the same event twice is one event
    got = samples(telemetry)
    assert got[("ganops_train_health_events_total", (("type", "DivergenceRollback"),))] == 1
    assert got[("ganops_train_health_events_total", (("type", "ModeCollapseSuspected"),))] == 0
    assert got[("ganops_train_rollbacks_total", ())] == 2


def test_checkpoint_timestamp_follows_latest_json() -> None:
    trainer = FakeTrainer(spec(), step=10)
    telemetry = TrainingTelemetry(trainer.spec, namespace="ns", job="j", gpu=False)
    before = time.time()
    telemetry(trainer, "start")  # type: ignore[arg-type]  # no checkpoint yet: the clock starts now
    assert before - 1 <= samples(telemetry)[("ganops_checkpoint_last_success_timestamp_seconds", ())] <= time.time()
    telemetry(trainer, "before_checkpoint")  # type: ignore[arg-type]
    trainer.manager.record = {"step": 10, "time": "2030-01-02T03:04:05Z"}
    telemetry(trainer, "log")  # type: ignore[arg-type]  # the next moment settles the save
    assert samples(telemetry)[("ganops_checkpoint_last_success_timestamp_seconds", ())] == 1893553445.0
    trainer.step = 20
    telemetry(trainer, "before_checkpoint")  # type: ignore[arg-type]  # this save fails: latest.json unchanged
    telemetry(trainer, "end")  # type: ignore[arg-type]
    assert samples(telemetry)[("ganops_checkpoint_last_success_timestamp_seconds", ())] == 1893553445.0


def test_gpu_series_come_from_nvml_when_a_device_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None  # type: ignore[attr-defined]
    fake.nvmlDeviceGetCount = lambda: 2  # type: ignore[attr-defined]
    fake.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    fake.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=40 + h)  # type: ignore[attr-defined]
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=(h + 1) * 2**30)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    telemetry = TrainingTelemetry(spec(), namespace="ns", job="j")
    got = samples(telemetry)
    assert got[("ganops_gpu_utilization_ratio", (("gpu", "1"),))] == 0.41
    assert got[("ganops_gpu_memory_used_bytes", (("gpu", "0"),))] == 2**30


def test_no_gpu_means_no_gpu_series(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: (_ for _ in ()).throw(OSError("NVML Shared Library Not Found"))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    telemetry = TrainingTelemetry(spec(), namespace="ns", job="j")
    assert telemetry.gpu is None and not any(n.startswith("ganops_gpu_") for n in names(telemetry))
    assert "ganops_gpu_utilization_ratio" not in telemetry.exposition()  # not even HELP/TYPE lines


def test_endpoint_serves_and_a_busy_port_does_not_raise() -> None:
    first = TrainingTelemetry(spec(), namespace="ns", job="j", gpu=False)
    second = TrainingTelemetry(spec(), namespace="ns", job="j", gpu=False)
    try:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        assert first.serve(port, "127.0.0.1") == port
        assert second.serve(port, "127.0.0.1") is None  # logged, training goes on
        first(FakeTrainer(first.collector.spec, step=7), "start")  # type: ignore[arg-type]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read().decode()
        assert 'ganops_train_step{job="j",namespace="ns"} 7.0' in body
        assert first.serve(0) is None  # 0 disables
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(("raw", "port"), [("", 9400), ("0", 0), ("9555", 9555), ("nope", 9400), ("70000", 9400)])
def test_metrics_port_from_env(raw: str, port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANOPS_METRICS_PORT", raw)
    assert metrics_port_from_env() == port
