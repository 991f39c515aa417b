"""API keys (stored as SHA-256 hashes) and per-key token-bucket rate limits.

Key file (a Kubernetes Secret mounted as a file; ``api_keys_file``), one key per line, ``#`` comments::

    # <key-id>:<sha256 hex of the key>
    team-a:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8

The same lines may come from the environment (``GANOPS_SERVING_API_KEYS``, comma- or newline-separated). Keys
never appear in settings, logs or metrics; only their ids do. The file is re-read when it changes (a rotated
Secret), checked at most every ``reload_interval_s``; a broken file keeps the previous keys (and logs).

Clients send ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Make a key and its line with::

    python -c "import secrets, hashlib; k = secrets.token_urlsafe(32); print(k)
               print(hashlib.sha256(k.encode()).hexdigest())"
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ApiKeyStore", "Principal", "TokenBuckets", "hash_key", "parse_key_lines"]

logger = logging.getLogger(__name__)

_LINE = re.compile(r"^([A-Za-z0-9._@-]{1,64}):([0-9a-fA-F]{64})$")


def hash_key(key: str) -> str:
    """What the key file stores for ``key``: its SHA-256, hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_key_lines(text: str, source: str) -> dict[str, str]:
    """``{sha256 hex: key id}`` from key-file text; ``ValueError`` naming the line for anything malformed."""
    keys: dict[str, str] = {}
    for number, raw in enumerate(re.split(r"[\n,]", text), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise ValueError(f"{source}: entry {number} is not '<key-id>:<64 hex chars of sha256>'")
        key_id, digest = match.group(1), match.group(2).lower()
        if digest in keys:
            raise ValueError(f"{source}: entry {number} repeats the hash of key {keys[digest]!r}")
        keys[digest] = key_id
    return keys


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key id, or ``None`` when authentication is off (then ``client`` is the address)."""

    key_id: str | None
    client: str = ""

    @property
    def bucket(self) -> str:
        return f"key:{self.key_id}" if self.key_id is not None else f"ip:{self.client}"


class ApiKeyStore:
    def __init__(
        self, *, file: Path | None = None, inline: str | None = None, reload_interval_s: float = 5.0
    ) -> None:
        self.file = file
        self.reload_interval_s = reload_interval_s
        self._inline = parse_key_lines(inline, "GANOPS_SERVING_API_KEYS") if inline else {}
        self._from_file: dict[str, str] = {}
        self._mtime: float | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        if file is not None:
            self._from_file = parse_key_lines(file.read_text(), str(file))  # a broken file stops start-up
            self._mtime = file.stat().st_mtime
            self._checked = time.monotonic()

    @property
    def enabled(self) -> bool:
        """Authentication is on when any key source is configured (even an empty file: then nobody gets in)."""
        return self.file is not None or bool(self._inline)

    def __len__(self) -> int:
        return len(self._inline) + len(self._from_file)

    def _maybe_reload(self) -> None:
        if self.file is None or time.monotonic() - self._checked < self.reload_interval_s:
            return
        with self._lock:
            self._checked = time.monotonic()
            try:
                mtime = self.file.stat().st_mtime
                if mtime == self._mtime:
                    return
                self._from_file = parse_key_lines(self.file.read_text(), str(self.file))
                self._mtime = mtime
                logger.info("reloaded %d API key(s) from %s", len(self._from_file), self.file)
            except (OSError, ValueError) as exc:
                logger.error("cannot reload API keys from %s (%s); keeping the previous keys", self.file, exc)

    def verify(self, key: str) -> str | None:
        """The key id of ``key``, or ``None`` when it is not a valid key."""
        self._maybe_reload()
        digest = hash_key(key)
        for table in (self._inline, self._from_file):
            for stored, key_id in table.items():
                if hmac.compare_digest(stored, digest):
                    return key_id
        return None


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
        """0.0 when allowed (tokens taken), else the seconds until ``cost`` tokens will be there."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, updated = self._buckets.pop(name, (self.burst, now))
            tokens = min(self.burst, tokens + (now - updated) * self.rate)
            wait = 0.0
            if tokens >= cost:
                tokens -= cost
            else:
                wait = (cost - tokens) / self.rate
            self._buckets[name] = (tokens, now)
            while len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
            return wait

    @staticmethod
    def retry_after(wait: float) -> int:
        return max(1, math.ceil(wait))
