"""Fréchet distance: speed and agreement of ganops' implementations against a scipy reference.

Random ReLU features shaped like Inception pool3 (10k × 2048 by default, correlated through a random mixing
matrix) for a real set, a shifted/scaled fake set and a second sample of the real distribution. The
reference is pytorch-fid's formula written out here (``scipy.linalg.sqrtm``); it is compared with ganops'
``frechet_distance_fast`` (Cholesky + symmetric eigenvalues) for value and speed.
Writes ``reports/frechet.json`` and ``reports/frechet.md``.

    .venv/bin/python benchmarks/frechet.py [--n 10000] [--d 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import write
from ganops.trainer.evaluate.frechet import feature_statistics, frechet_distance_fast


def reference_fid(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """pytorch-fid's calculate_frechet_distance, independent of ganops' code."""
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            covmean = scipy.linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def timed(fn: Callable[[], float], repeats: int) -> tuple[float, list[float]]:
    value = 0.0
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return value, times


def compare(
    mu_r: np.ndarray, s_r: np.ndarray, mu_f: np.ndarray, s_f: np.ndarray, repeats: int, with_numpy: bool
) -> dict[str, Any]:
    ref, ref_t = timed(lambda: reference_fid(mu_r, s_r, mu_f, s_f), 1)
    fast, fast_t = timed(lambda: frechet_distance_fast(mu_r, s_r, mu_f, s_f, backend="torch"), repeats)
    out = {
        "reference_scipy": ref,
        "fast": fast,
        "fast_abs_diff": abs(fast - ref),
        "fast_rel_diff": abs(fast - ref) / abs(ref),
        "reference_seconds": ref_t[0],
        "fast_seconds_median": statistics.median(fast_t),
        "fast_seconds": fast_t,
        "speedup": ref_t[0] / statistics.median(fast_t),
    }
    if with_numpy:
        fast_np, fast_np_t = timed(lambda: frechet_distance_fast(mu_r, s_r, mu_f, s_f, backend="numpy"), 1)
        out.update(
            fast_numpy=fast_np, fast_numpy_rel_diff=abs(fast_np - ref) / abs(ref), fast_numpy_seconds=fast_np_t[0]
        )
    return out


def features(rng: np.random.Generator, mixing: np.ndarray, n: int, scale: float, shift: float) -> np.ndarray:
    z = rng.standard_normal((n, mixing.shape[0]), dtype=np.float32)
    out: np.ndarray = np.maximum(z @ mixing * scale + shift, 0.0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--numpy", action="store_true", help="also time the numpy (OpenBLAS) backend once per case")
    args = parser.parse_args()
    started = time.perf_counter()
    load_before = os.getloadavg()[0]

    rng = np.random.default_rng(args.seed)
    mixing = (rng.standard_normal((args.d, args.d), dtype=np.float32) / np.sqrt(args.d)).astype(np.float32)
    start = time.perf_counter()
    real = features(rng, mixing, args.n, 1.0, 0.0)
    stats_start = time.perf_counter()
    mu_r, s_r = feature_statistics(real)
    stats_seconds = time.perf_counter() - stats_start
    del real
    sets = {
        "shifted": feature_statistics(features(rng, mixing, args.n, 1.1, 0.05)),
        "same_distribution": feature_statistics(features(rng, mixing, args.n, 1.0, 0.0)),
    }
    setup_seconds = time.perf_counter() - start

    cases = {name: compare(mu_r, s_r, mu_f, s_f, args.repeats, args.numpy) for name, (mu_f, s_f) in sets.items()}
    for name, c in cases.items():
        print(f"{name}: reference {c['reference_scipy']:.9g} ({c['reference_seconds']:.2f} s)  "
              f"fast {c['fast']:.9g} ({c['fast_seconds_median']:.2f} s)  rel diff {c['fast_rel_diff']:.2e}")

    total = time.perf_counter() - started
    figures = {
        "n": args.n,
        "d": args.d,
        "repeats": args.repeats,
        "statistics_seconds_per_set": stats_seconds,
        "setup_seconds": setup_seconds,
        "total_seconds": total,
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0], "cpus": os.cpu_count()},
        "cases": cases,
        "agreement_ok": all(
            max(c["fast_rel_diff"], c.get("fast_numpy_rel_diff", 0.0)) < 1e-6 for c in cases.values()
        ),
    }
    rows = "\n".join(
        f"| {name} | {c['reference_scipy']:.9g} | {c['fast']:.9g} | {c['fast_rel_diff']:.1e} | "
        f"{c['reference_seconds']:.2f} | {c['fast_seconds_median']:.2f} | {c['speedup']:.1f}× | "
        + (f"{c['fast_numpy_rel_diff']:.1e} | {c['fast_numpy_seconds']:.2f} |" if "fast_numpy" in c else "– | – |")
        for name, c in cases.items()
    )
    markdown = f"""# Fréchet distance: fast path vs scipy reference

{args.n} × {args.d} random ReLU features per set (correlated through a random mixing matrix), float64 statistics.
Reference: pytorch-fid's formula with `scipy.linalg.sqrtm` written out in the benchmark. `fast`:
`frechet_distance_fast` (Cholesky of sigma1, eigenvalues of `L.T @ sigma2 @ L`) with torch's LAPACK (MKL, the
default when torch is installed) and, with `--numpy`, numpy's (OpenBLAS, which slows badly when the cores are
shared).

| case | reference (scipy sqrtm) | fast (torch) | relative diff | reference s | fast s (median of {args.repeats}) \
| speedup | fast (numpy) rel. diff | fast (numpy) s |
|---|---|---|---|---|---|---|---|---|
{rows}

ganops' `frechet_distance` is this same pytorch-fid formula (its agreement with an independent reference is a
unit test, `tests/unit/trainer/evaluate/test_frechet.py`), so it costs what the reference column shows.
The "same distribution" FID is far from 0: at n = 10k and d = 2048 the estimator's bias dominates.

Statistics (mean + covariance) of one set: {stats_seconds:.2f} s. Whole benchmark: {total:.1f} s
(1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs: other work
on the machine slows every figure, the scipy reference most).
Agreement within 1e-6 relative: {"yes" if figures["agreement_ok"] else "NO"}.
"""
    path = write("frechet", figures, markdown)
    print(f"wrote {path} and {path.with_suffix('.json')} in {total:.1f} s")
    return 0 if figures["agreement_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
