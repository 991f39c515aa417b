"""A real Kubernetes control plane on 127.0.0.1 for tests: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler, built from their Go modules by `make controlplane` (tools/controlplane/build.sh).

    binaries = find_binaries()                       # the version-keyed cache make controlplane filled
    with ControlPlane(binaries, tmp / "cp") as cp:   # generated PKI, data in tmp, ready in a few seconds
        kube = cp.client()                           # admin (system:masters) HTTP client, `KubeClient`'s API
        cp.kubectl("apply", "-f", "crd.yaml")        # the real kubectl with the admin kubeconfig
        node = cp.client_for_node("ganops-node-0")   # a kubelet's identity (Node authorizer, NodeRestriction)

What runs, and why so:

- etcd: one member on loopback, data in the tmp dir, `--unsafe-no-fsync` (a test cluster needs no durability
  and fsyncs cost seconds on a shared disk).
- kube-apiserver: secure port only, client certificates from the generated CA; `--authorization-mode=Node,RBAC`;
  admission: the defaults plus `NodeRestriction` and `PodSecurity` (namespaces opt into a level with the
  `pod-security.kubernetes.io/enforce` label); service-account tokens signed with a generated key and issuer
  `https://kubernetes.default.svc.cluster.local`; `--endpoint-reconciler-type=none` (the `kubernetes` Service
  would otherwise point at 127.0.0.1, which Endpoints validation refuses, logged every 10 s).
- kube-controller-manager: `CONTROLLERS` only (no cloud provider, no node IPAM, no volumes), each controller
  under its own service account (`--use-service-account-credentials`), no leader election.
- kube-scheduler: the default profile, no leader election.

Everything listens on 127.0.0.1 ports picked at start. `stop()` (SIGTERM, SIGKILL after 10 s) ends every process;
each also dies with the test process (PR_SET_PDEATHSIG), so a crashed pytest leaves no control plane behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import httpx

from ..kube.client import Body, KubeApiError, KubeClient
from ..kube.polling import wait_for
from .pki import API_DNS_NAMES, SERVICE_CIDR, SERVICE_IP, KeyPair, Pki, kubeconfig

if TYPE_CHECKING:
    import kubernetes.client

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "tools" / "controlplane" / "build.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "helm")
ISSUER = "https://kubernetes.default.svc.cluster.local"
# The controllers the tests need, by their kube-controller-manager names (`--controllers`): garbage collection,
# aggregated ClusterRoles (admin/edit/view pick up rules that carry their aggregation labels), workloads (Job,
# Deployment/ReplicaSet, TTL after finished), namespaces and service accounts (the `default`
# ServiceAccount that pod admission requires, legacy token Secrets, the kube-root-ca.crt ConfigMap), and nodes
# (the not-ready/unreachable taints and evictions, pod GC of deleted nodes' pods). The rest stay off: no cloud,
# no node IPAM or routes, no volumes, no certificates, no Services' endpoints (the test node has no proxy).
CONTROLLERS = (
    "garbage-collector-controller",
    "clusterrole-aggregation-controller",
    "job-controller",
    "deployment-controller",
    "replicaset-controller",
    "ttl-after-finished-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "node-lifecycle-controller",
    "taint-eviction-controller",
    "pod-garbage-collector-controller",
    "disruption-controller",
)


class ControlPlaneUnavailable(RuntimeError):
    """The binaries are not built (or not complete): the message says what is missing and how to build them."""


class KubectlError(AssertionError):
    """kubectl failed where the test expected it to succeed (its output is the message)."""


@dataclass(frozen=True)
class Binaries:
    """The directory with the control plane's programs (see `find_binaries`)."""

    dir: Path

    def __getitem__(self, name: str) -> str:
        return str(self.dir / name)


def find_binaries() -> Binaries:
    """The binaries of this checkout's version set: `$GANOPS_CONTROLPLANE_BIN`, else the cache that
    `make controlplane` fills (tools/controlplane/build.sh --check says where, and whether it is complete)."""
    explicit = os.environ.get("GANOPS_CONTROLPLANE_BIN")
    if explicit:
        folder = Path(explicit)
    else:
        result = subprocess.run(["bash", str(BUILD_SCRIPT), "--check"], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            said = " ".join(filter(None, (result.stdout.strip(), result.stderr.strip())))
            raise ControlPlaneUnavailable(f"{said}: run `make controlplane` (a cold Go build, see "
                                          "docs/development.md) or set GANOPS_CONTROLPLANE_BIN")
        folder = Path(result.stdout.strip())
    missing = [name for name in BINARIES if not os.access(folder / name, os.X_OK)]
    if missing:
        raise ControlPlaneUnavailable(f"{folder} lacks {', '.join(missing)}: run `make controlplane`")
    return Binaries(folder)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child must not dlopen between fork and exec


def _die_with_parent() -> None:  # runs in the child between fork and exec: one system call, nothing else
    _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Process:
    """One control-plane program, its log and its readiness URL."""

    name: str
    argv: list[str]
    log: Path
    ready_url: str
    popen: subprocess.Popen[bytes] | None = None
    ready_after: float | None = None  # seconds from the control plane's start

    def start(self, env: Mapping[str, str]) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=dict(env), start_new_session=True, preexec_fn=_die_with_parent)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)


class ControlPlaneClient(KubeClient):
    """`KubeClient` over TLS with a client certificate from the control plane's CA."""

    def __init__(self, url: str, ca: Path, identity: KeyPair, kubeconfig_path: Path, *, timeout: float = 15.0) -> None:
        self._url = url
        self._ca = ca
        self._identity = identity
        self._kubeconfig_path = kubeconfig_path
        self._timeout = timeout
        self._discovery = {}
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(identity.cert), str(identity.key))
        self._http = httpx.Client(base_url=url, verify=context, timeout=timeout)

    @property
    def url(self) -> str:
        return self._url

    @property
    def http(self) -> httpx.Client:
        return self._http

    @property
    def kubeconfig_path(self) -> Path:
        return self._kubeconfig_path

    def kubernetes_configuration(self) -> kubernetes.client.Configuration:
        import kubernetes.client

        configuration = kubernetes.client.Configuration(host=self._url)
        configuration.ssl_ca_cert = str(self._ca)
        configuration.cert_file = str(self._identity.cert)
        configuration.key_file = str(self._identity.key)
        return configuration

    def close(self) -> None:
        self._http.close()

    def register_crd(self, crd: Mapping[str, Any]) -> Body:
        """Create or update a CRD and wait until the API server has established it (and serves its kind)."""
        created = super().register_crd(crd)
        name = created["metadata"]["name"]

        def established() -> bool:
            current = self.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, name)
            return any(c.get("type") == "Established" and c.get("status") == "True"
                       for c in (current.get("status") or {}).get("conditions") or [])

        self.wait_for(established, timeout=30, message=f"CRD {name} established")
        spec = created["spec"]
        for version in spec["versions"]:
            if version.get("served", True):
                group_version = f"{spec['group']}/{version['name']}"

                def served(gv: str = group_version) -> bool:
                    return bool(self._group_version(gv, refresh=True))

                self.wait_for(served, timeout=30, message=f"{group_version} discoverable")
        return created


@dataclass
class StartupTimes:
    """Seconds from `start()` until each part answered (for the docs' numbers and slow-start diagnostics)."""

    pki: float = 0.0
    etcd: float = 0.0
    apiserver: float = 0.0
    controller_manager: float = 0.0
    scheduler: float = 0.0
    controllers_working: float = 0.0
    total: float = 0.0
    detail: dict[str, float] = field(default_factory=dict)


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler in `root` (see the module doc)."""

    def __init__(self, binaries: Binaries, root: Path, *, verbosity: int = 0, startup_timeout: float = 90.0) -> None:
        self.binaries = binaries
        self.root = root
        self.verbosity = verbosity
        self.startup_timeout = startup_timeout
        self.times = StartupTimes()
        self.processes: dict[str, Process] = {}
        self._clients: list[ControlPlaneClient] = []
        self._admin: ControlPlaneClient | None = None
        self.url = ""
        self.pki: Pki | None = None
        self.admin_kubeconfig = root / "admin.kubeconfig"

    # ------------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        started = time.monotonic()
        for sub in ("pki", "logs", "etcd", "kubeconfigs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        pki = self.pki = Pki(self.root / "pki")
        ports = {name: free_port() for name in ("etcd", "etcd-peer", "apiserver", "kcm", "scheduler")}
        self.url = f"https://127.0.0.1:{ports['apiserver']}"
        apiserver_tls = pki.serving("apiserver", "kube-apiserver", ["127.0.0.1", SERVICE_IP], API_DNS_NAMES)
        kcm_tls = pki.serving("kcm-serving", "kube-controller-manager", ["127.0.0.1"], ("localhost",))
        scheduler_tls = pki.serving("scheduler-serving", "kube-scheduler", ["127.0.0.1"], ("localhost",))
        front_proxy = Pki(self.root / "pki" / "front-proxy", name="front-proxy-ca", service_account_keys=False)
        proxy_client = front_proxy.client("front-proxy-client", "front-proxy-client")
        admin = pki.client("admin", "ganops-test-admin", ("system:masters",))
        kubeconfig(self.admin_kubeconfig, self.url, pki.ca.cert, admin, user="admin")
        kcm_config = kubeconfig(self.root / "kubeconfigs" / "kcm", self.url, pki.ca.cert,
                                pki.client("kcm", "system:kube-controller-manager"), user="kcm")
        scheduler_config = kubeconfig(self.root / "kubeconfigs" / "scheduler", self.url, pki.ca.cert,
                                      pki.client("scheduler", "system:kube-scheduler"), user="scheduler")
        self.times.pki = time.monotonic() - started
        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
        b, logs, v = self.binaries, self.root / "logs", str(self.verbosity)
        self.processes = {
            "etcd": Process("etcd", [
                b["etcd"], "--name=cp", f"--data-dir={self.root / 'etcd'}", f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}", f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}", f"--initial-cluster=cp={peer_url}",
                "--unsafe-no-fsync", "--log-level=warn", "--quota-backend-bytes=1073741824",
            ], logs / "etcd.log", f"{etcd_url}/health"),
            "kube-apiserver": Process("kube-apiserver", [
                b["kube-apiserver"], "--bind-address=127.0.0.1", f"--secure-port={ports['apiserver']}",
                "--advertise-address=127.0.0.1", f"--etcd-servers={etcd_url}",
                f"--tls-cert-file={apiserver_tls.cert}", f"--tls-private-key-file={apiserver_tls.key}",
                f"--client-ca-file={pki.ca.cert}", "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction,PodSecurity",
                f"--service-account-issuer={ISSUER}", f"--service-account-key-file={pki.service_account_pub}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}", "--endpoint-reconciler-type=none",
                f"--requestheader-client-ca-file={front_proxy.ca.cert}",
                "--requestheader-allowed-names=front-proxy-client", "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group", "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={proxy_client.cert}", f"--proxy-client-key-file={proxy_client.key}",
                "--profiling=false", f"--v={v}",
            ], logs / "kube-apiserver.log", f"{self.url}/readyz"),
            "kube-controller-manager": Process("kube-controller-manager", [
                b["kube-controller-manager"], f"--kubeconfig={kcm_config}",
                f"--authentication-kubeconfig={kcm_config}", f"--authorization-kubeconfig={kcm_config}",
                "--bind-address=127.0.0.1", f"--secure-port={ports['kcm']}",
                f"--tls-cert-file={kcm_tls.cert}", f"--tls-private-key-file={kcm_tls.key}",
                f"--client-ca-file={pki.ca.cert}", "--leader-elect=false", "--use-service-account-credentials",
                f"--service-account-private-key-file={pki.service_account_key}", f"--root-ca-file={pki.ca.cert}",
                f"--controllers={','.join(CONTROLLERS)}", "--node-monitor-period=1s", "--profiling=false",
                f"--v={v}",
            ], logs / "kube-controller-manager.log", f"https://127.0.0.1:{ports['kcm']}/healthz"),
            "kube-scheduler": Process("kube-scheduler", [
                b["kube-scheduler"], f"--kubeconfig={scheduler_config}",
                f"--authentication-kubeconfig={scheduler_config}", f"--authorization-kubeconfig={scheduler_config}",
                "--bind-address=127.0.0.1", f"--secure-port={ports['scheduler']}",
                f"--tls-cert-file={scheduler_tls.cert}", f"--tls-private-key-file={scheduler_tls.key}",
                f"--client-ca-file={pki.ca.cert}", "--leader-elect=false", "--profiling=false", f"--v={v}",
            ], logs / "kube-scheduler.log", f"https://127.0.0.1:{ports['scheduler']}/readyz"),
        }
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("KUBECONFIG", "KUBERNETES_", "ETCD"))}
        try:
            # etcd and the API server at once (the API server retries etcd by itself); the controller manager and
            # the scheduler once the API server is ready: they exit if it does not answer when they start.
            for name in ("etcd", "kube-apiserver"):
                self.processes[name].start(env)
            self._wait_ready(started, ("etcd", "kube-apiserver"))
            for name in ("kube-controller-manager", "kube-scheduler"):
                self.processes[name].start(env)
            self._wait_ready(started, ("kube-controller-manager", "kube-scheduler"))
            self._wait_working(started)
            self.times.total = time.monotonic() - started
        except BaseException:
            self.stop()
            raise
        (self.root / "startup.json").write_text(json.dumps(self.times.__dict__, indent=1))
        return self

    def _wait_ready(self, started: float, names: Sequence[str]) -> None:
        """Poll each process's health URL until it answers 200 (or the process exits, or time runs out)."""
        deadline = started + self.startup_timeout
        assert self.pki is not None
        context = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        context.load_cert_chain(*(str(p) for p in (self.root / "pki" / "admin.crt", self.root / "pki" / "admin.key")))
        pending = {name: self.processes[name] for name in names}
        with httpx.Client(verify=context, timeout=2.0) as http:
            while pending:
                for name, process in list(pending.items()):
                    if not process.alive():
                        raise RuntimeError(f"{name} exited during start-up:\n{process.tail()}")
                    try:
                        answer = http.get(process.ready_url)
                    except httpx.HTTPError:
                        continue
                    if answer.status_code == 200:
                        process.ready_after = time.monotonic() - started
                        del pending[name]
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not ready in {self.startup_timeout}s: {', '.join(pending)}\n" + "\n".join(
                        f"--- {name}\n{process.tail(1500)}" for name, process in pending.items()))
                time.sleep(0.05)

    def _wait_working(self, started: float) -> None:
        deadline = started + self.startup_timeout
        times = self.times
        times.etcd = self.processes["etcd"].ready_after or 0.0
        times.apiserver = self.processes["kube-apiserver"].ready_after or 0.0
        times.controller_manager = self.processes["kube-controller-manager"].ready_after or 0.0
        times.scheduler = self.processes["kube-scheduler"].ready_after or 0.0
        # Healthy is not working: the controllers run once the service-account controller has made the default
        # namespace's ServiceAccount (pods cannot be admitted without it) and the CA was published.
        kube = self.client()
        remaining = max(1.0, deadline - time.monotonic())
        kube.wait_for(lambda: kube.get("v1", "ServiceAccount", "default", "default"), timeout=remaining,
                      message="the default ServiceAccount (serviceaccount controller)")
        kube.wait_for(lambda: kube.get("v1", "ConfigMap", "default", "kube-root-ca.crt"), timeout=remaining,
                      message="kube-root-ca.crt (root-ca-certificate-publisher controller)")
        times.controllers_working = time.monotonic() - started

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the scheduler and controller manager, then the API server, then etcd (SIGKILL after `timeout`)."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        self._admin = None
        for group in (("kube-scheduler", "kube-controller-manager"), ("kube-apiserver",), ("etcd",)):
            procs = [self.processes[name] for name in group if name in self.processes]
            for process in procs:
                process.signal(signal.SIGTERM)
            end = time.monotonic() + timeout
            for process in procs:
                if process.popen is None:
                    continue
                try:
                    process.popen.wait(max(0.1, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.signal(signal.SIGKILL)
                    process.popen.wait(5)
        shutil.rmtree(self.root / "etcd", ignore_errors=True)  # 60+ MB of preallocated WAL; the logs stay

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------------ clients
    def client(self) -> ControlPlaneClient:
        """The admin client (system:masters), shared."""
        if self._admin is None:
            assert self.pki is not None
            self._admin = self._new_client(KeyPair(self.root / "pki" / "admin.crt", self.root / "pki" / "admin.key"),
                                           self.admin_kubeconfig)
        return self._admin

    def client_for(self, user: str, groups: Sequence[str] = (), *, stem: str | None = None) -> ControlPlaneClient:
        """A client with its own certificate (user = CN, groups = O), and a kubeconfig for it."""
        assert self.pki is not None
        stem = stem or user.replace(":", "-")
        pair = self.pki.client(stem, user, tuple(groups))
        path = kubeconfig(self.root / "kubeconfigs" / stem, self.url, self.pki.ca.cert, pair, user=stem)
        return self._new_client(pair, path)

    def client_for_node(self, node: str) -> ControlPlaneClient:
        """A kubelet's identity: `system:node:<node>` in `system:nodes`."""
        return self.client_for(f"system:node:{node}", ("system:nodes",), stem=f"node-{node}")

    def _new_client(self, pair: KeyPair, path: Path) -> ControlPlaneClient:
        assert self.pki is not None
        client = ControlPlaneClient(self.url, self.pki.ca.cert, pair, path)
        self._clients.append(client)
        return client

    # ------------------------------------------------------------------------------------------------ tools
    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0,
                kubeconfig_path: Path | None = None) -> subprocess.CompletedProcess[str]:
        """The real kubectl with the admin kubeconfig (or another one); output as text."""
        command = [self.binaries["kubectl"], f"--kubeconfig={kubeconfig_path or self.admin_kubeconfig}", *args]
        result = subprocess.run(command, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise KubectlError(f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}{result.stdout}")
        return result

    def logs(self, name: str, chars: int = 4000) -> str:
        return self.processes[name].tail(chars)

    def ensure_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> Body:
        kube = self.client()
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels or {})}}
        try:
            return kube.create(body)
        except KubeApiError as exc:
            if exc.status != 409:
                raise
            return kube.patch("v1", "Namespace", None, name, {"metadata": {"labels": dict(labels or {})}})


def wait_gone(kube: KubeClient, api_version: str, kind: str, namespace: str | None, name: str, *,
              timeout: float = 60.0) -> None:
    """Wait until an object no longer exists (deletion is asynchronous on a real API server)."""
    wait_for(lambda: kube.get_or_none(api_version, kind, namespace, name) is None, timeout=timeout,
             message=f"{kind} {namespace}/{name} deleted")
