"""Promotion: judge a job's best checkpoint against `spec.promotion.gates`, register it, move the alias.

Two parts, usable apart:

* :func:`evaluate_gates` is pure (no I/O, no torch): the operator and tests call it on any metrics mapping.
  Each failure names the gate, the measured value, the threshold and the margin, e.g.
  ``"fid 72.4 > maxFID 60 (by 12.4)"``; a gate whose metric is missing fails with
  ``"metric fid was not measured (gate maxFID 60)"``. No gates set means nothing to fail.

* :func:`promote` picks the job's best checkpoint (lowest ``metric`` in its manifest, `ganops.checkpoints.choose`;
  the latest when none has one), reads its metrics from the manifest,
  renders a fixed-seed sample grid from its EMA generator (which also proves the weights load and match their
  checksums), registers an MLflow model version pointing at the checkpoint's step URI, and moves
  ``spec.promotion.alias`` to it only when the gates pass. Rejected checkpoints are registered too (tagged
  ``ganops.gates=rejected`` with the reasons) so the registry keeps the record; serving follows aliases only.
  Promoting the same checkpoint again with the same verdict reuses its version (idempotent for reconcilers).

Model version tags (names in `ganops.contracts`; what serving reads; ``ModelVersionInfo.checkpoint_uri`` is the
weights' location):

=================================  ================================================================================
``ganops.checkpoint_uri``          the step folder (set by :func:`ganops.tracking.register_version`)
``ganops.job`` ``ganops.step``     ``<namespace>/<name>`` and the checkpoint's step
``ganops.metric.<name>``           each numeric metric of the manifest (``fid``, ``recall``, …)
``ganops.generation.*``            ``latentDim``, ``numClasses`` (when conditional), ``imageSize``, ``channels``,
                                   ``architecture``, ``ema`` (``true``: serve the EMA weights), ``truncation``
                                   (serving's default threshold; empty: none), ``sampleSeed``
``ganops.samples.sha256``          sha256 of the promotion grid's float32 samples (``n`` = ``ganops.samples.n``,
                                   seed ``ganops.generation.sampleSeed``): a loader can prove it has the same
                                   weights by regenerating them
``ganops.gates``                   ``passed`` or ``rejected``; ``ganops.gates.failures`` the reasons
``ganops.specHash`` ``ganops.manifestSha256``  lineage of the weights
``ganops.memorization_index``     URI of the training set's memorization index, from the manifest's
                                  ``memorizationIndex`` (written by the trainer); set only when that object
                                  exists, so serving's filter is on for this version
=================================  ================================================================================

torch is imported only to render samples (``render_samples=True``, the default), so the operator image can call
:func:`promote` with ``render_samples=False``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ganops import checkpoints, contracts, images, storage, tracking
from ganops.api.spec import GanTrainingJob, GanTrainingJobSpec, GatesSpec
from ganops.checkpoints import CheckpointChoice, finite_number, manifest_metrics, memorization_index_of

log = logging.getLogger(__name__)

SAMPLE_SEED = 0
IMAGE_SAMPLES = 64
POINT_SAMPLES = 2000
DEFAULT_TRUNCATION: float | None = None  # serving's threshold truncation (|z| > t redrawn); None: none


class PromotionError(RuntimeError):
    """Nothing to promote: no checkpoint under the root, or one that cannot be read or loaded."""


class OwnershipError(PromotionError):
    """The registered model holds versions another namespace's jobs registered (their ``ganops.job`` lineage):
    promoting into it would let one tenant move what another serves."""

    def __init__(self, model_name: str, owners: list[str], namespace: str) -> None:
        self.model_name = model_name
        self.owners = owners
        self.namespace = namespace
        super().__init__(f"{model_name} holds versions registered by namespace {', '.join(owners)}, not {namespace}")


# ------------------------------------------------------------------------------------------------ gates


@dataclass(frozen=True)
class Gate:
    field: str  # GatesSpec attribute
    wire: str  # name in the job file
    metric: str  # key in the metrics mapping
    kind: str  # "max": value must be <= threshold; "min": value must be >= threshold


GATES: tuple[Gate, ...] = (
    Gate("max_fid", "maxFID", "fid", "max"),
    Gate("min_recall", "minRecall", "recall", "min"),
    Gate("min_modes", "minModes", "modes", "min"),
    Gate("min_high_quality", "minHighQuality", "high_quality", "min"),
    Gate("max_safety_block_rate", "maxSafetyBlockRate", "safety_block_rate", "max"),
)


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    failures: list[str] = field(default_factory=list)
    passes: list[str] = field(default_factory=list)  # e.g. "fid 41.2 <= maxFID 60"

    def describe(self) -> str:
        if self.failures:
            return "rejected: " + "; ".join(self.failures)
        if not self.passes:
            return "passed (no gates set)"
        return "passed: " + "; ".join(self.passes)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def evaluate_gates(gates: GatesSpec, metrics: Mapping[str, Any]) -> GateDecision:
    """Check ``metrics`` (e.g. ``{"fid": 41.2, "recall": 0.6}``) against every gate that is set.

    A metric that is absent, not a number or not finite counts as not measured, which fails its gate.
    """
    failures: list[str] = []
    passes: list[str] = []
    for gate in GATES:
        threshold = getattr(gates, gate.field)
        if threshold is None:
            continue
        limit = float(threshold)
        value = finite_number(metrics.get(gate.metric))
        if value is None:
            failures.append(f"metric {gate.metric} was not measured (gate {gate.wire} {_fmt(limit)})")
            continue
        if gate.kind == "max":
            if value > limit:
                failures.append(f"{gate.metric} {_fmt(value)} > {gate.wire} {_fmt(limit)} (by {_fmt(value - limit)})")
            else:
                passes.append(f"{gate.metric} {_fmt(value)} <= {gate.wire} {_fmt(limit)}")
        elif value < limit:
            failures.append(f"{gate.metric} {_fmt(value)} < {gate.wire} {_fmt(limit)} (by {_fmt(limit - value)})")
        else:
            passes.append(f"{gate.metric} {_fmt(value)} >= {gate.wire} {_fmt(limit)}")
    return GateDecision(passed=not failures, failures=failures, passes=passes)


def strictest(gates: GatesSpec, floor: GatesSpec | None) -> GatesSpec:
    """``gates`` raised to ``floor`` (the platform's minimum gates): per gate the stricter threshold (the lower
    ``max*``, the higher ``min*``); a gate only one of them sets is kept. A job can add or tighten gates, never
    loosen the floor."""
    if floor is None:
        return gates
    values: dict[str, float | int | None] = {}
    for gate in GATES:
        mine, theirs = getattr(gates, gate.field), getattr(floor, gate.field)
        if theirs is None or mine is None:
            values[gate.field] = theirs if mine is None else mine
        else:
            values[gate.field] = min(mine, theirs) if gate.kind == "max" else max(mine, theirs)
    return GatesSpec.model_validate(values)


def owners_of(versions: list[tracking.ModelVersionInfo]) -> set[str]:
    """The namespaces whose jobs registered ``versions`` (from their ``ganops.job`` tag, ``<namespace>/<job>``);
    a version without that tag counts as ``?`` (registered by hand, not by a job)."""
    return {str(v.tags.get(contracts.TAG_JOB) or "?/").partition("/")[0] or "?" for v in versions}


# ------------------------------------------------------------------------------------------------ checkpoints


def choose_checkpoint(uri: str) -> CheckpointChoice:
    """The checkpoint to promote under a job's root (`ganops.checkpoints.choose`), or ``uri`` itself when it is a
    step folder; PromotionError when there is none or the store cannot be read."""
    try:
        return checkpoints.choose(uri)
    except checkpoints.CheckpointError as exc:
        raise PromotionError(str(exc)) from exc
    except storage.StorageError as exc:
        raise PromotionError(f"cannot read checkpoints under {uri.rstrip('/')}: {exc}") from exc


# ------------------------------------------------------------------------------------------------ samples


@dataclass(frozen=True)
class GenerationSettings:
    architecture: str
    latent_dim: int
    num_classes: int | None
    image_size: int
    channels: int
    ema: bool = True
    truncation: float | None = DEFAULT_TRUNCATION
    sample_seed: int = SAMPLE_SEED

    @classmethod
    def of(cls, manifest: Mapping[str, Any], spec: GanTrainingJobSpec) -> GenerationSettings:
        model = manifest.get("model") if isinstance(manifest.get("model"), Mapping) else None
        if model is None:
            model = spec.model.model_dump(mode="json", by_alias=True)
        num_classes = model.get("numClasses")
        return cls(
            architecture=str(model.get("architecture", spec.model.architecture)),
            latent_dim=int(model.get("latentDim", spec.model.latent_dim)),
            num_classes=int(num_classes) if num_classes is not None else None,
            image_size=int(model.get("imageSize", spec.model.image_size)),
            channels=int(model.get("channels", spec.model.channels)),
        )

    @property
    def is_2d(self) -> bool:
        return self.architecture == "mlp"

    @property
    def sample_count(self) -> int:
        return POINT_SAMPLES if self.is_2d else IMAGE_SAMPLES

    def tags(self) -> dict[str, str]:
        values: dict[str, Any] = {
            "architecture": self.architecture,
            "latentDim": self.latent_dim,
            "numClasses": self.num_classes,
            "imageSize": self.image_size,
            "channels": self.channels,
            "ema": "true" if self.ema else "false",
            "sampleSeed": self.sample_seed,
        }
        tags = {contracts.TAG_GENERATION_PREFIX + k: str(v) for k, v in values.items() if v is not None}
        # always present, so a reader knows it was decided: empty means no truncation (serving reads it so)
        tags[contracts.TAG_GENERATION_TRUNCATION] = "" if self.truncation is None else str(self.truncation)
        return tags


def render_samples(step_uri: str, settings: GenerationSettings) -> np.ndarray:
    """The promotion grid's raw samples: the EMA generator of ``step_uri`` on fixed latents (float32, CPU)."""
    from ganops.generator import checkpoint_samples  # torch: only here (the operator promotes with render=False)

    try:
        samples, _ = checkpoint_samples(step_uri, settings.sample_count, settings.sample_seed, ema=settings.ema)
    except (checkpoints.CheckpointError, storage.StorageError, KeyError, ValueError) as exc:
        raise PromotionError(f"cannot load the generator of {step_uri}: {exc}") from exc
    return samples


def samples_png(samples: np.ndarray) -> bytes:
    return images.encode_png(images.scatter(samples) if samples.ndim == 2 else images.grid(samples))


def samples_sha256(samples: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(samples, dtype="<f4").tobytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ promote


@dataclass
class PromotionResult:
    model_name: str
    version: str
    alias: str
    promoted: bool  # the alias points at this version now
    decision: GateDecision
    step: int
    checkpoint_uri: str
    metrics: dict[str, float]
    choice_reason: str
    run_id: str | None = None
    previous_version: str | None = None  # where the alias pointed before (None: nowhere)
    reused_version: bool = False
    samples: np.ndarray | None = None
    samples_png: bytes | None = None

    def lines(self) -> list[str]:
        """A human summary, one fact per line."""
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(self.metrics.items())) or "none recorded"
        out = [
            f"checkpoint: step {self.step} ({self.choice_reason}) {self.checkpoint_uri}",
            f"metrics:    {shown}",
            f"gates:      {self.decision.describe()}",
        ]
        registered = f"{self.model_name} version {self.version}" + (" (already registered)" if self.reused_version
                                                                     else "")
        if self.promoted:
            moved = (f"moved from version {self.previous_version}" if self.previous_version not in (None, self.version)
                     else "already there" if self.previous_version == self.version else "set")
            out.append(f"promoted:   {registered} is now {self.model_name}@{self.alias} ({moved})")
        else:
            kept = f"version {self.previous_version}" if self.previous_version else "nothing"
            out.append(f"rejected:   {registered} registered; {self.model_name}@{self.alias} still points at {kept}")
        return out


def _run_on_server(tracking_uri: str, run_id: str | None) -> str | None:
    """``run_id`` if this tracking server has that run (a manifest may name a run of another server)."""
    if not run_id:
        return None
    try:
        tracking.client(tracking_uri).get_run(run_id)
    except Exception as exc:
        if tracking.is_transient(exc):
            raise tracking.TrackingUnavailable(
                f"MLflow at {tracking.redact(tracking_uri)} is unavailable ({exc.__class__.__name__}); "
                "could not look up the job's run"
            ) from None
        log.info("run %s is not on %s; registering without it", run_id, tracking.redact(tracking_uri))
        return None
    return run_id


def _existing_version(versions: list[tracking.ModelVersionInfo], checkpoint_uri: str,
                      verdict: str) -> tracking.ModelVersionInfo | None:
    for info in versions:
        if info.checkpoint_uri == checkpoint_uri and info.tags.get(contracts.TAG_GATES) == verdict:
            return info
    return None


def _ensure_registry_experiment(tracking_uri: str, artifact_root: str) -> None:
    """Create the pointer experiment with its artifacts under ``artifact_root`` (MLflow's default for a local
    store is ``./mlruns`` relative to wherever the command runs)."""
    client = tracking.client(tracking_uri)
    try:
        if client.get_experiment_by_name(contracts.REGISTRY_EXPERIMENT) is None:
            client.create_experiment(contracts.REGISTRY_EXPERIMENT,
                                     artifact_location=f"{artifact_root.rstrip('/')}/{contracts.REGISTRY_EXPERIMENT}")
    except Exception as exc:  # register_version reports MLflow problems properly
        log.debug("registry experiment not prepared: %s", exc)


def _log_grid(tracking_uri: str, run_id: str, png: bytes, path: str) -> None:
    """Best effort: the promotion grid next to the run's training grids."""
    import tempfile
    from pathlib import Path

    directory, name = path.rsplit("/", 1)
    try:
        with tempfile.TemporaryDirectory(prefix="ganops-promotion-") as tmp:
            local = Path(tmp) / name
            local.write_bytes(png)
            tracking.client(tracking_uri).log_artifact(run_id, str(local), artifact_path=directory)
    except Exception as exc:
        log.warning("promotion grid not logged to run %s: %s", run_id, tracking.redact(str(exc)))


def promote(
    job_or_spec: GanTrainingJob | GanTrainingJobSpec,
    checkpoint_root_uri: str,
    tracking_uri: str,
    *,
    namespace: str | None = None,
    job: str | None = None,
    render: bool = True,
    artifact_root: str | None = None,
    model_name: str | None = None,
    owner_namespace: str | None = None,
) -> PromotionResult:
    """Judge and register the best checkpoint under ``checkpoint_root_uri`` (a job's root, or one step folder);
    move ``spec.promotion.alias`` to it when the gates pass.

    ``render=False`` skips the sample grid (and torch). ``artifact_root`` (a local store's artifact folder) is where
    the registry's pointer experiment keeps its artifacts when the job's run is not on this tracking server.
    ``model_name`` overrides the registered name (the operator passes ``<namespace>.<model>``). With
    ``owner_namespace``, a model holding versions that another namespace's jobs registered is refused
    (:class:`OwnershipError`) before anything is registered or moved.

    Raises :class:`PromotionError` (no or unreadable checkpoint), :class:`ganops.tracking.TrackingUnavailable`
    (MLflow did not answer) or :class:`ganops.tracking.TrackingError` (MLflow refused).
    """
    if isinstance(job_or_spec, GanTrainingJob):
        spec = job_or_spec.spec
        job = job or job_or_spec.metadata.name
        namespace = namespace or job_or_spec.metadata.namespace
    else:
        spec = job_or_spec
    if not job:
        raise ValueError("promote() needs the job's name (job=...) when given a bare spec")
    namespace = namespace or "default"
    model_name = model_name or spec.promotion.model_name or job
    alias = spec.promotion.alias

    choice = choose_checkpoint(checkpoint_root_uri)
    metrics = manifest_metrics(choice.manifest)
    decision = evaluate_gates(spec.promotion.gates, metrics)
    verdict = "passed" if decision.passed else "rejected"
    settings = GenerationSettings.of(choice.manifest, spec)

    samples = render_samples(choice.uri, settings) if render else None
    png = samples_png(samples) if samples is not None else None

    run_id = _run_on_server(tracking_uri, choice.manifest.get("mlflowRunId"))
    tags: dict[str, str] = {
        contracts.TAG_JOB: tracking.job_key(namespace, job),
        contracts.TAG_STEP: str(choice.step),
        contracts.TAG_GATES: verdict,
        contracts.TAG_MANIFEST_SHA256: choice.manifest_sha256,
        **{contracts.TAG_METRIC_PREFIX + k: repr(v) for k, v in sorted(metrics.items())},
        **settings.tags(),
    }
    if decision.failures:
        tags[contracts.TAG_GATE_FAILURES] = "; ".join(decision.failures)[:4000]
    if choice.manifest.get("specHash"):
        tags[contracts.TAG_SPEC_HASH] = str(choice.manifest["specHash"])
    if (index_uri := memorization_index_of(choice.manifest, choice.uri)) is not None:
        tags[contracts.TAG_MEMORIZATION_INDEX] = index_uri
    if samples is not None:
        tags[contracts.TAG_SAMPLES_SHA256] = samples_sha256(samples)
        tags[contracts.TAG_SAMPLES_N] = str(settings.sample_count)

    versions = tracking.list_versions(tracking_uri, model_name)
    if owner_namespace is not None:
        foreign = sorted(owners_of(versions) - {owner_namespace})
        if foreign:
            raise OwnershipError(model_name, foreign, owner_namespace)
    existing = _existing_version(versions, choice.uri, verdict)
    if existing is not None:
        version, reused = existing.version, True
    else:
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(metrics.items())) or "no metrics"
        if run_id is None and artifact_root:
            _ensure_registry_experiment(tracking_uri, artifact_root)
        version = tracking.register_version(
            tracking_uri, model_name, choice.uri, tags=tags, run_id=run_id,
            description=f"{tracking.job_key(namespace, job)} step {choice.step}: {shown}; gates {verdict}",
        )
        reused = False
        if run_id and png is not None:
            _log_grid(tracking_uri, run_id, png, f"promotion/{model_name}-v{version}.png")

    current = tracking.get_alias(tracking_uri, model_name, alias)
    previous = current.version if current is not None else None
    if decision.passed and previous != version:
        tracking.set_alias(tracking_uri, model_name, alias, version)
    result = PromotionResult(
        model_name=model_name, version=version, alias=alias, promoted=decision.passed, decision=decision,
        step=choice.step, checkpoint_uri=choice.uri, metrics=metrics, choice_reason=choice.reason, run_id=run_id,
        previous_version=previous, reused_version=reused, samples=samples, samples_png=png,
    )
    log.info("promotion of %s step %d: %s", tracking.job_key(namespace, job), choice.step, decision.describe())
    return result


__all__ = [
    "GATES",
    "CheckpointChoice",
    "GateDecision",
    "GenerationSettings",
    "OwnershipError",
    "PromotionError",
    "PromotionResult",
    "choose_checkpoint",
    "evaluate_gates",
    "owners_of",
    "promote",
    "render_samples",
    "samples_png",
    "samples_sha256",
    "strictest",
]
