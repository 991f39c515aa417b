"""Which model versions serve, and swapping them without dropping a request.

* A *resolver* answers what should serve now: ``name@alias`` (and the canary alias) through the MLflow registry
  (:func:`ganops.tracking.get_alias`, reading the version's ``checkpoint_uri``, never its ``source``), or a direct
  checkpoint URI (a job root's ``latest.json`` is followed, so new steps are picked up too).
* A *loader* turns a :class:`ModelRef` into a :class:`LoadedModel`: the generator from safetensors + manifest.json
  (:func:`ganops.generator.load_generator`, which never unpickles), the generation settings stored with the
  version (tags), the memorization index found beside the checkpoint, a safety pipeline and a watermarker for this
  version, and a smoke test (one forward pass through every filter) before it may serve.
* :class:`ModelStore` polls the resolver every ``poll_interval_s`` in a background thread. A new version is loaded
  fully in that thread, then the reference is swapped (one attribute assignment): requests already holding the
  old :class:`Deployment` finish on it. A version that fails to load is counted
  (``ganops_model_load_failures_total``) and the old one keeps serving; a failed poll (MLflow or the store
  unreachable) is counted (``ganops_model_store_errors_total``) and logged, and serving goes on.

Tags read from a model version (all optional):

``ganops.generation.ema``         ``true``/``false``: EMA or raw generator weights (default true)
``ganops.generation.truncation``  default truncation threshold when a request gives none
``ganops.memorization_index``     URI of the memorization index (or a file name inside the checkpoint folder);
                                  else ``memorization_index.safetensors`` / ``memorization.safetensors`` beside it
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn

from ganops import checkpoints, storage
from ganops.api.spec import ModelSpec
from ganops.contracts import TAG_GENERATION_EMA, TAG_GENERATION_TRUNCATION, TAG_MEMORIZATION_INDEX
from ganops.generator import latents, load_generator
from ganops.serving.metrics import ServingMetrics
from ganops.serving.safety import (
    AuditSink,
    Detector,
    MemorizationIndex,
    SafetyFilter,
    SafetyPipeline,
    Watermarker,
    build_filters,
)
from ganops.serving.settings import ServingSettings

__all__ = [
    "EMA_TAG",
    "MEMORIZATION_INDEX_NAMES",
    "MEMORIZATION_TAG",
    "TRUNCATION_TAG",
    "CheckpointResolver",
    "Deployment",
    "LoadedModel",
    "ModelLoader",
    "ModelRef",
    "ModelStore",
    "NotReady",
    "RegistryResolver",
    "Resolver",
    "canary_bucket",
]

logger = logging.getLogger(__name__)

EMA_TAG = TAG_GENERATION_EMA
TRUNCATION_TAG = TAG_GENERATION_TRUNCATION
MEMORIZATION_TAG = TAG_MEMORIZATION_INDEX
MEMORIZATION_INDEX_NAMES = ("memorization_index.safetensors", "memorization.safetensors")
MAX_SEED = 2**63 - 1

Role = Literal["primary", "canary"]


class NotReady(RuntimeError):
    """No model is loaded yet."""


@dataclass(frozen=True)
class ModelRef:
    """What an alias (or a direct checkpoint URI) points at."""

    name: str
    version: str
    alias: str
    checkpoint_uri: str
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def load_key(self) -> tuple[str, str, tuple[tuple[str, str], ...]]:
        """Two refs with the same key load to the same model (the alias does not matter)."""
        return (self.version, self.checkpoint_uri, tuple(sorted(self.tags.items())))


def canary_bucket(seed: int) -> int:
    """A stable bucket in ``[0, 10000)`` for a seed: the canary gets seeds with ``bucket < percent * 100``."""
    digest = hashlib.blake2b(int(seed).to_bytes(8, "little", signed=False), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 10000


@dataclass(eq=False)
class LoadedModel:
    """One model version, ready to generate: weights in eval mode, its safety pipeline and watermarker."""

    name: str
    version: str
    checkpoint_uri: str  # the step folder the weights came from
    spec: ModelSpec
    generator: nn.Module
    pipeline: SafetyPipeline
    watermarker: Watermarker
    ema: bool = True
    default_truncation: float | None = None
    memorization_index: str | None = None  # where the index came from, None = filter off
    skipped_filters: dict[str, str] = field(default_factory=dict)  # filter -> reason it does not run
    step: int | None = None
    loaded_at: float = field(default_factory=time.time)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32  # of the weights and activations (settings.precision)

    @property
    def model_id(self) -> str:
        """What the watermark payload names: ``name:version``."""
        return f"{self.name}:{self.version}"

    @property
    def is_image(self) -> bool:
        return self.spec.architecture != "mlp"

    @property
    def image_size(self) -> int | None:
        return self.spec.image_size if self.is_image else None

    @property
    def num_classes(self) -> int | None:
        return self.spec.num_classes

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one returned sample: HWC for images, ``(2,)`` for points."""
        if self.is_image:
            return (self.spec.image_size, self.spec.image_size, self.spec.channels)
        return (2,)

    def latents(self, n: int, seed: int, truncation: float | None) -> torch.Tensor:
        return latents(n, self.spec.latent_dim, seed, truncation)

    def labels(self, n: int, label: int | None) -> torch.Tensor | None:
        """The class of each sample: ``label`` for all, else ``0, 1, …`` cycling (as ``ganops generate``)."""
        if not self.num_classes:
            return None
        if label is not None:
            return torch.full((n,), int(label), dtype=torch.long)
        return torch.arange(n, dtype=torch.long) % self.num_classes

    def forward(self, z: torch.Tensor, y: torch.Tensor | None) -> np.ndarray:
        """One forward pass, float32 numpy on the CPU (NCHW in [-1, 1] or ``(N, 2)``)."""
        with torch.inference_mode():
            out = self.generator(z.to(self.device, self.dtype), None if y is None else y.to(self.device))
            array: np.ndarray = out.float().cpu().numpy()
        return array


@dataclass(frozen=True, eq=False)
class Deployment:
    """A loaded model in a role: the alias it serves under (what responses and metrics report)."""

    role: Role
    ref: ModelRef
    model: LoadedModel

    @property
    def alias(self) -> str:
        return self.ref.alias


class Resolver(Protocol):
    def resolve(self) -> tuple[ModelRef | None, ModelRef | None]:
        """``(primary, canary)``: what should serve now (None when the alias does not exist)."""
        ...


class RegistryResolver:
    """``name@alias`` (and ``name@canary_alias``) in the MLflow registry."""

    def __init__(self, tracking_uri: str, name: str, alias: str, canary_alias: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.name = name
        self.alias = alias
        self.canary_alias = canary_alias

    def _ref(self, alias: str) -> ModelRef | None:
        from ganops import tracking

        info = tracking.get_alias(self.tracking_uri, self.name, alias)
        if info is None:
            return None
        return ModelRef(self.name, info.version, alias, info.checkpoint_uri, dict(info.tags))

    def resolve(self) -> tuple[ModelRef | None, ModelRef | None]:
        primary = self._ref(self.alias)
        canary = self._ref(self.canary_alias) if self.canary_alias else None
        return primary, canary


class CheckpointResolver:
    """A checkpoint URI without a registry: the version is the checkpoint's step."""

    def __init__(self, uri: str, name: str) -> None:
        self.uri = uri
        self.name = name

    def resolve(self) -> tuple[ModelRef | None, ModelRef | None]:
        step_uri = checkpoints.resolve(self.uri)
        manifest = checkpoints.require_manifest(step_uri)
        version = str(manifest.get("step", step_uri.rstrip("/").rsplit("/", 1)[-1]))
        return ModelRef(self.name, version, "checkpoint", step_uri), None


# ---------------------------------------------------------------------------------------------------- loader


def _tag_bool(tags: Mapping[str, str], name: str) -> bool | None:
    value = tags.get(name)
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"tag {name}={value!r} is not a boolean")


def _tag_float(tags: Mapping[str, str], name: str) -> float | None:
    value = tags.get(name)
    if value is None or value.strip() == "":
        return None
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"tag {name}={value!r} must be a positive number")
    return number


def find_memorization_index(step_uri: str, tags: Mapping[str, str], roots: Sequence[str] = ()) -> str | None:
    """URI of the memorization index for a checkpoint: the tag's, else a known file name beside the weights.

    A tag naming an index that does not exist raises (the version promised one); a missing file beside the
    checkpoint is normal (no index: the filter is off for the model)."""
    tagged = tags.get(MEMORIZATION_TAG)
    if tagged:
        uri = tagged if "://" in tagged else storage.join(step_uri, tagged)
        if not storage.open_store(uri).exists(uri):
            raise FileNotFoundError(f"tag {MEMORIZATION_TAG} names {uri}, which does not exist")
        return uri
    for folder in (step_uri, *roots):
        store = storage.open_store(folder)
        for name in MEMORIZATION_INDEX_NAMES:
            uri = storage.join(folder, name)
            if store.exists(uri):
                return uri
    return None


class ModelLoader:
    """Builds a :class:`LoadedModel` from a :class:`ModelRef` with the app's shared parts."""

    def __init__(
        self,
        settings: ServingSettings,
        *,
        watermark_key: bytes,
        on_decision: Callable[[str, str], None] | None = None,
        audit_sink: AuditSink | None = None,
        nsfw_detector: Detector | None = None,
        extra_filters: Callable[[], list[SafetyFilter]] | None = None,
    ) -> None:
        self.settings = settings
        self.watermark_key = watermark_key
        self.on_decision = on_decision
        self.audit_sink = audit_sink
        self.nsfw_detector = nsfw_detector
        self.extra_filters = extra_filters

    def __call__(self, ref: ModelRef) -> LoadedModel:
        cfg = self.settings.safety
        tags = ref.tags
        ema = self.settings.ema if self.settings.ema is not None else _tag_bool(tags, EMA_TAG)
        ema = True if ema is None else ema
        truncation = _tag_float(tags, TRUNCATION_TAG)
        limits = self.settings.limits
        if truncation is not None and not limits.min_truncation < truncation <= limits.max_truncation:
            raise ValueError(f"tag {TRUNCATION_TAG}={truncation} is outside the allowed truncation range")
        device = torch.device(self.settings.device)

        generator, manifest = load_generator(ref.checkpoint_uri, ema=ema, device=str(device))
        spec = ModelSpec.model_validate(manifest["model"])
        step_uri = str(manifest["uri"])
        is_image = spec.architecture != "mlp"
        if is_image:
            # NHWC activations: ~10 % faster transposed convolutions on CPU at batch sizes >= 8 (the same at 1),
            # and the output arrives in the HWC order images are encoded in. Same result whatever the batch.
            generator = generator.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        dtype = torch.bfloat16 if self.settings.precision == "bf16" else torch.float32
        generator = generator.to(dtype)

        skipped: dict[str, str] = {}
        nsfw = cfg.nsfw_enabled
        if nsfw and not is_image:
            nsfw, skipped["nsfw"] = False, "not_image"
        elif nsfw and spec.image_size < cfg.nsfw_min_image_size:
            nsfw, skipped["nsfw"] = False, "below_min_size"
            logger.info(
                "%s:%s: NSFW filter off (%d px images < nsfw_min_image_size %d px: the detector is blind there)",
                ref.name, ref.version, spec.image_size, cfg.nsfw_min_image_size,
            )
        index_uri: str | None = None
        index: MemorizationIndex | None = None
        if cfg.memorization_enabled:
            roots = [ref.checkpoint_uri] if ref.checkpoint_uri.rstrip("/") != step_uri.rstrip("/") else []
            index_uri = find_memorization_index(step_uri, tags, roots)
            if index_uri is not None:
                index = MemorizationIndex.from_bytes(storage.open_store(index_uri).get_bytes(index_uri))
                logger.info("%s:%s: memorization index %s (%d examples)", ref.name, ref.version, index_uri,
                            len(index.features))
            elif cfg.require_memorization_index and is_image:
                raise checkpoints.CheckpointError(
                    f"{ref.name}:{ref.version} has no memorization index (tag {MEMORIZATION_TAG} or a file beside "
                    f"{step_uri}) and safety.require_memorization_index is set: refusing to serve it"
                )
            else:
                skipped["memorization"] = "no_index"
                logger.warning("%s:%s: no memorization index beside %s: memorization filter off for this model",
                               ref.name, ref.version, step_uri)

        filters = build_filters(
            cfg.for_model(nsfw=nsfw), memorization_index=index, nsfw_detector=self.nsfw_detector
        )
        if self.extra_filters is not None:
            filters.extend(self.extra_filters())
        pipeline = SafetyPipeline(filters, cfg.mode, on_decision=self.on_decision, audit_sink=self.audit_sink)
        pipeline.warm_up()
        watermarker = Watermarker(
            self.watermark_key, cfg.watermark_payload_bits, model_id=f"{ref.name}:{ref.version}",
            use_dwt=cfg.watermark_dwt,
        )
        model = LoadedModel(
            name=ref.name,
            version=ref.version,
            checkpoint_uri=step_uri,
            spec=spec,
            generator=generator,
            pipeline=pipeline,
            watermarker=watermarker,
            ema=ema,
            default_truncation=truncation,
            memorization_index=index_uri,
            skipped_filters=skipped,
            step=int(manifest["step"]) if isinstance(manifest.get("step"), int) else None,
            device=device,
            dtype=dtype,
        )
        smoke_test(model)
        return model


def smoke_test(model: LoadedModel) -> None:
    """Two samples through the generator and every filter (not the audit log): a version that cannot generate or
    whose filters fail on its own outputs (e.g. a memorization index of other features) never serves."""
    from ganops.serving.safety import RequestContext, make_samples

    labels = model.labels(2, None)
    out = model.forward(model.latents(2, 0, None), labels)
    expected = (2, model.spec.channels, model.spec.image_size, model.spec.image_size) if model.is_image else (2, 2)
    if out.shape != expected:
        raise ValueError(f"the generator returned shape {out.shape}, expected {expected}")
    samples = make_samples(out, None if labels is None else [int(v) for v in labels])
    context = RequestContext("smoke-test", model.name, model.version)
    for flt in model.pipeline.filters:
        verdicts = flt.check(samples, context)
        if len(verdicts) != len(samples):
            raise ValueError(f"filter {flt.name} answered {len(verdicts)} verdicts for {len(samples)} samples")
    if model.is_image:
        model.watermarker.embed(samples[0].pixels)


# ----------------------------------------------------------------------------------------------------- store


class ModelStore:
    """The primary and canary deployments, kept current by a polling thread."""

    def __init__(
        self,
        resolver: Resolver,
        loader: Callable[[ModelRef], LoadedModel],
        metrics: ServingMetrics,
        *,
        model_name: str,
        poll_interval_s: float = 30.0,
        canary_percent: float = 0.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.resolver = resolver
        self.loader = loader
        self.metrics = metrics
        self.model_name = model_name
        # Born at 0 (METRICS.md): increase() cannot see the first failure of a series that starts at 1.
        metrics.load_failures.labels(model_name)
        metrics.store_errors.labels(model_name)
        self.poll_interval_s = poll_interval_s
        self.canary_percent = canary_percent
        self.on_change = on_change
        self.primary: Deployment | None = None
        self.canary: Deployment | None = None
        self.last_error: str | None = None
        self.last_poll_ok: float | None = None
        self.known_model_ids: set[str] = set()  # every version served by this process (watermark verification)
        self._failed: set[tuple[Any, ...]] = set()
        self._retired: list[tuple[ModelRef, LoadedModel]] = []  # the last replaced version: instant rollback
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._exported: set[tuple[str, str, str]] = set()

    # -------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="ganops-model-store", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.poll_interval_s)

    # ---------------------------------------------------------------------------------------------- polling

    def poll(self) -> None:
        """Resolve once and swap in whatever changed. Never raises."""
        try:
            primary, canary = self.resolver.resolve()
        except Exception as exc:
            self.metrics.store_errors.labels(self.model_name).inc()
            first = self.last_error is None
            self.last_error = f"{type(exc).__name__}: {exc}"
            (logger.warning if first else logger.debug)(
                "model store: cannot resolve %s (%s); serving what is loaded", self.model_name, self.last_error
            )
            return
        if self.last_error is not None:
            logger.info("model store: %s resolves again", self.model_name)
        self.last_error = None
        self.last_poll_ok = time.time()
        with self._lock:
            changed = self._apply("primary", primary)
            changed = self._apply("canary", canary) or changed
            if changed:
                self._export_info()
        if changed and self.on_change is not None:
            self.on_change()

    def _apply(self, role: Role, ref: ModelRef | None) -> bool:
        current = self.primary if role == "primary" else self.canary
        if ref is None:
            if current is None:
                return False
            if role == "canary":
                logger.info("canary alias of %s is gone: all traffic to the primary", self.model_name)
                self.canary = None
                return True
            logger.warning("the alias of %s is gone; keep serving version %s", self.model_name, current.ref.version)
            return False
        if current is not None and current.ref == ref:
            return False
        model = None
        candidates = [(d.ref, d.model) for d in (self.primary, self.canary) if d is not None] + self._retired
        for known, loaded in candidates:
            if known.load_key == ref.load_key:
                model = loaded
        if model is None:
            model = self._load(ref)
            if model is None:
                return False
        deployment = Deployment(role, ref, model)
        if current is not None and current.model is not model:
            self._retired = [(current.ref, current.model)]  # kept loaded until the next swap: rollback is instant
        if role == "primary":
            self.primary = deployment  # the swap: requests that already hold the old deployment finish on it
        else:
            self.canary = deployment
        self.known_model_ids.add(model.model_id)
        self.metrics.swaps.labels(self.model_name, ref.alias).inc()
        before = f" (was {current.ref.version})" if current is not None else ""
        logger.info("serving %s version %s as %s@%s%s", self.model_name, ref.version, role, ref.alias, before)
        return True

    def _load(self, ref: ModelRef) -> LoadedModel | None:
        started = time.perf_counter()
        try:
            model = self.loader(ref)
        except Exception as exc:
            self.metrics.load_failures.labels(self.model_name).inc()
            key = ref.load_key
            if key not in self._failed:
                self._failed.add(key)
                logger.error(
                    "cannot load %s version %s from %s (%s: %s); keep serving the loaded version",
                    ref.name, ref.version, ref.checkpoint_uri, type(exc).__name__, exc,
                    exc_info=logger.isEnabledFor(logging.DEBUG),
                )
            return None
        self._failed.discard(ref.load_key)
        logger.info("loaded %s version %s in %.2f s", ref.name, ref.version, time.perf_counter() - started)
        return model

    def _export_info(self) -> None:
        wanted = {(self.model_name, d.ref.version, d.ref.alias) for d in (self.primary, self.canary) if d is not None}
        for labels in self._exported - wanted:
            self.metrics.model_info.remove(*labels)
        for labels in wanted:
            self.metrics.model_info.labels(*labels).set(1)
        self._exported = wanted

    # ---------------------------------------------------------------------------------------------- routing

    @property
    def ready(self) -> bool:
        return self.primary is not None

    def deployments(self) -> list[Deployment]:
        primary, canary = self.primary, self.canary
        return [d for d in (primary, canary) if d is not None]

    def route(self, seed: int) -> Deployment:
        """The deployment for a seed: the canary for ``bucket(seed) < percent * 100``, else the primary."""
        primary, canary = self.primary, self.canary
        if primary is None:
            raise NotReady("no model is loaded yet")
        if canary is not None and self.canary_percent > 0 and canary_bucket(seed) < self.canary_percent * 100:
            return canary
        return primary

    def by_version(self, version: str) -> Deployment | None:
        for dep in self.deployments():
            if dep.ref.version == version:
                return dep
        return None
