"""Settings of the safety pipeline: a plain dataclass, buildable from a mapping (the app's pydantic settings,
a ConfigMap, a test dict). Secrets (the watermark key) are paths or bytes read from a Secret mount
or an environment variable; nothing here has a default secret."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .nsfw import DEFAULT_BLOCKED_LABELS

__all__ = ["SafetySettings", "decode_key"]


@dataclass(frozen=True)
class SafetySettings:
    mode: Literal["withhold", "replace"] = "withhold"

    degenerate_enabled: bool = True
    degenerate_std_eps: float = 0.01
    degenerate_blank_fraction: float = 0.995
    degenerate_duplicate_distance: float = 0.05

    nsfw_enabled: bool = True
    nsfw_min_score: float = 0.5
    nsfw_blocked_labels: frozenset[str] = DEFAULT_BLOCKED_LABELS
    nsfw_threads: int | None = None

    # Path of the index saved beside the model at promotion (memorization.safetensors); None = filter off.
    memorization_index_path: str | None = None
    memorization_threshold: float | None = None  # overrides the threshold recorded in the index

    audit_uri: str | None = None  # s3://bucket/audit or file://… ; None = no audit records
    audit_include_pixels: bool = False

    # Watermark key: raw bytes, or "base64:…"/"hex:…" text, or a file path via watermark_key_file.
    watermark_key: bytes | str | None = None
    watermark_key_file: str | None = None
    watermark_payload_bits: int = 32
    watermark_dwt: bool = True

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SafetySettings:
        """From a mapping with these field names; unknown keys raise ``ValueError`` (typos must not pass)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown safety settings: {', '.join(unknown)}")
        data = dict(values)
        if "nsfw_blocked_labels" in data:
            data["nsfw_blocked_labels"] = frozenset(data["nsfw_blocked_labels"])
        return cls(**data)

    @classmethod
    def coerce(cls, settings: SafetySettings | Mapping[str, Any] | Any) -> SafetySettings:
        """A :class:`SafetySettings` from itself, a mapping, or any object (dataclass, pydantic model) with
        attributes of these names (missing ones keep their defaults)."""
        if isinstance(settings, SafetySettings):
            return settings
        if isinstance(settings, Mapping):
            return cls.from_mapping(settings)
        names = [f.name for f in dataclasses.fields(cls)]
        return cls.from_mapping({n: getattr(settings, n) for n in names if hasattr(settings, n)})

    def resolved_watermark_key(self) -> bytes | None:
        if self.watermark_key_file:
            with open(self.watermark_key_file, "rb") as f:
                return decode_key(f.read().strip())
        return None if self.watermark_key is None else decode_key(self.watermark_key)


def decode_key(value: bytes | str) -> bytes:
    """``base64:…`` and ``hex:…`` are decoded; other text is taken as UTF-8 bytes; bytes as they are."""
    if isinstance(value, bytes):
        if not value.startswith((b"base64:", b"hex:")):
            return value
        value = value.decode()
    if value.startswith("base64:"):
        return base64.b64decode(value[len("base64:") :], validate=True)
    if value.startswith("hex:"):
        return bytes.fromhex(value[len("hex:") :])
    return value.encode()
