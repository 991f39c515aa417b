"""The training loop: components as typed attributes, one step method, a checkpoint manager that saves them.

Everything a step depends on (weights, EMA, optimizers, scalers, the data position, accrued cost) goes into the
checkpoint, so a run killed at step N and resumed reaches step 2N with the same weights, bit for bit, as one that
never stopped (in deterministic mode on CPU). The step's randomness (latents, fake labels, WGAN-GP's interpolation
weights) is drawn on the training device from a generator seeded by ``(seed, rank, step, critic step)``: nothing to
save, and every rank draws its own latents after any resume or rollback (a state saved by rank 0 and restored on
every rank would make data parallelism duplicate one rank's work).

The hot loop never waits for the device outside log steps: data live on the device (`DataStream` with
``device=``), latents are drawn there, gradients are averaged by bucketed all-reduces that overlap backward
(`distributed.GradReducer`), and the stop flag of a SIGTERM is agreed between ranks at log steps only (one
all-reduce with the divergence flag). R1 runs inside autocast on the same D forward as the adversarial loss (the
real batch requires grad), every ``loss.r1Interval`` discriminator steps with its weight scaled by the interval
(StyleGAN2's lazy regularisation); D is frozen during the generator's step.

Per log step the trainer also checks its health (`ganops.trainer.health`: divergence → `rollback`, a diversity
probe, discriminator accuracy); every ``evaluation.everySteps`` and at the last step it evaluates the EMA generator
(`ganops.trainer.evaluator`) before the checkpoint of that step, which then carries the promotion metric.
Hook moments: "start", "log", "evaluated", "health" (one per event), "before_checkpoint", "end".
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganops import __version__
from ganops.api.spec import GanTrainingJob, spec_hash
from ganops.checkpoints import MEMORIZATION_KEY, CheckpointError, job_root
from ganops.cost import cost_of
from ganops.generator import generate
from ganops.logs import event
from ganops.models import build_models, sample_latent
from ganops.trainer import distributed as dist_utils
from ganops.trainer.checkpoint import Checkpoint, CheckpointManager
from ganops.trainer.data import DataStream, load_dataset, make_stream, mix_seed
from ganops.trainer.device import (
    compile_problem,
    configure_matmul_precision,
    use_channels_last,
    use_fused_optimizer,
)
from ganops.trainer.ema import EMA
from ganops.trainer.evaluate.report import EvaluationReport
from ganops.trainer.evaluator import Evaluator, promotion_metric
from ganops.trainer.health import (
    DIVERGED,
    ROLLBACK,
    CollapseDetector,
    DiscriminatorOverpoweringDetector,
    DivergenceGuard,
    DiversityProbe,
    HealthRecord,
    TrainingDiverged,
    decision_threshold,
    discriminator_accuracy,
    health_event,
)
from ganops.trainer.losses import discriminator_step_loss, eager, generator_step_loss
from ganops.trainer.memorization import ensure_index
from ganops.trainer.progress import Progress

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_URI = "file://.ganops/checkpoints"
PROBE_POINTS = 512  # diversity probe size for 2-D data
PROBE_IMAGES = 128  # … and for images
_TAG_STEP_RNG = 0x4C41544E  # seeds the step's generator with (seed, tag, rank, step, critic step)

__all__ = ["DEFAULT_CHECKPOINT_URI", "CompileUnavailable", "RunContext", "StopSignal", "TrainResult", "Trainer",
           "TrainingDiverged"]


class CompileUnavailable(RuntimeError):
    """``training.compile`` asked where torch.compile cannot run (no compiler or headers): refused at start."""


@dataclass
class RunContext:
    """Where a run lives: identity, storage and process topology. Built by the CLI from the job and env."""

    namespace: str
    job_name: str
    checkpoint_uri: str
    work_dir: Path
    dist: dist_utils.DistContext = field(default_factory=dist_utils.DistContext)
    progress: bool = True

    @property
    def checkpoint_root(self) -> str:
        return job_root(self.checkpoint_uri, self.namespace, self.job_name)


@dataclass
class TrainResult:
    status: str  # "completed" | "stopped" (SIGTERM/preemption: checkpointed, resumable)
    step: int
    last_checkpoint: dict[str, Any] | None
    images_per_second: float


class StopSignal:
    """SIGTERM (preemption, eviction, `kubectl delete`) asks for a checkpoint and a clean exit 0."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name


def configure_determinism(deterministic: bool, seed: int) -> None:
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


class Trainer:
    def __init__(self, job: GanTrainingJob, ctx: RunContext, *, stop: StopSignal | None = None) -> None:
        self.job = job
        self.spec = job.spec
        self.ctx = ctx
        self.device = ctx.dist.device
        self.stop = stop or StopSignal()
        spec = self.spec
        if spec.training.compile and (problem := compile_problem(self.device)) is not None:
            raise CompileUnavailable(problem)
        configure_determinism(spec.training.deterministic, spec.training.seed)
        self.matmul_precision = configure_matmul_precision(spec.training.matmul_precision)

        self.dataset = load_dataset(spec, cache_dir=ctx.work_dir / "data-cache")
        self.stream: DataStream = make_stream(
            self.dataset, spec.training.batch_size, spec.training.seed,
            rank=ctx.dist.rank, world_size=ctx.dist.world_size, augmentations=list(spec.dataset.augmentations),
            device=self.device,
        )
        # Built identically on every rank (same seed), then rank 0's parameters are broadcast.
        self.g, self.d = build_models(spec.model, spec.loss)
        self.channels_last = use_channels_last(spec, self.device)
        self.g.to(self.device)
        self.d.to(self.device)
        dist_utils.broadcast_parameters(ctx.dist, self.g, self.d)  # contiguous tensors on the wire
        if self.channels_last:
            for net in (self.g, self.d):
                net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.ema = EMA(self.g, spec.model.ema)
        opt = spec.optimizer
        self.fused = use_fused_optimizer(self.device)
        fused = {"fused": True} if self.fused else {}
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=opt.lr_generator, betas=opt.betas, **fused)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=opt.lr_discriminator, betas=opt.betas, **fused)
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec.training.precision]
        scaling = spec.training.precision == "fp16"
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=scaling)
        self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=scaling)
        # Re-seeded for every critic step from (seed, rank, step, i): see the module docstring.
        self.step_gen = torch.Generator(device=self.device)
        self.reduce_g = dist_utils.GradReducer(ctx.dist, self.g) if ctx.dist.enabled else None
        self.reduce_d = dist_utils.GradReducer(ctx.dist, self.d) if ctx.dist.enabled else None
        self.step = 0
        self.elapsed_seconds = 0.0  # training wall time over all attempts, for cost
        self.manager = CheckpointManager(
            ctx.checkpoint_root, keep_last=spec.checkpoint.keep_last, keep_best=spec.checkpoint.keep_best,
        )
        self.g_step: Callable[..., Any] = self.g
        self.d_step: Callable[..., Any] = self.d
        if spec.training.compile:
            self.g_step = torch.compile(self.g)
            self.d_step = torch.compile(self.d)
        self.last_values: dict[str, torch.Tensor] = {}
        self.hooks: list[Callable[[Trainer, str], None]] = []
        self.extra_state: dict[str, Any] = {}
        # Evaluation is sharded over every rank (rank 0 computes the metrics); health runs on rank 0 only. The
        # extractor's weights are loaded here, so bad ones fail now.
        main = ctx.dist.is_main
        self.evaluator = Evaluator(spec, self.dataset, reference_root=ctx.checkpoint_uri, device=self.device,
                                   dist=ctx.dist)
        self.last_evaluation: EvaluationReport | None = None
        self._memorization_index: str | None = None
        self._memorization_checked = not main  # rank 0 builds (or finds) the index at its first checkpoint
        self.health = HealthRecord()
        self.health_events: list[dict[str, Any]] = []  # this attempt's events; the "health" moment fires per event
        self.health_state: dict[str, Any] = {"diversity": None, "d_accuracy": None, "collapse_suspected": False,
                                             "d_overpowering": False, "rollbacks": 0}
        self.divergence = DivergenceGuard()
        self.collapse = CollapseDetector()
        self.d_overpowering = DiscriminatorOverpoweringDetector()
        self.d_threshold = decision_threshold(spec.loss.type, spec.loss.label_smoothing)
        self.diversity_probe: DiversityProbe | None = None
        if main:
            n = PROBE_POINTS if self.dataset.is_points else PROBE_IMAGES
            real = self.dataset.sample(n, torch.Generator(device="cpu").manual_seed(spec.training.seed)).x
            self.diversity_probe = DiversityProbe(real, spec.model.latent_dim, spec.model.num_classes,
                                                  device=self.device)

    # ----------------------------------------------------------------- state

    def state_for_checkpoint(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        weights = {
            "generator": self.g.state_dict(),
            "generator_ema": self.ema.ema_model.state_dict(),
            "discriminator": self.d.state_dict(),
        }
        train_state: dict[str, Any] = {
            "step": self.step,
            "optimizer_g": self.opt_g.state_dict(),
            "optimizer_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "data": self.stream.state_dict(),
            "ema": self.ema.state_dict_meta(),
            "elapsed_seconds": self.elapsed_seconds,
            "extra": self.extra_state,
        }
        if torch.cuda.is_available() and self.device.type == "cuda":
            train_state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return weights, train_state

    def restore(self, ckpt: Checkpoint) -> None:
        try:
            self.g.load_state_dict(ckpt.weights["generator"])
            self.ema.ema_model.load_state_dict(ckpt.weights["generator_ema"])
            self.d.load_state_dict(ckpt.weights["discriminator"])
        except RuntimeError as exc:
            raise CheckpointError(
                f"checkpoint {ckpt.uri} does not fit this job's model (was spec.model changed?): {exc}"
            ) from exc
        state = ckpt.train_state
        self.opt_g.load_state_dict(state["optimizer_g"])
        self.opt_d.load_state_dict(state["optimizer_d"])
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])
        torch.set_rng_state(state["rng_torch"])  # nothing in a step draws from it; kept for user code and hooks
        # (earlier checkpoints also hold "rng_latent", rank 0's latent generator: no longer used)
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        self.stream.load_state_dict(state["data"])
        self.ema.load_state_dict_meta(state.get("ema", {}))
        if self.fused:  # a checkpoint from a CPU run carries fused=None: this device's choice wins
            for optimizer in (self.opt_g, self.opt_d):
                for group in optimizer.param_groups:
                    group["fused"] = True
                    group["foreach"] = None
        self.step = int(state["step"])
        self.elapsed_seconds = float(state.get("elapsed_seconds", 0.0))
        self.extra_state = dict(state.get("extra", {}))
        self.health = HealthRecord.from_state(self.extra_state.get("health"))
        self.health_state["rollbacks"] = self.health.rollbacks

    def save_checkpoint(self, *, metric: float | None = None, info: dict[str, Any] | None = None) -> dict[str, Any]:
        weights, train_state = self.state_for_checkpoint()
        record = self.manager.save(
            self.step, weights, train_state, metric=metric,
            info={
                "specHash": spec_hash(self.spec),
                "job": {"namespace": self.ctx.namespace, "name": self.ctx.job_name},
                "versions": {"ganops": __version__, "torch": torch.__version__},
                "precision": {"autocast": self.spec.training.precision, "device": self.device.type,
                              **self.matmul_precision},
                "worldSize": self.ctx.dist.world_size,
                "cost": cost_of(self.spec, self.elapsed_seconds).as_wire(),
                "generation": {"latentDim": self.spec.model.latent_dim, "numClasses": self.spec.model.num_classes},
                "model": self.spec.model.model_dump(mode="json", by_alias=True, exclude_none=True),
                **({MEMORIZATION_KEY: index} if (index := self.memorization_index()) else {}),
                **(info or {}),
            },
        )
        event(log, "checkpoint_saved", step=self.step, uri=record["uri"])
        return record

    def memorization_index(self) -> str | None:
        """URI of the training set's memorization index (`ganops.trainer.memorization`): found or built once per
        attempt, on rank 0; None for the 2-D mixtures, on other ranks, or when building failed (logged, never
        fatal: serving then runs without the memorization filter for this model)."""
        if not self._memorization_checked:
            self._memorization_checked = True
            try:
                self._memorization_index = ensure_index(self.dataset, self.ctx.checkpoint_uri)
            except Exception as exc:  # a safety extra, not a reason to lose a training run
                log.warning("memorization index not built (%s: %s): serving's memorization filter will be off "
                            "for this job's models", type(exc).__name__, exc)
                event(log, "memorization_index_failed", error=f"{type(exc).__name__}: {exc}",
                      note="checkpoints carry no memorizationIndex; serving's memorization filter will be off")
        return self._memorization_index

    # ----------------------------------------------------------------- one step

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def step_generator(self, critic_step: int) -> torch.Generator:
        """The generator of critic step ``critic_step`` of the current step, on the training device."""
        ctx = self.ctx.dist
        return self.step_gen.manual_seed(mix_seed(self.spec.training.seed, _TAG_STEP_RNG, ctx.rank, self.step,
                                                  critic_step))

    def _fake_labels(self, n: int, gen: torch.Generator) -> torch.Tensor | None:
        if self.spec.model.num_classes is None:
            return None
        return torch.randint(0, self.spec.model.num_classes, (n,), generator=gen, device=gen.device)

    def r1_due(self, critic_step: int) -> bool:
        """Lazy R1: on discriminator steps ``0, k, 2k, …`` (``k = loss.r1Interval``), counted over the whole run."""
        loss = self.spec.loss
        return loss.r1 > 0 and (self.step * self.spec.optimizer.critic_steps + critic_step) % loss.r1_interval == 0

    def train_step(self, *, measure: bool = False) -> None:
        spec = self.spec
        critic_steps = spec.optimizer.critic_steps
        fake: torch.Tensor | None = None
        y_fake: torch.Tensor | None = None
        d_real = d_fake = torch.zeros(())
        for i in range(critic_steps):
            gen = self.step_generator(i)
            real, y_real = self.stream.next_batch()  # on the device already
            if self.channels_last:
                real = real.contiguous(memory_format=torch.channels_last)
            y_real = y_real if (y_real is not None and spec.model.num_classes) else None
            r1 = self.r1_due(i)
            if r1:  # R1 differentiates D(real) w.r.t. real: the one forward below serves both losses
                real = real.detach().requires_grad_(True)
            z = sample_latent(real.shape[0], spec.model.latent_dim, gen)  # on the generator's device
            y_fake = self._fake_labels(real.shape[0], gen)
            last = i == critic_steps - 1  # only the last critic step's fakes feed the generator's step
            with self._autocast():
                with contextlib.nullcontext() if last else torch.no_grad():
                    fake = self.g_step(z, y_fake)
                # compiled graphs have no double backward: R1's forward runs the eager module
                d_real = (eager(self.d_step) if r1 else self.d_step)(real, y_real)
                d_fake = self.d_step(fake.detach(), y_fake)
            loss_d, parts_d = discriminator_step_loss(
                spec.loss, self.d_step, real, fake.detach(), d_real, d_fake, y_real, y_fake,
                generator=gen, r1_scale=float(spec.loss.r1_interval) if r1 else 0.0,
            )
            self.opt_d.zero_grad(set_to_none=True)
            if self.reduce_d is not None:
                self.reduce_d.arm()
            self.scaler_d.scale(loss_d).backward()  # type: ignore[no-untyped-call]
            if self.reduce_d is not None:
                self.reduce_d.finish()
            if measure:
                self.scaler_d.unscale_(self.opt_d)
                self.last_values["grad_norm_d"] = _grad_norm(self.d)
            self.scaler_d.step(self.opt_d)
            self.scaler_d.update()
        assert fake is not None
        with _frozen(self.d):  # D's weight gradients are not needed in G's step: do not compute them
            with self._autocast():
                d_fake_g = self.d_step(fake, y_fake)
            loss_g, parts_g = generator_step_loss(spec.loss, d_fake_g)
            self.opt_g.zero_grad(set_to_none=True)
            if self.reduce_g is not None:
                self.reduce_g.arm()
            self.scaler_g.scale(loss_g).backward()  # type: ignore[no-untyped-call]
            if self.reduce_g is not None:
                self.reduce_g.finish()
        if measure:
            self.scaler_g.unscale_(self.opt_g)
            self.last_values["grad_norm_g"] = _grad_norm(self.g)
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        self.step += 1
        self.ema.update(self.g, self.step)
        if measure:
            self.last_values.update({"loss_d": loss_d.detach(), "loss_g": loss_g.detach()})
            if self.d_threshold is not None:
                self.last_values["d_accuracy"] = discriminator_accuracy(d_real, d_fake, self.d_threshold)
            self.last_values.update({k: v.detach() for k, v in {**parts_d, **parts_g}.items()})

    # ----------------------------------------------------------------- the run

    def resume(self) -> bool:
        ckpt = self.manager.load_latest()
        if ckpt is None:
            return False
        if ckpt.manifest.get("specHash") not in (None, spec_hash(self.spec)):
            event(log, "resume_spec_changed", checkpoint=ckpt.uri,
                  note="spec fields that shape training changed since this checkpoint")
        self.restore(ckpt)
        event(log, "resumed", step=self.step, uri=ckpt.uri)
        return True

    def fit(self) -> TrainResult:
        spec = self.spec
        ctx = self.ctx
        total = spec.training.steps
        self.resume()
        progress = Progress(total, start_step=self.step, enabled=ctx.dist.is_main,
                            interactive=None if ctx.progress else False)
        last_record: dict[str, Any] | None = self.manager.latest_record()
        saved_at = self.step if last_record is not None else -1
        log_every = spec.training.log_every_steps
        ckpt_every = spec.checkpoint.every_steps
        images = 0
        rate = 0.0
        status = "completed"
        started = time.perf_counter()
        self._fire("start")
        stop_agreed = False  # under DDP the ranks agree on a SIGTERM at log steps only (no per-step all-reduce)
        try:
            while self.step < total:
                if stop_agreed or (not ctx.dist.enabled and self.stop.requested):
                    status = "stopped"
                    break
                measure = (self.step + 1) % log_every == 0
                self.train_step(measure=measure)
                images += spec.training.batch_size * ctx.dist.world_size
                if measure:
                    values = _host_values(self.last_values)  # one device→host copy for every value
                    rate = progress.update(self.step, images, values)
                    images = 0
                    self.extra_state["last_values"] = values
                    reason = self.divergence.check(values)
                    stop_agreed, diverged = dist_utils.any_ranks(ctx.dist, self.stop.requested, reason is not None)
                    if diverged:
                        saved_at = self.rollback(reason or "diverged on another rank")
                        continue
                    self._observe_health(values)
                    self._fire("log")
                evaluate_now = bool(spec.evaluation.metrics) and (
                    self.step % spec.evaluation.every_steps == 0 or self.step == total)
                # Never evaluate or save a poisoned state: NaN/inf weights roll back like a diverged loss.
                if (evaluate_now or self.step % ckpt_every == 0 or self.step == total) and dist_utils.any_rank(
                        ctx.dist, not self._weights_finite()):
                    saved_at = self.rollback("non-finite weights")
                    continue
                if evaluate_now:
                    self.evaluate()
                if self.step % ckpt_every == 0 and self.step < total:
                    self.elapsed_seconds += time.perf_counter() - started
                    started = time.perf_counter()
                    self._fire("before_checkpoint")
                    last_record = self._checkpoint()
                    saved_at = self.step
            self.elapsed_seconds += time.perf_counter() - started
            if saved_at != self.step:
                self._fire("before_checkpoint")
                last_record = self._checkpoint()
        finally:
            progress.close()
        if status == "stopped":
            event(log, "stopped", step=self.step, signal=self.stop.signal_name, note="checkpoint saved; exit 0")
        else:
            self._fire("end")
        return TrainResult(status=status, step=self.step, last_checkpoint=last_record, images_per_second=rate)

    def _checkpoint(self) -> dict[str, Any] | None:
        record: dict[str, Any] | None = None
        if self.ctx.dist.is_main:
            # The promotion metric belongs to this checkpoint only if it was evaluated at this very step.
            fresh = self.extra_state.get("evaluation", {}).get("step") == self.step
            try:
                record = self.save_checkpoint(
                    metric=self.extra_state.get("metric") if fresh else None,
                    info=self.extra_state.get("checkpoint_info"),
                )
            except CheckpointError as exc:
                event(log, "checkpoint_failed", step=self.step, error=str(exc))
        dist_utils.barrier(self.ctx.dist)
        return record

    def _fire(self, moment: str) -> None:
        for hook in self.hooks:
            hook(self, moment)

    # ----------------------------------------------------------------- evaluation and health

    def evaluate(self) -> EvaluationReport | None:
        """Evaluate the EMA generator now (rank 0; None elsewhere, when disabled or when evaluation failed).

        Sets `last_evaluation`, ``extra_state["metric"]`` (the promotion metric, lower is better) and the
        ``metrics`` of ``extra_state["checkpoint_info"]``, then fires the "evaluated" moment. An error is logged
        (``evaluation_failed``) and training goes on.
        """
        if self.evaluator is None or not self.evaluator.enabled:
            return None
        try:
            found = self.evaluator.evaluate(self.ema.ema_model, self.step)  # every rank takes part; rank 0 reports
        except Exception as exc:  # evaluation must never kill training
            if self.ctx.dist.is_main:
                event(log, "evaluation_failed", step=self.step, error=f"{type(exc).__name__}: {exc}")
            return None
        if found is None:
            return None
        report = found
        metric = promotion_metric(report, num_modes=self.evaluator.num_modes)
        self.last_evaluation = report
        self.extra_state["metric"] = metric
        self.extra_state["evaluation"] = {"step": self.step}
        info = self.extra_state.setdefault("checkpoint_info", {})
        info["metrics"] = report.numeric()
        info["evaluation"] = {"step": self.step, "extractor": report.extractor, "numReal": report.num_real,
                              "numFake": report.num_fake, "promotionMetric": metric}
        event(log, "evaluated", step=self.step, metric=metric, metrics=report.metrics,
              seconds=report.details["seconds"]["total"])
        self._fire("evaluated")
        return report

    def _weights_finite(self) -> bool:
        flags = [torch.isfinite(p).all() for m in (self.g, self.d) for p in m.parameters()]
        return bool(torch.stack(flags).all()) if flags else True

    def _observe_health(self, values: dict[str, float]) -> None:
        """Feed the detectors at a log moment (rank 0); update `health_state`; emit events."""
        if self.diversity_probe is None:
            return
        ratio = self.diversity_probe(self.g)
        accuracy = values.get("d_accuracy")
        found = [self.collapse.observe(self.step, ratio), self.d_overpowering.observe(self.step, accuracy)]
        self.health_state = {
            "diversity": ratio if math.isfinite(ratio) else None,
            "d_accuracy": accuracy,
            "collapse_suspected": self.collapse.suspected,
            "d_overpowering": self.d_overpowering.overpowering,
            "rollbacks": self.health.rollbacks,
        }
        for ev in found:
            if ev is not None:
                self._health_event(ev)

    def _health_event(self, ev: dict[str, Any]) -> None:
        self.health_events.append(ev)
        self.health.add(ev)
        self._record_health()
        event(log, "health", **ev)
        self._fire("health")

    def _record_health(self) -> None:
        self.extra_state["health"] = self.health.to_state()
        self.extra_state.setdefault("checkpoint_info", {})["health"] = self.health.checkpoint_info()
        self.health_state["rollbacks"] = self.health.rollbacks

    def rollback(self, reason: str) -> int:
        """Restore the latest checkpoint and halve both learning rates; returns the step rolled back to.

        Raises `TrainingDiverged` (after a ``Diverged`` event) when ``divergence.max_rollbacks`` are used up or
        there is no checkpoint. The rollback count, the learning-rate scale and the wall time (cost) survive the
        restore; the count and scale also go into the train state, so a resumed attempt keeps them.
        """
        at = self.step
        limit = self.divergence.max_rollbacks
        ckpt = self.manager.load_latest() if self.health.rollbacks < limit else None
        if ckpt is None:
            why = (f"after {self.health.rollbacks} rollbacks (the limit)" if self.health.rollbacks >= limit
                   else "and there is no checkpoint to roll back to")
            message = f"training diverged at step {at} ({reason}) {why}"
            self._health_event(health_event(DIVERGED, at, message))
            raise TrainingDiverged(message)
        record, elapsed = self.health, self.elapsed_seconds
        self.restore(ckpt)
        self.health, self.elapsed_seconds = record, elapsed
        record.rollbacks += 1
        record.lr_scale *= 0.5
        opt = self.spec.optimizer
        for optimizer, base in ((self.opt_g, opt.lr_generator), (self.opt_d, opt.lr_discriminator)):
            for group in optimizer.param_groups:
                group["lr"] = base * record.lr_scale
        self.collapse = CollapseDetector()
        self.d_overpowering = DiscriminatorOverpoweringDetector()
        self._health_event(health_event(
            ROLLBACK, at,
            f"{reason} at step {at}: restored the checkpoint of step {ckpt.step} and scaled both learning rates "
            f"to {record.lr_scale:g}× the spec's (rollback {record.rollbacks} of {limit})",
        ))
        return self.step

    # ----------------------------------------------------------------- sampling

    @torch.inference_mode()
    def sample(self, n: int, seed: int = 0, *, use_ema: bool = True) -> torch.Tensor:
        return generate(self.ema.ema_model if use_ema else self.g, n, seed, self.spec.model.latent_dim,
                        self.spec.model.num_classes, self.device)


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """``requires_grad=False`` on the module's trainable parameters inside the block (restored after)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _host_values(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """The logged scalars as floats, with one synchronising copy (not one per value)."""
    if not values:
        return {}
    names = list(values)
    device = values[names[0]].device
    stacked = torch.stack([values[k].detach().to(device, torch.float32).reshape(()) for k in names])
    return dict(zip(names, stacked.tolist(), strict=True))


def _grad_norm(module: nn.Module) -> torch.Tensor:
    norms = [p.grad.detach().norm(2) for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())

