"""The memorization index of a job's training set, written by the trainer for serving's memorization filter.

Serving blocks outputs whose nearest training example is too close; it needs an index of the training set (format
and features: `ganops.memorization`), and only the trainer has that set. So the trainer builds one, once per
dataset, and records where it lies in every checkpoint's ``manifest.json`` (``memorizationIndex``); promotion
copies that URI into the model version's ``ganops.memorization_index`` tag, which serving follows.

- Key: the dataset's content fingerprint (the one the evaluator's reference cache uses,
  `ganops.trainer.evaluator.dataset_fingerprint`) with its URI, sample shape, the index's feature and this
  module's format and cap. Stored as ``<checkpoint.uri>/_reference/<key>.memorization.safetensors`` (beside the
  evaluator's cached reference statistics): written when absent, reused by later attempts and other jobs on the
  same data. safetensors + JSON metadata only (no pickle).
- Content: the training examples as the trainer sees them (float32 in [-1, 1], NCHW images or ``(N, 2)`` points,
  before augmentation), at most `MAX_EXAMPLES` of them: a seeded random subset when the set is larger, so a big
  dataset costs at most ~20 MB of features (256 floats each, computed 1,024 examples at a time) and, once per
  dataset, ~12 s of one CPU core at the cap (measured: 20,000 RGB 64 px images; 0.3 s for the 1,797 digits).
  Copies of examples left out of the subset are not caught.
- The infinite built-in 2-D mixtures (``builtin:ring8``, ``builtin:grid25``) have no training set to memorise:
  no index (serving then reports the filter as skipped, ``no_index``).
- Built on rank 0 at the first checkpoint of an attempt (milliseconds to seconds, once). Any failure is logged
  (``memorization_index_failed``) and training goes on without one: it never fails a job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import numpy as np
import torch

from ganops import storage
from ganops.checkpoints import reference_uri
from ganops.logs import event
from ganops.memorization import MemorizationIndex, feature_name, pixel_features, point_features
from ganops.trainer.data import Dataset, TensorDataset
from ganops.trainer.evaluator import dataset_fingerprint

__all__ = ["INDEX_FORMAT", "MAX_EXAMPLES", "ensure_index", "example_indices", "index_key",
           "index_uri", "training_examples", "training_features"]

INDEX_FORMAT = 1  # bump when what the index holds or how it is chosen changes
MAX_EXAMPLES = 20_000  # cap on indexed examples (a seeded subset beyond it)
SUBSET_SEED = 0x1DE5
SUFFIX = ".memorization.safetensors"

log = logging.getLogger(__name__)


def _feature(dataset: Dataset) -> str:
    return feature_name(point_features if dataset.is_points else pixel_features)


def index_key(dataset: Dataset, max_examples: int = MAX_EXAMPLES) -> str:
    """What names the index: dataset content + everything that decides what the index holds."""
    identity = {
        "format": INDEX_FORMAT,
        "dataset": dataset.uri,
        "content": dataset_fingerprint(dataset),
        "shape": list(dataset.sample_shape),
        "feature": _feature(dataset),
        "maxExamples": max_examples,
        "seed": SUBSET_SEED,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def index_uri(reference_root: str, key: str) -> str:
    return reference_uri(reference_root, f"{key}{SUFFIX}")


def example_indices(dataset: Dataset, max_examples: int = MAX_EXAMPLES) -> torch.Tensor | None:
    """Which rows to index: all, or a seeded sorted subset above ``max_examples``; None for the mixtures."""
    if not isinstance(dataset, TensorDataset):
        return None
    if len(dataset) <= max_examples:
        return torch.arange(len(dataset))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(SUBSET_SEED))[:max_examples]
    return order.sort().values


def training_examples(dataset: Dataset, max_examples: int = MAX_EXAMPLES) -> np.ndarray | None:
    """The examples the index holds (float32, the trainer's form), materialised; None without a finite set."""
    idx = example_indices(dataset, max_examples)
    if idx is None:
        return None
    assert isinstance(dataset, TensorDataset)
    return np.ascontiguousarray(dataset.rows(idx).numpy(), dtype=np.float32)


def training_features(dataset: Dataset, max_examples: int = MAX_EXAMPLES, *, chunk: int = 1024
                      ) -> tuple[np.ndarray, str] | None:
    """The indexed examples' features (serving's `pixel_features` / `point_features`) and the feature's name,
    computed ``chunk`` rows at a time: only one chunk of examples is ever copied (20,000 RGB 64 px images would
    be ~1 GB at once, ~2 GB as the float64 the feature function works in)."""
    idx = example_indices(dataset, max_examples)
    if idx is None:
        return None
    assert isinstance(dataset, TensorDataset)
    fn = point_features if dataset.is_points else pixel_features
    parts = [fn(dataset.rows(idx[start:start + chunk]).numpy()) for start in range(0, len(idx), chunk)]
    return np.concatenate(parts).astype(np.float32, copy=False), feature_name(fn)


def ensure_index(dataset: Dataset, reference_root: str, *, max_examples: int = MAX_EXAMPLES) -> str | None:
    """The URI of the dataset's memorization index under ``reference_root``: reused when present, else built and
    stored. None for datasets without a finite training set. Raises on storage or build errors (callers log)."""
    if not isinstance(dataset, TensorDataset):
        return None
    uri = index_uri(reference_root, index_key(dataset, max_examples))
    store = storage.open_store(uri)
    if store.exists(uri):
        event(log, "memorization_index_reused", uri=uri)
        return uri
    started = time.perf_counter()
    computed = training_features(dataset, max_examples)
    assert computed is not None
    features, name = computed
    index = MemorizationIndex.from_features(features, name)
    index.metadata.update(dataset=dataset.uri, datasetSize=dataset.num_samples, indexFormat=INDEX_FORMAT)
    store.put_bytes(uri, index.to_bytes())
    event(log, "memorization_index_built", uri=uri, examples=len(features), threshold=round(index.threshold, 6),
          seconds=round(time.perf_counter() - started, 3))
    return uri
