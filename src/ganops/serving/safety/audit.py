"""The audit log of blocked samples: one record per request, hash-chained, written off the request path.

A record says what was blocked, by which filter, why, for whom - not the image itself (unless
``include_pixels=True``). The pipeline hands one record per request to an :class:`AuditSink`.

:class:`ObjectStoreAuditSink` (the serving process's sink) never does I/O on the caller's thread: ``write`` puts the
record in a bounded queue (full: the record is dropped and ``on_failure("queue_full", 1)`` says so) and a writer
thread stores the records as immutable *segments*, one JSON-lines object per flush (every ``flush_interval_s`` or
``segment_records`` records), through :func:`ganops.storage.open_store` (``s3://`` or ``file://``)::

    <audit_uri>/<yyyy>/<mm>/<dd>/<chain>-<first seq, 10 digits>.jsonl

No object is ever read back or rewritten. A segment that cannot be stored (``on_failure("write_error", 1)``) is
kept and retried, in order; while segments wait, at most ``max_pending_records`` records are held, then the queue
fills and new records are dropped (counted). A slow or broken store therefore never stalls generation.

**Hash chain.** Every process starts a chain (``chain``: its start time and a random suffix). Each record carries
``chain``, ``seq`` (0, 1, 2, … within the chain), ``prev`` (the previous record's ``hash``; 64 zeros for seq 0) and
``hash`` = SHA-256 of the record's canonical JSON without ``hash`` (sorted keys, no spaces, ASCII). Changing,
removing or reordering a record breaks its own hash or the next record's ``prev`` or the ``seq`` sequence:
:func:`verify_records` (``ganops audit verify``) finds the first broken record. What a chain cannot show by itself
is its tail being cut off: the writer logs each segment's last ``seq`` and ``hash`` (event ``audit_segment_written``)
to the process log, which lives elsewhere, so a truncated chain can be compared with it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import queue
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ganops import logs
from ganops.storage import ObjectStore, join, open_store

__all__ = [
    "GENESIS",
    "AuditBreak",
    "AuditSink",
    "ChainReport",
    "ListAuditSink",
    "ObjectStoreAuditSink",
    "canonical_json",
    "read_audit_lines",
    "record_hash",
    "safe_request_id",
    "segment_uri",
    "verify_records",
]

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@runtime_checkable
class AuditSink(Protocol):
    """Receives one record per request that had a blocked sample. ``write`` must not block on I/O.

    Every value of a record is JSON-able except each blocked sample's ``pixels`` (the sample's own array: ``uint8``
    HWC image or float point); a sink that persists records decides whether to keep it (encoded) or drop it.
    ``flush`` waits until what was written so far is stored (tests, shutdown).
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


def segment_uri(audit_uri: str, chain: str, first_seq: int, when: dt.datetime) -> str:
    """``<audit_uri>/<yyyy>/<mm>/<dd>/<chain>-<first seq:010d>.jsonl`` (date in UTC)."""
    when = when.astimezone(dt.UTC)
    return join(audit_uri, f"{when:%Y}", f"{when:%m}", f"{when:%d}", f"{safe_request_id(chain)}-{first_seq:010d}.jsonl")


# ------------------------------------------------------------------------------------------------ the chain


def canonical_json(record: dict[str, Any]) -> bytes:
    """The bytes a record's hash is taken of: sorted keys, no spaces, ASCII (what a JSON parser reads back the
    same, whatever formatting a copy of the log got)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str).encode()


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 (hex) of ``record`` without its ``hash`` field."""
    return hashlib.sha256(canonical_json({k: v for k, v in record.items() if k != "hash"})).hexdigest()


@dataclass(frozen=True)
class AuditBreak:
    """The first record that breaks its chain: where it is and what is wrong."""

    where: str  # "<object or file>:<line>"
    chain: str | None
    seq: int | None
    problem: str

    def __str__(self) -> str:
        which = f"chain {self.chain} seq {self.seq}" if self.chain is not None else "a record"
        return f"{self.where}: {which}: {self.problem}"


@dataclass(frozen=True)
class ChainReport:
    records: int
    chains: dict[str, int]  # chain -> records
    broken: AuditBreak | None

    @property
    def intact(self) -> bool:
        return self.broken is None


def read_audit_lines(uri: str) -> Iterator[tuple[str, bytes]]:
    """``(where, line)`` for every line of the audit objects at ``uri`` (one object, or every ``*.jsonl`` under a
    prefix), objects in name order (which is chain start time, then first ``seq``)."""
    store = open_store(uri)
    objects = [uri] if uri.endswith(".jsonl") and store.exists(uri) else sorted(
        u for u in store.list(uri.rstrip("/") + "/") if u.endswith(".jsonl"))
    for obj in objects:
        for number, line in enumerate(store.get_bytes(obj).splitlines(), start=1):
            if line.strip():
                yield f"{obj}:{number}", line


def verify_records(lines: Iterable[tuple[str, bytes]], *, partial: bool = False) -> ChainReport:
    """Check hash chains: every record's own hash, ``prev`` = the previous record's hash, ``seq`` one more than the
    previous record's. Records of several chains may be interleaved; each chain must start at seq 0 with ``prev``
    = 64 zeros unless ``partial`` (older segments pruned: the first record seen then starts the check).
    Stops at the first broken record."""
    last: dict[str, tuple[int, str]] = {}  # chain -> (seq, hash) of its last record
    counts: dict[str, int] = {}
    total = 0
    for where, line in lines:
        total += 1
        try:
            record = json.loads(line)
        except ValueError:
            return ChainReport(total, counts, AuditBreak(where, None, None, "not a JSON record"))
        if not isinstance(record, dict) or not {"chain", "seq", "prev", "hash"} <= set(record):
            return ChainReport(total, counts, AuditBreak(where, None, None, "no chain fields (chain, seq, prev, hash)"))
        chain, seq, prev, stated = record["chain"], record["seq"], record["prev"], record["hash"]
        if not isinstance(chain, str) or not isinstance(seq, int) or isinstance(seq, bool):
            return ChainReport(total, counts, AuditBreak(where, None, None, "chain/seq of the wrong type"))
        actual = record_hash(record)
        if actual != stated:
            return ChainReport(total, counts, AuditBreak(
                where, chain, seq, "its content does not match its hash (the record was changed)"))
        previous = last.get(chain)
        if previous is None:
            if not partial and (seq != 0 or prev != GENESIS):
                problem = f"the chain starts at seq {seq}, not 0 (records before it are missing)"
                return ChainReport(total, counts, AuditBreak(where, chain, seq, problem))
        else:
            expected_seq, expected_prev = previous[0] + 1, previous[1]
            if seq != expected_seq:
                problem = (f"seq {seq} follows seq {previous[0]} (records {expected_seq}..{seq - 1} are missing)"
                           if seq > expected_seq else f"seq {seq} follows seq {previous[0]} (out of order or repeated)")
                return ChainReport(total, counts, AuditBreak(where, chain, seq, problem))
            if prev != expected_prev:
                problem = f"prev does not match the hash of seq {previous[0]} (that record was changed or replaced)"
                return ChainReport(total, counts, AuditBreak(where, chain, seq, problem))
        last[chain] = (seq, stated)
        counts[chain] = counts.get(chain, 0) + 1
    return ChainReport(total, counts, None)


# ---------------------------------------------------------------------------------------------- the sink

FailureCallback = Callable[[str, int], None]  # (reason, count)


class ObjectStoreAuditSink:
    """The audit log in an object store: a bounded queue, a writer thread, hash-chained immutable segments.

    ``store`` defaults to ``open_store(audit_uri)``. ``on_failure(reason, count)`` and ``on_written(count)`` feed
    metrics (``ganops_audit_failures_total``, ``ganops_audit_records_total``). Thread-safe; call :meth:`close` at
    shutdown (it stores what is queued, for up to ``timeout`` seconds).
    """

    def __init__(
        self,
        audit_uri: str,
        *,
        store: ObjectStore | None = None,
        include_pixels: bool = False,
        queue_size: int = 1024,
        segment_records: int = 500,
        flush_interval_s: float = 2.0,
        max_pending_records: int = 10_000,
        on_failure: FailureCallback | None = None,
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        self.audit_uri = audit_uri
        self.include_pixels = include_pixels
        self.store = store or open_store(audit_uri)
        self.segment_records = segment_records
        self.flush_interval_s = flush_interval_s
        self.max_pending_records = max_pending_records
        self.on_failure = on_failure
        self.on_written = on_written
        self.chain = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=queue_size)
        self._seq = 0
        self._prev = GENESIS
        self._pending: list[tuple[str, list[dict[str, Any]]]] = []  # (uri, chained records) not stored yet
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._busy = 0  # records taken from the queue and not yet stored or given up
        self._thread = threading.Thread(target=self._run, name="ganops-audit", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------- producer

    def write(self, record: dict[str, Any]) -> None:
        """Queue ``record`` (never blocks). Pixels are encoded here (only with ``include_pixels``) or dropped."""
        record = _without_pixels(record, self.include_pixels)
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._failed("queue_full", 1)
            logger.error("audit queue full: a record of request %s is dropped", record.get("request_id"))
            return
        if self._queue.qsize() >= self.segment_records:
            self._wake.set()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every record queued so far is stored; ``TimeoutError`` if the store keeps failing."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._idle:
            while self._queue.unfinished_tasks or self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"audit records not stored within {timeout:g} s")
                self._wake.set()
                self._idle.wait(min(left, 0.05))

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive() or self._queue.qsize() or self._pending:
            lost = self._queue.qsize() + sum(len(records) for _, records in self._pending)
            if lost:
                self._failed("queue_full", lost)
                logger.error("audit log: %d record(s) could not be stored before shutdown", lost)

    # --------------------------------------------------------------------------------------------- writer

    def _failed(self, reason: str, count: int) -> None:
        if self.on_failure is not None:
            try:
                self.on_failure(reason, count)
            except Exception:
                logger.exception("audit failure callback failed")

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            stopping = self._stop.is_set()  # close() sets it, then wakes us: a stop is never slept through
            self._cut_segments()
            self._store_pending()
            with self._idle:
                self._idle.notify_all()
            if stopping and not self._pending and self._queue.empty():
                return
            if stopping and self._pending:
                time.sleep(min(self.flush_interval_s, 0.5))  # keep retrying until close() gives up

    def _cut_segments(self) -> None:
        """Move queued records into chained segments (no I/O), as long as not too many wait for storage."""
        while not self._queue.empty():
            if sum(len(records) for _, records in self._pending) >= self.max_pending_records:
                return  # the store is down: let the queue fill (and drop) rather than hold everything
            batch: list[dict[str, Any]] = []
            while len(batch) < self.segment_records:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if not batch:
                return
            first = self._seq
            chained = []
            for record in batch:
                record = {**record, "chain": self.chain, "seq": self._seq, "prev": self._prev}
                record["hash"] = record_hash(record)
                self._prev = record["hash"]
                self._seq += 1
                chained.append(record)
            self._pending.append((segment_uri(self.audit_uri, self.chain, first, dt.datetime.now(dt.UTC)), chained))
            for _ in batch:
                self._queue.task_done()

    def _store_pending(self) -> None:
        while self._pending:
            uri, records = self._pending[0]
            data = b"".join(canonical_json(r) + b"\n" for r in records)
            try:
                self.store.put_bytes(uri, data)
            except Exception as exc:
                self._failed("write_error", 1)
                logger.error("cannot write audit segment %s (%s: %s); %d record(s) wait for a retry", uri,
                             type(exc).__name__, exc, sum(len(r) for _, r in self._pending))
                return
            self._pending.pop(0)
            if self.on_written is not None:
                self.on_written(len(records))
            last = records[-1]
            logs.event(logger, "audit_segment_written", uri=uri, chain=self.chain, first_seq=records[0]["seq"],
                       last_seq=last["seq"], head=last["hash"], records=len(records))


def _without_pixels(record: dict[str, Any], include_pixels: bool) -> dict[str, Any]:
    samples = record.get("blocked_samples")
    if not isinstance(samples, list):
        return dict(record)
    kept = []
    for sample in samples:
        sample = dict(sample)
        pixels = sample.pop("pixels", None)
        if include_pixels and pixels is not None:
            sample["content"] = encode_pixels_for_audit(pixels)
        kept.append(sample)
    return {**record, "blocked_samples": kept}


def encode_pixels_for_audit(pixels: Any) -> dict[str, Any]:
    """The sample's content for an audit record: a base64 PNG for images, the coordinates for points."""
    array = np.asarray(pixels)
    if array.ndim == 3 and array.dtype == np.uint8:
        from ganops.images import encode_png

        return {"png_base64": base64.b64encode(encode_png(array)).decode("ascii")}
    return {"values": [float(v) for v in array.reshape(-1)]}
