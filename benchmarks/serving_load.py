"""Load on the serving API: a real server (``python -m ganops.serving`` under uvicorn on 127.0.0.1, its own
process) and a load generator in this process (raw HTTP/1.1 keep-alive connections on asyncio: ~0.1 ms of client
CPU per request, so the client takes little from the two cores the server also needs).

Model: a 64×64 RGB DCGAN (pytorch/examples' sizes: latent 100, width 64) with random weights whose batch-norm
statistics were calibrated on random latents, so outputs are varied textures that pass the degenerate filter; a
memorization index of the digits training set (resized to 64 px RGB) beside the checkpoint. Filters: degenerate,
nsfw (see below), memorization; every returned image is watermarked and PNG-encoded.

(a) throughput: samples/s at 32 concurrent clients (closed loop, n=1 per request) for the micro-batching server and
    the naive one (``batching.enabled=false``: one request, one forward pass, same model, same filters), in the same
    run, for each ``--torch-threads`` value. Target ≥ 4×.
(b) latency: open-loop arrivals at rising rates (n=1), p50/p95/p99 measured from each request's scheduled send
    time (no coordinated omission); the highest rate with p95 ≤ 200 ms. Target ≥ 25 requests/s. Run twice: with
    the NSFW size policy (64 px < ``nsfw_min_image_size`` 96: the detector is skipped, it finds nothing that small)
    and with the detector forced on every image (``nsfw_min_image_size=0``).
(c) memory: the server's RSS after warm-up and after ``--soak-seconds`` (default 120) of the closed-loop load.

Usage: python -m benchmarks.serving_load [--soak-seconds 120] [--rates 5,10,...] [--step-seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._report import write
from ganops import storage
from ganops.api.spec import ModelSpec
from ganops.models import build_models
from ganops.serving.safety import MemorizationIndex
from ganops.trainer.checkpoint import CheckpointManager
from ganops.trainer.data import digits

IMAGE_SIZE, CHANNELS, LATENT = 64, 3, 100
P95_TARGET_S = 0.200
WATERMARK_KEY = "hex:" + "42" * 32


# ------------------------------------------------------------------------------------------------ the model


def make_checkpoint(root: Path, width: int) -> str:
    """A 64 px DCGAN checkpoint (random weights, calibrated batch norm) with a memorization index beside it."""
    spec = ModelSpec(architecture="dcgan", image_size=IMAGE_SIZE, channels=CHANNELS, latent_dim=LATENT, width=width)
    torch.manual_seed(0)
    g, d = build_models(spec)
    for module in g.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batches
    g.train()
    with torch.no_grad():
        for _ in range(8):
            g(torch.randn(64, LATENT))
    g.eval()
    state = {k: v.detach().clone() for k, v in g.state_dict().items()}
    weights = {"generator": state, "generator_ema": state, "discriminator": d.state_dict()}
    manager = CheckpointManager((root / "ckpt").as_uri())
    manager.save(1, weights, {}, info={"model": spec.model_dump(mode="json", by_alias=True, exclude_none=True)})
    step_uri = storage.join(manager.root, "step-000000001")
    index_uri = storage.join(step_uri, "memorization_index.safetensors")
    train = digits(image_size=IMAGE_SIZE, channels=CHANNELS).data.numpy()
    storage.open_store(index_uri).put_bytes(index_uri, MemorizationIndex.build(train).to_bytes())
    return step_uri


# ----------------------------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (robust to other load on the machine, unlike samples/s)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def serve(checkpoint: str, work: Path, **env: str) -> Iterator[tuple[int, int]]:
    """``python -m ganops.serving`` in its own process group; yields (port, pid) once /readyz answers 200."""
    port = free_port()
    environment = {
        **os.environ,
        "GANOPS_SERVING_CHECKPOINT_URI": checkpoint,
        "GANOPS_SERVING_PORT": str(port),
        "GANOPS_SERVING_LOG_LEVEL": "warning",
        "GANOPS_SERVING_LIMITS__RATE_LIMIT_PER_SECOND": "0",
        "GANOPS_SERVING_LIMITS__ADDRESS_RATE_LIMIT_PER_SECOND": "0",
        "GANOPS_SERVING_SERVER__LIMIT_CONCURRENCY": "8192",
        "GANOPS_SERVING_BATCHING__MAX_QUEUE": "4096",
        "GANOPS_SERVING_SAFETY__AUDIT_URI": (work / "audit").as_uri(),
        "GANOPS_SERVING_SAFETY__WATERMARK_KEY": WATERMARK_KEY,
        **env,
    }
    log = (work / f"server-{port}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "ganops.serving"], env=environment, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: see {log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("server not ready in 120 s")
            time.sleep(0.2)
        yield port, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


# ------------------------------------------------------------------------------------------- the load client


class Connection:
    """One keep-alive HTTP/1.1 connection: POST JSON, read status and body (Content-Length framed)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        payload = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        for attempt in range(2):
            reused = self.writer is not None
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            assert self.reader is not None and self.writer is not None
            self.writer.write(head + payload)
            status_line = await self.reader.readline()
            if status_line:
                break
            await self.close()  # the server closed an idle keep-alive connection: reconnect once
            if not reused or attempt:
                raise ConnectionResetError("the server closed the connection")
        assert self.reader is not None
        status = int(status_line.split()[1])
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        data = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    samples: int = 0
    blocked: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


def _record(tally: Tally, status: int, data: bytes, latency: float) -> None:
    if status != 200:
        tally.error(str(status))
        return
    body = json.loads(data)
    tally.latencies.append(latency)
    tally.samples += sum(1 for s in body["samples"] if s["allowed"])
    tally.blocked += int(body["blocked"])


async def closed_loop(port: int, clients: int, seconds: float, n: int, warmup: float = 2.0) -> Tally:
    """``clients`` workers, each sending its next request when the previous answer arrives."""
    tally = Tally()
    measuring = False
    stop_at = time.perf_counter() + warmup + seconds

    async def worker(index: int) -> None:
        rng = random.Random(index)
        conn = Connection(port)
        while time.perf_counter() < stop_at:
            sent = time.perf_counter()
            try:
                status, data = await conn.post("/v1/generate", {"n": n, "seed": rng.randrange(2**62)})
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                if measuring:
                    tally.error(type(exc).__name__)
                await conn.close()
                continue
            if measuring:
                _record(tally, status, data, time.perf_counter() - sent)
        await conn.close()

    async def start_measuring() -> None:
        nonlocal measuring
        await asyncio.sleep(warmup)
        measuring = True

    await asyncio.gather(start_measuring(), *(worker(i) for i in range(clients)))
    return tally


async def open_loop(port: int, rate: float, seconds: float, n: int = 1) -> Tally:
    """Requests at fixed intervals whatever the answers (latency counted from the scheduled time)."""
    tally = Tally()
    idle: list[Connection] = []
    rng = random.Random(int(rate * 1000))
    start = time.perf_counter() + 0.2
    count = int(rate * seconds)

    async def one(scheduled: float) -> None:
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        conn = idle.pop() if idle else Connection(port)
        try:
            status, data = await conn.post("/v1/generate", {"n": n, "seed": rng.randrange(2**62)})
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            tally.error(type(exc).__name__)
            await conn.close()
            return
        _record(tally, status, data, time.perf_counter() - scheduled)
        idle.append(conn)

    await asyncio.gather(*(one(start + i / rate) for i in range(count)))
    for conn in idle:
        await conn.close()
    return tally


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def latency_row(rate: float, seconds: float, tally: Tally) -> dict[str, Any]:
    ms = [v * 1000 for v in tally.latencies]
    return {
        "rate": rate,
        "achieved_rps": round(len(ms) / seconds, 2),
        "p50_ms": round(percentile(ms, 50), 1),
        "p95_ms": round(percentile(ms, 95), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "errors": sum(tally.errors.values()),
        "ok": bool(ms) and percentile(ms, 95) <= P95_TARGET_S * 1000 and not tally.errors,
    }


# ------------------------------------------------------------------------------------------------------ runs


def forward_ceiling(checkpoint: str, threads: int, batch: int) -> dict[str, float]:
    """The generator alone, in this process, as the server runs it (eval, ``inference_mode``, channels-last):
    ms per sample at batch 1 and at ``batch``, by the wall clock and by CPU time (``time.process_time``: robust to
    other load on the machine). Their ratio bounds what batching can gain when nothing else costs anything."""
    from ganops.generator import load_generator

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    g, _ = load_generator(checkpoint)
    g = g.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    wall: dict[int, float] = {}
    cpu: dict[int, float] = {}
    with torch.inference_mode():
        for size in (1, batch):
            z = torch.randn(size, LATENT)
            g(z)
            runs = max(5, 192 // size)
            started, cpu_started = time.perf_counter(), time.process_time()
            for _ in range(runs):
                g(z)
            wall[size] = (time.perf_counter() - started) / runs / size * 1000
            cpu[size] = (time.process_time() - cpu_started) / runs / size * 1000
        g16 = g.to(torch.bfloat16)
        bf16: dict[int, float] = {}
        for size in (1, batch):
            z16 = torch.randn(size, LATENT, dtype=torch.bfloat16)
            g16(z16)
            runs = max(5, 192 // size)
            cpu_started = time.process_time()
            for _ in range(runs):
                g16(z16)
            bf16[size] = (time.process_time() - cpu_started) / runs / size * 1000
    torch.set_num_threads(before)
    return {
        "bf16_cpu_ms_per_sample_batch_1": round(bf16[1], 2),
        f"bf16_cpu_ms_per_sample_batch_{batch}": round(bf16[batch], 2),
        "ms_per_sample_batch_1": round(wall[1], 2),
        f"ms_per_sample_batch_{batch}": round(wall[batch], 2),
        "ratio": round(wall[1] / wall[batch], 2),
        "cpu_ms_per_sample_batch_1": round(cpu[1], 2),
        f"cpu_ms_per_sample_batch_{batch}": round(cpu[batch], 2),
        "cpu_ratio": round(cpu[1] / cpu[batch], 2),
    }


def workers_for(threads: int) -> int:
    """Batch workers of the micro-batching server: one per ``threads`` cores (the naive server ignores it)."""
    return max(1, (os.cpu_count() or 1) // threads)


def throughput(checkpoint: str, work: Path, threads: list[int], clients: int, seconds: float, n: int,
               rounds: int, bf16: bool = True) -> list[dict[str, Any]]:
    """Per torch-thread setting: the naive server and the micro-batching one (fp32, same model, same filters),
    alternating; with ``bf16`` also both at ``precision: bf16`` (opt-in), the bf16 micro-batching server being
    compared with the faster of the two naive ones."""
    rows = []
    modes = ("naive", "batched", "naive-bf16", "batched-bf16") if bf16 else ("naive", "batched")
    for t in threads:
        measured: dict[str, list[float]] = {mode: [] for mode in modes}
        cpu_ms: dict[str, list[float]] = {mode: [] for mode in modes}
        p95: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(rounds):  # alternate, so drift of the shared machine hits both alike
            for mode in modes:
                env = {"GANOPS_SERVING_TORCH_THREADS": str(t),
                       "GANOPS_SERVING_BATCHING__ENABLED": "false" if mode.startswith("naive") else "true",
                       "GANOPS_SERVING_BATCHING__WORKERS": str(workers_for(t)),
                       "GANOPS_SERVING_PRECISION": "bf16" if mode.endswith("bf16") else "fp32"}
                with serve(checkpoint, work, **env) as (port, pid):
                    asyncio.run(closed_loop(port, clients, 2.0, n, warmup=0))
                    cpu_before = cpu_seconds(pid)
                    tally = asyncio.run(closed_loop(port, clients, seconds, n, warmup=0))
                    cpu_used = cpu_seconds(pid) - cpu_before
                if tally.errors:
                    print(f"  {mode}: errors {tally.errors}", flush=True)
                measured[mode].append(tally.samples / seconds)
                cpu_ms[mode].append(cpu_used / max(1, len(tally.latencies) * n) * 1000)
                p95[mode].append(percentile(tally.latencies, 95) * 1000)
                print(f"  threads={t} {mode}: {tally.samples / seconds:.1f} samples/s, "
                      f"{cpu_ms[mode][-1]:.1f} CPU ms/sample, {cpu_used / seconds:.2f} cores", flush=True)
        batched, naive = statistics.median(measured["batched"]), statistics.median(measured["naive"])
        cpu_batched, cpu_naive = statistics.median(cpu_ms["batched"]), statistics.median(cpu_ms["naive"])
        extra: dict[str, Any] = {}
        if bf16:
            fast, fast_cpu = statistics.median(measured["batched-bf16"]), statistics.median(cpu_ms["batched-bf16"])
            naive16, naive16_cpu = statistics.median(measured["naive-bf16"]), statistics.median(cpu_ms["naive-bf16"])
            best_naive, best_naive_cpu = max(naive, naive16), min(cpu_naive, naive16_cpu)
            extra = {"bf16_batched_samples_per_s": round(fast, 1),
                     "bf16_naive_samples_per_s": round(naive16, 1),
                     "bf16_naive_cpu_ms_per_sample": round(naive16_cpu, 2),
                     "bf16_speedup": round(fast / best_naive, 2),
                     "bf16_batched_cpu_ms_per_sample": round(fast_cpu, 2),
                     "bf16_cpu_efficiency_gain": round(best_naive_cpu / fast_cpu, 2),
                     "bf16_batched_p95_ms": round(statistics.median(p95["batched-bf16"]), 1)}
        rows.append({
            **extra,
            "torch_threads": t,
            "batched_workers": workers_for(t),
            "batched_samples_per_s": round(batched, 1),
            "naive_samples_per_s": round(naive, 1),
            "speedup": round(batched / naive, 2) if naive else None,
            "batched_cpu_ms_per_sample": round(cpu_batched, 2),
            "naive_cpu_ms_per_sample": round(cpu_naive, 2),
            "cpu_efficiency_gain": round(cpu_naive / cpu_batched, 2) if cpu_batched else None,
            "batched_p95_ms": round(statistics.median(p95["batched"]), 1),
            "naive_p95_ms": round(statistics.median(p95["naive"]), 1),
            "rounds": rounds,
            "forward_only": forward_ceiling(checkpoint, t, clients),
        })
    return rows


def latency_sweep(checkpoint: str, work: Path, rates: list[float], seconds: float, threads: int,
                  nsfw_min_size: int) -> list[dict[str, Any]]:
    env = {"GANOPS_SERVING_TORCH_THREADS": str(threads),
           "GANOPS_SERVING_BATCHING__WORKERS": str(workers_for(threads)),
           "GANOPS_SERVING_SAFETY__NSFW_MIN_IMAGE_SIZE": str(nsfw_min_size)}
    rows: list[dict[str, Any]] = []
    with serve(checkpoint, work, **env) as (port, _):
        asyncio.run(open_loop(port, 5, 2))  # warm-up
        misses = 0
        for rate in rates:
            row = latency_row(rate, seconds, asyncio.run(open_loop(port, rate, seconds)))
            rows.append(row)
            print(f"  nsfw_min_size={nsfw_min_size} rate={rate}: p50 {row['p50_ms']} p95 {row['p95_ms']} "
                  f"p99 {row['p99_ms']} ms, {row['achieved_rps']} rps, errors {row['errors']}", flush=True)
            misses = 0 if row["ok"] else misses + 1
            if misses >= 2:  # two rates in a row over the target: higher ones will not pass
                break
    return rows


def soak(checkpoint: str, work: Path, seconds: float, clients: int, threads: int) -> dict[str, Any]:
    env = {"GANOPS_SERVING_TORCH_THREADS": str(threads), "GANOPS_SERVING_BATCHING__WORKERS": str(workers_for(threads))}
    with serve(checkpoint, work, **env) as (port, pid):
        asyncio.run(closed_loop(port, clients, 5, 1, warmup=0))  # warm-up: caches, first batches
        before = rss_bytes(pid)
        trace = [before]
        served = 0
        blocks = max(1, int(seconds // 20))
        for _ in range(blocks):
            tally = asyncio.run(closed_loop(port, clients, seconds / blocks, 1, warmup=0))
            served += len(tally.latencies)
            trace.append(rss_bytes(pid))
        after = rss_bytes(pid)
    return {
        "seconds": seconds,
        "clients": clients,
        "requests": served,
        "rss_before_mb": round(before / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "rss_growth_mb": round((after - before) / 2**20, 1),
        "rss_trace_mb": [round(v / 2**20, 1) for v in trace],
    }


def throughput_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What bounds the speed-up: the generator's own batch-1 vs batch-32 cost, and the machine's other load."""
    best_batched = max(rows, key=lambda r: r["batched_samples_per_s"])
    best_naive = max(rows, key=lambda r: r["naive_samples_per_s"])
    fair = best_batched["batched_samples_per_s"] / max(best_naive["naive_samples_per_s"], 1e-9)
    cpu_best = min(r["batched_cpu_ms_per_sample"] for r in rows)
    cpu_naive = min(r["naive_cpu_ms_per_sample"] for r in rows)
    one = next((r for r in rows if r["torch_threads"] == 1), rows[0])
    fwd = one["forward_only"]
    notes = [
        f"Best batched setting vs best naive setting: {best_batched['batched_samples_per_s']} vs "
        f"{best_naive['naive_samples_per_s']} samples/s = **{fair:.2f}×**; in server CPU per sample (less "
        f"sensitive to the other load): {cpu_best} vs {cpu_naive} ms = **{cpu_naive / cpu_best:.2f}×**.",
        f"Bound: with one torch thread the generator alone costs {fwd['cpu_ms_per_sample_batch_1']} CPU ms/sample "
        f"at batch 1 and {fwd['cpu_ms_per_sample_batch_32']} at batch 32 (fp32): only {fwd['cpu_ratio']}× apart. "
        "The per-request HTTP work (parsing, validation, auth, JSON) is the same for both servers since every "
        "request carries one sample, so batching cannot gain more than the larger of the generator's ratio and "
        "the post-processing's, and the fixed per-request work pulls it below; the naive server loses a little "
        "more to ~40 threads running batch-1 passes side by side. (The 2-thread generator-alone batch-1 figure "
        "is OpenMP's two threads spinning for a core on a loaded machine; the naive server does not pay it, "
        "its CPU column shows.)",
        "On a machine shared with other work the naive server's ~40 runnable threads also win it a larger "
        "share of the cores from the scheduler than the batched server's two or three busy threads: compare the "
        "samples/s with the CPU columns.",
    ]
    if all("bf16_cpu_ms_per_sample_batch_1" in r["forward_only"] for r in rows):
        parts = [
            f"{r['torch_threads']} thread(s): {r['forward_only']['bf16_cpu_ms_per_sample_batch_32']} CPU ms/sample "
            f"in bf16 at batch 32 vs {r['forward_only']['cpu_ms_per_sample_batch_1']} in fp32 at batch 1 "
            f"(bf16 at batch 1: {r['forward_only']['bf16_cpu_ms_per_sample_batch_1']})"
            for r in rows
        ]
        notes.append("bf16 on AMX, the generator alone: " + "; ".join(parts) + ". AMX pays most with a batch. "
                     "bf16 is opt-in: outputs move by a few grey levels from fp32 (the same seed still gives the "
                     "same bytes in any batch).")
    return notes


def steady_rate(rows: list[dict[str, Any]]) -> float | None:
    """The highest rate up to which every measured rate met the target (a noisy miss in between counts)."""
    best = None
    for row in rows:
        if not row["ok"]:
            break
        best = row["rate"]
    return best


def best_rate(rows: list[dict[str, Any]]) -> float | None:
    passing = [row["rate"] for row in rows if row["ok"]]
    return max(passing) if passing else None


def markdown(figures: dict[str, Any]) -> str:
    cfg = figures["config"]
    lines = [
        "# Serving load (64×64 DCGAN, all filters, watermark, PNG)",
        "",
        f"Model: DCGAN {cfg['image_size']}×{cfg['image_size']}×3, latent {cfg['latent']}, width {cfg['width']}, "
        f"random weights (calibrated batch norm); memorization index of {cfg['index_size']} digits beside it. "
        f"Server: `python -m ganops.serving` (uvicorn with httptools and uvloop, one process) on 127.0.0.1; "
        f"micro-batching runs forward pass + safety + watermark + encoding per batch in its worker thread(s); "
        f"(b) and (c) use {cfg.get('latency_threads', 1)} torch thread(s). Load generator in another "
        f"process (raw HTTP/1.1 keep-alive). Machine: {os.cpu_count()} cores shared with other work "
        f"(1-minute load average {cfg['loadavg_start']} at start, {cfg.get('loadavg_after_throughput')} after (a), "
        f"{cfg.get('loadavg_end')} at the end: figures in samples/s are noisy; CPU ms/sample much less so).",
        "",
        f"## (a) Throughput at {cfg['clients']} concurrent clients, n={cfg['n']} (target ≥ 4×)",
        "",
        "| torch threads (batch workers) | micro-batching samples/s | naive samples/s | speed-up | "
        "server CPU ms/sample batched / naive (gain) | generator alone CPU ms/sample b=1 / b=32 (ratio) | "
        "generator alone wall ms/sample b=1 / b=32 (ratio) | p95 batched / naive ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in figures["throughput"]:
        fwd = row["forward_only"]
        big = next(v for k, v in fwd.items() if k.startswith("ms_per_sample_batch_") and not k.endswith("_1"))
        big_cpu = next(v for k, v in fwd.items() if k.startswith("cpu_ms_per_sample_batch_") and not k.endswith("_1"))
        lines.append(
            f"| {row['torch_threads']} ({row.get('batched_workers', 1)}) | {row['batched_samples_per_s']} | "
            f"{row['naive_samples_per_s']} | "
            f"{row['speedup']}× | {row['batched_cpu_ms_per_sample']} / {row['naive_cpu_ms_per_sample']} "
            f"({row['cpu_efficiency_gain']}×) | {fwd['cpu_ms_per_sample_batch_1']} / {big_cpu} ({fwd['cpu_ratio']}×) | "
            f"{fwd['ms_per_sample_batch_1']} / {big} ({fwd['ratio']}×) | "
            f"{row['batched_p95_ms']} / {row['naive_p95_ms']} |")
    if any("bf16_speedup" in row for row in figures["throughput"]):
        lines += ["", "Opt-in `precision: bf16` (AMX on this CPU), the same runs: the bf16 micro-batching server "
                  "against the better of the naive server in fp32 and in bf16 (samples/s and CPU each taken at "
                  "their best):", "",
                  "| torch threads (batch workers) | bf16 batched samples/s | naive samples/s fp32 / bf16 | "
                  "speed-up vs the better naive | CPU ms/sample bf16 batched / naive fp32 / naive bf16 (gain) | "
                  "p95 ms |", "|---|---|---|---|---|---|"]
        for row in figures["throughput"]:
            lines.append(
                f"| {row['torch_threads']} ({row['batched_workers']}) | {row['bf16_batched_samples_per_s']} | "
                f"{row['naive_samples_per_s']} / {row.get('bf16_naive_samples_per_s', '–')} | "
                f"{row['bf16_speedup']}× | {row['bf16_batched_cpu_ms_per_sample']} / {row['naive_cpu_ms_per_sample']}"
                f" / {row.get('bf16_naive_cpu_ms_per_sample', '–')} ({row['bf16_cpu_efficiency_gain']}×) | "
                f"{row['bf16_batched_p95_ms']} |")
    lines += ["", *(f"- {note}" for note in figures.get("notes", []))]
    for key, title in (("latency_nsfw_policy", "NSFW skipped below 96 px (default policy)"),
                       ("latency_nsfw_forced", "NSFW detector on every image (nsfw_min_image_size=0)")):
        rows = figures[key]
        lines += ["", f"## (b) Latency at rising request rates, n=1 — {title}", "",
                  f"Highest rate with p95 ≤ 200 ms: **{figures[key + '_best_rps']} requests/s** (target ≥ 25); "
                  f"highest with every lower rate passing too: **{steady_rate(rows)} requests/s**.", "",
                  "| offered rps | achieved rps | p50 ms | p95 ms | p99 ms | errors | p95 ≤ 200 ms |",
                  "|---|---|---|---|---|---|---|"]
        for row in rows:
            lines.append(f"| {row['rate']} | {row['achieved_rps']} | {row['p50_ms']} | {row['p95_ms']} | "
                         f"{row['p99_ms']} | {row['errors']} | {'yes' if row['ok'] else 'no'} |")
    mem = figures["memory"]
    lines += ["", f"## (c) Memory over {mem['seconds']:.0f} s of load ({mem['clients']} clients, "
              f"{mem['requests']} requests)", "",
              f"RSS {mem['rss_before_mb']} MB after warm-up → {mem['rss_after_mb']} MB after "
              f"({mem['rss_growth_mb']:+} MB); trace every ~20 s: {mem['rss_trace_mb']} MB.", "",
              f"Reproduce: `python -m benchmarks.serving_load --soak-seconds {mem['seconds']:.0f}`"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--soak-seconds", type=float, default=120.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=12.0, help="measured seconds per throughput run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating naive/batched rounds per setting")
    parser.add_argument("--threads", default="1,2", help="torch intra-op threads to compare")
    parser.add_argument("--latency-threads", type=int, default=1,
                        help="torch threads of the server in (b) and (c) (with cores / threads batch workers)")
    parser.add_argument("--rates", default="5,10,20,30,40,50,60,80,100,120,150")
    parser.add_argument("--forced-rates", default="2,4,6,8,10,15,20,25")
    parser.add_argument("--step-seconds", type=float, default=8.0)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--no-bf16", action="store_true", help="skip the opt-in bf16 micro-batching runs")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="ganops-serving-bench-") as tmp:
        work = Path(tmp)
        checkpoint = make_checkpoint(work, args.width)
        loadavg = os.getloadavg()[0]
        print("(a) throughput", flush=True)
        rows = throughput(checkpoint, work, [int(t) for t in args.threads.split(",")], args.clients, args.seconds,
                          args.n, args.rounds, bf16=not args.no_bf16)
        loadavg_a = os.getloadavg()[0]
        print("(b) latency", flush=True)
        rates = [float(r) for r in args.rates.split(",")]
        policy = latency_sweep(checkpoint, work, rates, args.step_seconds, args.latency_threads, 96)
        forced = latency_sweep(checkpoint, work, [float(r) for r in args.forced_rates.split(",")], args.step_seconds,
                               args.latency_threads, 0)
        print("(c) memory", flush=True)
        memory = soak(checkpoint, work, args.soak_seconds, args.clients, args.latency_threads)
        loadavg_end = os.getloadavg()[0]

    figures = {
        "config": {"image_size": IMAGE_SIZE, "latent": LATENT, "width": args.width, "clients": args.clients,
                   "n": args.n, "index_size": 1797, "loadavg_start": round(loadavg, 2),
                   "loadavg_after_throughput": round(loadavg_a, 2), "loadavg_end": round(loadavg_end, 2),
                   "step_seconds": args.step_seconds, "throughput_seconds": args.seconds,
                   "latency_threads": args.latency_threads},
        "throughput": rows,
        "notes": throughput_notes(rows),
        "latency_nsfw_policy": policy,
        "latency_nsfw_policy_best_rps": best_rate(policy),
        "latency_nsfw_forced": forced,
        "latency_nsfw_forced_best_rps": best_rate(forced),
        "memory": memory,
    }
    path = write("serving_load", figures, markdown(figures))
    print(path.read_text())


if __name__ == "__main__":
    main()
