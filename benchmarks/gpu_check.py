"""`make gpu-check`: is the trainer correct and fast on this GPU? One script, no network, ≤ 10 minutes on one
data-centre GPU; writes reports/gpu.md and reports/gpu.json.

It measures, on the device it finds (``--device``; CUDA when present):

1. **Throughput** of DCGAN 64×64 (``builtin:digits`` resized, batch 64, R1 every step) at fp32, bf16 and fp16: the
   real `Trainer` (a resumed attempt, as a pod runs it) against `benchmarks._bare.BareLoop`, a loop doing the same
   work and nothing else, in the same run - images/s and the ratio (target on a GPU: ≥ 0.9 in bf16 with R1);
2. **Host↔device synchronisations per step**, outside log steps and at a log step, counted by
   ``torch.cuda.set_sync_debug_mode("warn")`` (target: ≤ 1 outside log steps; fp16's GradScaler needs none with
   fused Adam); **peak memory** of the training step; the **GradScaler skip rate** (fp16: steps whose update was
   skipped for inf/NaN gradients);
3. **Bitwise resume** on the device: N steps, resume to 2N, equal to 2N straight (deterministic mode);
4. **Preemption under torchrun**: a 1-process ``ganops launch`` (the operator's multi-GPU command) gets SIGTERM:
   exit code, seconds to exit, one checkpoint, the operator's verdict;
5. **Inception evaluation**: seconds and peak memory of an evaluation with the FID Inception network (random
   weights: the cost is the same, no download);
6. **Serving on the device vs the CPU**: the same checkpoint and seed through `ganops.generator` on both; the
   largest and mean difference in 8-bit grey levels.

On a CPU (``--tiny``, what ``make test`` runs through tests/unit/trainer/test_gpu_check.py) the same code runs at toy
sizes so it never rots: synchronisation counts and GPU memory are reported as not applicable there. Exits 1 when a
check that applies failed.

Usage: python -m benchmarks.gpu_check [--tiny] [--device cuda|cpu] [--out reports] [--steps 200]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts: the bitwise-resume check needs it

import numpy as np
import torch

from benchmarks._bare import BareLoop
from benchmarks._report import environment
from ganops.api.loader import job_from_object
from ganops.api.spec import GanTrainingJob
from ganops.checkpoints import LatestRecord
from ganops.generator import generate, load_generator
from ganops.images import to_uint8
from ganops.operator.faults import attempt_outcome, decide
from ganops.operator.observe import JobView, PodView
from ganops.trainer import distributed as dist_utils
from ganops.trainer.checkpoint import CheckpointManager
from ganops.trainer.data import TensorDataset, load_dataset
from ganops.trainer.evaluate.inception import FIDInceptionV3
from ganops.trainer.evaluator import Evaluator
from ganops.trainer.loop import RunContext, Trainer

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16", "fp16")
TARGET_RATIO = 0.9
TARGET_SYNCS = 1.0


@dataclass(frozen=True)
class Sizes:
    image: int
    width: int
    latent: int
    batch: int
    steps: int  # measured steps per throughput run
    warmup: int
    sync_steps: int
    resume_steps: int
    eval_samples: int
    serve_samples: int

    @classmethod
    def for_mode(cls, tiny: bool, steps: int | None) -> Sizes:
        if tiny:
            return cls(image=16, width=8, latent=16, batch=16, steps=steps or 6, warmup=2, sync_steps=3,
                       resume_steps=3, eval_samples=10, serve_samples=16)
        return cls(image=64, width=64, latent=100, batch=64, steps=steps or 200, warmup=20, sync_steps=20,
                   resume_steps=20, eval_samples=10_000, serve_samples=256)


def job(sizes: Sizes, *, steps: int, precision: str = "fp32", r1: float = 1.0, deterministic: bool = False,
        gpus: int, metrics: list[str] | None = None, extractor: str = "digits",
        inception: str | None = None, log_every: int = 50, checkpoint_every: int = 10**6) -> GanTrainingJob:
    evaluation: dict[str, Any] = {"everySteps": 10**8, "metrics": metrics or [], "featureExtractor": extractor,
                                  "numSamples": max(10, sizes.eval_samples)}
    if inception:
        evaluation["inceptionWeightsUri"] = inception
    return job_from_object({
        "apiVersion": "ganops.io/v1alpha1", "kind": "GanTrainingJob", "metadata": {"name": "gpu-check"},
        "spec": {
            "model": {"architecture": "dcgan", "imageSize": sizes.image, "channels": 1, "latentDim": sizes.latent,
                      "width": sizes.width},
            "loss": {"type": "non-saturating", "r1": r1},
            "dataset": {"uri": "builtin:digits"},
            "training": {"steps": steps, "batchSize": sizes.batch, "seed": 0, "precision": precision,
                         "deterministic": deterministic, "logEverySteps": log_every, "matmulPrecision": "tf32"},
            "resources": {"gpusPerReplica": gpus},
            "checkpoint": {"everySteps": checkpoint_every, "keepLast": 2},
            "evaluation": evaluation,
        },
    })


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Timer:
        synchronize(self.device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def context(tmp: Path, name: str, device: torch.device) -> RunContext:
    return RunContext(namespace="gpu-check", job_name=name, checkpoint_uri=f"file://{tmp}/ckpt",
                      work_dir=tmp / "work", progress=False, dist=dist_utils.DistContext(device=device))


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        yield


def count_syncs(device: torch.device, fn: Callable[[], None], times: int) -> float | None:
    """Host↔device synchronisations per call of ``fn`` (CUDA's sync debug mode); None off CUDA."""
    if device.type != "cuda":
        return None
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(times):
                fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    return len(syncs) / times


# ------------------------------------------------------------------------------------------------ 1 + 2: throughput


def throughput(sizes: Sizes, device: torch.device, precision: str, tmp: Path) -> dict[str, Any]:
    gpus = 1 if device.type == "cuda" else 0
    name = f"tp-{precision}"
    ctx = context(tmp / name, name, device)
    with quiet():
        Trainer(job(sizes, steps=sizes.warmup, precision=precision, gpus=gpus), ctx).fit()  # warm-up attempt
    trainer = Trainer(job(sizes, steps=sizes.warmup + sizes.steps, precision=precision, gpus=gpus), ctx)
    with quiet(), Timer(device) as ours:
        trainer.fit()  # resumes: the measured attempt (log steps, the final checkpoint, EMA: all of it)
    data = load_dataset(trainer.spec, cache_dir=tmp / "data-cache")
    bare = BareLoop(trainer.spec, data.data, device)  # type: ignore[attr-defined]
    for _ in range(sizes.warmup):
        bare.step()
    with Timer(device) as base:
        for _ in range(sizes.steps):
            bare.step()
    images = sizes.steps * sizes.batch
    # Synchronisations and memory of the step itself, outside and at a log step.
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    outside = count_syncs(device, lambda: trainer.train_step(measure=False), sizes.sync_steps)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    def log_step() -> None:
        trainer.train_step(measure=True)
        from ganops.trainer.loop import _host_values  # the loop's own conversion at a log step

        _host_values(trainer.last_values)

    at_log = count_syncs(device, log_step, 1)
    # GradScaler skip rate: an update skipped for inf/NaN gradients halves the scale.
    skipped = steps = 0
    if trainer.scaler_d.is_enabled():
        for _ in range(sizes.sync_steps):
            before = (trainer.scaler_d.get_scale(), trainer.scaler_g.get_scale())
            trainer.train_step()
            after = (trainer.scaler_d.get_scale(), trainer.scaler_g.get_scale())
            skipped += sum(a < b for a, b in zip(after, before, strict=True))
            steps += 2
    return {
        "precision": precision,
        "trainer_images_per_second": images / ours.wall, "bare_images_per_second": images / base.wall,
        "ratio_wall": (images / ours.wall) / (images / base.wall),
        "ratio_cpu": (images / ours.cpu) / (images / base.cpu) if ours.cpu and base.cpu else None,
        "syncs_per_step": outside, "syncs_at_log_step": at_log, "peak_memory_bytes": peak,
        "grad_scaler_skip_rate": (skipped / steps) if steps else None,
    }


# ------------------------------------------------------------------------------------------------ 3: bitwise resume


def bitwise_resume(sizes: Sizes, device: torch.device, tmp: Path) -> dict[str, Any]:
    gpus = 1 if device.type == "cuda" else 0
    n = sizes.resume_steps

    def final(root: Path, steps: int) -> dict[str, torch.Tensor]:
        trainer = Trainer(job(sizes, steps=steps, deterministic=True, gpus=gpus, checkpoint_every=n),
                          context(root, "resume", device))
        with quiet():
            trainer.fit()
        return {**{f"g.{k}": v.cpu() for k, v in trainer.g.state_dict().items()},
                **{f"d.{k}": v.cpu() for k, v in trainer.d.state_dict().items()},
                **{f"ema.{k}": v.cpu() for k, v in trainer.ema.ema_model.state_dict().items()}}

    try:
        straight = final(tmp / "straight", 2 * n)
        final(tmp / "resumed", n)
        resumed = final(tmp / "resumed", 2 * n)
        different = [k for k in straight if not torch.equal(straight[k], resumed[k])]
        return {"steps": [n, 2 * n], "bitwise": not different, "differing_tensors": different[:10]}
    except RuntimeError as exc:  # e.g. an op without a deterministic implementation on this device
        return {"steps": [n, 2 * n], "bitwise": False, "error": str(exc)[:500]}
    finally:
        torch.use_deterministic_algorithms(False)


# ------------------------------------------------------------------------------------------------ 4: torchrun SIGTERM


def torchrun_sigterm(sizes: Sizes, device: torch.device, tmp: Path) -> dict[str, Any]:
    total = 10**6
    spec = job(sizes, steps=total, r1=0.0, gpus=1 if device.type == "cuda" else 0, log_every=2)
    job_file = tmp / "sigterm.yaml"
    from ganops.api.loader import dump_job

    job_file.write_text(dump_job(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "GANOPS_CHECKPOINT_URI": f"file://{tmp}/sigterm-ckpt", "GANOPS_NAMESPACE": "gpu-check",
           "GANOPS_METRICS_PORT": "0", "GANOPS_WORK_DIR": str(tmp / "sigterm-work"), "GANOPS_LOG_FORMAT": "json",
           "GANOPS_TERMINATION_GRACE_SECONDS": "30", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "ganops.cli", "launch", "--nproc-per-node=1", "--max-restarts=0", "--standalone",
               "--nnodes=1", "-m", "ganops.cli", "train", "--job", str(job_file), "--no-progress"]
    out = tmp / "sigterm.log"
    with out.open("w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while '"progress"' not in out.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    return {"exit_code": proc.poll(), "error": "the trainer never reported progress",
                            "log_tail": out.read_text()[-2000:]}
                time.sleep(0.2)
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
            seconds = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    manager = CheckpointManager(f"file://{tmp}/sigterm-ckpt/gpu-check/gpu-check")
    record = manager.latest_record()
    steps = manager.steps()
    verdict = None
    if record is not None:
        pod = PodView(name="gpu-check-0", attempt=1, index=0, phase="Succeeded" if code == 0 else "Failed",
                      exit_code=code)
        outcome = attempt_outcome(JobView(name="gpu-check", attempt=1), [pod], replicas=1, total_steps=total,
                                  record=LatestRecord(step=int(record["step"]), uri=str(record["uri"])))
        decision = decide(outcome, preemptions=0, failures=0, backoff_limit=0)
        verdict = None if decision is None else decision.reason
    return {"exit_code": code, "seconds_to_exit": round(seconds, 2), "checkpoints": steps, "verdict": verdict,
            "passed": code == 0 and len(steps) == 1 and verdict == "Preempted"}


# ------------------------------------------------------------------------------------------------ 5: evaluation


def inception_evaluation(sizes: Sizes, device: torch.device, tmp: Path) -> dict[str, Any]:
    weights = tmp / "inception-random.pt"
    torch.save(FIDInceptionV3().state_dict(), weights)  # random weights: the same cost as the real ones
    spec = job(sizes, steps=1, gpus=1 if device.type == "cuda" else 0, metrics=["fid", "kid", "precision_recall"],
               extractor="inception", inception=weights.as_uri()).spec
    # As many distinct real images as samples (digits has 1,797: too few for a 2048-d covariance), uint8 as a folder
    # of 8-bit files would be; only the cost matters here.
    pixels = torch.randint(0, 256, (spec.evaluation.num_samples, 1, sizes.image, sizes.image), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    dataset = TensorDataset(None, None, None, "synthetic://gpu-check", pixels=pixels)
    evaluator = Evaluator(spec, dataset, reference_root=f"file://{tmp}/eval-ref", device=device)
    torch.manual_seed(0)
    from ganops.models import build_models

    g, _ = build_models(spec.model)
    g.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with quiet(), Timer(device) as first:
        evaluator.evaluate(g, 0)  # computes the reference too
    with quiet(), Timer(device) as second:
        report = evaluator.evaluate(g, 0)  # the reference from memory
    assert report is not None
    return {"samples": spec.evaluation.num_samples, "seconds_with_reference": round(first.wall, 2),
            "seconds": round(second.wall, 2), "details": report.details.get("seconds"), "metrics": report.metrics,
            "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}


# ------------------------------------------------------------------------------------------------ 6: serving


def serving_device_vs_cpu(sizes: Sizes, device: torch.device, tmp: Path) -> dict[str, Any]:
    uri = f"file://{tmp}/resumed/ckpt/gpu-check/resume"  # the resume check's checkpoints
    cpu_g, manifest = load_generator(uri, device="cpu")
    dev_g, _ = load_generator(uri, device=str(device))
    latent, classes = manifest["generation"]["latentDim"], manifest["generation"]["numClasses"]
    with torch.inference_mode():
        on_cpu = generate(cpu_g, sizes.serve_samples, 7, latent, classes, torch.device("cpu")).numpy()
        on_dev = generate(dev_g, sizes.serve_samples, 7, latent, classes, device).numpy()
    grey = np.abs(to_uint8(on_cpu).astype(np.int16) - to_uint8(on_dev).astype(np.int16))
    return {"device": str(device), "samples": sizes.serve_samples, "seed": 7,
            "max_grey_level_difference": int(grey.max()), "mean_grey_level_difference": float(grey.mean())}


# ------------------------------------------------------------------------------------------------ report


def fmt(value: Any, spec: str = ".1f") -> str:
    if value is None:
        return "n/a"
    return format(value, spec) if isinstance(value, float) else str(value)


def markdown(figures: dict[str, Any]) -> str:
    device = figures["device"]
    rows = "\n".join(
        f"| {r['precision']} | {fmt(r['bare_images_per_second'])} | {fmt(r['trainer_images_per_second'])} "
        f"| {fmt(r['ratio_wall'], '.3f')} | {fmt(r['syncs_per_step'], '.2f')} | {fmt(r['syncs_at_log_step'], '.0f')} "
        f"| {fmt(None if r['peak_memory_bytes'] is None else r['peak_memory_bytes'] / 2**20, '.0f')} "
        f"| {fmt(r['grad_scaler_skip_rate'], '.3f')} |" for r in figures["throughput"])
    resume, sigterm, evaluation, serving = (figures[k] for k in ("resume", "torchrun_sigterm", "evaluation", "serving"))
    checks = "\n".join(f"- {'PASS' if ok else 'FAIL' if ok is False else 'n/a '} {what}"
                       for what, ok in figures["checks"].items())
    return f"""# gpu-check on {device} ({figures['mode']} sizes)

{figures['environment']['time']}, torch {figures['environment']['torch']}, {figures.get('gpu') or 'no GPU'}.
DCGAN {figures['sizes']['image']}×{figures['sizes']['image']} (builtin:digits), batch {figures['sizes']['batch']},
width {figures['sizes']['width']}, R1 γ=1 every step, {figures['sizes']['steps']} measured steps per run.

{checks}

## Throughput: the trainer against a bare loop doing the same work (`benchmarks._bare.BareLoop`)

| precision | bare img/s | trainer img/s | ratio | syncs/step | syncs at a log step | peak MiB | GradScaler skips |
|---|---|---|---|---|---|---|---|
{rows}

Targets on a GPU: ratio ≥ {TARGET_RATIO} in bf16 with R1; ≤ {TARGET_SYNCS:g} host↔device synchronisation per step
outside log steps (counted with `torch.cuda.set_sync_debug_mode("warn")`; n/a on the CPU).

## Bitwise resume ({resume['steps'][0]} steps, resumed to {resume['steps'][1]}, deterministic)

bitwise: **{resume['bitwise']}** {resume.get('error', '') or ''}

## Preemption under torchrun (`ganops launch`, 1 process, SIGTERM)

exit code **{sigterm.get('exit_code')}** after {sigterm.get('seconds_to_exit')} s; checkpoints
{sigterm.get('checkpoints')}; the operator's verdict: {sigterm.get('verdict')}.

## Inception evaluation ({evaluation['samples']} samples, FID + KID + precision/recall)

{evaluation['seconds_with_reference']} s with the reference statistics, {evaluation['seconds']} s without; peak memory
{fmt(None if evaluation['peak_memory_bytes'] is None else evaluation['peak_memory_bytes'] / 2**20, '.0f')} MiB.

## Serving: {serving['device']} against the CPU (same checkpoint, seed {serving['seed']})

{serving['samples']} samples: largest difference {serving['max_grey_level_difference']} grey level(s), mean
{serving['mean_grey_level_difference']:.4f}. {serving.get('error', '')}

Reproduce: `{figures['command']}`
"""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tiny", action="store_true", help="toy sizes (what make test runs on a CPU)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "reports")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per throughput run")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.cuda.set_device(0)
        device = torch.device("cuda", 0)
    sizes = Sizes.for_mode(args.tiny, args.steps)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ganops-gpu-check-") as name:
        tmp = Path(name)
        rows = [throughput(sizes, device, p, tmp) for p in PRECISIONS]
        resume = bitwise_resume(sizes, device, tmp)
        sigterm = torchrun_sigterm(sizes, device, tmp)
        evaluation = inception_evaluation(sizes, device, tmp)
        try:
            serving = serving_device_vs_cpu(sizes, device, tmp)
        except Exception as exc:  # no checkpoint when the resume check failed
            serving = {"device": str(device), "samples": sizes.serve_samples, "seed": 7, "error": str(exc)[:300],
                       "max_grey_level_difference": 255, "mean_grey_level_difference": float("nan")}
    bf16 = next(r for r in rows if r["precision"] == "bf16")
    on_gpu = device.type == "cuda"
    figures: dict[str, Any] = {
        "environment": environment(), "device": str(device), "mode": "tiny" if args.tiny else "full",
        "gpu": torch.cuda.get_device_name(device) if on_gpu else None,
        "sizes": sizes.__dict__, "throughput": rows, "resume": resume, "torchrun_sigterm": sigterm,
        "evaluation": evaluation, "serving": serving, "seconds": round(time.perf_counter() - started, 1),
        "command": "python -m benchmarks.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:]),
        "checks": {
            f"trainer ≥ {TARGET_RATIO}× the bare loop's images/s in bf16 with R1": (
                bf16["ratio_wall"] >= TARGET_RATIO if on_gpu and not args.tiny else None),
            f"≤ {TARGET_SYNCS:g} host↔device sync per step outside log steps": (
                all(r["syncs_per_step"] <= TARGET_SYNCS for r in rows) if on_gpu else None),
            "bitwise resume": resume["bitwise"],
            "SIGTERM under torchrun: one checkpoint, exit 0, a preemption": sigterm.get("passed", False),
            "serving on the device matches the CPU within 1 grey level": serving["max_grey_level_difference"] <= 1,
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")
    (args.out / "gpu.md").write_text(markdown(figures))
    print(markdown(figures))
    print(f"gpu-check: {figures['seconds']} s")
    return figures


def failed_checks(figures: dict[str, Any]) -> list[str]:
    """The checks that ran and failed (None: not applicable on this device or at these sizes)."""
    return [what for what, ok in figures["checks"].items() if ok is False]


if __name__ == "__main__":
    failed = failed_checks(main())
    if failed:  # `make gpu-check` goes red: the report says what failed and by how much
        print("gpu-check FAILED: " + "; ".join(failed), file=sys.stderr)
        sys.exit(1)
