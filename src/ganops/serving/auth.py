"""API keys (stored as SHA-256 hashes) and per-key token-bucket rate limits.

Key file (a Kubernetes Secret mounted as a file; ``api_keys_file``), one key per line, ``#`` comments::

    # <key-id>:<sha256 hex of the key>
    team-a:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8

The same lines may come from the environment (``GANOPS_SERVING_API_KEYS``, comma- or newline-separated). Keys
never appear in settings, logs or metrics; only their ids do. The file is re-read when it changes (a rotated
Secret), checked at most every ``reload_interval_s``. A reload fails closed: the new file's well-formed entries
replace the old keys, an entry it cannot parse is refused (logged by entry number, counted through ``on_problems``),
and a file it cannot read leaves no key of the file valid until it reads again. A key the Secret revoked is never
kept. At start-up a malformed file is an error instead (nothing to fall back on; the pod must not start).

Rate limits are token buckets: per principal (API key, or client address when authentication is off) weighted by
the work a request asks for, and per client address before authentication (requests, failed authentications).
An IPv6 client is one /64: a host gets a whole /64 and could otherwise rotate through it.

Clients send ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Make a key and its line with::

    python -c "import secrets, hashlib; k = secrets.token_urlsafe(32); print(k)
               print(hashlib.sha256(k.encode()).hexdigest())"
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ApiKeyStore",
    "KeyFileProblem",
    "Principal",
    "TokenBuckets",
    "client_key",
    "hash_key",
    "parse_key_entries",
    "parse_key_lines",
]

logger = logging.getLogger(__name__)

_LINE = re.compile(r"^([A-Za-z0-9._@-]{1,64}):([0-9a-fA-F]{64})$")


def hash_key(key: str) -> str:
    """What the key file stores for ``key``: its SHA-256, hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_key_entries(text: str, source: str) -> tuple[dict[str, str], list[str]]:
    """``({sha256 hex: key id}, problems)``: every well-formed entry, and one problem per entry refused (malformed,
    or repeating an earlier entry's hash). Problems name the entry by number, never its content."""
    keys: dict[str, str] = {}
    problems: list[str] = []
    for number, raw in enumerate(re.split(r"[\n,]", text), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            problems.append(f"{source}: entry {number} is not '<key-id>:<64 hex chars of sha256>'")
            continue
        key_id, digest = match.group(1), match.group(2).lower()
        if digest in keys:
            problems.append(f"{source}: entry {number} repeats the hash of key {keys[digest]!r}")
            continue
        keys[digest] = key_id
    return keys, problems


def parse_key_lines(text: str, source: str) -> dict[str, str]:
    """``{sha256 hex: key id}`` from key-file text; ``ValueError`` naming the first entry that is malformed."""
    keys, problems = parse_key_entries(text, source)
    if problems:
        raise ValueError(problems[0])
    return keys


def client_key(host: str) -> str:
    """The rate-limit identity of a client address: the address itself, a /64 for IPv6 (an IPv4-mapped IPv6
    address is its IPv4 address); anything that is not an address is kept as it is."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key id, or ``None`` when authentication is off (then ``client`` is the address)."""

    key_id: str | None
    client: str = ""

    @property
    def bucket(self) -> str:
        return f"key:{self.key_id}" if self.key_id is not None else f"ip:{self.client}"


KeyFileProblem = Callable[[str, int], None]  # (reason: "invalid_entry" | "unreadable", count)


class ApiKeyStore:
    def __init__(
        self, *, file: Path | None = None, inline: str | None = None, reload_interval_s: float = 5.0,
        on_problems: KeyFileProblem | None = None, on_keys: Callable[[int], None] | None = None,
    ) -> None:
        self.file = file
        self.reload_interval_s = reload_interval_s
        self.on_problems = on_problems
        self.on_keys = on_keys
        self._inline = parse_key_lines(inline, "GANOPS_SERVING_API_KEYS") if inline else {}
        self._from_file: dict[str, str] = {}
        self._mtime: float | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        if file is not None:
            self._from_file = parse_key_lines(file.read_text(), str(file))  # a broken file stops start-up
            self._mtime = file.stat().st_mtime
            self._checked = time.monotonic()
        self._report_keys()

    @property
    def enabled(self) -> bool:
        """Authentication is on when any key source is configured (even an empty file: then nobody gets in)."""
        return self.file is not None or bool(self._inline)

    def __len__(self) -> int:
        return len(self._inline) + len(self._from_file)

    def _report_keys(self) -> None:
        if self.on_keys is not None:
            self.on_keys(len(self))

    def _problem(self, reason: str, count: int) -> None:
        if self.on_problems is not None and count:
            self.on_problems(reason, count)

    def _maybe_reload(self) -> None:
        if self.file is None or time.monotonic() - self._checked < self.reload_interval_s:
            return
        with self._lock:
            if time.monotonic() - self._checked < self.reload_interval_s:
                return
            self._checked = time.monotonic()
            try:
                mtime = self.file.stat().st_mtime
                if mtime == self._mtime:
                    return
                text = self.file.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                # Fail closed: no key of an unreadable file is valid; retried at the next check.
                if self._from_file or self._mtime is not None:
                    logger.error("cannot read API keys from %s (%s): refusing every key of that file until it "
                                 "reads again", self.file, type(exc).__name__)
                self._from_file, self._mtime = {}, None
                self._problem("unreadable", 1)
                self._report_keys()
                return
            keys, problems = parse_key_entries(text, str(self.file))
            self._from_file, self._mtime = keys, mtime
            for problem in problems:
                logger.error("%s: entry refused (fail-closed)", problem)
            self._problem("invalid_entry", len(problems))
            logger.info("reloaded %d API key(s) from %s (%d entr%s refused)", len(keys), self.file, len(problems),
                        "y" if len(problems) == 1 else "ies")
            self._report_keys()

    def verify(self, key: str) -> str | None:
        """The key id of ``key``, or ``None`` when it is not a valid key."""
        self._maybe_reload()
        digest = hash_key(key)
        found: str | None = None
        for table in (self._inline, self._from_file):
            for stored, key_id in table.items():
                if hmac.compare_digest(stored, digest) and found is None:
                    found = key_id
        return found


class TokenBuckets:
    """One token bucket per principal: ``rate`` tokens/s up to ``burst``; ``rate == 0`` disables limiting.

    Buckets of principals not seen for a while are dropped once more than ``max_buckets`` exist (least recently
    used first): a full bucket is what a new one would be anyway.
    """

    def __init__(self, rate: float, burst: int, *, max_buckets: int = 10_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # name -> (tokens, updated)
        self._lock = threading.Lock()

    def take(self, name: str, cost: float = 1.0, now: float | None = None) -> float:
        """0.0 when allowed (tokens taken), else the seconds until ``cost`` tokens will be there. ``cost`` above
        the burst is charged as the whole bucket: such a request waits for a full bucket, never forever."""
        if self.rate <= 0:
            return 0.0
        cost = min(float(cost), self.burst)
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, updated = self._buckets.pop(name, (self.burst, now))
            tokens = min(self.burst, tokens + max(0.0, now - updated) * self.rate)
            wait = 0.0
            if tokens >= cost:
                tokens -= cost
            else:
                wait = (cost - tokens) / self.rate
            self._buckets[name] = (tokens, now)
            while len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
            return wait

    def wait(self, name: str, cost: float = 1.0, now: float | None = None) -> float:
        """What :meth:`take` would answer, without taking anything (0.0: ``cost`` tokens are there)."""
        if self.rate <= 0:
            return 0.0
        cost = min(float(cost), self.burst)
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, updated = self._buckets.get(name, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - updated) * self.rate)
        return 0.0 if tokens >= cost else (cost - tokens) / self.rate

    @staticmethod
    def retry_after(wait: float) -> int:
        return max(1, math.ceil(wait))
