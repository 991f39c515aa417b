"""Settings of the safety pipeline and of the serving-side policies around it: one pydantic model, the only schema.

The serving process reads it as ``ServingSettings.safety`` (``GANOPS_SERVING_SAFETY__*``, or the config file's
``safety:`` section); :func:`~ganops.serving.safety.build_pipeline` and its siblings take it directly, or a mapping
or any object with these field names (validated by the same model: unknown mapping keys raise). Secrets (the
watermark key) come from a file (a Secret mount) or an environment variable; nothing here has a default secret.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretBytes, SecretStr, model_validator

from .nsfw import DEFAULT_BLOCKED_LABELS

__all__ = ["SafetySettings", "decode_key"]


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class SafetySettings(BaseModel):
    """The safety pipeline's settings (see docs/safety.md) plus the serving-side policies around it."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["withhold", "replace"] = "withhold"
    degenerate_enabled: bool = True
    degenerate_std_eps: float = 0.01
    degenerate_blank_fraction: float = 0.995
    degenerate_duplicate_distance: float = 0.05
    nsfw_enabled: bool = True
    nsfw_min_score: float = Field(0.5, ge=0.0, le=1.0)
    nsfw_blocked_labels: list[str] = Field(default_factory=lambda: sorted(DEFAULT_BLOCKED_LABELS))
    nsfw_threads: int | None = Field(None, ge=1)
    nsfw_min_image_size: int = Field(
        96,
        ge=0,
        description="Models whose images are smaller than this (px per side) skip the NSFW detector, which finds "
        "nothing below ~96 px (docs/safety.md); 0 = run it on every image.",
    )
    memorization_enabled: bool = Field(True, description="Use the index found beside the checkpoint (if any).")
    require_memorization_index: bool = Field(
        False, description="Refuse to serve an image model version that has no memorization index (else the filter "
        "is skipped for it, `no_index`). The Helm chart turns it on.",
    )
    memorization_threshold: float | None = None
    extra_filters: list[str] = Field(
        default_factory=list,
        description="'module:callable' factories of additional SafetyFilter objects, run after the built-in ones.",
    )
    # None here (the pipeline alone writes no records); ServingSettings makes it file://$PWD/.ganops/audit unless
    # set, so the schema states no default.
    audit_uri: str | None = Field(None, description="s3:// or file://; None = off.", json_schema_extra=_no_default)
    audit_include_pixels: bool = False
    # Text (environment, config file) is a SecretStr; raw bytes (when embedding) a SecretBytes.
    watermark_key: SecretStr | SecretBytes | None = Field(
        None, description="'hex:…', 'base64:…' or text; >= 16 bytes."
    )
    watermark_key_file: str | None = None
    watermark_payload_bits: int = Field(32, ge=32, le=64)
    watermark_dwt: bool = True
    require_watermark_key: bool = Field(
        False, description="Refuse to start without a configured key (else an ephemeral key is generated)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> SafetySettings:
        if self.require_memorization_index and not self.memorization_enabled:
            raise ValueError("require_memorization_index needs memorization_enabled")
        return self

    @classmethod
    def coerce(cls, settings: SafetySettings | Mapping[str, Any] | Any) -> SafetySettings:
        """A :class:`SafetySettings` from itself, a mapping with these field names (unknown keys raise a
        ``ValueError``: typos must not pass), or any object with attributes of these names (others are ignored;
        missing ones keep their defaults)."""
        if isinstance(settings, SafetySettings):
            return settings
        if isinstance(settings, Mapping):
            return cls.model_validate(dict(settings))
        return cls.model_validate({n: getattr(settings, n) for n in cls.model_fields if hasattr(settings, n)})

    def for_model(self, *, nsfw: bool | None = None) -> SafetySettings:
        """These settings for one model version: ``nsfw`` overrides ``nsfw_enabled`` (the model store turns the
        detector off for models it cannot see, see ``nsfw_min_image_size``)."""
        return self if nsfw is None else self.model_copy(update={"nsfw_enabled": nsfw})

    def resolved_watermark_key(self) -> bytes | None:
        if self.watermark_key_file:
            with open(self.watermark_key_file, "rb") as f:
                return decode_key(f.read().strip())
        return None if self.watermark_key is None else decode_key(self.watermark_key.get_secret_value())


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
