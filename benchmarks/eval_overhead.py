"""Share of training wall time spent evaluating, on the digits example job. Target: ≤ 5 %.

Trains `manifests/examples/digits.yaml` with the real `Trainer` (checkpoints, EMA, health probes, progress all on)
under two evaluation settings: the example's own (`evaluation` block of the file) and the spec defaults'
cadence and size (everySteps 1000, numSamples 2000, the file's metrics). Evaluation time is what
`Evaluator.evaluate` spends (first-time real reference statistics included), divided by `fit()`'s wall time.
A second run of each setting against the same checkpoint store shows the steady state, with the reference
statistics loaded from the object store cache instead of computed. The diversity probe of the health checks
is timed too (it runs at every log step).

Usage: python -m benchmarks.eval_overhead [--steps 1500] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks._report import write
from ganops.api.loader import job_from_object
from ganops.trainer.health import DiversityProbe
from ganops.trainer.loop import RunContext, Trainer

EXAMPLE = Path(__file__).resolve().parents[1] / "manifests" / "examples" / "digits.yaml"
TARGET_PERCENT = 5.0


class TimedProbe:
    """Wraps the trainer's diversity probe to add up its wall time."""

    def __init__(self, probe: DiversityProbe) -> None:
        self.probe = probe
        self.seconds = 0.0

    def __call__(self, g: torch.nn.Module) -> float:
        started = time.perf_counter()
        try:
            return self.probe(g)
        finally:
            self.seconds += time.perf_counter() - started


def run(obj: dict[str, Any], store: Path, name: str) -> dict[str, Any]:
    parsed = job_from_object(obj)
    ctx = RunContext(namespace="bench", job_name=name, checkpoint_uri=f"file://{store}", work_dir=store / "work",
                     progress=False)
    trainer = Trainer(parsed, ctx)
    assert trainer.evaluator is not None and trainer.diversity_probe is not None
    timed = TimedProbe(trainer.diversity_probe)
    trainer.diversity_probe = timed  # type: ignore[assignment]
    evaluations: list[dict[str, Any]] = []
    trainer.hooks.append(lambda t, moment: evaluations.append(
        {"step": t.step, **t.last_evaluation.details["seconds"], "metrics": t.last_evaluation.numeric()}
    ) if moment == "evaluated" and t.last_evaluation is not None else None)
    with contextlib.redirect_stderr(io.StringIO()):
        started = time.perf_counter()
        trainer.fit()
        wall = time.perf_counter() - started
    eval_s = trainer.evaluator.seconds_total
    return {
        "wall_seconds": round(wall, 2),
        "evaluation_seconds": round(eval_s, 3),
        "evaluation_percent": round(100 * eval_s / wall, 2),
        "probe_seconds": round(timed.seconds, 3),
        "probe_percent": round(100 * timed.seconds / wall, 2),
        "reference_computed": trainer.evaluator.reference_computations,
        "evaluations": evaluations,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the example's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    if args.steps:
        base["spec"]["training"]["steps"] = args.steps
    steps = base["spec"]["training"]["steps"]
    example_eval = dict(base["spec"]["evaluation"])
    settings = {
        "example": example_eval,
        "spec_defaults": {**example_eval, "everySteps": 1000, "numSamples": 2000},
    }
    results: dict[str, Any] = {}
    for label, evaluation in settings.items():
        obj = {**base, "spec": {**base["spec"], "evaluation": evaluation}}
        with tempfile.TemporaryDirectory() as tmp:
            first = run(obj, Path(tmp), f"{label}-a")  # computes the real reference statistics
            second = run(obj, Path(tmp), f"{label}-b")  # another job on the same data: reference from the cache
        results[label] = {"evaluation": evaluation, "first_run": first, "cached_reference_run": second}
        print(f"{label}: {first['evaluation_percent']} % (first run), {second['evaluation_percent']} % (cached "
              f"reference); probe {second['probe_percent']} %", flush=True)
    worst = max(r[k]["evaluation_percent"] for r in results.values() for k in ("first_run", "cached_reference_run"))
    rows = []
    for label, r in results.items():
        e = r["evaluation"]
        for kind in ("first_run", "cached_reference_run"):
            x = r[kind]
            rows.append(
                f"| {label} | every {e['everySteps']}, n={e['numSamples']}, {'/'.join(e['metrics'])} | "
                f"{kind.replace('_', ' ')} | {len(x['evaluations'])} | {x['evaluation_seconds']} | "
                f"{x['wall_seconds']} | "
                f"**{x['evaluation_percent']} %** | {x['probe_percent']} % |"
            )
    per_eval = "\n".join(
        f"| {label} | {ev['step']} | {ev['reference']} | {ev['generate_and_features']} | {ev['metrics']} | "
        f"{ev['total']} |"
        for label, r in results.items() for ev in r["first_run"]["evaluations"]
    )
    md = f"""# Evaluation overhead during training (digits example, {steps} steps, {args.threads} CPU threads)

Job: `manifests/examples/digits.yaml` (DCGAN 16×16, batch 64), real `Trainer` with checkpoints, EMA, progress and
health probes on. Evaluation = `Evaluator.evaluate` (EMA generator, digits features, metrics), including the one-time
real reference statistics in the first run. Target: ≤ {TARGET_PERCENT:g} % of wall time.

| setting | evaluation | run | evaluations | eval s | wall s | eval share | diversity probe share |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Worst case: **{worst} %** — {"meets" if worst <= TARGET_PERCENT else "DOES NOT meet"} the {TARGET_PERCENT:g} % target.

Seconds per evaluation (first run):

| setting | step | reference | generate + features | metrics | total |
|---|---|---|---|---|---|
{per_eval}

Reproduce: `python -m benchmarks.eval_overhead --steps {steps} --threads {args.threads}`
"""
    print(write("eval_overhead", {"steps": steps, "target_percent": TARGET_PERCENT, "worst_percent": worst,
                                  "results": results}, md).read_text())


if __name__ == "__main__":
    main()
