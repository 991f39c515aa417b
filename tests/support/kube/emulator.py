"""A Kubernetes API emulator on 127.0.0.1 for tests, and a small typed HTTP client for it.

    with KubeAPI() as kube:                       # serves http://127.0.0.1:<free port> from a background thread
        kube.register_crd(crd_manifest)           # any apiextensions.k8s.io/v1 CRD: now discoverable & usable
        kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "ns"}})
        kube.get("v1", "ConfigMap", "ns", "a")
        kube.list("v1", "pods", "ns", label_selector="ganops.io/job=j1")
        kube.patch("ganops.io/v1alpha1", "GanTrainingJob", "ns", "j1", {"spec": {...}})
        kube.patch_status("ganops.io/v1alpha1", "GanTrainingJob", "ns", "j1", {"phase": "Running"})
        kube.delete("v1", "ConfigMap", "ns", "a")

The server is kmock's `KubernetesEmulator` (see `server.KubeEmulator` for the behaviours added on top).
Every helper here is plain HTTP through httpx, exactly what a real client would send. `kubeconfig_path`
and `kubernetes_client()` point other clients (kopf, the kubernetes package, kubectl) at the same server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import httpx
import kmock
from aiohttp import web

from .patches import JSON_PATCH, MERGE_PATCH
from .polling import wait_for
from .server import AdmissionHook, Fault, KubeEmulator

if TYPE_CHECKING:
    import kubernetes.client

Body = dict[str, Any]
Bodies = list[dict[str, Any]]
Versions = list[dict[str, Any] | None]
T = TypeVar("T")


class KubeApiError(Exception):
    """A non-2xx answer of the API, with the `Status` body the server sent."""

    def __init__(self, status: int, body: Any, method: str, url: str) -> None:
        self.status = status
        self.body = body if isinstance(body, dict) else {"message": str(body)}
        self.reason: str = self.body.get("reason", "")
        self.message: str = self.body.get("message", "")
        super().__init__(f"{method} {url} -> {status} {self.reason}: {self.message}")


@dataclasses.dataclass(frozen=True)
class ResourceRef:
    """A resource as discovered from the server."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    subresources: frozenset[str]
    short_names: frozenset[str] = frozenset()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
            if subresource is not None:
                base += f"/{subresource}"
        return base


@dataclasses.dataclass(frozen=True)
class KubeEvent:
    """A Kubernetes Event in either API shape (core `v1` or `events.k8s.io/v1`), normalised."""

    type: str
    reason: str
    message: str
    involved_kind: str
    involved_name: str
    involved_namespace: str | None
    raw: Body


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


Events = list[KubeEvent]
Records = list[RequestRecord]


class KubeAPI:
    """The emulator's lifecycle (background thread + event loop + aiohttp server) and an HTTP client for it."""

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

    def kubernetes_client(self) -> kubernetes.client.ApiClient:
        """A `kubernetes` package ApiClient bound to this server (close it, or use it as a context manager)."""
        import kubernetes.client

        return kubernetes.client.ApiClient(self.kubernetes_configuration())

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> Any:
        headers = {"Content-Type": content_type} if content_type else {}
        content = json.dumps(json_body).encode() if json_body is not None else None
        response = self.http.request(method, path, content=content, params=params, headers=headers)
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            raise KubeApiError(response.status_code, body, method, path)
        return body

    # ------------------------------------------------------------------------------------------------ discovery
    def _group_version(self, api_version: str, *, refresh: bool = False) -> list[ResourceRef]:
        if refresh or api_version not in self._discovery:
            path = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
            try:
                listing = self.request("GET", path)
            except KubeApiError as exc:
                if exc.status == 404:
                    return []
                raise
            group, _, version = api_version.rpartition("/")
            entries = listing.get("resources", [])
            refs = [
                ResourceRef(
                    group=group,
                    version=version,
                    plural=entry["name"],
                    kind=entry["kind"],
                    namespaced=bool(entry.get("namespaced")),
                    subresources=frozenset(
                        sub["name"].split("/", 1)[1] for sub in entries if sub["name"].startswith(entry["name"] + "/")
                    ),
                    short_names=frozenset(entry.get("shortNames") or []),
                )
                for entry in entries
                if "/" not in entry["name"]
            ]
            self._discovery[api_version] = refs
            return refs
        return self._discovery[api_version]

    def resource(self, api_version: str, kind: str) -> ResourceRef:
        """Find a resource by apiVersion and kind, plural, singular or short name (like kubectl does)."""
        for refresh in (False, True):
            for ref in self._group_version(api_version, refresh=refresh):
                if kind == ref.kind or kind.lower() in (ref.kind.lower(), ref.plural, *ref.short_names):
                    return ref
        raise LookupError(f"no resource {kind!r} in {api_version!r} (is its CRD registered?)")

    # ------------------------------------------------------------------------------------------------ CRUD
    def create(self, obj: Mapping[str, Any], namespace: str | None = None) -> Body:
        """POST an object; `namespace` defaults to `metadata.namespace`, then "default" for namespaced kinds."""
        ref = self.resource(obj["apiVersion"], obj["kind"])
        ns = namespace or (obj.get("metadata") or {}).get("namespace") or ("default" if ref.namespaced else None)
        result: Body = self.request("POST", ref.path(ns), json_body=obj)
        return result

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Body:
        result: Body = self.request("GET", self.resource(api_version, kind).path(namespace, name))
        return result

    def get_or_none(self, api_version: str, kind: str, namespace: str | None, name: str) -> Body | None:
        try:
            return self.get(api_version, kind, namespace, name)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list_raw(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Body:
        """The whole list answer, with `metadata.resourceVersion` (to start a watch from)."""
        params = {
            key: value for key, value in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if value
        }
        result: Body = self.request("GET", self.resource(api_version, kind).path(namespace), params=params)
        return result

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Bodies:
        items: Bodies = self.list_raw(
            api_version, kind, namespace, label_selector=label_selector, field_selector=field_selector
        )["items"]
        return items

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        subresource: str | None = None,
        content_type: str | None = None,
    ) -> Body:
        """Merge-patch by default (a dict); a list is sent as a JSON patch."""
        ctype = content_type or (JSON_PATCH if isinstance(patch, list) else MERGE_PATCH)
        path = self.resource(api_version, kind).path(namespace, name, subresource)
        result: Body = self.request("PATCH", path, json_body=patch, content_type=ctype)
        return result

    def patch_status(
        self, api_version: str, kind: str, namespace: str | None, name: str, status: Mapping[str, Any]
    ) -> Body:
        """Merge-patch `status` through the status subresource (as controllers and kopf do)."""
        return self.patch(api_version, kind, namespace, name, {"status": dict(status)}, subresource="status")

    def replace(self, obj: Mapping[str, Any], *, subresource: str | None = None) -> Body:
        """PUT the whole object (send `metadata.resourceVersion` for optimistic concurrency)."""
        ref = self.resource(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        result: Body = self.request("PUT", ref.path(meta.get("namespace"), meta["name"], subresource), json_body=obj)
        return result

    def delete(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        *,
        propagation_policy: str | None = None,
        missing_ok: bool = False,
    ) -> Body | None:
        """DELETE; returns the object's last state (with deletionTimestamp if finalizers hold it)."""
        params = {"propagationPolicy": propagation_policy} if propagation_policy else None
        try:
            result: Body = self.request("DELETE", self.resource(api_version, kind).path(namespace, name), params=params)
        except KubeApiError as exc:
            if missing_ok and exc.status == 404:
                return None
            raise
        return result

    def ensure_namespace(self, name: str) -> Body:
        existing = self.get_or_none("v1", "Namespace", None, name)
        if existing is not None:
            return existing
        return self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def register_crd(self, crd: Mapping[str, Any]) -> Body:
        """Create (or replace) a CRD, as `kubectl apply` would; its resources become discoverable at once."""
        body = dict(crd)
        try:
            created = self.create(body)
        except KubeApiError as exc:
            if exc.status != 409:
                raise
            current = self.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, body["metadata"]["name"])
            body["metadata"] = {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}
            created = self.replace(body)
        spec = created["spec"]
        for version in spec["versions"]:
            if version.get("served", True):
                self._discovery.pop(f"{spec['group']}/{version['name']}", None)
        return created

    # ------------------------------------------------------------------------------------------------ events & watch
    def events(
        self, namespace: str | None = None, *, involved_name: str | None = None, involved_kind: str | None = None
    ) -> Events:
        """Events from both APIs (core `v1` as kopf posts them, and `events.k8s.io/v1`), oldest first."""
        found: Events = []
        for raw in self.list("v1", "events", namespace):
            involved = raw.get("involvedObject") or {}
            found.append(
                KubeEvent(
                    type=raw.get("type", ""),
                    reason=raw.get("reason", ""),
                    message=raw.get("message", ""),
                    involved_kind=involved.get("kind", ""),
                    involved_name=involved.get("name", ""),
                    involved_namespace=involved.get("namespace"),
                    raw=raw,
                )
            )
        for raw in self.list("events.k8s.io/v1", "events", namespace):
            regarding = raw.get("regarding") or {}
            found.append(
                KubeEvent(
                    type=raw.get("type", ""),
                    reason=raw.get("reason", ""),
                    message=raw.get("note", ""),
                    involved_kind=regarding.get("kind", ""),
                    involved_name=regarding.get("name", ""),
                    involved_namespace=regarding.get("namespace"),
                    raw=raw,
                )
            )
        found = [
            event
            for event in found
            if (involved_name is None or event.involved_name == involved_name)
            and (involved_kind is None or event.involved_kind == involved_kind)
        ]
        return sorted(found, key=lambda event: int(event.raw["metadata"]["resourceVersion"]))

    def watch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        timeout_seconds: float = 5.0,
        max_events: int | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        send_initial_events: bool = False,
    ) -> Bodies:
        """Open a watch and collect events until `max_events` arrive or the server closes it after the timeout."""
        return list(
            self.iter_watch(
                api_version,
                kind,
                namespace,
                resource_version=resource_version,
                timeout_seconds=timeout_seconds,
                max_events=max_events,
                label_selector=label_selector,
                field_selector=field_selector,
                send_initial_events=send_initial_events,
            )
        )

    def iter_watch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        timeout_seconds: float = 5.0,
        max_events: int | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        send_initial_events: bool = False,
    ) -> Iterator[Body]:
        params: dict[str, str] = {"watch": "true", "timeoutSeconds": str(timeout_seconds)}
        if resource_version is not None:
            params["resourceVersion"] = resource_version
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        if send_initial_events:
            params.update(sendInitialEvents="true", allowWatchBookmarks="true", resourceVersionMatch="NotOlderThan")
        path = self.resource(api_version, kind).path(namespace)
        count = 0
        with self.http.stream("GET", path, params=params, timeout=timeout_seconds + self._timeout) as response:
            if response.status_code >= 400:
                response.read()
                raise KubeApiError(response.status_code, response.json(), "GET", path)
            for line in response.iter_lines():
                if not line.strip():
                    continue
                yield json.loads(line)
                count += 1
                if max_events is not None and count >= max_events:
                    return

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

    def wait_for(self, condition: Callable[[], T], *, timeout: float = 10.0, message: str = "") -> T:
        """Poll `condition` until truthy (404s count as "not yet")."""

        def attempt() -> T:
            try:
                return condition()
            except KubeApiError as exc:
                if exc.status == 404:
                    return None  # type: ignore[return-value]
                raise

        return wait_for(attempt, timeout=timeout, message=message)
