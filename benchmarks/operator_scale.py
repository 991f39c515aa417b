"""Operator at scale: 500 GanTrainingJobs against the real control plane (kube-apiserver, etcd, the controllers:
tests/support/controlplane) and, as the baseline in the same invocation, the Kubernetes emulator, with the real
operator (`kopf run` in a subprocess, so its RSS and CPU are its own; on the control plane, as the chart's
ServiceAccount). The control plane's own CPU (kube-apiserver, etcd, controller manager, scheduler) is reported beside
the operator's.

    python -m benchmarks.operator_scale [--jobs 500] [--rates 25 50] [--backends emulator controlplane]

Measured, per job:
- create → Job created: from the moment the GanTrainingJob's POST returned to the Job's ADDED watch event;
- pod phase change → status updated: playing the kubelet, a pod goes Pending → Running, then Succeeded (on the
  emulator the benchmark also plays the Job controller and marks the Job Complete; on the control plane the real Job
  controller does); from the pod's status PATCH returning to the watch event of the GanTrainingJob whose
  `status.phase` shows it (Running, then Succeeded);
- missed transitions: jobs whose Job never appeared or whose status never reached Running / Succeeded (must be 0);
- operator RSS (VmRSS at the end, VmHWM peak) of the operator process.
Targets: p50 ≤ 0.5 s, p99 ≤ 2 s, RSS ≤ 300 MB. Writes reports/operator_scale.json and .md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.support.kube import KopfProcess, KubeAPI
from tests.support.kube.client import KubeClient
from tests.support.kube.workloads import complete_job, run_pod, start_job_pods, terminate_pod

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

    def __init__(self, kube: KubeClient, api_version: str, kind: str, resource_version: str) -> None:
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


class EmulatorBackend:
    """kmock's emulator over HTTP in this process; the benchmark plays the Job controller and the kubelet."""

    name = "emulator"

    def __init__(self, tmp: Path) -> None:
        self.kube = KubeAPI()

    def __enter__(self) -> EmulatorBackend:
        self.kube.__enter__()
        self.kube.register_crd(build_crd())
        self.kube.ensure_namespace(NS)
        return self

    def __exit__(self, *exc: object) -> None:
        self.kube.__exit__(None, None, None)

    @property
    def operator_kube(self) -> KubeClient:
        return self.kube

    def server_cpu(self) -> dict[str, float]:
        return {}  # the emulator runs in this process: its CPU is the benchmark's

    def pods_pending(self, names: list[str], timeout: float) -> dict[str, str]:
        """The Job controller's part: one Pending pod per Job."""
        pods: dict[str, str] = {}
        for name in names:
            (pod,) = start_job_pods(self.kube, NS, name, phase="Pending")
            pods[name] = pod
        return pods

    def finish(self, name: str, pod: str) -> None:
        """The kubelet reports the pod Succeeded and the Job controller marks the Job Complete."""
        complete_job(self.kube, NS, name)

    def job_posts(self) -> int:
        return len(self.kube.requests("POST", "jobs"))


class ControlPlaneBackend:
    """The real control plane (tests/support/controlplane): etcd, kube-apiserver (RBAC, PodSecurity),
    kube-controller-manager (the real Job controller creates the pods, and marks Jobs Complete), kube-scheduler
    (binds them to a registered node). The chart is installed with the real helm and the operator logs in as its
    ServiceAccount. The benchmark plays only the kubelet of that node: it posts the pods' status (Running, then
    Succeeded) as a kubelet does; the node's Lease is kept fresh by tests/support/node.py, which runs no pod here."""

    name = "control plane"

    def __init__(self, tmp: Path) -> None:
        from tests.support.controlplane import ControlPlane, find_binaries

        self.tmp = tmp
        self.cp = ControlPlane(find_binaries(), tmp / "controlplane")
        self.node: Any = None
        self.operator_client: Any = None
        self.cpu_start: dict[str, float] = {}

    def __enter__(self) -> ControlPlaneBackend:
        from tests.support.controlplane.chart import RESTRICTED, helm_install, values_for_tests
        from tests.support.controlplane.fixtures import wait_schedulable
        from tests.support.controlplane.identity import service_account_client
        from tests.support.node import NODE_CAPACITY, Node

        self.cp.start()
        self.kube = self.cp.client()
        self.kube.register_crd(build_crd())
        release = helm_install(self.cp, "ganops", "ganops-system", values_for_tests(serving={"enabled": False}))
        self.operator_client = service_account_client(self.cp, release.namespace, release.operator_service_account)
        self.cp.ensure_namespace(NS, RESTRICTED)
        # A node with room for every pod; it runs none of them (it watches an empty namespace): the benchmark
        # posts their status. Its Lease keeps the node lifecycle controller from tainting it.
        capacity = {**NODE_CAPACITY, "pods": "2000", "cpu": "4000", "memory": "16Ti", "nvidia.com/gpu": "2000"}
        self.node = Node.kubelet(self.cp.client(), self.tmp / "node", node_name="bench-node",
                                 namespaces=("bench-node-runs-nothing",), capacity=capacity).start()
        wait_schedulable(self.kube, "bench-node", timeout=60)
        # helm's CRD step briefly makes custom resources answer 429 "storage is (re)initializing"
        self.kube.wait_for(lambda: self._listable(), timeout=60, message="GanTrainingJobs served")
        return self

    def _listable(self) -> bool:
        from tests.support.kube.client import KubeApiError

        try:
            self.kube.list(GTJ, "GanTrainingJob", NS)
        except KubeApiError as exc:
            if exc.status != 429:
                raise
            return False
        return True

    def __exit__(self, *exc: object) -> None:
        if self.node is not None:
            self.node.stop()
        if self.operator_client is not None:
            self.operator_client.close()
        self.cp.stop()

    @property
    def operator_kube(self) -> KubeClient:
        assert self.operator_client is not None
        return self.operator_client  # type: ignore[no-any-return]

    def server_cpu(self) -> dict[str, float]:
        """CPU seconds so far of each control plane process (kube-apiserver, etcd, controller manager, scheduler)."""
        return {name: cpu_seconds(process.popen.pid) for name, process in self.cp.processes.items()
                if process.popen is not None}

    def pods_pending(self, names: list[str], timeout: float) -> dict[str, str]:
        """Wait for the real Job controller's pods, bound by the real scheduler."""
        wanted = set(names)
        found: dict[str, str] = {}

        def bound() -> bool:
            for pod in self.kube.list("v1", "Pod", NS):
                job = (pod["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name")
                if job in wanted and pod["spec"].get("nodeName"):
                    found[job] = pod["metadata"]["name"]
            return len(found) >= len(wanted)

        wait_until(bound, timeout, interval=1.0)
        return found

    def finish(self, name: str, pod: str) -> None:
        """The kubelet reports the container exited 0 (the real Job controller completes the Job by itself)."""
        terminate_pod(self.kube, NS, pod, exit_code=0)  # type: ignore[arg-type]

    def job_posts(self) -> int:
        return -1  # not counted on the real API server (its audit log is off); the operator's log is checked


Backend = EmulatorBackend | ControlPlaneBackend


def at_rate(names: list[str], rate: float, action: Callable[[str], None], workers: int = 16) -> None:
    """`action(name)` for each name, started at `rate` per second by a pool of threads: a request that takes longer
    than 1/rate (a busy API server) does not slow the ones after it, so the offered rate holds."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(action, names[i]) for i in paced(len(names), rate)]
        for future in futures:
            future.result()


def run(jobs: int, rate: float, settle_timeout: float, backend_cls: type[Backend], tmp: Path) -> dict[str, Any]:
    names = [f"gan-{i:04d}" for i in range(jobs)]
    with backend_cls(tmp) as backend:
        kube = backend.kube
        operator = KopfProcess(backend.operator_kube, ["ganops.operator.main"], verbose=False, startup_timeout=60)
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
            server_start = backend.server_cpu()
            t_start = time.monotonic()
            def create(name: str) -> None:
                kube.create(job_manifest(name))
                created[name] = time.monotonic()

            at_rate(names, rate, create)
            create_seconds = time.monotonic() - t_start
            wait_until(lambda: len(job_watch.first_added) >= jobs, settle_timeout)
            to_job = [job_watch.first_added[n] - created[n] for n in names if n in job_watch.first_added]
            create_wall = time.monotonic() - t_start
            server_create = backend.server_cpu()
            create_phase = {"wall_s": round(create_wall, 2),
                            "operator_cpu_s": round(cpu_seconds(operator.pid) - cpu_start, 2),
                            "server_cpu_s": {k: round(v - server_start[k], 2) for k, v in server_create.items()}}
            missing_jobs = [n for n in names if n not in job_watch.first_added]
            wait_until(lambda: sum((n, "Pending") in gtj_watch.phases for n in names) >= jobs, settle_timeout)

            # 2. The Job controller creates the pods (Pending); the kubelet starts them one by one.
            pods = backend.pods_pending([n for n in names if n not in missing_jobs], settle_timeout)
            time.sleep(1.0)  # let the Pending pod events drain
            started: dict[str, float] = {}

            def start(name: str) -> None:
                run_pod(kube, NS, pods[name])  # type: ignore[arg-type]
                started[name] = time.monotonic()

            at_rate([n for n in names if n in pods], rate, start)
            wait_until(lambda: sum((n, "Running") in gtj_watch.phases for n in started) >= len(started),
                       settle_timeout)
            to_running = [gtj_watch.phases[(n, "Running")] - started[n] for n in started
                          if (n, "Running") in gtj_watch.phases]
            missed_running = [n for n in started if (n, "Running") not in gtj_watch.phases]

            # 3. Every pod exits 0 and its Job completes.
            finished: dict[str, float] = {}

            def finish(name: str) -> None:
                backend.finish(name, pods[name])
                finished[name] = time.monotonic()

            at_rate([n for n in names if n in pods], rate, finish)
            wait_until(lambda: sum((n, "Succeeded") in gtj_watch.phases for n in finished) >= len(finished),
                       settle_timeout)
            to_succeeded = [gtj_watch.phases[(n, "Succeeded")] - finished[n] for n in finished
                            if (n, "Succeeded") in gtj_watch.phases]
            missed_succeeded = [n for n in finished if (n, "Succeeded") not in gtj_watch.phases]
            missing_pods = [n for n in names if n not in missing_jobs and n not in pods]

            memory = memory_of(operator.pid)
            operator_cpu_total = round(cpu_seconds(operator.pid) - cpu_start, 2)
            server_end = backend.server_cpu()
            bench_wall = round(time.monotonic() - t_start, 2)
            job_posts = backend.job_posts()
            errors = operator.output.count("reconcile failed")
            forbidden = operator.output.count("Forbidden")
            job_watch.stop = gtj_watch.stop = True
        finally:
            output = operator.output
            operator.close()
    phase_latencies = to_running + to_succeeded
    return {
        "backend": backend_cls.name,
        "jobs": jobs,
        "rate_per_second": rate,
        "create_seconds": round(create_seconds, 2),
        "achieved_create_rate": round(jobs / create_seconds, 1) if create_seconds else float("nan"),
        "create_to_job": summary(to_job),
        "create_phase": create_phase,
        "operator_cpu_seconds": operator_cpu_total,
        "server_cpu_seconds": {k: round(v - server_start[k], 2) for k, v in server_end.items()},
        "wall_seconds": bench_wall,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "pod_phase_to_status": summary(phase_latencies),
        "pod_running_to_status": summary(to_running),
        "job_complete_to_status": summary(to_succeeded),
        "missed_transitions": len(missing_jobs) + len(missing_pods) + len(missed_running) + len(missed_succeeded),
        "missed": {"job_not_created": missing_jobs[:20], "pod_not_created": missing_pods[:20],
                   "never_running": missed_running[:20], "never_succeeded": missed_succeeded[:20]},
        "job_posts": job_posts,
        "reconcile_errors": errors,
        "forbidden_in_log": forbidden,
        "operator": memory,
        "operator_log_tail": output[-2000:] if errors or forbidden else "",
    }


def _ok(stats: dict[str, float]) -> str:
    return "✓" if stats["p50_s"] <= TARGETS["p50_s"] and stats["p99_s"] <= TARGETS["p99_s"] else "✗"


def _cpu(figures: dict[str, Any]) -> str:
    server = figures.get("server_cpu_seconds") or {}
    if not server:
        return "in the benchmark's process"
    return ", ".join(f"{name} {seconds:g}" for name, seconds in server.items())


def _detail(figures: dict[str, Any]) -> list[str]:
    def row(label: str, stats: dict[str, float]) -> str:
        return (f"| {label} | {stats['n']} | {stats['p50_s']:.3f} | {stats['p90_s']:.3f} | {stats['p99_s']:.3f} "
                f"| {stats['max_s']:.3f} | {_ok(stats)} |")

    memory = figures["operator"]
    real = figures["backend"] != "emulator"
    posts = f"Job POSTs: {figures['job_posts']} for {figures['jobs']} jobs; " if figures["job_posts"] >= 0 else ""
    return [
        f"### {figures['backend']}, {figures['rate_per_second']:g} per second",
        "",
        "| latency (seconds) | n | p50 | p90 | p99 | max | target (p50 ≤ 0.5, p99 ≤ 2) |",
        "|---|---|---|---|---|---|---|",
        row("create → Job created", figures["create_to_job"]),
        row("pod phase change → status updated (both)", figures["pod_phase_to_status"]),
        row("  pod Running → status Running", figures["pod_running_to_status"]),
        row("  pod Succeeded → status Succeeded" if real else "  Job Complete → status Succeeded",
            figures["job_complete_to_status"]),
        "",
        f"- creates offered at {figures['rate_per_second']:g}/s, achieved {figures['achieved_create_rate']:g}/s "
        f"({figures['jobs']} in {figures['create_seconds']} s)",
        f"- missed transitions: **{figures['missed_transitions']}** (must be 0); {posts}reconcile errors: "
        f"{figures['reconcile_errors']}; 'Forbidden' in the operator's log: {figures.get('forbidden_in_log', 0)}",
        f"- operator RSS {memory['rss_mb']} MB at the end, peak {memory['peak_rss_mb']} MB; operator CPU "
        f"{figures['operator_cpu_seconds']} s over {figures['wall_seconds']} s (creating: "
        f"{figures['create_phase']['operator_cpu_s']} s CPU in {figures['create_phase']['wall_s']} s); "
        f"machine load average {figures['load_average']}",
        f"- server CPU seconds over the run: {_cpu(figures)}",
        "",
    ]


def markdown(runs: list[dict[str, Any]]) -> str:
    lines = [
        "# Operator at scale",
        "",
        f"{runs[0]['jobs']} GanTrainingJobs per run, reconciled by the real operator (`kopf run -m "
        "ganops.operator.main`, its own process, so RSS and CPU are its own), against two API servers in the same "
        "invocation:",
        "",
        "- **emulator**: kmock over HTTP in the benchmark's process (the baseline); the benchmark plays the Job "
        "controller and the kubelet;",
        "- **control plane**: the real etcd, kube-apiserver (RBAC, PodSecurity), kube-controller-manager and "
        "kube-scheduler built by `make controlplane` (tests/support/controlplane), the chart installed with the real "
        "helm, the operator logged in as the chart's ServiceAccount (its RBAC); the real Job controller creates the "
        "pods and completes the Jobs, the real scheduler binds the pods to a registered node; the benchmark plays "
        "only that node's kubelet (posts the pods' status).",
        "",
        "Each run creates the jobs at the given rate, then moves every pod Pending → Running at that rate, then "
        "finishes every pod at that rate. Everything shares the machine's 2 cores with whatever else runs (load "
        "average below).",
        "",
        "| API server | rate /s | create → Job p50 / p99 (s) | pod phase → status p50 / p99 (s) | missed | "
        "peak RSS (MB) | operator CPU per created job (ms) | API server CPU per created job (ms) | "
        "operator / kube-apiserver / etcd CPU over the run (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run_ in runs:
        create, phase = run_["create_to_job"], run_["pod_phase_to_status"]
        per_job = 1000 * run_["create_phase"]["operator_cpu_s"] / max(1, run_["jobs"])
        server = run_["create_phase"].get("server_cpu_s") or {}
        api_per_job = (f"{1000 * server['kube-apiserver'] / max(1, run_['jobs']):.1f}" if "kube-apiserver" in server
                       else "(in process)")
        totals = run_.get("server_cpu_seconds") or {}
        cpu = (f"{run_['operator_cpu_seconds']:g} / {totals.get('kube-apiserver', float('nan')):g} / "
               f"{totals.get('etcd', float('nan')):g}") if totals else f"{run_['operator_cpu_seconds']:g} / - / -"
        lines.append(
            f"| {run_['backend']} | {run_['rate_per_second']:g} | {create['p50_s']:.3f} / {create['p99_s']:.3f} "
            f"{_ok(create)} | {phase['p50_s']:.3f} / {phase['p99_s']:.3f} {_ok(phase)} | "
            f"{run_['missed_transitions']} {'✓' if run_['missed_transitions'] == 0 else '✗'} | "
            f"{run_['operator']['peak_rss_mb']} {'✓' if run_['operator']['peak_rss_mb'] <= TARGETS['rss_mb'] else '✗'}"
            f" | {per_job:.1f} | {api_per_job} | {cpu} |")
    lines += ["", "Targets: p50 ≤ 0.5 s, p99 ≤ 2 s, no missed transition, RSS ≤ 300 MB.", ""]
    for run_ in runs:
        lines += _detail(run_)
    lines.append("Run: `make bench-operator` = `python -m benchmarks.operator_scale` (options: `--jobs`, `--rates`, "
                 "`--backends emulator controlplane`; the control plane needs `make controlplane`).")
    return "\n".join(lines)


BACKENDS: dict[str, type[Backend]] = {"emulator": EmulatorBackend, "controlplane": ControlPlaneBackend}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--rates", type=float, nargs="+", default=[25.0, 50.0],
                        help="creations and phase changes per second, one run each (0: as fast as possible)")
    parser.add_argument("--backends", nargs="+", choices=sorted(BACKENDS), default=["emulator", "controlplane"],
                        help="API servers, one run per rate each; the emulator is the baseline")
    parser.add_argument("--settle-timeout", type=float, default=180.0)
    parser.add_argument("--no-report", action="store_true", help="print only, do not write reports/")
    parser.add_argument("--name", default="operator_scale", help="reports/<name>.md and .json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="operator-scale-") as tmp:
        runs = [run(args.jobs, rate, args.settle_timeout, BACKENDS[backend], Path(tmp) / f"{backend}-{rate:g}")
                for backend in args.backends for rate in args.rates]
    text = markdown(runs)
    print(text)
    if not args.no_report:
        from benchmarks._report import write

        path = write(args.name, {"targets": TARGETS, "runs": runs}, text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
