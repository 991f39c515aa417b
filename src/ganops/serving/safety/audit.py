"""Audit records of blocked samples: what was blocked, by which filter, why, for whom - not the image itself.

:class:`ObjectStoreAuditSink` buffers the records of one request and writes them, on :meth:`flush`, as one
JSON-lines object ``<audit_uri>/<yyyy>/<mm>/<dd>/<request-id>.jsonl`` through :func:`ganops.storage.open_store`
(``s3://`` or ``file://``). Object stores cannot append: a second flush for the same request id (a retry, a second
batch) reads the existing object and writes it back with the new lines added. Pixels are left out unless
``include_pixels=True`` (then a base64 PNG, or the point's coordinates, is added to each record).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import re
import threading
from collections import defaultdict
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ganops.storage import ObjectNotFound, ObjectStore, join, open_store

__all__ = ["AuditSink", "ListAuditSink", "ObjectStoreAuditSink", "audit_object_uri", "safe_request_id"]

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@runtime_checkable
class AuditSink(Protocol):
    """Receives one record per blocked sample; ``flush`` ends the request's batch.

    Every value of a record is JSON-able except ``pixels``: the sample's own array (``uint8`` HWC image or float
    point). A sink that persists records decides whether to keep it (encoded) or drop it.
    """

    def write(self, record: dict[str, Any]) -> None: ...

    def flush(self) -> None: ...


class ListAuditSink:
    """Keeps records in memory (tests, local runs)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.flushes = 0

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def flush(self) -> None:
        self.flushes += 1


def safe_request_id(request_id: str) -> str:
    """A request id fit for an object key: ``[A-Za-z0-9._-]`` only, at most 128 characters, never empty."""
    cleaned = _UNSAFE.sub("_", request_id)[:128].lstrip(".")
    return cleaned or "unknown"


def audit_object_uri(audit_uri: str, request_id: str, when: dt.datetime) -> str:
    """``<audit_uri>/<yyyy>/<mm>/<dd>/<request-id>.jsonl`` (date in UTC)."""
    when = when.astimezone(dt.UTC)
    return join(audit_uri, f"{when:%Y}", f"{when:%m}", f"{when:%d}", f"{safe_request_id(request_id)}.jsonl")


class ObjectStoreAuditSink:
    """JSON-lines audit objects in an object store, one per request id and day.

    Records must carry ``request_id`` and ``time`` (ISO 8601); the pipeline's records do. ``store`` defaults to
    ``open_store(audit_uri)``. Thread-safe: the serving app may run pipelines concurrently.
    """

    def __init__(self, audit_uri: str, *, store: ObjectStore | None = None, include_pixels: bool = False) -> None:
        self.audit_uri = audit_uri
        self.include_pixels = include_pixels
        self.store = store or open_store(audit_uri)
        self._lock = threading.Lock()
        self._pending: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def write(self, record: dict[str, Any]) -> None:
        record = dict(record)
        pixels = record.pop("pixels", None)
        if self.include_pixels and pixels is not None:
            record["content"] = encode_pixels_for_audit(pixels)
        with self._lock:
            self._pending[str(record.get("request_id", "unknown"))].append(record)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, defaultdict(list)
        for request_id, records in pending.items():
            when = _record_time(records[0])
            uri = audit_object_uri(self.audit_uri, request_id, when)
            lines = b"".join(json.dumps(r, sort_keys=True, default=str).encode() + b"\n" for r in records)
            with self._lock:  # read-modify-write of one object: serialise within this process
                try:
                    existing = self.store.get_bytes(uri)
                except ObjectNotFound:
                    existing = b""
                self.store.put_bytes(uri, existing + lines)
            logger.info("wrote %d audit record(s) to %s", len(records), uri)


def _record_time(record: dict[str, Any]) -> dt.datetime:
    value = record.get("time")
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            pass
    return dt.datetime.now(dt.UTC)


def encode_pixels_for_audit(pixels: Any) -> dict[str, Any]:
    """The sample's content for an audit record: a base64 PNG for images, the coordinates for points."""
    array = np.asarray(pixels)
    if array.ndim == 3 and array.dtype == np.uint8:
        from ganops.images import encode_png

        return {"png_base64": base64.b64encode(encode_png(array)).decode("ascii")}
    return {"values": [float(v) for v in array.reshape(-1)]}
