"""A test-only Kubernetes "node": a kubelet that runs every pod bound to it as a local process started from that
pod's own spec, and, on the emulator, the Job controller and the scheduler too.

    node = Node(kube, Path(tmp) / "node", image_env={"PATH": venv_bin}).start()        # on the emulator
    node = Node.kubelet(kube, Path(tmp) / "node", node_name="n0", image_env=...).start()  # on a real control plane
    ...                       # the operator creates an Indexed Job; its pods run here
    node.stop()               # SIGTERM every container still running (SIGKILL after the grace period)

The same kubelet serves both APIs (`kube` is any `tests.support.kube.client.KubeClient`). On the emulator
(`job_controller=True`, the default) the node also creates the Jobs' pods and binds them to itself. On a real
control plane (`Node.kubelet(...)`: `job_controller=False, register=True`) the real Job controller creates the pods,
the real scheduler binds them, and the node does what a kubelet does besides running them: it registers its Node
object (capacity, allocatable, labels, addresses, `Ready`), renews its Lease in `kube-node-lease` and refreshes its
conditions every `heartbeat_seconds`, and finishes a graceful deletion (the pod's containers stopped → terminal
status → `DELETE` with grace period 0, as the API server waits for the kubelet to confirm). Give it a kubelet's
identity (`ControlPlane.client_for_node`) and the Node authorizer and NodeRestriction judge every request, so it
reads only the Secrets and ConfigMaps of pods bound to it.

**Job controller** (emulator only). For every Job matching `job_selector` that is not suspended and not finished,
one pod per completion index (template labels and annotations, `batch.kubernetes.io/*` labels, the completion-index
annotation, an owner reference to the Job, `spec.nodeName`). When a pod ends: `podFailurePolicy` rules
(`onExitCodes`, `onPodConditions`; `FailJob`, `Ignore`, `Count`) and `backoffLimit` decide between a
replacement pod and the Failed condition; all indexes succeeded → `SuccessCriteriaMet` + `Complete`. A Job
that fails or is suspended loses its running pods.

**Kubelet.** A pod bound to this node starts once its inputs resolve, as a real kubelet would:

- the environment is the image's (`image_env`, e.g. `PATH`), then `envFrom` (Secrets and ConfigMaps, `prefix`,
  `optional`), then `env` (`value` with `$(VAR)` expansion, `valueFrom` `fieldRef` / `secretKeyRef` /
  `configMapKeyRef` / `resourceFieldRef`) - read from the API, nothing from the test process's environment;
  a missing non-optional Secret or key keeps the pod Pending with `CreateContainerConfigError`, like a kubelet;
- volumes are materialised under `<root>/<namespace>/<pod>/volumes/<name>` (`configMap` and `secret` items as
  files, `emptyDir` as a folder); since the processes share one filesystem, every path under a `mountPath` is
  rewritten to that folder in the container's command, args (scripts included), env values and workingDir;
- `command` + `args` with `$(VAR)` expanded, run in a new session from `workingDir` (else an empty folder that
  stands for the image's root filesystem: with `readOnlyRootFilesystem` it is read-only for non-root users, and
  `Container.rootfs_writes()` lists what a root process wrote there anyway); stdout and stderr go to
  `<root>/<namespace>/<pod>/log`;
- status: `Running` with `podIP`, conditions and the container's `running` state, then `Succeeded` / `Failed`
  with the exit code (a signal N is 128 + N), `reason` and, under `FallbackToLogsOnError`, the log's tail as
  the termination message;
- a pod that is deleted (directly, or with its Job by garbage collection) gets SIGTERM, then SIGKILL after
  `terminationGracePeriodSeconds` (at most `max_grace_seconds`).

**Runtime.** By default a container is a local process of the host's environment (the paths under its mounts
rewritten, see above). `launcher` replaces that: it gets the pod, the container, the expanded argv, the resolved
environment and the materialised volumes (mountPath → host folder, nothing rewritten) and returns the started
process, e.g. `scripts.images.runtime` running the container's image under the pod's securityContext.

**Network.** Each pod gets its own loopback address as its `podIP` (127.0.0.2, 127.0.0.3, ...). Processes share
the host's network namespace, though, so two pods listening on the same port would collide; `pod_network_env`
(pod IP → variables) is where a test pins a workload's listeners to its pod IP (the stand-in for a network
namespace), e.g. `lambda ip: {"GANOPS_METRICS_ADDR": ip}`.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as dt
import itertools
import logging
import math
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .kube.client import KubeApiError, KubeClient

log = logging.getLogger(__name__)

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
NODE_NAME = "e2e-node"
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_VAR_REF = re.compile(r"\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)|\$\$")
_FIELD_KEY = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


class Launcher(Protocol):
    """Starts one container: (pod, container, argv, env, mountPath → host folder, log file) → its process."""

    def __call__(self, pod: dict[str, Any], container: dict[str, Any], argv: list[str], env: dict[str, str],
                 mounts: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]: ...


def _ts(when: float | None = None) -> str:
    moment = dt.datetime.fromtimestamp(time.time() if when is None else when, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined variables are replaced, unknown ones left as they are, `$$` → `$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF.sub(replace, text)


class PodConfigError(Exception):
    """The pod cannot start yet (a missing Secret, ConfigMap or key): the kubelet's CreateContainerConfigError."""


class _NotYet(Exception):
    """The API refused a read the node will be allowed shortly (the Node authorizer has not seen the pod's binding
    yet): try again on the next pass, report nothing."""


NODE_CAPACITY = {"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "200Gi", "nvidia.com/gpu": "8"}
LEASE_NAMESPACE = "kube-node-lease"


@dataclass
class Container:
    """One running container: its process and where its files are."""

    namespace: str
    pod: str
    uid: str
    pod_ip: str
    root: Path
    process: subprocess.Popen[bytes]
    started: float
    grace_seconds: float
    termination_message_policy: str
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    rootfs: Path | None = None  # the working directory that stands for a read-only root filesystem
    stopping_since: float | None = None

    def rootfs_writes(self) -> list[str]:
        """Files the container wrote into its working directory although `readOnlyRootFilesystem` is set (a real
        container would have failed with EROFS there). Running as root here, the node cannot forbid it, only see it."""
        if self.rootfs is None:
            return []
        return sorted(str(path.relative_to(self.rootfs)) for path in self.rootfs.rglob("*"))

    def log_tail(self, chars: int = 2048) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class _JobState:
    failed: int = 0
    succeeded_indexes: set[int] = field(default_factory=set)
    finished: bool = False


class Node:
    """The Job controller and a kubelet for the emulator, running pods as local processes (see the module doc)."""

    def __init__(
        self,
        kube: KubeClient,
        root: Path,
        *,
        image_env: Mapping[str, str] | None = None,
        pod_network_env: Callable[[str], Mapping[str, str]] | None = None,
        job_selector: str | None = None,
        namespaces: tuple[str, ...] = (),
        poll_seconds: float = 0.2,
        max_grace_seconds: float = 30.0,
        node_name: str = NODE_NAME,
        job_controller: bool = True,
        register: bool = False,
        labels: Mapping[str, str] | None = None,
        capacity: Mapping[str, str] | None = None,
        heartbeat_seconds: float = 5.0,
        launcher: Launcher | None = None,
    ) -> None:
        self.kube = kube
        self.job_controller = job_controller  # False: the cluster's Job controller and scheduler do that part
        self.register = register  # True: the Node object, its Lease and its conditions, kept fresh
        self.labels = {"kubernetes.io/hostname": node_name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", **(labels or {})}
        self.capacity = dict(capacity or NODE_CAPACITY)
        self.heartbeat_seconds = heartbeat_seconds
        self._last_heartbeat = 0.0
        self._finalized: set[str] = set()  # pod uids whose deletion the node confirmed
        self.root = root
        self.image_env = dict(image_env or {"PATH": os.defpath})
        self.pod_network_env = pod_network_env
        self.job_selector = job_selector
        self.namespaces = namespaces
        self.poll_seconds = poll_seconds
        self.max_grace_seconds = max_grace_seconds
        self.node_name = node_name
        self.launcher = launcher
        self.containers: dict[str, Container] = {}  # pod uid → its running container
        self.finished: dict[str, Container] = {}  # pod uid → its container after it exited
        self.pod_errors: dict[str, str] = {}  # "ns/pod" → why it has not started (CreateContainerConfigError)
        self.started_pods: list[str] = []  # "ns/pod" in start order
        self.failures: list[BaseException] = []  # exceptions of the node's own loop (should stay empty)
        self._jobs: dict[str, _JobState] = {}
        self._ips = (f"127.0.{n // 250}.{2 + n % 250}" for n in itertools.count())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @classmethod
    def kubelet(cls, kube: KubeClient, root: Path, *, node_name: str, **options: Any) -> Node:
        """A node for a real control plane: registers itself, runs what the scheduler binds to it."""
        return cls(kube, root, node_name=node_name, job_controller=False, register=True, **options)

    # ------------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> Node:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.register:
            self._register()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="e2e-node", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the loop, then SIGTERM every running container and wait (SIGKILL after `timeout`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            running = list(self.containers.values())
        for container in running:
            _signal(container.process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for container in running:
            try:
                container.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(container.process, signal.SIGKILL)
                container.process.wait(5)

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # recorded for the test; the loop goes on (API hiccups)
                log.warning("node tick failed: %r", exc)
                self.failures.append(exc)
            self._stop.wait(self.poll_seconds)

    # ------------------------------------------------------------------------------------------------ queries
    def logs(self, namespace: str, pod: str) -> str:
        """Everything the pod's container printed so far."""
        path = self.root / namespace / pod / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def container(self, namespace: str, pod: str) -> Container | None:
        with self._lock:
            for container in (*self.containers.values(), *self.finished.values()):
                if container.namespace == namespace and container.pod == pod:
                    return container
        return None

    def all_logs(self, chars: int = 3000) -> str:
        """The tail of every pod's log, for failure messages."""
        parts = []
        for path in sorted(self.root.glob("*/*/log")):
            text = path.read_text(errors="replace")[-chars:]
            parts.append(f"----- {path.parent.parent.name}/{path.parent.name}\n{text}")
        return "\n".join(parts)

    # ------------------------------------------------------------------------------------------------ one pass
    def tick(self) -> None:
        """One pass of the Job controller and the kubelet."""
        namespaces: tuple[str | None, ...] = self.namespaces or (None,)
        if self.job_controller:
            for namespace in namespaces:
                for job in self.kube.list("batch/v1", "Job", namespace, label_selector=self.job_selector):
                    self._sync_job(job)
        # A real kubelet watches only the pods bound to it (and is allowed no more); the emulator filters too.
        bound = None if self.job_controller else f"spec.nodeName={self.node_name}"
        pods = [pod for namespace in namespaces for pod in self.kube.list("v1", "Pod", namespace, field_selector=bound)
                if (pod.get("spec") or {}).get("nodeName") == self.node_name]
        live = {pod["metadata"]["uid"]: pod for pod in pods}
        for pod in pods:
            meta = pod["metadata"]
            phase = (pod.get("status") or {}).get("phase") or "Pending"
            if meta.get("deletionTimestamp"):
                self._stop_container(meta["uid"], pod)
                if not self.job_controller:
                    self._finish_deletion(pod)
            elif meta["uid"] not in self.containers and phase == "Pending":
                self._start_pod(pod)
        with self._lock:
            running = list(self.containers.items())
        for uid, container in running:
            if uid not in live:  # deleted (or garbage-collected with its Job): the kubelet stops the container
                self._stop_container(uid, None)
            elif container.process.poll() is not None:
                self._container_exited(uid, container)
        if self.register and time.monotonic() - self._last_heartbeat >= self.heartbeat_seconds:
            self._heartbeat()

    # ------------------------------------------------------------------------------------------------ Job controller
    def _sync_job(self, job: dict[str, Any]) -> None:
        meta, spec = job["metadata"], job["spec"]
        status = job.get("status") or {}
        uid = meta["uid"]
        state = self._jobs.setdefault(uid, _JobState())
        done = any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                   for c in status.get("conditions") or [])
        pods = self._job_pods(meta["namespace"], meta["name"], uid)
        if done or state.finished:
            return
        if spec.get("suspend"):
            for pod in pods:  # a suspended Job has no running pods
                if (pod.get("status") or {}).get("phase") in (None, "Pending", "Running"):
                    self.kube.delete("v1", "Pod", meta["namespace"], pod["metadata"]["name"], missing_ok=True)
            return
        completions = int(spec.get("completions") or 1)
        parallelism = int(spec.get("parallelism") if spec.get("parallelism") is not None else 1)
        active_indexes = {self._index(pod) for pod in pods
                          if (pod.get("status") or {}).get("phase") in (None, "Pending", "Running")}
        wanted = [i for i in range(completions) if i not in state.succeeded_indexes and i not in active_indexes]
        for index in wanted[: max(0, parallelism - len(active_indexes))]:
            self._create_pod(job, index)
            active_indexes.add(index)
        running = sum(1 for pod in pods if (pod.get("status") or {}).get("phase") == "Running")
        update: dict[str, Any] = {}
        if "startTime" not in status:
            update["startTime"] = _ts()
        if status.get("active") != len(active_indexes) or status.get("ready") != running:
            update.update(active=len(active_indexes), ready=running)
        if update:
            self.kube.patch_status("batch/v1", "Job", meta["namespace"], meta["name"], update)

    def _job_pods(self, namespace: str, name: str, uid: str) -> list[dict[str, Any]]:
        return [pod for pod in self.kube.list("v1", "Pod", namespace, label_selector=f"{CONTROLLER_UID_LABEL}={uid}")
                if pod["metadata"]["labels"].get(JOB_NAME_LABEL) == name]

    @staticmethod
    def _index(pod: dict[str, Any]) -> int:
        return int((pod["metadata"].get("annotations") or {}).get(INDEX_KEY, "0"))

    def _create_pod(self, job: dict[str, Any], index: int) -> None:
        meta, spec = job["metadata"], job["spec"]
        template = copy.deepcopy(spec["template"])
        indexed = spec.get("completionMode") == "Indexed"
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        labels.update({JOB_NAME_LABEL: meta["name"], CONTROLLER_UID_LABEL: meta["uid"], "job-name": meta["name"]})
        annotations = dict((template.get("metadata") or {}).get("annotations") or {})
        pod_spec = template["spec"]
        if indexed:
            labels[INDEX_KEY] = str(index)
            annotations[INDEX_KEY] = str(index)
            pod_spec.setdefault("hostname", f"{meta['name']}-{index}")
        pod_spec["nodeName"] = self.node_name  # the scheduler's binding
        name = f"{meta['name']}-{index}-{secrets.token_hex(3)}" if indexed else f"{meta['name']}-{secrets.token_hex(3)}"
        self.kube.create({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name, "namespace": meta["namespace"], "labels": labels, "annotations": annotations,
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                     "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": pod_spec,
        })
        self.kube.patch_status("v1", "Pod", meta["namespace"], name, {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": _ts()}],
        })

    def _job_after_pod(self, pod: dict[str, Any], exit_code: int, conditions: list[dict[str, Any]]) -> None:
        """The Job controller sees a pod end: success, a replacement, or the Job's failure."""
        owner = next((ref for ref in pod["metadata"].get("ownerReferences") or [] if ref.get("kind") == "Job"), None)
        if owner is None:
            return
        namespace = pod["metadata"]["namespace"]
        job = self.kube.get_or_none("batch/v1", "Job", namespace, owner["name"])
        if job is None or job["metadata"]["uid"] != owner["uid"]:
            return
        spec = job["spec"]
        state = self._jobs.setdefault(job["metadata"]["uid"], _JobState())
        index = self._index(pod)
        completions = int(spec.get("completions") or 1)
        if exit_code == 0:
            state.succeeded_indexes.add(index)
            if len(state.succeeded_indexes) >= completions:
                state.finished = True
                now = _ts()
                self.kube.patch_status("batch/v1", "Job", namespace, owner["name"], {
                    "active": 0, "succeeded": len(state.succeeded_indexes), "completionTime": now,
                    "completedIndexes": _ranges(sorted(state.succeeded_indexes)),
                    "conditions": [{"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now},
                                   {"type": "Complete", "status": "True", "lastTransitionTime": now}],
                })
            else:
                self.kube.patch_status("batch/v1", "Job", namespace, owner["name"],
                                       {"succeeded": len(state.succeeded_indexes)})
            return
        container = pod["spec"]["containers"][0]["name"]
        action = _failure_action(spec.get("podFailurePolicy"), container, exit_code, conditions)
        if action == "Ignore":
            return  # not counted; the next pass replaces the pod
        state.failed += 1
        if action == "FailJob" or state.failed > int(spec.get("backoffLimit", 6)):
            reason, message = (("PodFailurePolicy", f"Container {container} for pod {namespace}/"
                                f"{pod['metadata']['name']} failed with exit code {exit_code} matching FailJob rule")
                               if action == "FailJob" else
                               ("BackoffLimitExceeded", "Job has reached the specified backoff limit"))
            state.finished = True
            now = _ts()
            self.kube.patch_status("batch/v1", "Job", namespace, owner["name"], {
                "active": 0, "failed": state.failed,
                "conditions": [{"type": "FailureTarget", "status": "True", "reason": reason, "message": message,
                                "lastTransitionTime": now},
                               {"type": "Failed", "status": "True", "reason": reason, "message": message,
                                "lastTransitionTime": now}],
            })
            for other in self._job_pods(namespace, owner["name"], owner["uid"]):
                if (other.get("status") or {}).get("phase") in (None, "Pending", "Running"):
                    self.kube.delete("v1", "Pod", namespace, other["metadata"]["name"], missing_ok=True)
        else:
            self.kube.patch_status("batch/v1", "Job", namespace, owner["name"], {"failed": state.failed})

    # ------------------------------------------------------------------------------------------------ kubelet
    def _start_pod(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        namespace, name = meta["namespace"], meta["name"]
        key = f"{namespace}/{name}"
        (container_spec, *_others) = spec["containers"]  # one container: what the operator renders
        pod_root = self.root / namespace / name
        pod_ip = self._pod_ip(pod)
        try:
            mounts = self._volumes(pod, container_spec, pod_root)
            env = self._environment(pod, container_spec, pod_ip)
        except _NotYet:
            return
        except PodConfigError as exc:
            if self.pod_errors.get(key) != str(exc):
                self.pod_errors[key] = str(exc)
                self.kube.patch_status("v1", "Pod", namespace, name, {"containerStatuses": [{
                    "name": container_spec["name"], "ready": False, "restartCount": 0,
                    "image": container_spec.get("image", ""), "imageID": "",
                    "state": {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}}]})
            return
        self.pod_errors.pop(key, None)
        if self.launcher is not None:
            self._launch(pod, container_spec, env, mounts, pod_root, pod_ip)
            return
        # The image's own variables (PATH to the venv, …) are host paths already: a venv under /tmp must not be
        # taken for the pod's /tmp mount. Only what the pod spec set is rewritten.
        env = {key_: value if self.image_env.get(key_) == value else _rewrite(value, mounts)
               for key_, value in env.items()}
        argv = [_rewrite(expand(arg, env), mounts)
                for arg in [*(container_spec.get("command") or []), *(container_spec.get("args") or [])]]
        workdir = Path(_rewrite(container_spec["workingDir"], mounts)) if container_spec.get("workingDir") \
            else pod_root / "rootfs"
        workdir.mkdir(parents=True, exist_ok=True)
        if (container_spec.get("securityContext") or {}).get("readOnlyRootFilesystem"):
            workdir.chmod(0o555)  # effective for non-root users; `Container.rootfs_writes` tells for root
        log_path = pod_root / "log"
        grace = min(float(spec.get("terminationGracePeriodSeconds", 30)), self.max_grace_seconds)
        policy = container_spec.get("terminationMessagePolicy", "File")
        with log_path.open("ab") as out:
            try:
                process = subprocess.Popen(argv, env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as exc:  # the runtime could not start the container
                self._terminated(pod, container_spec["name"], 128, "StartError", f"{type(exc).__name__}: {exc}",
                                 started=time.time())
                return
        read_only = bool((container_spec.get("securityContext") or {}).get("readOnlyRootFilesystem"))
        container = Container(namespace, name, meta["uid"], pod_ip, pod_root, process, time.time(), grace, policy,
                              container_spec["name"], argv, env, log_path,
                              rootfs=workdir if read_only and not container_spec.get("workingDir") else None)
        with self._lock:
            self.containers[meta["uid"]] = container
        self.started_pods.append(key)
        self._running(pod, container_spec, container)

    def _launch(self, pod: dict[str, Any], container_spec: dict[str, Any], env: dict[str, str],
                mounts: dict[str, str], pod_root: Path, pod_ip: str) -> None:
        """Start the container through `launcher` (its own root file system: no path is rewritten)."""
        assert self.launcher is not None
        meta, spec = pod["metadata"], pod["spec"]
        argv = [expand(arg, env) for arg in [*(container_spec.get("command") or []), *(container_spec.get("args")
                                                                                       or [])]]
        log_path = pod_root / "log"
        try:
            process = self.launcher(pod, container_spec, argv, env, mounts, log_path)
        except (OSError, RuntimeError) as exc:  # the runtime could not start the container
            self._terminated(pod, container_spec["name"], 128, "StartError", f"{type(exc).__name__}: {exc}",
                             started=time.time())
            return
        grace = min(float(spec.get("terminationGracePeriodSeconds", 30)), self.max_grace_seconds)
        container = Container(meta["namespace"], meta["name"], meta["uid"], pod_ip, pod_root, process, time.time(),
                              grace, container_spec.get("terminationMessagePolicy", "File"), container_spec["name"],
                              argv, env, log_path)
        with self._lock:
            self.containers[meta["uid"]] = container
        self.started_pods.append(f"{meta['namespace']}/{meta['name']}")
        self._running(pod, container_spec, container)

    def _running(self, pod: dict[str, Any], container_spec: dict[str, Any], container: Container) -> None:
        now = _ts(container.started)
        self.kube.patch_status("v1", "Pod", container.namespace, container.pod, {
            "phase": "Running", "podIP": container.pod_ip, "podIPs": [{"ip": container.pod_ip}],
            "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}], "startTime": now,
            "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                           for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
            "containerStatuses": [{"name": container_spec["name"], "ready": True, "started": True, "restartCount": 0,
                                   "image": container_spec.get("image", ""), "imageID": "",
                                   "containerID": f"process://{container.process.pid}",
                                   "state": {"running": {"startedAt": now}}}],
        })

    def _pod_ip(self, pod: dict[str, Any]) -> str:
        existing = (pod.get("status") or {}).get("podIP")
        return str(existing) if existing else next(self._ips)

    def _container_exited(self, uid: str, container: Container) -> None:
        code = container.process.returncode
        exit_code = 128 - code if code < 0 else code  # killed by signal N → 128 + N, as container runtimes report
        with self._lock:
            self.containers.pop(uid, None)
            self.finished[uid] = container
        pod = self.kube.get_or_none("v1", "Pod", container.namespace, container.pod)
        if pod is None or pod["metadata"]["uid"] != uid:
            return
        message = container.log_tail() if exit_code != 0 and container.termination_message_policy == \
            "FallbackToLogsOnError" else ""
        reason = "Completed" if exit_code == 0 else "Error"
        updated = self._terminated(pod, container.name, exit_code, reason, message, started=container.started)
        if self.job_controller:
            self._job_after_pod(pod, exit_code, list((updated.get("status") or {}).get("conditions") or []))

    def _terminated(self, pod: dict[str, Any], container: str, exit_code: int, reason: str, message: str, *,
                    started: float) -> dict[str, Any]:
        meta = pod["metadata"]
        now = _ts()
        status = pod.get("status") or {}
        conditions = [c for c in status.get("conditions") or [] if c.get("type") not in ("Ready", "ContainersReady")]
        conditions += [{"type": t, "status": "False", "reason": "PodCompleted" if exit_code == 0 else "PodFailed",
                        "lastTransitionTime": now} for t in ("ContainersReady", "Ready")]
        terminated: dict[str, Any] = {"exitCode": exit_code, "reason": reason, "startedAt": _ts(started),
                                      "finishedAt": now}
        if message:
            terminated["message"] = message
        result: dict[str, Any] = self.kube.patch_status("v1", "Pod", meta["namespace"], meta["name"], {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "conditions": conditions,
            "containerStatuses": [{"name": container, "ready": False, "started": False, "restartCount": 0,
                                   "image": pod["spec"]["containers"][0].get("image", ""), "imageID": "",
                                   "state": {"terminated": terminated}}],
        })
        return result

    def _stop_container(self, uid: str, pod: dict[str, Any] | None) -> None:
        """The pod is going away: SIGTERM now, SIGKILL once the grace period is over (checked on later passes)."""
        with self._lock:
            container = self.containers.get(uid)
        if container is None:
            return
        if container.process.poll() is not None:
            with self._lock:
                self.containers.pop(uid, None)
                self.finished[uid] = container
            return
        if container.stopping_since is None:
            container.stopping_since = time.monotonic()
            _signal(container.process, signal.SIGTERM)
        elif time.monotonic() - container.stopping_since > container.grace_seconds:
            _signal(container.process, signal.SIGKILL)

    def _finish_deletion(self, pod: dict[str, Any]) -> None:
        """A kubelet's side of a graceful deletion: once the container has stopped (or never started), the pod's
        final status, then `DELETE` with grace period 0 (the API server keeps the pod until then)."""
        meta = pod["metadata"]
        uid = meta["uid"]
        with self._lock:
            if uid in self.containers or uid in self._finalized:
                return  # still stopping, or done already
            container = self.finished.get(uid)
        phase = (pod.get("status") or {}).get("phase")
        if phase not in ("Succeeded", "Failed"):
            if container is not None:
                code = container.process.returncode
                exit_code = 128 - code if code < 0 else code
                message = container.log_tail() if exit_code != 0 and \
                    container.termination_message_policy == "FallbackToLogsOnError" else ""
                self._terminated(pod, container.name, exit_code, "Completed" if exit_code == 0 else "Error", message,
                                 started=container.started)
            else:  # never started (e.g. waiting for a Secret): a terminal phase, nothing ran
                self.kube.patch_status("v1", "Pod", meta["namespace"], meta["name"], {"phase": "Failed"})
        path = self.kube.resource("v1", "Pod").path(meta["namespace"], meta["name"])
        try:
            self.kube.request("DELETE", path, json_body={"apiVersion": "v1", "kind": "DeleteOptions",
                                                         "gracePeriodSeconds": 0, "preconditions": {"uid": uid}})
        except KubeApiError as exc:
            if exc.status not in (404, 409):
                raise
        with self._lock:
            self._finalized.add(uid)

    # ------------------------------------------------------------------------------------------------ registration
    def _register(self) -> None:
        """Create (or refresh) this node's Node object, as a kubelet registers itself."""
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node_name, "labels": dict(self.labels)}, "spec": {}}
        try:
            self.kube.create(body)
        except KubeApiError as exc:
            if exc.status != 409:
                raise
            self.kube.patch("v1", "Node", None, self.node_name, {"metadata": {"labels": dict(self.labels)}})
        self._heartbeat(full=True)

    def _heartbeat(self, *, full: bool = False) -> None:
        """Renew the Lease (the node controller's liveness signal) and post the Ready condition."""
        now = time.time()
        micro = dt.datetime.fromtimestamp(now, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lease = self.kube.get_or_none("coordination.k8s.io/v1", "Lease", LEASE_NAMESPACE, self.node_name)
        spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": 40, "renewTime": micro}
        if lease is None:
            self.kube.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                              "metadata": {"name": self.node_name, "namespace": LEASE_NAMESPACE}, "spec": spec})
        else:
            self.kube.patch("coordination.k8s.io/v1", "Lease", LEASE_NAMESPACE, self.node_name, {"spec": spec})
        stamp = _ts(now)
        status: dict[str, Any] = {"conditions": [
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
            {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure"},
            {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID"},
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "the test node runs pods as local processes"},
        ]}
        previous = {c["type"]: c for c in ((self.kube.get("v1", "Node", None, self.node_name).get("status") or {})
                                           .get("conditions") or [])}
        for condition in status["conditions"]:
            kept = previous.get(condition["type"])
            same = kept is not None and kept.get("status") == condition["status"]
            condition.update(lastHeartbeatTime=stamp,
                             lastTransitionTime=kept["lastTransitionTime"] if same and kept else stamp)
        if full:
            status.update(
                capacity=dict(self.capacity), allocatable=dict(self.capacity),
                addresses=[{"type": "InternalIP", "address": "127.0.0.1"},
                           {"type": "Hostname", "address": self.node_name}],
                daemonEndpoints={"kubeletEndpoint": {"Port": 0}},
                nodeInfo={"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": os.uname().release,
                          "osImage": "ganops test node", "containerRuntimeVersion": "process://local",
                          "kubeletVersion": "v0.0.0-ganops-test-node", "kubeProxyVersion": "",
                          "operatingSystem": "linux", "architecture": "amd64"},
            )
        self.kube.patch_status("v1", "Node", None, self.node_name, status)
        self._last_heartbeat = time.monotonic()

    # ------------------------------------------------------------------------------------------------ inputs
    def _read(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's (decoded) or a ConfigMap's data; None when it does not exist."""
        try:
            obj = self.kube.get("v1", kind, namespace, name)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            if exc.status == 403 and not self.job_controller:
                raise _NotYet(str(exc)) from exc
            raise
        if kind == "Secret":
            return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return {k: str(v) for k, v in (obj.get("data") or {}).items()}

    def _source(self, kind: str, namespace: str, ref: Mapping[str, Any], what: str) -> dict[str, str] | None:
        data = self._read(kind, namespace, ref["name"])
        if data is None and not ref.get("optional", False):
            raise PodConfigError(f'{kind.lower()} "{ref["name"]}" not found ({what})')
        return data

    def _environment(self, pod: dict[str, Any], container: dict[str, Any], pod_ip: str) -> dict[str, str]:
        namespace = pod["metadata"]["namespace"]
        env = dict(self.image_env)
        env["HOSTNAME"] = pod["spec"].get("hostname") or pod["metadata"]["name"]
        if self.pod_network_env is not None:
            env.update(self.pod_network_env(pod_ip))
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                if key in source:
                    data = self._source(kind, namespace, source[key], f"envFrom {key}") or {}
                    env.update({prefix + k: v for k, v in data.items() if ENV_NAME.match(prefix + k)})
        declared: dict[str, str] = {}
        for item in container.get("env") or []:
            name = item["name"]
            if "valueFrom" not in item:
                value = expand(str(item.get("value", "")), {**env, **declared})
            else:
                resolved = self._value_from(pod, container, item["valueFrom"], pod_ip, name)
                if resolved is None:
                    continue
                value = resolved
            declared[name] = value
        env.update(declared)
        return env

    def _value_from(self, pod: dict[str, Any], container: dict[str, Any], source: Mapping[str, Any], pod_ip: str,
                    name: str) -> str | None:
        namespace = pod["metadata"]["namespace"]
        for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
            if key in source:
                ref = source[key]
                data = self._source(kind, namespace, ref, f"env {name}")
                if data is None:
                    return None
                if ref["key"] not in data:
                    if ref.get("optional", False):
                        return None
                    raise PodConfigError(f'couldn\'t find key {ref["key"]} in {kind} {namespace}/{ref["name"]}')
                return data[ref["key"]]
        if "fieldRef" in source:
            return self._field(pod, source["fieldRef"]["fieldPath"], pod_ip)
        if "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            bucket, _, resource = ref["resource"].partition(".")
            raw = ((container.get("resources") or {}).get(bucket) or {}).get(resource)
            if raw is None:
                return "0"
            return str(_quantity(str(raw), str(ref.get("divisor", "1"))))
        raise PodConfigError(f"env {name}: unsupported valueFrom {sorted(source)}")

    def _field(self, pod: dict[str, Any], path: str, pod_ip: str) -> str:
        meta = pod["metadata"]
        match = _FIELD_KEY.match(path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        simple = {
            "metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
            "spec.nodeName": self.node_name, "spec.serviceAccountName": pod["spec"].get("serviceAccountName",
                                                                                        "default"),
            "status.hostIP": "127.0.0.1", "status.hostIPs": "127.0.0.1", "status.podIP": pod_ip,
            "status.podIPs": pod_ip,
        }
        if path not in simple:
            raise PodConfigError(f"unsupported fieldRef {path!r}")
        return str(simple[path])

    def _volumes(self, pod: dict[str, Any], container: dict[str, Any], pod_root: Path) -> dict[str, str]:
        """Materialise the volumes the container mounts; returns mountPath → host folder."""
        namespace = pod["metadata"]["namespace"]
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        mounts: dict[str, str] = {}
        for mount in container.get("volumeMounts") or []:
            if mount.get("subPath") or mount.get("subPathExpr"):
                raise PodConfigError(f"volume mount {mount['name']}: subPath is not supported by this node")
            volume = volumes.get(mount["name"])
            if volume is None:
                raise PodConfigError(f"volume mount {mount['name']!r} names no volume of the pod")
            folder = pod_root / "volumes" / mount["name"]
            folder.mkdir(parents=True, exist_ok=True)
            for kind, key, name_key in (("ConfigMap", "configMap", "name"), ("Secret", "secret", "secretName")):
                if key in volume:
                    ref = {"name": volume[key][name_key], "optional": volume[key].get("optional", False)}
                    data = self._source(kind, namespace, ref, f"volume {mount['name']}") or {}
                    items = volume[key].get("items") or [{"key": k, "path": k} for k in data]
                    for item in items:
                        if item["key"] not in data:
                            raise PodConfigError(f"configmap references non-existent config key: {item['key']}")
                        target = folder / item["path"]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_text(data[item["key"]])
                        mode = item.get("mode", volume[key].get("defaultMode", 0o644))
                        target.chmod(int(mode) & 0o777)
            if not any(k in volume for k in ("configMap", "secret", "emptyDir")):
                raise PodConfigError(f"volume {mount['name']}: only configMap, secret and emptyDir are supported")
            mounts[mount["mountPath"].rstrip("/") or "/"] = str(folder)
        return mounts


def _rewrite(value: str, mounts: Mapping[str, str]) -> str:
    """Paths under a mountPath → the same paths under the volume's host folder, wherever they appear as a path in
    the string (a whole argument, `--flag=/path`, a shell script, a `:`-separated list); longest mountPath first."""
    if not mounts:
        return value
    ordered = sorted(mounts, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w./-])(" + "|".join(re.escape(m) for m in ordered) + r")(?=$|[/\s'\";:,)])")
    return pattern.sub(lambda match: mounts[match.group(1)], value)


def _signal(process: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the container's process group (its own session: the container, nothing else)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _failure_action(policy: Mapping[str, Any] | None, container: str, exit_code: int,
                    conditions: list[dict[str, Any]]) -> str:
    """The action of the first podFailurePolicy rule that matches (Count when none does)."""
    for rule in (policy or {}).get("rules") or []:
        codes = rule.get("onExitCodes")
        if codes is not None:
            if codes.get("containerName") not in (None, container):
                continue
            inside = exit_code in codes.get("values", [])
            if inside == (codes.get("operator") == "In"):
                return str(rule["action"])
            continue
        for wanted in rule.get("onPodConditions") or []:
            if any(c.get("type") == wanted.get("type") and c.get("status") == wanted.get("status", "True")
                   for c in conditions):
                return str(rule["action"])
    return "Count"


def _ranges(indexes: list[int]) -> str:
    """Kubernetes' compressed index list: [0, 1, 2, 5] → "0-2,5"."""
    out: list[str] = []
    for _, group in itertools.groupby(enumerate(indexes), key=lambda pair: pair[1] - pair[0]):
        run = [i for _, i in group]
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(out)


_SUFFIXES = {"m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2.0**10, "Mi": 2.0**20,
             "Gi": 2.0**30, "Ti": 2.0**40}


def _quantity(raw: str, divisor: str) -> int:
    """resourceFieldRef: the quantity divided by the divisor, rounded up (as the kubelet does)."""

    def parse(text: str) -> float:
        match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", text.strip())
        if not match or match.group(2) not in _SUFFIXES:
            raise PodConfigError(f"cannot parse quantity {text!r}")
        return float(match.group(1)) * _SUFFIXES[match.group(2)]

    return math.ceil(parse(raw) / parse(divisor))
