"""A Kubernetes API emulator on 127.0.0.1 for tests, with the HTTP client of `client.KubeClient`.

    with KubeAPI() as kube:                       # serves http://127.0.0.1:<free port> from a background thread
        kube.register_crd(crd_manifest)           # any apiextensions.k8s.io/v1 CRD: now discoverable & usable
        kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "ns"}})
        kube.get("v1", "ConfigMap", "ns", "a")
        kube.list("v1", "pods", "ns", label_selector="ganops.io/job=j1")
        kube.patch("ganops.io/v1alpha1", "GanTrainingJob", "ns", "j1", {"spec": {...}})
        kube.patch_status("ganops.io/v1alpha1", "GanTrainingJob", "ns", "j1", {"phase": "Running"})
        kube.delete("v1", "ConfigMap", "ns", "a")

The server is kmock's `KubernetesEmulator` (see `server.KubeEmulator` for the behaviours added on top).
Every helper (`client.KubeClient`) is plain HTTP through httpx, exactly what a real client would send. `kubeconfig_path`
and `kubernetes_client()` point other clients (kopf, the kubernetes package, kubectl) at the same server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import httpx
import kmock
from aiohttp import web

from .client import Bodies, Body, Events, KubeApiError, KubeClient, KubeEvent, ResourceRef
from .server import AdmissionHook, Fault, KubeEmulator

if TYPE_CHECKING:
    import kubernetes.client

Versions = list[dict[str, Any] | None]
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """One request the emulator received (for "exactly one POST" style assertions)."""

    method: str
    path: str
    params: Mapping[str, str]
    plural: str | None
    namespace: str | None
    name: str | None
    subresource: str | None
    watch: bool
    data: Any


Records = list[RequestRecord]

__all__ = ["Bodies", "Body", "Events", "KubeAPI", "KubeApiError", "KubeEvent", "RequestRecord", "ResourceRef"]


class KubeAPI(KubeClient):
    """The emulator's lifecycle (background thread + event loop + aiohttp server); the HTTP client is `KubeClient`'s."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        auto_namespaces: bool = True,
        garbage_collection: bool = True,
        admission: AdmissionHook | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._host = host
        self._options: dict[str, Any] = {
            "auto_namespaces": auto_namespaces,
            "garbage_collection": garbage_collection,
            "admission": admission,
        }
        self._timeout = timeout
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._emulator: KubeEmulator | None = None
        self._port: int | None = None
        self._http: httpx.Client | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._discovery: dict[str, list[ResourceRef]] = {}

    # ------------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("the emulator is already started")
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._thread.start()
        if not self._started.wait(self._timeout):
            raise RuntimeError("the Kubernetes emulator did not start in time")
        if self._failure is not None:
            raise RuntimeError("the Kubernetes emulator failed to start") from self._failure
        self._http = httpx.Client(base_url=self.url, timeout=self._timeout, headers={"Authorization": "Bearer test"})
        self._tmpdir = tempfile.TemporaryDirectory(prefix="kube-emulator-")
        Path(self._tmpdir.name, "kubeconfig").write_text(json.dumps(self.kubeconfig, indent=2))
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._loop is not None and self._stopping is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(self._timeout)
        self._thread = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._failure = exc
        finally:
            self._started.set()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        emulator = KubeEmulator(**self._options)
        async with emulator:
            await emulator.bootstrap()
            server = web.Server(emulator, handler_cancellation=True, access_log=None)
            runner = web.ServerRunner(server, shutdown_timeout=0.5)
            await runner.setup()
            try:
                site = web.TCPSite(runner, self._host, 0)
                await site.start()
                self._port = int(runner.addresses[0][1])
                self._emulator = emulator
                self._started.set()
                await self._stopping.wait()
                await emulator.close_watches()
            finally:
                await runner.cleanup()

    # ------------------------------------------------------------------------------------------------ plumbing
    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("the emulator is not started")
        return f"http://{self._host}:{self._port}"

    @property
    def emulator(self) -> KubeEmulator:
        """The kmock object itself. It lives in another thread: read it through `call()` to be safe."""
        if self._emulator is None:
            raise RuntimeError("the emulator is not started")
        return self._emulator

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            raise RuntimeError("the emulator is not started")
        return self._http

    def call(self, fn: Callable[[KubeEmulator], T]) -> T:
        """Run `fn(emulator)` in the emulator's loop, under its lock, and return the result."""
        assert self._loop is not None

        async def _locked() -> T:
            async with self.emulator._lock:
                return fn(self.emulator)

        return asyncio.run_coroutine_threadsafe(_locked(), self._loop).result(self._timeout)

    @property
    def kubeconfig(self) -> Body:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "kmock", "user": {"token": "test"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": "default"}}],
            "current-context": "kmock",
        }

    @property
    def kubeconfig_path(self) -> Path:
        """A kubeconfig file for this server (JSON, which is YAML): for KUBECONFIG=, kubectl, kopf, clients."""
        if self._tmpdir is None:
            raise RuntimeError("the emulator is not started")
        return Path(self._tmpdir.name, "kubeconfig")

    def kubernetes_configuration(self) -> kubernetes.client.Configuration:
        import kubernetes.client

        configuration = kubernetes.client.Configuration(host=self.url, api_key={"authorization": "Bearer test"})
        return configuration

    # ------------------------------------------------------------------------------------------------ test controls
    def inject_fault(self, fault: Fault | None = None, **kwargs: Any) -> Fault:
        """Make matching requests fail, e.g. `inject_fault(method="POST", plural="configmaps", status=500)`."""
        fault = fault if fault is not None else Fault(**kwargs)
        self.call(lambda emulator: emulator.faults.append(fault))
        return fault

    def clear_faults(self) -> None:
        self.call(lambda emulator: emulator.faults.clear())

    def requests(
        self,
        method: str | None = None,
        plural: str | None = None,
        name: str | None = None,
        *,
        include_watches: bool = False,
    ) -> Records:
        """The requests received so far (not counting watch streams unless asked), oldest first."""

        def collect(emulator: KubeEmulator) -> Records:
            records = []
            for request in list(emulator):
                resource = request.resource
                records.append(
                    RequestRecord(
                        method=str(request.method.value).upper(),
                        path=request.url.path,
                        params=dict(request.params),
                        plural=resource.plural if resource is not None else None,
                        namespace=request.namespace,
                        name=request.name,
                        subresource=request.subresource,
                        watch=request.action == kmock.action.WATCH,
                        data=request.data,
                    )
                )
            return records

        return [
            record
            for record in self.call(collect)
            if (method is None or record.method == method.upper())
            and (plural is None or record.plural == plural)
            and (name is None or record.name == name)
            and (include_watches or not record.watch)
        ]

    def watchers(self, api_version: str, kind: str) -> int:
        """How many watch streams are open on a resource right now (e.g. to know the operator is watching)."""
        ref = self.resource(api_version, kind)
        key = kmock.resource(ref.group, ref.version, ref.plural)
        return self.call(lambda emulator: emulator._buses[key].consumer_count if key in emulator._buses else 0)

    def history(self, api_version: str, kind: str, namespace: str | None, name: str) -> Versions:
        """Every stored version of one object, `None` marking deletions (kmock keeps the history)."""
        ref = self.resource(api_version, kind)
        key = (kmock.resource(ref.group, ref.version, ref.plural), namespace if ref.namespaced else None, name)

        def collect(emulator: KubeEmulator) -> Versions:
            if key not in emulator.objects:
                return []
            return [
                None if version is None else json.loads(json.dumps(version.raw))
                for version in emulator.objects[key].history
            ]

        return self.call(collect)

