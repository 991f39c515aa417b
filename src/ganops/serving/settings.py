"""Settings of the serving process: pydantic-settings, from (highest priority first) keyword arguments, environment
variables ``GANOPS_SERVING_*`` (nested with ``__``: ``GANOPS_SERVING_CANARY__PERCENT=10``), an optional YAML or
JSON file (``config_file=`` or ``GANOPS_SERVING_CONFIG_FILE``; same field names, nested as objects), then defaults.

What to serve, one of:

* ``model="name@alias"`` (alias defaults to ``production``) resolved through the MLflow registry at ``mlflow_uri``
  (or ``MLFLOW_TRACKING_URI``), polled every ``poll_interval_s`` for alias moves; ``canary.alias`` +
  ``canary.percent`` send that share of seeds to the version behind the canary alias;
* ``checkpoint_uri`` (a step folder, or a job's root whose ``latest.json`` is followed): no MLflow, for local use.

Secrets (API key hashes, the watermark key) come from files (a mounted Secret) or environment variables; none has
a default.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from ganops.serving.safety import RequestPolicy, SafetySettings

__all__ = [
    "CONFIG_FILE_ENV",
    "BatchingSettings",
    "CanarySettings",
    "LimitSettings",
    "ServerSettings",
    "ServingSettings",
    "config_file_values",
    "default_audit_uri",
]

CONFIG_FILE_ENV = "GANOPS_SERVING_CONFIG_FILE"
DEFAULT_ALIAS = "production"


def default_audit_uri() -> str:
    """``file://`` URI of ``.ganops/audit`` under the working directory (local runs; clusters set an s3:// URI)."""
    return (Path.cwd() / ".ganops" / "audit").as_uri()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CanarySettings(_Section):
    """``percent`` of seeds (``bucket(seed) < percent``; a seed always lands on the same side) go to ``alias``."""

    alias: str | None = Field(None, description="Registry alias of the canary version, e.g. 'canary'.")
    percent: float = Field(0.0, ge=0.0, le=100.0)


class BatchingSettings(_Section):
    """Dynamic micro-batching: samples of concurrent requests for one model version share one forward pass."""

    enabled: bool = Field(True, description="False: one request, one forward pass (the naive baseline).")
    max_batch_size: int = Field(64, ge=1, le=4096, description="Samples per forward pass (bigger requests run alone).")
    max_wait_ms: float = Field(2.0, ge=0.0, le=1000.0, description="How long the first request waits for company.")
    max_queue: int = Field(256, ge=1, le=100_000, description="Requests waiting for the generator; more → 503.")
    workers: int = Field(
        1, ge=1, le=64, description="Batches run side by side, one worker thread each (CPU: about cores / "
        "torch_threads; GPU: 1)."
    )
    postprocess_threads: int = Field(
        2, ge=1, le=64, description="Without batching: threads for safety filters, watermark, encoding (batching "
        "does them in its one worker thread, vectorised over the batch)."
    )


# The largest picture this server makes at the default limits: a grid of 64 samples of 256 px, 8 x 8 tiles with
# 2 px of padding (8 * 258 + 2 = 2066 px a side). Uploads larger than that cannot carry its watermark.
DEFAULT_MAX_VERIFY_PIXELS = 2080 * 2080


class LimitSettings(_Section):
    max_n: int = Field(64, ge=1, le=1024, description="Samples per request.")
    max_image_size: int = Field(256, ge=2, le=4096)
    max_pixels_per_request: int = Field(64 * 256 * 256, ge=1)
    min_truncation: float = Field(0.0, ge=0.0, description="Exclusive lower bound of `truncation`.")
    max_truncation: float = Field(4.0, gt=0.0, le=100.0, description="Inclusive upper bound of `truncation`.")
    allowed_labels: list[int] | None = Field(None, description="Classes a conditional model may be asked for.")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Larger request bodies → 413.")
    max_verify_pixels: int = Field(
        DEFAULT_MAX_VERIFY_PIXELS, ge=64, le=64 * 1024 * 1024,
        description="Largest image /v1/watermark/verify accepts (width x height, read from the header before "
        "anything is decoded; larger → 413). Default: room for the largest grid the default limits produce.",
    )
    verify_concurrency: int = Field(
        1, ge=1, le=64, description="Verifications decoded and checked at once (each in a thread of its own, off the "
        "event loop; one at the pixel cap takes ~1.5 CPU-seconds and ~120 MB); also the size of that thread pool.",
    )
    verify_queue: int = Field(8, ge=0, le=10_000, description="Verifications waiting for a slot; more → 503.")
    verify_timeout_s: float = Field(
        10.0, gt=0.0, le=300.0, description="Wait + decode + verify → else 504 (the slot stays taken until the "
        "thread is done, so timed-out work never piles up).",
    )
    request_timeout_s: float = Field(30.0, gt=0.0, description="Queue + generation + safety + encoding → else 504.")
    retry_after_s: int = Field(1, ge=1, description="Retry-After of 503 answers (queue full, not ready).")
    rate_limit_per_second: float = Field(
        64.0, ge=0.0, description="Token refill per API key (per client address when authentication is off); a "
        "request costs one token per sample it asks for, one per `rate_limit_pixels_per_token` pixels it uploads, "
        "at least one; 0 = no limit.",
    )
    rate_limit_burst: int = Field(
        128, ge=1, description="Bucket size per API key (a request never costs more than the whole bucket)."
    )
    rate_limit_pixels_per_token: int = Field(
        256 * 256, ge=1, description="Uploaded pixels (watermark verification) that cost one token."
    )
    address_rate_limit_per_second: float = Field(
        100.0, ge=0.0, description="Requests per second per client address, checked before authentication "
        "(probes and /metrics excepted); 0 = off.",
    )
    address_rate_limit_burst: int = Field(200, ge=1, description="Bucket size per client address.")
    auth_failure_rate_per_second: float = Field(
        0.2, ge=0.0, description="Failed authentications per second a client address earns back; 0 = unlimited.",
    )
    auth_failure_burst: int = Field(
        10, ge=1, description="Failed authentications an address may make in a row; then every request from it "
        "gets 429 until it has earned one back.",
    )

    def policy(self) -> RequestPolicy:
        return RequestPolicy(
            max_n=self.max_n,
            max_image_size=self.max_image_size,
            max_pixels_per_request=self.max_pixels_per_request,
            allowed_labels=frozenset(self.allowed_labels) if self.allowed_labels is not None else None,
            min_truncation=self.min_truncation,
            max_truncation=self.max_truncation,
        )


class ServerSettings(_Section):
    """What uvicorn enforces per connection, before the app sees a request (docs/security.md)."""

    limit_concurrency: int | None = Field(
        256, ge=1, description="Open connections + requests in progress per process; beyond it new requests get "
        "503 at once (None = unlimited).",
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, le=1024 * 1024, description="Request line + headers; larger → 431 and the connection "
        "is closed.",
    )
    header_timeout_s: float = Field(
        10.0, gt=0.0, le=300.0, description="From a connection's first byte (or its opening) to the end of the "
        "request's headers; slower → 408 and closed.",
    )
    body_timeout_s: float = Field(
        30.0, gt=0.0, le=600.0, description="From the end of the headers to the end of the body; slower → 408 and "
        "closed.",
    )
    keep_alive_timeout_s: int = Field(5, ge=1, le=300, description="Idle keep-alive connections are closed after it.")
    backlog: int = Field(2048, ge=1, le=65535, description="Connections the kernel queues before accept.")
    trusted_proxies: list[str] = Field(
        default_factory=list, description="Addresses or CIDRs of proxies (the ingress controller's pods) whose "
        "X-Forwarded-For names the client; empty = the peer's address is the client, whatever the headers say.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, proxies: list[str]) -> list[str]:
        networks = []
        for proxy in proxies:
            try:
                network = ipaddress.ip_network(proxy.strip(), strict=False)
            except ValueError:
                raise ValueError(f"trusted proxy {proxy!r} is not an IP address or CIDR (no wildcards)") from None
            single = network.num_addresses == 1
            networks.append(str(network.network_address) if single else str(network))
        return networks


class _ConfigFileSource(YamlConfigSettingsSource):
    """The YAML/JSON file named by ``config_file=`` or ``GANOPS_SERVING_CONFIG_FILE`` (YAML parses JSON too)."""

    def __init__(self, settings_cls: type[BaseSettings], path: str | None) -> None:
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"serving config file {path} does not exist")
        super().__init__(settings_cls, yaml_file=path or None)


class ServingSettings(BaseSettings):
    """Everything the serving process reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="GANOPS_SERVING_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    config_file: Path | None = Field(None, description="YAML/JSON file with these settings (lower than env).")

    # --- what to serve
    model: str | None = Field(None, description="'name@alias' in the MLflow registry (alias default: production).")
    mlflow_uri: str | None = Field(None, description="MLflow tracking/registry URI (default: MLFLOW_TRACKING_URI).")
    checkpoint_uri: str | None = Field(None, description="Serve this checkpoint directly (no MLflow).")
    model_name: str = Field("local", description="Name reported for a direct checkpoint_uri.")
    poll_interval_s: float = Field(30.0, gt=0.0, le=86400.0, description="How often aliases/latest.json are read.")
    ema: bool | None = Field(None, description="EMA weights (default: the version's tag, else true).")
    canary: CanarySettings = Field(default_factory=CanarySettings)

    # --- process
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = False
    shutdown_timeout_s: float = Field(30.0, ge=0.0, description="In-flight requests get this long on SIGTERM.")
    torch_threads: int | None = Field(None, ge=1, le=256, description="torch intra-op threads (default: torch's).")
    device: str = "cpu"
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: weights and activations in bfloat16 (CPUs with AMX, GPUs): 2-3x cheaper at batch "
        ">= 16 on AMX, little gain at batch 1; outputs differ from fp32 by a few grey levels (same seed, same bytes)."
    )

    server: ServerSettings = Field(default_factory=ServerSettings)

    # --- behaviour
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    jpeg_quality: int = Field(95, ge=1, le=100)
    png_compress_level: int = Field(
        1, ge=0, le=9, description="zlib level of PNG output: 1 is ~10x faster than 6 and ~10 % larger."
    )

    # --- security
    api_keys_file: Path | None = Field(None, description="Lines '<key-id>:<sha256-hex of the key>' (a Secret mount).")
    api_keys: SecretStr | None = Field(None, description="Same format, comma- or newline-separated (env).")
    require_api_keys: bool = Field(False, description="Refuse to start without API keys (else: open, warned).")
    cors_origins: list[str] = Field(default_factory=list, description="Empty = no CORS headers at all.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init_kwargs: dict[str, Any] = getattr(init_settings, "init_kwargs", {})
        path = init_kwargs.get("config_file") or os.environ.get(CONFIG_FILE_ENV)
        return init_settings, env_settings, _ConfigFileSource(settings_cls, str(path) if path else None)

    @field_validator("safety")
    @classmethod
    def _audit_by_default(cls, safety: SafetySettings) -> SafetySettings:
        """The serving process keeps audit records unless told otherwise: ``safety.audit_uri`` defaults to
        ``file://$PWD/.ganops/audit`` here (``null`` turns them off); the pipeline alone writes none by default."""
        if "audit_uri" in safety.model_fields_set:
            return safety
        return safety.model_copy(update={"audit_uri": default_audit_uri()})

    @model_validator(mode="after")
    def _check(self) -> ServingSettings:
        if self.model and self.checkpoint_uri:
            raise ValueError("set either model (MLflow) or checkpoint_uri (direct), not both")
        if self.model:
            name, _, alias = self.model.partition("@")
            if not name or (self.model.count("@") > 1) or (alias == "" and "@" in self.model):
                raise ValueError(f"model must be 'name' or 'name@alias', not {self.model!r}")
            if not self.resolved_mlflow_uri():
                raise ValueError("model is resolved through MLflow: set mlflow_uri (or MLFLOW_TRACKING_URI)")
        if self.canary.alias and not self.model:
            raise ValueError("canary.alias needs model (a registry alias); direct checkpoints have no canary")
        if self.limits.min_truncation >= self.limits.max_truncation:
            raise ValueError("limits.min_truncation must be below limits.max_truncation")
        return self

    # ------------------------------------------------------------------------------------------- derived

    @property
    def registered_name(self) -> str:
        """The model name clients see: the registry name, else ``model_name``."""
        return self.model.partition("@")[0] if self.model else self.model_name

    @property
    def alias(self) -> str:
        if not self.model:
            return "checkpoint"
        return self.model.partition("@")[2] or DEFAULT_ALIAS

    def resolved_mlflow_uri(self) -> str | None:
        return self.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def config_file_values(config_file: str | Path | None = None) -> dict[str, Any]:
    """What the config file (``config_file``, else ``GANOPS_SERVING_CONFIG_FILE``) sets, as :class:`ServingSettings`
    reads it (``{}`` without one; ``FileNotFoundError`` when it does not exist)."""
    path = config_file or os.environ.get(CONFIG_FILE_ENV)
    return dict(_ConfigFileSource(ServingSettings, str(path) if path else None)())
