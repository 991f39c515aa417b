"""Evaluation inside training: the job's metrics of the EMA generator, every ``evaluation.everySteps`` and at the end.

The `Trainer` builds one `Evaluator` from ``spec.evaluation`` at construction, on every rank under DDP: each rank
generates and extracts the features of a contiguous share of the samples on its device, rank 0 gathers them in
order and computes the metrics (so the other ranks no longer wait in a collective while rank 0 alone evaluates):

- The feature extractor is resolved and its weights loaded *then*, so a missing or wrong weights file fails the
  job at start with a `FeatureExtractorError` naming the spec field, not hours later at the first evaluation.
  ``featureExtractor: auto`` → ``default_extractor_name(dataset uri)`` (``raw`` for the 2-D sets, ``digits`` for
  ``builtin:digits``, ``inception`` otherwise). Inception weights come from ``spec.evaluation.inceptionWeightsUri``
  (or the platform default ``GANOPS_INCEPTION_WEIGHTS_URI``), read through `ganops.storage` (``s3://``, ``file://``).
  An empty ``metrics`` list turns evaluation off (no extractor is built).
- Real reference statistics are computed once per (dataset content, extractor, weights, sample count) and cached
  in the object store as ``<checkpoint.uri>/_reference/<digest>.safetensors`` (features and/or mean/covariance;
  never pickle) with a ``<digest>.json`` sidecar written last (its sha256 guards the tensors). Later evaluations,
  resumed attempts and other jobs on the same data reuse them. A cache that cannot be read or written is only
  logged: the statistics are then computed and kept in memory.
- Generated samples: ``numSamples`` from fixed latents (seed `FAKE_SEED`; the same latents at every evaluation, so
  numbers move only because the weights did), in batches, under ``torch.inference_mode``; conditional generators
  get balanced labels. Features are extracted batch by batch, so images never pile up in memory.
- Metrics: ``spec.evaluation.metrics``, in torch on the evaluation device (`ganops.trainer.evaluate.torch_metrics`:
  the formulas of the numpy reference implementations, TF32 off): FID from the cached real mean/covariance, KID
  from three kernel matrices computed once instead of 3 × 100 subset kernels (same subsets, same seed; the numpy
  version is `kid_precomputed`), precision/recall from batched distances. For the 2-D mixtures ``modes`` uses the
  dataset's own centres and sigma. Metrics undefined at this sample size carry the ``insufficient samples (…)``
  message in the report instead of a number. Features are extracted with TF32 off too, and the reference digest
  records it.

Promotion metric (`promotion_metric`, lower is better; it drives ``checkpoint.keepBest``):

- 2-D jobs evaluating ``modes``: ``missed modes + (1 − high-quality fraction)``, e.g. ``25 − modes + (1 − hq)`` on
  grid25: 0 is a perfect sampler, and one more mode always outweighs any change in sample quality;
- otherwise ``fid`` if numeric, else ``kid``, else ``(1 − precision) + (1 − recall)``; None when nothing numeric.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from numpy.typing import NDArray
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from ganops import storage
from ganops.api.spec import GanTrainingJobSpec
from ganops.logs import event
from ganops.models import sample_latent
from ganops.trainer.data import Dataset, MixtureDataset, TensorDataset
from ganops.trainer.data.datasets import pixels_to_float
from ganops.trainer.distributed import DistContext, any_rank
from ganops.trainer.evaluate import torch_metrics
from ganops.trainer.evaluate.errors import FeatureExtractorError, InsufficientSamples
from ganops.trainer.evaluate.features import (
    DIGITS_WEIGHTS_PATH,
    FeatureExtractor,
    build_extractor,
    default_extractor_name,
)
from ganops.trainer.evaluate.kid import KIDResult, kernel_inception_distance
from ganops.trainer.evaluate.modes import ModeSet
from ganops.trainer.evaluate.report import EvaluationReport, evaluate_features

__all__ = [
    "FAKE_SEED",
    "INCEPTION_WEIGHTS_ENV",
    "REAL_SEED",
    "REFERENCE_FORMAT",
    "Evaluator",
    "ReferenceStats",
    "build_job_extractor",
    "dataset_fingerprint",
    "kid_precomputed",
    "promotion_metric",
    "resolve_extractor_name",
]

REFERENCE_FORMAT = 1  # bump when what a reference holds or how it is computed changes
REAL_SEED = 0x5EA1  # which real samples form the reference set
FAKE_SEED = 0xFA6E  # the fixed latents of every evaluation
INCEPTION_WEIGHTS_ENV = "GANOPS_INCEPTION_WEIGHTS_URI"
_FINGERPRINT_BYTES = 64 * 1024 * 1024  # datasets larger than this are fingerprinted from a strided subset
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
PR_K = 3
EVALUATION_MATMUL_PRECISION = "ieee"  # TF32 off while extracting features and computing metrics, on any device
KID_PRECOMPUTE_MAX = 4096  # above this many samples per side the n×n kernels are too big: subset kernels instead

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- extractor


def resolve_extractor_name(spec: GanTrainingJobSpec) -> str:
    name = spec.evaluation.feature_extractor
    return default_extractor_name(spec.dataset.uri) if name == "auto" else name


def _store_bytes(uri: str) -> bytes:
    return storage.open_store(uri).get_bytes(uri)


def build_job_extractor(spec: GanTrainingJobSpec, dataset: Dataset, device: torch.device) -> FeatureExtractor:
    """The job's feature extractor with its weights loaded and checked; `FeatureExtractorError` names the field."""
    name = resolve_extractor_name(spec)
    field = "spec.evaluation.featureExtractor"
    if dataset.is_points and name != "raw":
        raise FeatureExtractorError(f"{field} is {name!r} but {spec.dataset.uri} holds 2-D points: use 'raw' or 'auto'")
    weights_uri: str | None = None
    if name == "inception":
        weights_uri = spec.evaluation.inception_weights_uri or os.environ.get(INCEPTION_WEIGHTS_ENV) or None
        if weights_uri is None:
            raise FeatureExtractorError(
                f"{field} resolves to 'inception' for dataset {spec.dataset.uri} but no weights are configured: set "
                f"spec.evaluation.inceptionWeightsUri (or {INCEPTION_WEIGHTS_ENV}) to pytorch-fid's "
                "pt_inception-2015-12-05-6726825d.pth (or the same state dict as .safetensors), choose another "
                "featureExtractor, or set spec.evaluation.metrics to [] to train without evaluation"
            )
    load_bytes = _store_bytes if weights_uri is not None and "://" in weights_uri else None
    try:
        return build_extractor(
            name, weights_uri=weights_uri, load_bytes=load_bytes, device=device,
            dim=math.prod(dataset.sample_shape),
        )
    except FeatureExtractorError as exc:
        source = "spec.evaluation.inceptionWeightsUri" if name == "inception" else field
        raise FeatureExtractorError(f"{source}: {exc}") from exc


# --------------------------------------------------------------------------- promotion metric


def promotion_metric(report: EvaluationReport, *, num_modes: int | None = None) -> float | None:
    """The number `checkpoint.keepBest` and promotion rank checkpoints by; lower is better (module docstring)."""
    m = report.numeric()
    if num_modes is not None and "modes" in m and "high_quality" in m:
        return float(num_modes - m["modes"] + (1.0 - m["high_quality"]))
    if "fid" in m:
        return m["fid"]
    if "kid" in m:
        return m["kid"]
    if "precision" in m and "recall" in m:
        return (1.0 - m["precision"]) + (1.0 - m["recall"])
    return None


# --------------------------------------------------------------------------- KID from precomputed kernels


def kid_precomputed(real: F32, fake: F32, *, num_subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
                    seed: int = 0) -> KIDResult:
    """`kernel_inception_distance` with the same subsets (same seed, same draw order) from three kernel matrices
    computed once: each subset's kernel sums are quadratic forms of 0/1 indicator vectors, batched over subsets.
    Kernels in float32 (as there), sums in float64. Falls back to the subset computation above
    `KID_PRECOMPUTE_MAX` samples per side."""
    n_real, n_fake = int(real.shape[0]), int(fake.shape[0])
    n = min(n_real, n_fake)
    if n < 2:
        raise InsufficientSamples(n, "2")
    if max(n_real, n_fake) > KID_PRECOMPUTE_MAX:
        return kernel_inception_distance(real, fake, num_subsets=num_subsets, subset_size=subset_size, seed=seed)
    return torch_metrics.kid(torch.from_numpy(np.ascontiguousarray(real, dtype=np.float32)),
                             torch.from_numpy(np.ascontiguousarray(fake, dtype=np.float32)),
                             num_subsets=num_subsets, subset_size=subset_size, seed=seed)


# --------------------------------------------------------------------------- reference statistics


@dataclass
class ReferenceStats:
    """Real-data statistics in feature space. ``features`` are kept when KID/precision-recall need them;
    ``mu``/``sigma`` when FID does (None with ``insufficient`` set when the real set is too small)."""

    digest: str
    num_samples: int
    dim: int
    features: F32 | None
    mu: F64 | None
    sigma: F64 | None
    insufficient: str | None = None
    source: str = "computed"  # "computed" | "cache"


def dataset_fingerprint(dataset: Dataset) -> str:
    """Content hash of a finite dataset (strided beyond `_FINGERPRINT_BYTES`); the mixtures are their constants.
    Also keys the trainer's memorization index (`ganops.trainer.memorization`)."""
    h = hashlib.sha256()
    if isinstance(dataset, MixtureDataset):
        h.update(dataset.mode_centers.contiguous().numpy().tobytes())
        h.update(repr(dataset.sigma).encode())
    elif isinstance(dataset, TensorDataset):
        shape = (len(dataset), *dataset.sample_shape)
        step = max(1, math.prod(shape) * 4 // _FINGERPRINT_BYTES)  # as float32 bytes, however the images are held
        h.update(repr((shape, step)).encode())
        if dataset.pixels is not None:  # the same float32 values as `data`, without materialising it
            strided = pixels_to_float(dataset.pixels.reshape(-1)[::step])
        else:
            strided = dataset.data.reshape(-1)[::step]
        h.update(strided.contiguous().numpy().tobytes())
    else:  # pragma: no cover - every loader returns one of the two
        h.update(dataset.uri.encode())
    return h.hexdigest()


class Evaluator:
    """Evaluates a generator against the job's dataset; see the module docstring.

    Under DDP every rank holds one and calls `evaluate` together: rank ``r`` generates (and, when the reference is
    computed, reads) a contiguous share of the samples, extracts their features on its device, and rank 0 gathers
    them in order and computes the metrics in torch on its device; `evaluate` returns the report on rank 0 and None
    elsewhere. A failure on any rank is agreed on before anything is gathered, so no rank waits in a collective for a
    rank that gave up.
    """

    def __init__(
        self,
        spec: GanTrainingJobSpec,
        dataset: Dataset,
        *,
        reference_root: str,
        device: torch.device | None = None,
        batch_size: int = 250,
        dist: DistContext | None = None,
    ) -> None:
        self.spec = spec
        self.dataset = dataset
        self.metrics: list[str] = list(dict.fromkeys(spec.evaluation.metrics))
        self.every_steps = spec.evaluation.every_steps
        self.num_samples = spec.evaluation.num_samples
        self.device = device or torch.device("cpu")
        self.dist = dist if dist is not None else DistContext(device=self.device)
        self.batch_size = batch_size
        self.reference_root = reference_root
        self.extractor_name = resolve_extractor_name(spec)
        self.extractor: FeatureExtractor | None = None
        if self.enabled:
            with torch.random.fork_rng(devices=[]):  # building a network must not move the training RNG
                self.extractor = build_job_extractor(spec, dataset, self.device)
        self.mode_set: ModeSet | None = None
        if isinstance(dataset, MixtureDataset):
            centers = dataset.mode_centers.to(torch.float64).numpy()
            self.mode_set = ModeSet(dataset.uri.removeprefix("builtin:"), centers, float(dataset.sigma))
        self.reference_computations = 0  # how often the real statistics were computed (not loaded) here
        self._reference: ReferenceStats | None = None
        self.seconds_total = 0.0  # wall time spent in evaluate(), for overhead accounting

    @property
    def enabled(self) -> bool:
        return bool(self.metrics)

    @property
    def num_modes(self) -> int | None:
        return None if self.mode_set is None else int(self.mode_set.centers.shape[0])

    def due(self, step: int, total_steps: int) -> bool:
        """Evaluate after this step? Every ``everySteps`` and at the last step of training."""
        return self.enabled and (step % self.every_steps == 0 or step == total_steps)

    # ----------------------------------------------------------------- features

    def _feature_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Features of one batch as float32 on the evaluation device, full fp32 matmuls and convolutions."""
        assert self.extractor is not None
        with torch_metrics.ieee_matmuls():
            tensor = getattr(self.extractor, "tensor", None)
            if tensor is not None:
                out: torch.Tensor = tensor(x)
            else:  # an extractor with the numpy protocol only
                out = torch.from_numpy(np.asarray(self.extractor(x), dtype=np.float32))
        return out.to(self.device, torch.float32)

    def _features(self, batches: Iterator[torch.Tensor]) -> torch.Tensor:
        assert self.extractor is not None
        parts = [self._feature_tensor(x) for x in batches]
        return torch.cat(parts) if parts else torch.zeros((0, self.extractor.dim), device=self.device)

    def _batch_range(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share of the ``ceil(n / batch_size)`` batches: [first, stop)."""
        batches = math.ceil(n / self.batch_size)
        per = math.ceil(batches / self.dist.world_size)
        first = min(batches, self.dist.rank * per)
        return first, min(batches, first + per)

    def _share_sizes(self, n: int) -> list[int]:
        sizes = []
        batches = math.ceil(n / self.batch_size)
        per = math.ceil(batches / self.dist.world_size)
        for r in range(self.dist.world_size):
            first, stop = min(batches, r * per), min(batches, (r + 1) * per)
            sizes.append(max(0, min(n, stop * self.batch_size) - first * self.batch_size))
        return sizes

    def _generated(self, g: nn.Module) -> Iterator[torch.Tensor]:
        """This rank's share of the ``numSamples`` samples of ``g`` from the fixed latents, batch by batch (eval
        mode, inference mode). Every rank draws the latents of the batches before its own (on the CPU, cheap) so
        the samples are those of a single-process evaluation."""
        model = self.spec.model
        gen = torch.Generator(device="cpu").manual_seed(FAKE_SEED)
        first, stop = self._batch_range(self.num_samples)
        was_training = g.training
        g.eval()
        try:
            with torch.inference_mode():
                for b in range(stop):
                    begin = b * self.batch_size
                    n = min(self.batch_size, self.num_samples - begin)
                    z = sample_latent(n, model.latent_dim, gen)
                    if b < first:
                        continue
                    y = None
                    if model.num_classes:
                        y = (torch.arange(begin, begin + n) % model.num_classes).to(self.device)
                    out: torch.Tensor = g(z.to(self.device), y)
                    yield out.float()
        finally:
            g.train(was_training)

    def _real(self) -> Iterator[torch.Tensor]:
        """This rank's share of the reference's real samples (those of ``dataset.sample(n, REAL_SEED)``)."""
        n = self._num_real()
        first, stop = self._batch_range(n)
        gen = torch.Generator(device="cpu").manual_seed(REAL_SEED)
        if isinstance(self.dataset, TensorDataset):
            idx = torch.randperm(len(self.dataset), generator=gen)[:n]  # what `sample` draws (n <= len)
            for b in range(first, stop):
                yield self.dataset.rows(idx[b * self.batch_size:(b + 1) * self.batch_size])
        else:
            real = self.dataset.sample(n, gen).x
            yield from torch.split(real[first * self.batch_size:stop * self.batch_size], self.batch_size)

    def _gather(self, local: torch.Tensor, n: int) -> torch.Tensor | None:
        """Every rank's share, in rank order, on rank 0 (None on the others); the share itself in one process."""
        if not self.dist.enabled:
            return local
        sizes = self._share_sizes(n)
        width = local.shape[1]
        padded = torch.zeros((max(sizes), width), dtype=local.dtype, device=local.device)
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in sizes] if self.dist.is_main else None
        torch_dist.gather(padded, parts, dst=0)
        if parts is None:
            return None
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    def _agree(self, failed: BaseException | None) -> None:
        """Every rank learns whether any rank failed its local share; all raise together if one did."""
        if any_rank(self.dist, failed is not None):
            if failed is not None:
                raise failed
            raise RuntimeError("evaluation failed on another rank")

    # ----------------------------------------------------------------- reference

    @property
    def needs_features(self) -> bool:
        return any(m in ("kid", "precision_recall") for m in self.metrics)

    @property
    def needs_stats(self) -> bool:
        return "fid" in self.metrics

    def reference_digest(self) -> str:
        extractor = self.extractor
        identity = {
            "format": REFERENCE_FORMAT,
            "dataset": self.dataset.uri,
            "content": dataset_fingerprint(self.dataset),
            "shape": list(self.dataset.sample_shape),
            "extractor": self.extractor_name,
            "weights": self._weights_identity(),
            "dim": None if extractor is None else extractor.dim,
            "numSamples": self._num_real(),
            "seed": REAL_SEED,
            "matmul": EVALUATION_MATMUL_PRECISION,  # features are extracted with TF32 off (`ieee_matmuls`)
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]

    def _weights_identity(self) -> str | None:
        """The extractor's weights: the bundled digits file by content (its path differs between installs),
        configured weights by URI."""
        uri = getattr(self.extractor, "weights_uri", None)
        if uri is not None and Path(uri) == DIGITS_WEIGHTS_PATH:
            return "bundled:" + hashlib.sha256(DIGITS_WEIGHTS_PATH.read_bytes()).hexdigest()[:16]
        return None if uri is None else str(uri)

    def _num_real(self) -> int:
        n = self.dataset.num_samples
        return self.num_samples if n is None else min(self.num_samples, n)  # distinct real samples only

    def _reference_uris(self, digest: str) -> tuple[str, str]:
        base = storage.join(self.reference_root, "_reference")
        return storage.join(base, f"{digest}.json"), storage.join(base, f"{digest}.safetensors")

    def reference(self) -> ReferenceStats | None:
        """Real statistics: from memory, else the object store's cache, else computed (and cached). Collective
        under DDP (rank 0 decides; every rank extracts its share when computing); None on ranks other than 0."""
        ref: ReferenceStats | None = None
        digest = self.reference_digest()
        if self.dist.is_main:
            if self._reference is not None and self._covers(self._reference):
                ref = self._reference
            else:
                ref = self._load_reference(digest)
                if ref is not None and not self._covers(ref):
                    ref = None
        if not any_rank(self.dist, self.dist.is_main and ref is None):  # rank 0 has what it needs
            self._reference = ref
            return ref
        ref = self._compute_reference(digest)
        if ref is not None:
            self._store_reference(ref)
        self._reference = ref
        return ref

    def _covers(self, ref: ReferenceStats) -> bool:
        return (ref.features is not None or not self.needs_features) and (
            ref.mu is not None or ref.insufficient is not None or not self.needs_stats
        )

    def _compute_reference(self, digest: str) -> ReferenceStats | None:
        started = time.perf_counter()
        n = self._num_real()
        local: torch.Tensor | None = None
        failed: BaseException | None = None
        try:
            local = self._features(self._real())
        except Exception as exc:
            failed = exc
        self._agree(failed)
        assert local is not None
        feats = self._gather(local, n)
        if feats is None:
            return None
        mu = sigma = None
        insufficient = None
        try:
            mu_t, sigma_t = torch_metrics.statistics(feats)
            mu, sigma = mu_t.cpu().numpy(), sigma_t.cpu().numpy()
        except InsufficientSamples as exc:
            insufficient = str(exc)
        self.reference_computations += 1
        event(log, "evaluation_reference_computed", digest=digest, samples=n, dim=int(feats.shape[1]),
              seconds=round(time.perf_counter() - started, 3), ranks=self.dist.world_size)
        features = feats.cpu().numpy().astype(np.float32, copy=False)
        return ReferenceStats(digest, n, int(feats.shape[1]), features, mu, sigma, insufficient, "computed")

    def _store_reference(self, ref: ReferenceStats) -> None:
        meta_uri, data_uri = self._reference_uris(ref.digest)
        tensors: dict[str, torch.Tensor] = {}
        if ref.features is not None:
            tensors["features"] = torch.from_numpy(np.ascontiguousarray(ref.features))
        if ref.mu is not None and ref.sigma is not None:
            tensors["mu"] = torch.from_numpy(np.ascontiguousarray(ref.mu))
            tensors["sigma"] = torch.from_numpy(np.ascontiguousarray(ref.sigma))
        data = save_safetensors(tensors, metadata={"digest": ref.digest}) if tensors else b""
        meta = {
            "format": REFERENCE_FORMAT,
            "digest": ref.digest,
            "dataset": self.dataset.uri,
            "extractor": self.extractor_name,
            "numSamples": ref.num_samples,
            "dim": ref.dim,
            "insufficient": ref.insufficient,
            "tensors": sorted(tensors),
            "sha256": hashlib.sha256(data).hexdigest(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        try:
            store = storage.open_store(meta_uri)
            store.put_bytes(data_uri, data)
            store.put_json(meta_uri, meta)  # last: its presence means the tensors are complete
        except (storage.StorageError, OSError) as exc:
            event(log, "evaluation_reference_not_cached", uri=meta_uri, error=str(exc))

    def _load_reference(self, digest: str) -> ReferenceStats | None:
        meta_uri, data_uri = self._reference_uris(digest)
        try:
            store = storage.open_store(meta_uri)
            meta = store.get_json(meta_uri)
            data = store.get_bytes(data_uri)
        except storage.ObjectNotFound:
            return None
        except (storage.StorageError, OSError, ValueError) as exc:
            event(log, "evaluation_reference_unreadable", uri=meta_uri, error=str(exc))
            return None
        if not isinstance(meta, dict) or meta.get("format") != REFERENCE_FORMAT or meta.get("digest") != digest:
            return None
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            event(log, "evaluation_reference_unreadable", uri=data_uri, error="sha256 does not match its .json")
            return None
        try:
            tensors = load_safetensors(data) if data else {}
        except Exception as exc:  # a file that hashes right but will not parse is still unusable
            event(log, "evaluation_reference_unreadable", uri=data_uri, error=str(exc))
            return None
        features = tensors["features"].numpy() if "features" in tensors else None
        mu = tensors["mu"].numpy() if "mu" in tensors else None
        sigma = tensors["sigma"].numpy() if "sigma" in tensors else None
        event(log, "evaluation_reference_loaded", uri=meta_uri)
        return ReferenceStats(digest, int(meta["numSamples"]), int(meta["dim"]), features, mu, sigma,
                              meta.get("insufficient"), "cache")

    # ----------------------------------------------------------------- evaluation

    def evaluate(self, g: nn.Module, step: int) -> EvaluationReport | None:
        """Metrics of generator ``g`` (pass the EMA model) at ``step``: the report on rank 0, None on the other ranks
        (every rank must call it under DDP). Raises on errors, on every rank: the caller decides."""
        if not self.enabled:
            raise RuntimeError("evaluation is disabled (spec.evaluation.metrics is empty)")
        started = time.perf_counter()
        ref = self.reference()
        t_ref = time.perf_counter()
        local: torch.Tensor | None = None
        failed: BaseException | None = None
        try:
            local = self._features(self._generated(g))
        except Exception as exc:
            failed = exc
        self._agree(failed)
        assert local is not None
        fake = self._gather(local, self.num_samples)
        t_fake = time.perf_counter()
        if fake is None or ref is None:
            self.seconds_total += t_fake - started
            return None
        report = EvaluationReport(extractor=self.extractor_name, num_real=ref.num_samples,
                                  num_fake=int(fake.shape[0]), step=step)
        real = (torch.from_numpy(ref.features).to(self.device) if ref.features is not None
                else torch.zeros((0, ref.dim), device=self.device))
        if "modes" in self.metrics:
            modes = evaluate_features(np.zeros((0, ref.dim), np.float32), fake.cpu().numpy(), ["modes"],
                                      extractor=self.extractor_name, step=step, mode_set=self.mode_set)
            report.metrics.update(modes.metrics)
            report.details.update(modes.details)
        if "precision_recall" in self.metrics:
            try:
                pr = torch_metrics.precision_recall(real, fake, k=PR_K)
                report.set("precision", pr.precision)
                report.set("recall", pr.recall)
                report.details["precision_recall"] = {"k": PR_K}
            except InsufficientSamples as exc:
                report.set("precision", str(exc))
                report.set("recall", str(exc))
        if "kid" in self.metrics:
            try:
                kid = torch_metrics.kid(real, fake, num_subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE)
                report.set("kid", kid.mean)
                report.set("kid_std", kid.std)
                report.details["kid"] = {"num_subsets": KID_SUBSETS, "subset_size": KID_SUBSET_SIZE, "seed": 0}
            except InsufficientSamples as exc:
                report.set("kid", str(exc))
                report.set("kid_std", str(exc))
        if "fid" in self.metrics:
            try:
                if ref.mu is None or ref.sigma is None:
                    raise InsufficientSamples(ref.num_samples, f"d+1={ref.dim + 1}")
                mu, sigma = torch_metrics.statistics(fake)
                report.set("fid", torch_metrics.frechet_distance(
                    torch.from_numpy(ref.mu).to(self.device), torch.from_numpy(ref.sigma).to(self.device), mu, sigma))
            except InsufficientSamples as exc:
                report.set("fid", str(exc))
        done = time.perf_counter()
        report.details["reference"] = {"digest": ref.digest, "source": ref.source}
        report.details["ranks"] = self.dist.world_size
        report.details["seconds"] = {
            "reference": round(t_ref - started, 4),
            "generate_and_features": round(t_fake - t_ref, 4),
            "metrics": round(done - t_fake, 4),
            "total": round(done - started, 4),
        }
        self.seconds_total += done - started
        return report
