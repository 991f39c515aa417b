"""The memorization index of a job's training set, written by the trainer for serving's memorization filter.

Serving blocks outputs whose nearest training example is too close (`ganops.serving.safety.memorization`); it
needs an index of the training set, and only the trainer has that set. So the trainer builds one, once per
dataset, and records where it lies in every checkpoint's ``manifest.json`` (``memorizationIndex``); promotion
copies that URI into the model version's ``ganops.memorization_index`` tag, which serving follows.

- Key: the dataset's content fingerprint (the one the evaluator's reference cache uses,
  `ganops.trainer.evaluator.dataset_fingerprint`) with its URI, sample shape, the index's feature and this
  module's format and cap. Stored as ``<checkpoint.uri>/_reference/<key>.memorization.safetensors`` (beside the
  evaluator's cached reference statistics): written when absent, reused by later attempts and other jobs on the
  same data. safetensors + JSON metadata only (no pickle).
- Content: the training examples as the trainer sees them (float32 in [-1, 1], NCHW images or ``(N, 2)`` points,
  before augmentation), at most `MAX_EXAMPLES` of them: a seeded random subset when the set is larger, so a big
  dataset costs at most ~20 MB of features (256 floats each) and a few seconds of CPU. Copies of examples left
  out of the subset are not caught.
- The infinite built-in 2-D mixtures (``builtin:ring8``, ``builtin:grid25``) have no training set to memorise:
  no index (serving then reports the filter as skipped, ``no_index``).
- Built on rank 0 at the first checkpoint of an attempt (milliseconds to seconds, once). Any failure is logged
  (``memorization_index_failed``) and training goes on without one: it never fails a job.
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import torch

from ganops import storage
from ganops.trainer.data import Dataset, TensorDataset
from ganops.trainer.evaluator import dataset_fingerprint
from ganops.trainer.progress import event

__all__ = ["INDEX_FORMAT", "MANIFEST_KEY", "MAX_EXAMPLES", "ensure_index", "index_key", "index_uri",
           "training_examples"]

INDEX_FORMAT = 1  # bump when what the index holds or how it is chosen changes
MAX_EXAMPLES = 20_000  # cap on indexed examples (a seeded subset beyond it)
SUBSET_SEED = 0x1DE5
MANIFEST_KEY = "memorizationIndex"  # manifest.json field with the index's URI
SUFFIX = ".memorization.safetensors"


def _feature(dataset: Dataset) -> str:
    return "points" if dataset.is_points else "pixels-grey16-l2"


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
    return storage.join(reference_root, "_reference", f"{key}{SUFFIX}")


def training_examples(dataset: Dataset, max_examples: int = MAX_EXAMPLES) -> np.ndarray | None:
    """The examples to index (float32, the trainer's form), a seeded subset above ``max_examples``; None when the
    dataset has no finite training set (the mixtures)."""
    if not isinstance(dataset, TensorDataset):
        return None
    data = dataset.data
    if len(dataset) > max_examples:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(SUBSET_SEED))[:max_examples]
        data = data[order.sort().values]
    return np.ascontiguousarray(data.numpy(), dtype=np.float32)


def ensure_index(dataset: Dataset, reference_root: str, *, max_examples: int = MAX_EXAMPLES) -> str | None:
    """The URI of the dataset's memorization index under ``reference_root``: reused when present, else built and
    stored. None for datasets without a finite training set. Raises on storage or build errors (callers log)."""
    examples = training_examples(dataset, max_examples)
    if examples is None:
        return None
    uri = index_uri(reference_root, index_key(dataset, max_examples))
    store = storage.open_store(uri)
    if store.exists(uri):
        event("memorization_index_reused", uri=uri)
        return uri
    from ganops.serving.safety.memorization import MemorizationIndex  # numpy + safetensors only

    started = time.perf_counter()
    index = MemorizationIndex.build(examples)
    index.metadata.update(dataset=dataset.uri, datasetSize=dataset.num_samples, indexFormat=INDEX_FORMAT)
    store.put_bytes(uri, index.to_bytes())
    event("memorization_index_built", uri=uri, examples=len(examples), threshold=round(index.threshold, 6),
          seconds=round(time.perf_counter() - started, 3))
    return uri
