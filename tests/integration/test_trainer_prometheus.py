"""A real `ganops train` process scraped by a real Prometheus: every trainer series, as the dashboards query it.

Every value Prometheus stored is checked against what the test controls (log/evaluation/checkpoint schedule,
batch size, price) and what the trainer itself reported for the same step: its JSON `progress`/`health` log
lines, each checkpoint's `manifest.json` and the final `latest.json`. Prometheus scrapes the whole endpoint at
once, so the samples of one scrape share a timestamp and are compared as one snapshot.
"""

from __future__ import annotations

import bisect
import calendar
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.jobs import grid_job, write_job

if TYPE_CHECKING:
    from tests.support.prometheus import PrometheusServer

pytest_plugins = ["tests.support.prometheus"]

BIN = Path(sys.executable).parent
PRICE = 3600.0  # USD per GPU-hour: one dollar per second of training makes cost easy to check
LOG_EVERY = 20
EVAL_EVERY = CKPT_EVERY = 100
BATCH = 32
HEALTH_TYPES = ("ModeCollapseSuspected", "DiscriminatorOverpowering", "DivergenceRollback", "Diverged")
# A scrape's timestamp is taken when Prometheus sends the request; the trainer collects a little later.
SCRAPE_LATENCY_S = 1.0
# Rounding of the trainer's JSON log (6 decimals).
LOGGED = 1e-6


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _values(result: list[dict[str, Any]]) -> list[float]:
    assert len(result) == 1, result
    return [float(v) for _, v in result[0]["values"]]


def last(selector: str) -> str:
    """The newest sample of the last 30 s: a scrape that timed out on a busy machine leaves a staleness marker that
    would empty an instant query; range selectors skip it."""
    return f"last_over_time({selector}[30s])"


def _span(result: list[dict[str, Any]]) -> float:
    if len(result) != 1:
        return 0.0
    values = result[0]["values"]
    return float(values[-1][0]) - float(values[0][0])


def _unix(iso: str) -> float:
    return float(calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ")))


def _events(log: Path) -> Iterator[dict[str, Any]]:
    """The trainer's structured log lines (`... INFO ganops.trainer {"event": ...}`)."""
    for line in log.read_text().splitlines():
        start = line.find('{"event": ')
        if start >= 0:
            yield json.loads(line[start:])


class Scrapes:
    """Every raw sample Prometheus stored for one target, by series and scrape timestamp."""

    def __init__(self, prom: PrometheusServer, mine: str, at: float, seconds: int) -> None:
        result = prom.query(f'{{__name__=~"ganops_.+", {mine}}}[{seconds}s]', at=at)
        self.series: dict[tuple[str, str], dict[float, float]] = {}
        for item in result:
            metric = item["metric"]
            key = (metric["__name__"], metric.get("network") or metric.get("type") or "")
            self.series[key] = {float(t): float(v) for t, v in item["values"]}

    def of(self, name: str, label: str = "") -> dict[float, float]:
        return self.series.get((name, label), {})


def _newest_at_or_before(steps: list[int], t: int) -> int | None:
    i = bisect.bisect_right(steps, t)
    return steps[i - 1] if i else None


def test_prometheus_scrapes_a_training_run(prometheus: PrometheusServer, tmp_path: Path) -> None:
    port = _free_port()
    target = f"127.0.0.1:{port}"
    # this run's series only (the session's Prometheus may have scraped other trainers before)
    sel = f'{{namespace="team-a", job="grid", scrape_target="{target}"}}'
    mine = f'scrape_target="{target}"'
    job = grid_job(
        training={"steps": 1_000_000, "logEverySteps": LOG_EVERY, "batchSize": BATCH},
        checkpoint={"everySteps": CKPT_EVERY, "keepLast": 1000},  # every manifest stays for the comparison
        evaluation={"everySteps": EVAL_EVERY, "numSamples": 500, "metrics": ["modes"]},
        # a "GPU" job on a CPU machine: cost accrues, yet there is no GPU for NVML to report
        resources={"gpusPerReplica": 1},
        budget={"pricePerGPUHour": PRICE},
    )
    root = tmp_path / "ckpt" / "team-a" / "grid"
    env = {**os.environ, "GANOPS_METRICS_PORT": str(port), "GANOPS_CHECKPOINT_URI": f"file://{tmp_path}/ckpt",
           "GANOPS_NAMESPACE": "team-a", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    prometheus.set_targets([target])
    log_path = tmp_path / "trainer.log"
    log = log_path.open("w")
    launched = time.time()
    proc = subprocess.Popen(
        [str(BIN / "ganops"), "train", "--job", str(write_job(job, tmp_path / "j.yaml")),
         "--work-dir", str(tmp_path / "w"), "--no-progress"],
        env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    try:
        prometheus.wait_for_target_up(target, timeout=60)
        # at least three scrapes of a moving step counter, an evaluation, a settled checkpoint, 4 s of cost
        prometheus.wait_for_query(
            f"ganops_train_step{sel}[60s]", lambda r: len(r) == 1 and len(set(_values(r))) >= 3, timeout=60
        )
        prometheus.wait_for_query(f"ganops_eval_modes{sel}", timeout=60)
        prometheus.wait_for_query(f"ganops_train_diversity_ratio{sel}", timeout=30)
        prometheus.wait_for_query(  # the start time, then the first checkpoint's
            f"ganops_checkpoint_last_success_timestamp_seconds{sel}[60s]",
            lambda r: len(r) == 1 and len(set(_values(r))) >= 2, timeout=60)
        prometheus.wait_for_query(f"ganops_job_cost_usd_total{sel}[60s]", lambda r: _span(r) >= 4, timeout=60)

        loss = prometheus.query(last(f"ganops_train_loss{sel}"))
        assert {r["metric"]["network"] for r in loss} == {"generator", "discriminator"}
        grad = prometheus.query(last(f"ganops_train_grad_norm{sel}"))
        assert {r["metric"]["network"] for r in grad} == {"generator", "discriminator"}
        for absent in ("fid", "kid", "precision", "recall"):  # not requested by the job: absent, not zero
            assert prometheus.query(f"ganops_eval_{absent}{{{mine}}}") == [], absent
        price = prometheus.query_value(
            last(f"ganops_job_cost_usd_total{sel}") + " / " + last(f"ganops_job_gpu_hours_total{sel}")
        )
        assert price == pytest.approx(PRICE)
        events = prometheus.query(last(f"ganops_train_health_events_total{sel}"))  # every known type, born at 0
        assert {r["metric"]["type"] for r in events} >= set(HEALTH_TYPES)

        # no GPU here: the GPU series do not exist at all (not zeros)
        assert prometheus.series(f'{{__name__=~"ganops_gpu_.+", {mine}}}') == []
        # every series carries the job's identity, as the trainer exposes it (honor_labels)
        every = prometheus.series(f'{{__name__=~"ganops_.+", {mine}}}')
        assert {"ganops_train_step", "ganops_train_loss", "ganops_job_cost_usd_total"} <= {s["__name__"] for s in every}
        for series in every:
            assert series["namespace"] == "team-a" and series["job"] == "grid", series

        exposition = _scrape(target)
        promtool = shutil.which("promtool")
        if promtool:  # the exposition passes Prometheus' own lint
            check = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True)
            problems = [line for line in (check.stdout + check.stderr).splitlines() if line.strip()
                        # DESIGN names this series in GPU-hours, the unit prices and budgets use
                        and not line.startswith("ganops_job_gpu_hours_total use base unit")]
            assert problems == [], problems
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=60) == 0  # SIGTERM: a last checkpoint, then exit 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
            prometheus.set_targets([])
    # the endpoint is gone with the process
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass

    # ---- what Prometheus stored, against what the trainer itself reported for the same step
    now = time.time()
    scrapes = Scrapes(prometheus, mine, now, math.ceil(now - launched) + 5)
    trainer_log = list(_events(log_path))
    progress = {e["step"]: e for e in trainer_log if e["event"] == "progress"}
    health = [e for e in trainer_log if e["event"] == "health"]
    manifests = {int(p.parent.name.removeprefix("step-")): json.loads(p.read_text())
                 for p in root.glob("step-*/manifest.json")}
    latest = json.loads((root / "latest.json").read_text())
    final = latest["step"]
    ckpt_steps = sorted(manifests)
    evals = {s: m["metrics"] for s, m in manifests.items() if (m.get("evaluation") or {}).get("step") == s}
    log_steps = sorted(progress)
    assert ckpt_steps == [*range(CKPT_EVERY, final, CKPT_EVERY), final], (ckpt_steps, final)
    assert sorted(evals) == [s for s in ckpt_steps if s % EVAL_EVERY == 0]
    assert log_steps == list(range(LOG_EVERY, log_steps[-1] + 1, LOG_EVERY))
    assert final - LOG_EVERY < log_steps[-1] <= final

    step = scrapes.of("ganops_train_step")
    assert len(set(step.values())) >= 3, step
    stamps = sorted(step)
    values = [step[t] for t in stamps]
    assert values == sorted(values), "ganops_train_step went backwards"
    # the gauge moves at the loop's moments only: the start (0), every log step, the stop checkpoint's step
    assert set(values) <= {0.0, *map(float, log_steps), float(final)}, set(values) - {*map(float, log_steps)}

    def log_step_for(t: int) -> list[int]:
        """The log step whose values a scrape at step t shows: the newest at or before t, or - a scrape in
        between the moment's two updates - the one before it."""
        i = bisect.bisect_right(log_steps, t)
        return log_steps[max(0, i - 2):i][::-1]

    matched_now = 0
    ratios = []
    for ts in stamps:
        t = int(step[ts])
        candidates = log_step_for(t)
        scraped = {n: scrapes.of(name, label).get(ts) for n, (name, label) in {
            "loss_g": ("ganops_train_loss", "generator"), "loss_d": ("ganops_train_loss", "discriminator"),
            "grad_norm_g": ("ganops_train_grad_norm", "generator"),
            "grad_norm_d": ("ganops_train_grad_norm", "discriminator")}.items()}
        if not candidates:
            assert set(scraped.values()) == {None}, (t, scraped)  # nothing logged yet: absent, not zero
            continue
        # losses and gradient norms: exactly the values the trainer logged at that step
        shown = [k for k in candidates
                 if all(v == pytest.approx(progress[k][n], abs=LOGGED) for n, v in scraped.items())]
        assert shown, (t, scraped, [progress[k] for k in candidates])
        k = shown[0]
        matched_now += k == candidates[0]
        # discriminator accuracy: the value logged at that step (set in the same moment, after the losses)
        accuracy = scrapes.of("ganops_train_discriminator_accuracy").get(ts)
        assert accuracy is not None and any(accuracy == pytest.approx(progress[j]["d_accuracy"], abs=LOGGED)
                                            for j in log_step_for(k)), (t, accuracy)
        # throughput: LOG_EVERY steps of BATCH images over the same interval the trainer's own report timed
        ips = scrapes.of("ganops_train_images_per_second").get(ts)
        assert ips is not None and ips > 0
        ratios.append(ips / progress[k]["images_per_second"])
        # evaluation: the manifest's metrics of the newest evaluation at or before t
        newest = _newest_at_or_before(sorted(evals), t)
        got = {m: scrapes.of(f"ganops_eval_{name}").get(ts) for m, name in
               (("modes", "modes"), ("high_quality", "high_quality_ratio"))}
        if newest is None:
            assert set(got.values()) == {None}, (t, got)
        else:
            allowed = [evals[newest]] + ([evals[p]] if newest == t and (p := _newest_at_or_before(
                sorted(evals), t - 1)) is not None else [])
            assert got in allowed, (t, got, allowed)
    assert matched_now >= 1, "no scrape showed the values of the step it reported"
    # Throughput: both are images over one log interval; they differ only by when each clock is read.
    assert min(ratios) > 0.5 and max(ratios) < 2.0, ratios
    assert statistics.median(ratios) == pytest.approx(1.0, rel=0.1), ratios

    # checkpoint age: the start time until the first checkpoint settles, then latest.json's time of each one
    times = {s: _unix(m["time"]) for s, m in manifests.items()}
    assert latest["time"] == manifests[final]["time"]
    ckpt_time = scrapes.of("ganops_checkpoint_last_success_timestamp_seconds")
    assert set(ckpt_time) == set(stamps)
    for ts in stamps:
        t = int(step[ts])
        before = _newest_at_or_before(ckpt_steps, t - 1)
        allowed_times = {times[before]} if before is not None else set()
        if t in times and t != final:  # scraped between the settling and the next step's update
            allowed_times.add(times[t])
        if before is None and ckpt_time[ts] not in allowed_times:  # the start time: launch <= it <= 1st checkpoint
            assert launched - 1 <= ckpt_time[ts] <= times[ckpt_steps[0]] + 1, (t, ckpt_time[ts])
        else:
            assert ckpt_time[ts] in allowed_times, (t, ckpt_time[ts], allowed_times)
    assert len(set(ckpt_time.values())) >= 2

    # cost: $1 per second since the loop started. The trainer's manifests and Prometheus must agree on when.
    usd = scrapes.of("ganops_job_cost_usd_total")
    hours = scrapes.of("ganops_job_gpu_hours_total")
    assert set(usd) == set(hours) == set(stamps)
    assert [usd[t] for t in stamps] == sorted(usd[t] for t in stamps), "a counter went down"
    for ts in stamps:
        assert usd[ts] == pytest.approx(hours[ts] * PRICE, rel=1e-9)
    started = [ts - usd[ts] for ts in stamps]  # the loop's start, as each scrape implies it
    assert max(started) - min(started) < SCRAPE_LATENCY_S, started
    for s, manifest in manifests.items():
        # both rounded to 6 decimals on the wire
        assert manifest["cost"]["usd"] == pytest.approx(manifest["cost"]["gpuHours"] * PRICE, abs=PRICE * 5e-7 + 1e-6)
        # the manifest's time has whole seconds: the start it implies is within [time - usd, time - usd + 1)
        implied = times[s] - manifest["cost"]["usd"]
        assert implied - SCRAPE_LATENCY_S <= max(started) and min(started) <= implied + 1 + 0.01, (
            s, implied, min(started), max(started))
    assert latest["cost"] == manifests[final]["cost"]
    assert latest["cost"]["usd"] >= max(usd.values())  # the stop checkpoint counts every second the run used

    # health: the counters count the trainer's own health events; no rollback happened
    assert not [e for e in health if e["type"] in ("DivergenceRollback", "Diverged")], health
    assert set(scrapes.of("ganops_train_rollbacks_total").values()) == {0.0}
    assert (latest.get("health") or {}).get("rollbacks", 0) == 0
    for kind in HEALTH_TYPES:
        counter = scrapes.of("ganops_train_health_events_total", kind)
        assert set(counter) == set(stamps), kind
        for ts in stamps:
            t = int(step[ts])
            seen = Counter(e["type"] for e in health if e["step"] < t)[kind]
            upto = Counter(e["type"] for e in health if e["step"] <= t)[kind]
            assert seen <= counter[ts] <= upto, (kind, t, counter[ts], seen, upto)

    # diversity: one probe per log step, a finite positive ratio; absent before the first log
    diversity = scrapes.of("ganops_train_diversity_ratio")
    by_step: dict[float, set[float]] = {}
    for ts, value in diversity.items():
        assert math.isfinite(value) and value > 0, value
        by_step.setdefault(step[ts], set()).add(value)
    assert all(len(v) == 1 for s, v in by_step.items() if s % LOG_EVERY == 0 and s != final), by_step
    assert not [ts for ts in diversity if step[ts] < LOG_EVERY]


def _scrape(target: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text
