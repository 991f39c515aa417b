"""kmock's `KubernetesEmulator` plus the API-server behaviours the operator and its tests rely on.

kmock 0.8 stores objects, serves discovery and streams watch events, but treats objects as plain dicts.
This subclass adds, in one place and under kmock's own lock:

* metadata stamping: uid, creationTimestamp, a global monotonic resourceVersion, generation (bumped when
  anything but metadata/status changes), namespace from the URL, apiVersion/kind, `generateName`;
* the `v1/namespaces` resource itself (kmock's path parser cannot parse `/api/v1/namespaces[/name]`),
  namespaces auto-created on first use (or 404 when `auto_namespaces=False`), cascading namespace deletion;
* optimistic concurrency (`metadata.resourceVersion` in a patch/PUT must match, else 409), JSON patch `test`
  failures as 422, JSON merge patch per RFC 7386, PUT (replace), no-op writes that change nothing;
* status subresource isolation: the main resource ignores `status`, `/status` changes only `status`,
  `status` is dropped on create;
* finalizers (deletionTimestamp first, removal when the last finalizer goes), owner-reference garbage
  collection (background; `propagationPolicy=Orphan` orphans), deleting a CRD deletes its objects;
* list/watch with `labelSelector`, `fieldSelector`, `resourceVersion` (watch replays history since it, 410
  when compacted), `sendInitialEvents` + bookmark, `timeoutSeconds`; watches subscribe before replaying;
* CRDs: creating a `CustomResourceDefinition` registers its served versions for discovery (with the status
  and scale subresources), stamps an Established status; deleting it unregisters;
* fault injection (`Fault`) and an optional admission hook for custom resources (defaulting, validation).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import copy
import datetime
import functools
import gzip
import importlib.resources
import random
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any, cast

import attrs
import kmock
from kmock._internal import dsl, parsing, rendering

from .patches import STRATEGIC_MERGE_PATCH, PatchError, apply_patch
from .selectors import SelectorError, parse_field_selector, parse_label_selector

Body = dict[str, Any]
AdmissionHook = Callable[[Body, Body, Body | None], Body]
"""(crd, new object, old object or None) -> object to store; raise ValueError to reject with 422."""

ALL_VERBS = frozenset({"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"})
NAMESPACES = kmock.resource("", "v1", "namespaces")
CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the API server's generateName alphabet


# --------------------------------------------------------------------------------------------------------------
# kmock 0.8's path parser raises on `/api/v1/namespaces` and reads `/api/v1/namespaces/x` as a namespace with no
# resource. Wrap it once, process-wide (only kmock calls it): everything else goes to the original parser.
_original_parse_path = parsing.parse_path


def _parse_path(path: str) -> parsing.ParsedPath:
    parts = path.strip("/").split("/")
    is_namespaces = len(parts) >= 3 and parts[0] == "api" and parts[2] == "namespaces"
    if is_namespaces and (len(parts) <= 4 or (len(parts) == 5 and parts[4] in ("status", "finalize"))):
        return parsing.ParsedPath(
            group="",
            version=parts[1],
            plural="namespaces",
            namespace=None,
            name=parts[3] if len(parts) >= 4 else None,
            subresource=parts[4] if len(parts) == 5 else None,
        )
    return _original_parse_path(path)


if not getattr(parsing.parse_path, "_kube_support_fixed", False):
    _parse_path._kube_support_fixed = True  # type: ignore[attr-defined]
    parsing.parse_path = _parse_path


# --------------------------------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _api_version(resource: kmock.resource) -> str:
    return f"{resource.group}/{resource.version}" if resource.group else str(resource.version)


def _error(status: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details=details or {})


def _not_found(resource: kmock.resource, name: str | None) -> kmock.KubernetesError:
    kind = f"{resource.plural}.{resource.group}" if resource.group else str(resource.plural)
    return _error(404, "NotFound", f'{kind} "{name}" not found', name=name, kind=resource.plural)


@attrs.define
class Fault:
    """An injected failure: the matching requests get `status` instead of being served (nothing changes)."""

    status: int = 500
    method: str | None = None  # GET, POST, PATCH, PUT, DELETE; None = any
    plural: str | None = None  # e.g. "configmaps"; None = any
    name: str | None = None
    subresource: str | None = None
    watch: bool | None = None  # True: only watch requests; False: never watch requests; None: both
    times: int | None = 1  # None = forever
    reason: str = "InternalError"
    message: str = "injected fault"

    def matches(self, request: rendering.Request) -> bool:
        resource = request.resource
        is_watch = request.action == kmock.action.WATCH
        return (
            (self.method is None or self.method.upper() == str(request.method.value).upper())
            and (self.plural is None or (resource is not None and resource.plural == self.plural))
            and (self.name is None or request.name == self.name)
            and (self.subresource is None or request.subresource == self.subresource)
            and (self.watch is None or self.watch == is_watch)
        )


@attrs.frozen
class _Change:
    """What goes through kmock's per-resource buses and the per-resource history log."""

    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    obj: Body
    old: Body | None


class _WatchClosedError(Exception):
    """Put into the buses to end every open watch stream (server shutdown)."""


@functools.cache
def _bundled_resources() -> str:
    # What `ResourcesArray.load_bundled()` reads, minus its DeprecationWarning (importlib.resources.read_binary).
    return gzip.decompress(
        importlib.resources.files("kmock._internal").joinpath("resources.json.gz").read_bytes()
    ).decode()


_outcome: contextvars.ContextVar[Any] = contextvars.ContextVar("kube_emulator_outcome", default=None)


def _sees(view: Any, request: rendering.Request) -> bool:
    """Whether `request` (just received, so already in the root's log) belongs to `view` - see `_react`."""
    node = view
    while True:
        if isinstance(node, dsl.Root):
            return True
        if type(node) is dsl.Filter:
            if not node.criteria(request):
                return False
            node = node._source
        elif type(node) is dsl.Priority:
            node = node._source
        else:
            return request in view


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """The stateful fake API server. All state changes happen under kmock's `_lock`."""

    auto_namespaces: bool = True
    garbage_collection: bool = True
    history_limit: int = 20_000  # watch history per resource; older resourceVersions get 410 Gone
    admission: AdmissionHook | None = None

    _rv: int = attrs.field(default=0, init=False)
    _history: dict[kmock.resource, collections.deque[_Change]] = attrs.field(
        factory=lambda: collections.defaultdict(collections.deque), init=False
    )
    _compacted: dict[kmock.resource, int] = attrs.field(factory=dict, init=False)
    _crd_resources: dict[str, list[kmock.resource]] = attrs.field(factory=dict, init=False)
    _crd_bodies: dict[kmock.resource, Body] = attrs.field(factory=dict, init=False)
    faults: list[Fault] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()  # the action fallbacks bind to the overridden _serve_* below
        self.fallback[kmock.method.PUT] << self._serve_outcome
        self.fallback[kmock.method.DELETE] << self._serve_outcome  # deletecollection (no name)
        self.resources.load_data(_bundled_resources())  # ~70 built-ins of a recent K3s: verbs, subresources, scope

    # ---------------------------------------------------------------------------------------------------- setup
    async def bootstrap(self) -> None:
        async with self._lock:
            for name in DEFAULT_NAMESPACES:
                await self._ensure_namespace(name, create=True)

    async def close_watches(self) -> None:
        for bus in list(self._buses.values()):
            await bus.put(_WatchClosedError())

    @property
    def resource_version(self) -> int:
        return self._rv

    def info(self, resource: kmock.resource) -> kmock.ResourceInfo | None:
        # NB: not `.get()`: kmock's ResourcesArray creates missing entries on `[]` (and so on `.get()`).
        return self.resources[resource] if resource in self.resources else None  # noqa: SIM401

    # ---------------------------------------------------------------------------------------------------- entry
    async def _handle(self, request: rendering.Request) -> Any:
        resource = request.resource
        if resource is None or resource.plural is None or resource.version is None:
            return await super()._handle(request)  # discovery & non-k8s paths: kmock as is

        for fault in list(self.faults):
            if fault.matches(request):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                raise _error(fault.status, fault.reason, fault.message)

        info = self.info(resource)
        if info is None:
            raise _error(404, "NotFound", "the server could not find the requested resource")
        if info.namespaced is False and request.namespace is not None:
            raise _error(404, "NotFound", f"{resource.plural} is not namespaced")

        method = str(request.method.value).upper()
        outcome: Any = None
        if method in ("POST", "PATCH", "PUT", "DELETE"):
            async with self._lock:
                if request.action == kmock.action.CREATE:
                    outcome = rendering.Response(status=201, payload=await self._create(request, resource, info))
                elif method == "PATCH" and request.name:
                    outcome = await self._patch(request, resource, info)
                elif method == "PUT" and request.name:
                    outcome = await self._replace(request, resource, info)
                elif method == "DELETE" and request.name:
                    outcome = await self._delete(request, resource, info)
                elif method == "DELETE":
                    outcome = await self._delete_collection(request, resource, info)
                else:
                    raise _error(405, "MethodNotAllowed", f"{method} is not supported here")
        token = _outcome.set(outcome)
        try:
            return await self._react(request)  # reactions & fallbacks (not kmock's mutations)
        finally:
            _outcome.reset(token)

    async def _react(self, request: rendering.Request) -> Any:
        """kmock's `RawHandler._handle` (the first matching reaction serves), with a fast membership test.

        kmock decides whether a reaction "sees" a request with `request in reaction_view`, which replays the whole
        request history through the view's filters: O(requests so far) per request, so a load test slows down
        quadratically. For views that are plain filters and priorities down to this emulator, membership is
        exactly "the filters accept this request" (the request is already in the log); any other view (slices,
        groups, exclusions) still gets kmock's own test.
        """
        priorities = [tuple(-p for p in payload.priorities) for payload in self._payloads]
        depth = max((len(p) for p in priorities), default=0)
        padded = [p + (0,) * (depth - len(p)) for p in priorities]
        order = sorted(range(len(padded)), key=lambda index: padded[index])
        for payload in [self._payloads[index] for index in order]:
            if _sees(payload._source, request) and not payload._disabled.is_set():
                try:
                    return await payload(request)
                except rendering.ReactionMismatchError:
                    payload._disabled.set()
                except NotImplementedError:
                    pass
        raise NotImplementedError("Undefined server behaviour: no reaction matches the request.")

    # ---------------------------------------------------------------------------------------------------- store
    def _key(self, resource: kmock.resource, namespace: str | None, name: str) -> tuple[Any, str | None, str]:
        return (resource, namespace, name)

    def _current(self, resource: kmock.resource, namespace: str | None, name: str) -> Body | None:
        key = self._key(resource, namespace, name)
        if key not in self._objects:
            return None
        obj = self._objects[key]
        return None if obj.deleted else obj.raw

    def _live_objects(self, resource: kmock.resource) -> list[Body]:
        found = [
            (namespace or "", name, obj.raw)
            for (res, namespace, name), obj in self._objects.items()
            if res == resource and not obj.deleted
        ]
        return [body for _, _, body in sorted(found, key=lambda item: (item[0], item[1]))]

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    async def _emit(self, resource: kmock.resource, kind: str, obj: Body, old: Body | None) -> None:
        change = _Change(
            rv=int(obj["metadata"]["resourceVersion"]),
            type=kind,
            obj=copy.deepcopy(obj),
            old=copy.deepcopy(old) if old is not None else None,
        )
        history = self._history[resource]
        history.append(change)
        while len(history) > self.history_limit:
            self._compacted[resource] = history.popleft().rv
        await self._buses[resource].put(change)

    async def _store(self, resource: kmock.resource, kind: str, body: Body, old: Body | None) -> Body:
        meta = body["metadata"]
        key = self._key(resource, meta.get("namespace"), meta["name"])
        if kind == "ADDED" and key not in self._objects:
            self._objects[key] = body
        elif kind == "DELETED":
            self._objects[key].history.append(body)  # the final state, then the soft-deletion marker
            self._objects[key].delete()
        else:
            self._objects[key].history.append(body)
        await self._emit(resource, kind, body, old)
        return copy.deepcopy(body)

    # ---------------------------------------------------------------------------------------------------- create
    async def _ensure_namespace(self, name: str, *, create: bool) -> None:
        current = self._current(NAMESPACES, None, name)
        if current is not None:
            if current["metadata"].get("deletionTimestamp"):
                raise _error(403, "Forbidden", f"namespace {name} is being terminated")
            return
        if not create:
            raise _error(404, "NotFound", f'namespaces "{name}" not found', name=name, kind="namespaces")
        body: Body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}, "spec": {}}
        await self._insert(NAMESPACES, self.resources[NAMESPACES], body)

    async def _create(self, request: rendering.Request, resource: kmock.resource, info: kmock.ResourceInfo) -> Body:
        if not isinstance(request.data, Mapping):
            raise _error(400, "BadRequest", "the request body must be a JSON object")
        body: Body = copy.deepcopy(dict(request.data))
        meta = body.get("metadata")
        if not isinstance(meta, dict):
            meta = body["metadata"] = {}
        if info.namespaced:
            if request.namespace is None:
                raise _error(405, "MethodNotAllowed", f"{resource.plural} must be created in a namespace URL")
            if meta.get("namespace") not in (None, "", request.namespace):
                raise _error(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            meta["namespace"] = request.namespace
            await self._ensure_namespace(request.namespace, create=self.auto_namespaces)
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if not prefix:
                raise _error(422, "Invalid", "metadata.name: Required value: name or generateName is required")
            while True:
                candidate = prefix + "".join(random.choices(_NAME_ALPHABET, k=5))
                if self._current(resource, meta.get("namespace"), candidate) is None:
                    break
            meta["name"] = candidate
        if self._current(resource, meta.get("namespace"), meta["name"]) is not None:
            raise _error(
                409,
                "AlreadyExists",
                f'{resource.plural} "{meta["name"]}" already exists',
                name=meta["name"],
                kind=resource.plural,
            )
        return await self._insert(resource, info, body)

    async def _insert(self, resource: kmock.resource, info: kmock.ResourceInfo, body: Body) -> Body:
        meta = body["metadata"]
        body["apiVersion"] = _api_version(resource)
        body["kind"] = info.kind or body.get("kind")
        if "status" in info.subresources:
            body.pop("status", None)
        if resource == NAMESPACES:
            body["status"] = {"phase": "Active"}
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"):
            meta.pop(field, None)
        crd = self._crd_bodies.get(resource)
        if crd is not None and self.admission is not None:
            body = self._admit(crd, body, None)
            meta = body["metadata"]
        if resource == CRDS:
            self._register_crd(body)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        meta["resourceVersion"] = str(self._next_rv())
        return await self._store(resource, "ADDED", body, None)

    def _admit(self, crd: Body, body: Body, old: Body | None) -> Body:
        assert self.admission is not None
        try:
            admitted = self.admission(crd, copy.deepcopy(body), copy.deepcopy(old) if old else None)
        except ValueError as exc:
            raise _error(422, "Invalid", str(exc)) from exc
        return copy.deepcopy(admitted)

    # ---------------------------------------------------------------------------------------------------- update
    async def _patch(self, request: rendering.Request, resource: kmock.resource, info: kmock.ResourceInfo) -> Body:
        assert request.name is not None
        old = self._current(resource, request.namespace, request.name)
        if old is None:
            raise _not_found(resource, request.name)
        content_type = request.headers.get("Content-Type") or ""
        if resource in self._crd_bodies and content_type.startswith(STRATEGIC_MERGE_PATCH):
            raise _error(415, "UnsupportedMediaType", "strategic merge patch is not supported for custom resources")
        try:
            new = apply_patch(copy.deepcopy(old), request.data, content_type)
        except PatchError as exc:
            raise _error(exc.status, exc.reason, exc.message) from exc
        return await self._update(resource, info, old, new, request.subresource)

    async def _replace(self, request: rendering.Request, resource: kmock.resource, info: kmock.ResourceInfo) -> Body:
        assert request.name is not None
        old = self._current(resource, request.namespace, request.name)
        if old is None:
            raise _not_found(resource, request.name)
        if not isinstance(request.data, Mapping):
            raise _error(400, "BadRequest", "the request body must be a JSON object")
        new = copy.deepcopy(dict(request.data))
        if not isinstance(new.get("metadata"), dict):
            new["metadata"] = {}
        if new["metadata"].get("name", request.name) != request.name:
            raise _error(400, "BadRequest", "the name of the object does not match the name on the URL")
        return await self._update(resource, info, old, new, request.subresource)

    async def _update(
        self, resource: kmock.resource, info: kmock.ResourceInfo, old: Body, new: Body, subresource: str | None
    ) -> Body:
        if subresource not in (None, "status"):
            raise _error(404, "NotFound", f"the subresource {subresource!r} is not emulated")
        has_status = "status" in info.subresources
        if subresource == "status" and not has_status:
            raise _error(404, "NotFound", f"{resource.plural} has no status subresource")
        old_meta, new_meta = old["metadata"], new.get("metadata")
        if not isinstance(new_meta, dict):
            new_meta = new["metadata"] = {}
        sent_rv = new_meta.get("resourceVersion")
        if sent_rv not in (None, "", old_meta["resourceVersion"]):
            raise _error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource.plural} "{old_meta["name"]}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        if subresource == "status":  # only the status changes
            merged = copy.deepcopy(old)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            new, new_meta = merged, merged["metadata"]
        elif has_status:  # the main resource ignores the status
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        for field in (
            "uid",
            "creationTimestamp",
            "name",
            "namespace",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ):
            if field in old_meta:
                new_meta[field] = old_meta[field]
            else:
                new_meta.pop(field, None)
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        if old_meta.get("deletionTimestamp"):
            added = set(new_meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise _error(
                    422, "Forbidden", f"no new finalizers can be added if the object is being deleted: {added}"
                )
        crd = self._crd_bodies.get(resource)
        if crd is not None and self.admission is not None and subresource is None:
            new = self._admit(crd, new, old)
            new_meta = new["metadata"]
        if new == old:
            return copy.deepcopy(old)  # a no-op write: no new resourceVersion, no watch event
        if resource == CRDS:
            self._register_crd(new)
        ignored = {"metadata", "status"} if has_status else {"metadata"}
        if {k: v for k, v in old.items() if k not in ignored} != {k: v for k, v in new.items() if k not in ignored}:
            new_meta["generation"] = int(old_meta.get("generation", 1)) + 1
        new_meta["resourceVersion"] = str(self._next_rv())
        if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers"):
            return await self._remove(resource, new, old, propagation=None)
        return await self._store(resource, "MODIFIED", new, old)

    # ---------------------------------------------------------------------------------------------------- delete
    async def _delete(self, request: rendering.Request, resource: kmock.resource, info: kmock.ResourceInfo) -> Body:
        assert request.name is not None
        if request.subresource is not None:
            raise _error(405, "MethodNotAllowed", "subresources cannot be deleted")
        current = self._current(resource, request.namespace, request.name)
        if current is None:
            raise _not_found(resource, request.name)
        options = request.data if isinstance(request.data, Mapping) else {}
        preconditions = options.get("preconditions") or {}
        for field in ("uid", "resourceVersion"):
            if preconditions.get(field) not in (None, current["metadata"].get(field)):
                raise _error(409, "Conflict", f"Precondition failed: {field} mismatch")
        propagation = request.params.get("propagationPolicy") or options.get("propagationPolicy")
        return await self._delete_object(resource, current, propagation)

    async def _delete_collection(
        self, request: rendering.Request, resource: kmock.resource, info: kmock.ResourceInfo
    ) -> Body:
        selected = self._select(resource, request)
        deleted = [await self._delete_object(resource, body, None) for body in selected]
        return self._list_body(resource, info, deleted)

    async def _delete_object(self, resource: kmock.resource, current: Body, propagation: str | None) -> Body:
        meta = current["metadata"]
        if meta.get("deletionTimestamp"):
            return copy.deepcopy(current)
        if meta.get("finalizers"):
            new = copy.deepcopy(current)
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["metadata"]["generation"] = int(meta.get("generation", 1)) + 1
            new["metadata"]["resourceVersion"] = str(self._next_rv())
            return await self._store(resource, "MODIFIED", new, current)
        new = copy.deepcopy(current)
        new["metadata"]["resourceVersion"] = str(self._next_rv())
        return await self._remove(resource, new, current, propagation)

    async def _remove(self, resource: kmock.resource, final: Body, old: Body, propagation: str | None) -> Body:
        result = await self._store(resource, "DELETED", final, old)
        meta = final["metadata"]
        if resource == CRDS:
            await self._unregister_crd(final)
        if resource == NAMESPACES:
            for (res, namespace, _), obj in list(self._objects.items()):
                if namespace == meta["name"] and not obj.deleted:
                    await self._delete_object(res, obj.raw, None)
        if self.garbage_collection:
            await self._collect_dependents(meta["uid"], orphan=propagation == "Orphan")
        return result

    async def _collect_dependents(self, uid: str, *, orphan: bool) -> None:
        live_uids = {obj.raw["metadata"].get("uid") for obj in self._objects.values() if not obj.deleted}
        for (res, _, _), obj in list(self._objects.items()):
            if obj.deleted:
                continue
            body = obj.raw
            refs = body["metadata"].get("ownerReferences") or []
            if not any(ref.get("uid") == uid for ref in refs):
                continue
            remaining = [ref for ref in refs if ref.get("uid") != uid]
            if orphan or any(ref.get("uid") in live_uids for ref in remaining):
                new = copy.deepcopy(body)
                if remaining:
                    new["metadata"]["ownerReferences"] = remaining
                else:
                    new["metadata"].pop("ownerReferences", None)
                new["metadata"]["resourceVersion"] = str(self._next_rv())
                await self._store(res, "MODIFIED", new, body)
            else:
                current = self._current(res, body["metadata"].get("namespace"), body["metadata"]["name"])
                if current is not None:
                    await self._delete_object(res, current, None)

    # ---------------------------------------------------------------------------------------------------- CRDs
    def _register_crd(self, crd: Body) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
        versions = spec.get("versions") or []
        if not group or not plural or not kind or not versions:
            raise _error(422, "Invalid", "spec.group, spec.names.plural, spec.names.kind, spec.versions are required")
        if crd["metadata"].get("name") != f"{plural}.{group}":
            raise _error(422, "Invalid", "metadata.name: Invalid value: must be spec.names.plural+'.'+spec.group")
        if spec.get("scope") not in ("Namespaced", "Cluster"):
            raise _error(422, "Invalid", "spec.scope: Unsupported value: must be Namespaced or Cluster")
        if sum(1 for version in versions if version.get("storage")) != 1:
            raise _error(
                422, "Invalid", "spec.versions: Invalid value: must have exactly one version marked as storage"
            )
        name = crd["metadata"]["name"]
        for resource in self._crd_resources.pop(name, []):
            self._crd_bodies.pop(resource, None)
            with contextlib.suppress(KeyError):
                del self.resources[resource]
        registered: list[kmock.resource] = []
        for version in versions:
            if not version.get("served", True):
                continue
            resource = kmock.resource(group, version["name"], plural)
            self.resources[resource] = kmock.ResourceInfo(
                kind=kind,
                singular=names.get("singular") or kind.lower(),
                namespaced=spec["scope"] == "Namespaced",
                verbs=set(ALL_VERBS),
                shortnames=set(names.get("shortNames") or []),
                categories=set(names.get("categories") or []),
                subresources=set((version.get("subresources") or {}).keys()),
            )
            self._crd_bodies[resource] = crd
            registered.append(resource)
        self._crd_resources[name] = registered
        now = _now()
        crd["status"] = {
            "acceptedNames": copy.deepcopy(names),
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": now,
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": now,
                },
            ],
            "storedVersions": [version["name"] for version in versions if version.get("storage")],
        }

    async def _unregister_crd(self, crd: Body) -> None:
        for resource in self._crd_resources.pop(crd["metadata"]["name"], []):
            self._crd_bodies.pop(resource, None)
            for body in self._live_objects(resource):
                final = copy.deepcopy(body)
                final["metadata"]["resourceVersion"] = str(self._next_rv())
                await self._store(resource, "DELETED", final, body)
            for key in [key for key in self._objects if key[0] == resource]:
                del self._objects[key]  # hard-delete, or kmock keeps listing the resource in discovery
            with contextlib.suppress(KeyError):
                del self.resources[resource]

    # ---------------------------------------------------------------------------------------------------- reads
    def _predicate(self, request: rendering.Request) -> Callable[[Body], bool]:
        try:
            labels = parse_label_selector(request.params.get("labelSelector"))
            fields = parse_field_selector(request.params.get("fieldSelector"))
        except SelectorError as exc:
            raise _error(400, "BadRequest", str(exc)) from exc
        namespace, name = request.namespace, request.name

        def predicate(body: Body) -> bool:
            meta = body.get("metadata") or {}
            return (
                (namespace is None or meta.get("namespace") == namespace)
                and (name is None or meta.get("name") == name)
                and labels(body)
                and fields(body)
            )

        return predicate

    def _select(self, resource: kmock.resource, request: rendering.Request) -> list[Body]:
        predicate = self._predicate(request)
        return [body for body in self._live_objects(resource) if predicate(body)]

    def _list_body(self, resource: kmock.resource, info: kmock.ResourceInfo, items: list[Body]) -> Body:
        return {
            "apiVersion": _api_version(resource),
            "kind": f"{info.kind or 'Object'}List",
            "metadata": {"resourceVersion": str(self._rv), "continue": ""},
            "items": items,
        }

    async def _serve_outcome(self, request: rendering.Request) -> Any:
        outcome = _outcome.get()
        if outcome is None:
            raise NotImplementedError  # not ours: let the next fallback answer
        return outcome

    async def _serve_create(self, request: rendering.Request) -> Any:
        return await self._serve_outcome(request)

    async def _serve_update(self, request: rendering.Request) -> Any:
        return await self._serve_outcome(request)

    async def _serve_delete(self, request: rendering.Request) -> Any:
        return await self._serve_outcome(request)

    async def _serve_fetch(self, request: rendering.Request) -> Any:
        assert request.resource is not None and request.name is not None
        if request.subresource not in (None, "status"):
            raise _error(404, "NotFound", f"the subresource {request.subresource!r} is not emulated")
        async with self._lock:
            body = self._current(request.resource, request.namespace, request.name)
        if body is None:
            raise _not_found(request.resource, request.name)
        return body

    async def _serve_list(self, request: rendering.Request) -> Any:
        resource = request.resource
        assert resource is not None
        info = self.info(resource)
        if info is None:
            raise _error(404, "NotFound", "the server could not find the requested resource")
        async with self._lock:
            return self._list_body(resource, info, copy.deepcopy(self._select(resource, request)))

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Any]:  # type: ignore[override]
        # Everything that can fail with a proper HTTP error happens before the first yield.
        resource = request.resource
        assert resource is not None
        if self.info(resource) is None:
            raise _error(404, "NotFound", "the server could not find the requested resource")
        predicate = self._predicate(request)
        params = request.params
        since_raw = params.get("resourceVersion") or ""
        initial = params.get("sendInitialEvents") == "true"
        bookmarks = params.get("allowWatchBookmarks") == "true"
        try:
            since = int(since_raw) if since_raw not in ("", "0") else None
            timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        except ValueError as exc:
            raise _error(400, "BadRequest", f"invalid watch parameters: {exc}") from exc
        return self._watch_stream(
            resource, predicate, since=since, initial=initial, bookmarks=bookmarks, timeout=timeout
        )

    async def _watch_stream(
        self,
        resource: kmock.resource,
        predicate: Callable[[Body], bool],
        *,
        since: int | None,
        initial: bool,
        bookmarks: bool,
        timeout: float | None,
    ) -> AsyncIterator[Any]:
        yield b""  # send the headers now: the client must see the stream open even if nothing happens
        bus = self._buses[resource]
        async with self._lock:  # subscribe first, then replay: nothing falls between the two
            marker = await bus.mark()
            replay: list[Body] = []
            if since is None or initial:
                replay = [
                    {"type": "ADDED", "object": copy.deepcopy(body)}
                    for body in self._live_objects(resource)
                    if predicate(body)
                ]
                if initial and bookmarks:
                    replay.append(
                        {
                            "type": "BOOKMARK",
                            "object": {
                                "apiVersion": _api_version(resource),
                                "kind": self.resources[resource].kind,
                                "metadata": {
                                    "resourceVersion": str(self._rv),
                                    "annotations": {"k8s.io/initial-events-end": "true"},
                                },
                            },
                        }
                    )
            elif since < self._compacted.get(resource, 0):
                replay = [
                    {
                        "type": "ERROR",
                        "object": {
                            "apiVersion": "v1",
                            "kind": "Status",
                            "metadata": {},
                            "status": "Failure",
                            "code": 410,
                            "reason": "Expired",
                            "message": f"too old resource version: {since} ({self._rv})",
                        },
                    }
                ]
            else:
                for change in self._history[resource]:
                    if change.rv > since and (event := self._event(change, predicate)) is not None:
                        replay.append(event)
            last_rv = self._rv
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        stream = cast(AsyncGenerator[Any, None], bus.stream(since=marker))
        try:
            for event in replay:
                yield event
                if event["type"] == "ERROR":
                    return
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return
                try:
                    change = await asyncio.wait_for(anext(stream), remaining)
                except (TimeoutError, _WatchClosedError, StopAsyncIteration):
                    return
                if isinstance(change, _Change) and change.rv > last_rv:
                    last_rv = change.rv
                    if (event := self._event(change, predicate)) is not None:
                        yield event
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()
            with contextlib.suppress(Exception):
                await bus.unmark(marker)

    @staticmethod
    def _event(change: _Change, predicate: Callable[[Body], bool]) -> Body | None:
        """A watch event as a selector-filtered watcher sees it (objects moving in/out of the selection)."""
        now_in = predicate(change.obj)
        was_in = change.old is not None and predicate(change.old)
        kind = change.type
        if kind == "MODIFIED":
            kind = "MODIFIED" if now_in and was_in else "ADDED" if now_in else "DELETED" if was_in else ""
        elif not now_in:
            kind = ""
        return {"type": kind, "object": copy.deepcopy(change.obj)} if kind else None
