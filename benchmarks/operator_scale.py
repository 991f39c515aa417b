"""Operator at scale: 500 GanTrainingJobs against the Kubernetes emulator, with the real operator (`kopf run` in a
subprocess, so its RSS is its own).

    python -m benchmarks.operator_scale [--jobs 500] [--rates 25 50 100]

Measured, per job:
- create → Job created: from the moment the GanTrainingJob's POST returned to the Job's ADDED watch event;
- pod phase change → status updated: playing the kubelet, a pod goes Pending → Running, then (playing the Job
  controller too) the pod Succeeded + the Job Complete; from the pod's status PATCH returning to the watch event of
  the GanTrainingJob whose `status.phase` shows it (Running, then Succeeded);
- missed transitions: jobs whose Job never appeared or whose status never reached Running / Succeeded (must be 0);
- operator RSS (VmRSS at the end, VmHWM peak) of the operator process.
Targets: p50 ≤ 0.5 s, p99 ≤ 2 s, RSS ≤ 300 MB. Writes reports/operator_scale.json and .md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.kube import KopfProcess, KubeAPI
from tests.support.kube.workloads import complete_job, run_pod, start_job_pods

from ganops.api.crd import build_crd

GTJ = "ganops.io/v1alpha1"
NS = "bench"
TARGETS = {"p50_s": 0.5, "p99_s": 2.0, "rss_mb": 300.0}


def job_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": GTJ,
        "kind": "GanTrainingJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": {"architecture": "mlp", "imageSize": 2, "latentDim": 2, "width": 16, "depth": 2},
            "dataset": {"uri": "builtin:grid25"},
            "training": {"steps": 20, "batchSize": 32},
            "evaluation": {"metrics": ["modes"], "featureExtractor": "raw"},
            "promotion": {"auto": False},
        },
    }


class Watcher:
    """Records when each watch event arrives, keyed by object name (a background thread per resource)."""

    def __init__(self, kube: KubeAPI, api_version: str, kind: str, resource_version: str) -> None:
        self.kube = kube
        self.api_version = api_version
        self.kind = kind
        self.resource_version = resource_version
        self.first_added: dict[str, float] = {}
        self.phases: dict[tuple[str, str], float] = {}  # (name, phase) → first time seen
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{kind}")
        self.stop = False

    def start(self) -> Watcher:
        self.thread.start()
        return self

    def _events(self) -> Iterator[dict[str, Any]]:
        return self.kube.iter_watch(self.api_version, self.kind, NS, resource_version=self.resource_version,
                                    timeout_seconds=3600)

    def _run(self) -> None:
        try:
            self._consume()
        except Exception:  # the emulator closes the stream at the end of the run
            if not self.stop:
                raise

    def _consume(self) -> None:
        for event in self._events():
            now = time.monotonic()
            obj = event.get("object") or {}
            name = (obj.get("metadata") or {}).get("name")
            if not name:
                continue
            with self.lock:
                if event.get("type") == "ADDED":
                    self.first_added.setdefault(name, now)
                phase = (obj.get("status") or {}).get("phase")
                if phase:
                    self.phases.setdefault((name, phase), now)
            if self.stop:
                return


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_s": round(percentile(values, 50), 4),
        "p90_s": round(percentile(values, 90), 4),
        "p99_s": round(percentile(values, 99), 4),
        "max_s": round(max(values), 4) if values else float("nan"),
        "mean_s": round(statistics.fmean(values), 4) if values else float("nan"),
    }


def memory_of(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024.0
    return {"rss_mb": round(fields.get("VmRSS", 0.0), 1), "peak_rss_mb": round(fields.get("VmHWM", 0.0), 1)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def paced(count: int, rate: float) -> Iterator[int]:
    """0..count-1, no faster than `rate` per second (0 = as fast as possible)."""
    start = time.monotonic()
    for i in range(count):
        if rate > 0:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield i


def run(jobs: int, rate: float, settle_timeout: float) -> dict[str, Any]:
    names = [f"gan-{i:04d}" for i in range(jobs)]
    with KubeAPI() as kube:
        kube.register_crd(build_crd())
        kube.ensure_namespace(NS)
        operator = KopfProcess(kube, ["ganops.operator.main"], verbose=False, startup_timeout=60)
        env = {"GANOPS_OPERATOR_METRICS_PORT": "0", "GANOPS_OPERATOR_RESYNC_SECONDS": "30",
               "GANOPS_CHECKPOINT_URI": ""}
        os.environ.pop("GANOPS_CHECKPOINT_URI", None)
        operator.start(env)
        assert operator.pid is not None
        try:
            since = kube.list_raw("batch/v1", "Job", NS)["metadata"]["resourceVersion"]
            job_watch = Watcher(kube, "batch/v1", "Job", since).start()
            gtj_watch = Watcher(kube, GTJ, "GanTrainingJob", since).start()
            time.sleep(0.5)  # both watches open

            # 1. create → Job created
            created: dict[str, float] = {}
            cpu_start = cpu_seconds(operator.pid)
            t_start = time.monotonic()
            for i in paced(jobs, rate):
                kube.create(job_manifest(names[i]))
                created[names[i]] = time.monotonic()
            create_seconds = time.monotonic() - t_start
            wait_until(lambda: len(job_watch.first_added) >= jobs, settle_timeout)
            to_job = [job_watch.first_added[n] - created[n] for n in names if n in job_watch.first_added]
            create_phase = {"wall_s": round(time.monotonic() - t_start, 2),
                            "operator_cpu_s": round(cpu_seconds(operator.pid) - cpu_start, 2)}
            missing_jobs = [n for n in names if n not in job_watch.first_added]
            wait_until(lambda: sum((n, "Pending") in gtj_watch.phases for n in names) >= jobs, settle_timeout)

            # 2. The Job controller creates the pods (Pending); the kubelet starts them one by one.
            pods: dict[str, str] = {}
            for name in names:
                if name not in missing_jobs:
                    (pod,) = start_job_pods(kube, NS, name, phase="Pending")
                    pods[name] = pod
            time.sleep(1.0)  # let the Pending pod events drain
            started: dict[str, float] = {}
            for i in paced(len(pods), rate):
                name = names[i]
                run_pod(kube, NS, pods[name])
                started[name] = time.monotonic()
            wait_until(lambda: sum((n, "Running") in gtj_watch.phases for n in started) >= len(started),
                       settle_timeout)
            to_running = [gtj_watch.phases[(n, "Running")] - started[n] for n in started
                          if (n, "Running") in gtj_watch.phases]
            missed_running = [n for n in started if (n, "Running") not in gtj_watch.phases]

            # 3. Every pod exits 0 and its Job completes.
            finished: dict[str, float] = {}
            for i in paced(len(pods), rate):
                name = names[i]
                complete_job(kube, NS, name)
                finished[name] = time.monotonic()
            wait_until(lambda: sum((n, "Succeeded") in gtj_watch.phases for n in finished) >= len(finished),
                       settle_timeout)
            to_succeeded = [gtj_watch.phases[(n, "Succeeded")] - finished[n] for n in finished
                            if (n, "Succeeded") in gtj_watch.phases]
            missed_succeeded = [n for n in finished if (n, "Succeeded") not in gtj_watch.phases]

            memory = memory_of(operator.pid)
            operator_cpu_total = round(cpu_seconds(operator.pid) - cpu_start, 2)
            bench_wall = round(time.monotonic() - t_start, 2)
            job_posts = len(kube.requests("POST", "jobs"))
            errors = operator.output.count("reconcile failed")
            job_watch.stop = gtj_watch.stop = True
        finally:
            output = operator.output
            operator.close()
    phase_latencies = to_running + to_succeeded
    return {
        "jobs": jobs,
        "rate_per_second": rate,
        "create_seconds": round(create_seconds, 2),
        "create_to_job": summary(to_job),
        "create_phase": create_phase,
        "operator_cpu_seconds": operator_cpu_total,
        "wall_seconds": bench_wall,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "pod_phase_to_status": summary(phase_latencies),
        "pod_running_to_status": summary(to_running),
        "job_complete_to_status": summary(to_succeeded),
        "missed_transitions": len(missing_jobs) + len(missed_running) + len(missed_succeeded),
        "missed": {"job_not_created": missing_jobs[:20], "never_running": missed_running[:20],
                   "never_succeeded": missed_succeeded[:20]},
        "job_posts": job_posts,
        "reconcile_errors": errors,
        "operator": memory,
        "operator_log_tail": output[-2000:] if errors else "",
    }


def _ok(stats: dict[str, float]) -> str:
    return "✓" if stats["p50_s"] <= TARGETS["p50_s"] and stats["p99_s"] <= TARGETS["p99_s"] else "✗"


def _detail(figures: dict[str, Any]) -> list[str]:
    def row(label: str, stats: dict[str, float]) -> str:
        return (f"| {label} | {stats['n']} | {stats['p50_s']:.3f} | {stats['p90_s']:.3f} | {stats['p99_s']:.3f} "
                f"| {stats['max_s']:.3f} | {_ok(stats)} |")

    memory = figures["operator"]
    return [
        f"### {figures['rate_per_second']:g} per second",
        "",
        "| latency (seconds) | n | p50 | p90 | p99 | max | target (p50 ≤ 0.5, p99 ≤ 2) |",
        "|---|---|---|---|---|---|---|",
        row("create → Job created", figures["create_to_job"]),
        row("pod phase change → status updated (both)", figures["pod_phase_to_status"]),
        row("  pod Running → status Running", figures["pod_running_to_status"]),
        row("  Job Complete → status Succeeded", figures["job_complete_to_status"]),
        "",
        f"- missed transitions: **{figures['missed_transitions']}** (must be 0); Job POSTs: {figures['job_posts']} for "
        f"{figures['jobs']} jobs; reconcile errors: {figures['reconcile_errors']}",
        f"- operator RSS {memory['rss_mb']} MB at the end, peak {memory['peak_rss_mb']} MB; operator CPU "
        f"{figures['operator_cpu_seconds']} s over {figures['wall_seconds']} s (creating: "
        f"{figures['create_phase']['operator_cpu_s']} s CPU in {figures['create_phase']['wall_s']} s); "
        f"machine load average {figures['load_average']}",
        "",
    ]


def markdown(runs: list[dict[str, Any]]) -> str:
    lines = [
        "# Operator at scale",
        "",
        f"{runs[0]['jobs']} GanTrainingJobs against the Kubernetes emulator (kmock over HTTP, in the benchmark's "
        "process), reconciled by the real operator (`kopf run -m ganops.operator.main`, its own process, so RSS and "
        "CPU are its own). The benchmark plays the Job controller and the kubelet. Each run creates the jobs at the "
        "given rate, then moves every pod Pending → Running at that rate, then completes every Job at that rate. "
        "Emulator, operator and benchmark share the machine's 2 cores with whatever else runs (load average below).",
        "",
        "| rate /s | create → Job p50 / p99 (s) | pod phase → status p50 / p99 (s) | missed | peak RSS (MB) | "
        "operator CPU per created job (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for run_ in runs:
        create, phase = run_["create_to_job"], run_["pod_phase_to_status"]
        per_job = 1000 * run_["create_phase"]["operator_cpu_s"] / max(1, run_["jobs"])
        lines.append(
            f"| {run_['rate_per_second']:g} | {create['p50_s']:.3f} / {create['p99_s']:.3f} {_ok(create)} "
            f"| {phase['p50_s']:.3f} / {phase['p99_s']:.3f} {_ok(phase)} | {run_['missed_transitions']} "
            f"{'✓' if run_['missed_transitions'] == 0 else '✗'} | {run_['operator']['peak_rss_mb']} "
            f"{'✓' if run_['operator']['peak_rss_mb'] <= TARGETS['rss_mb'] else '✗'} | {per_job:.1f} |")
    lines += ["", "Targets: p50 ≤ 0.5 s, p99 ≤ 2 s, no missed transition, RSS ≤ 300 MB.", ""]
    for run_ in runs:
        lines += _detail(run_)
    lines.append("Run: `python -m benchmarks.operator_scale` (options: `--jobs`, `--rates`).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--rates", type=float, nargs="+", default=[25.0, 50.0, 100.0],
                        help="creations and phase changes per second, one run each (0: as fast as possible)")
    parser.add_argument("--settle-timeout", type=float, default=120.0)
    parser.add_argument("--no-report", action="store_true", help="print only, do not write reports/")
    args = parser.parse_args()
    runs = [run(args.jobs, rate, args.settle_timeout) for rate in args.rates]
    text = markdown(runs)
    print(text)
    if not args.no_report:
        from benchmarks._report import write

        path = write("operator_scale", {"targets": TARGETS, "runs": runs}, text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
