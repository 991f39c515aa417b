"""A small typed HTTP client for a Kubernetes API server: the emulator's (`KubeAPI`) or a real one's
(`tests.support.controlplane`). Plain HTTP through httpx, exactly what a real client would send.

    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "ns"}})
    kube.get("v1", "ConfigMap", "ns", "a")
    kube.list("v1", "pods", "ns", label_selector="ganops.io/job=j1")
    kube.patch("ganops.io/v1alpha1", "GanTrainingJob", "ns", "j1", {"spec": {...}})
    kube.patch_status("ganops.io/v1alpha1", "GanTrainingJob", "ns", "j1", {"phase": "Running"})
    kube.delete("v1", "ConfigMap", "ns", "a")

A subclass provides the connection (`http`, `url`, `kubeconfig_path`, `kubernetes_configuration`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import httpx

from .patches import JSON_PATCH, MERGE_PATCH
from .polling import wait_for

if TYPE_CHECKING:
    import kubernetes.client

Body = dict[str, Any]
Bodies = list[dict[str, Any]]
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



Events = list[KubeEvent]


class KubeClient:
    """CRUD, discovery, events and watches over HTTP; the subclass says where the server is and how to log in."""

    _timeout: float = 10.0
    _discovery: dict[str, list[ResourceRef]]

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def http(self) -> httpx.Client:
        raise NotImplementedError

    @property
    def kubeconfig_path(self) -> Path:
        """A kubeconfig file for this server: for KUBECONFIG=, kubectl, kopf, clients."""
        raise NotImplementedError

    def kubernetes_configuration(self) -> kubernetes.client.Configuration:
        raise NotImplementedError

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

    def wait_for(self, condition: Callable[[], T | None], *, timeout: float = 10.0,
                 message: str | Callable[[], str] = "") -> T:
        """Poll `condition` until truthy and return that value (404s count as "not yet")."""

        def attempt() -> T | None:
            try:
                return condition()
            except KubeApiError as exc:
                if exc.status == 404:
                    return None
                raise

        return cast(T, wait_for(attempt, timeout=timeout, message=message))
