"""The trainer's data: datasets held as one tensor in memory and a resumable, shardable stream of batches.

By responsibility (import the names from here; the modules are the owners):

- `ganops.trainer.data.datasets`: `Dataset`, `TensorDataset`, `MixtureDataset`, the builtins `ring8`, `grid25` and
  `digits`, `Batch` and `DataError`;
- `ganops.trainer.data.stream`: the resumable, shardable `DataStream` (`make_stream`) and its augmentations;
- `ganops.trainer.data.ingest`: `load_dataset` / `load_dataset_uri`, from a builtin name or a ``file://`` /
  ``s3://`` folder or archive of images, decoded once and cached.
"""

from __future__ import annotations

from ganops.trainer.data.datasets import (
    Batch,
    DataError,
    Dataset,
    MixtureDataset,
    TensorDataset,
    digits,
    grid25,
    pixels_to_float,
    ring8,
)
from ganops.trainer.data.ingest import (
    ARCHIVE_SUFFIXES,
    IMAGE_SUFFIXES,
    MAX_IMAGE_PIXELS,
    load_dataset,
    load_dataset_uri,
)
from ganops.trainer.data.stream import AUGMENTATIONS, DataStream, make_stream, mix_seed

__all__ = [
    "ARCHIVE_SUFFIXES",
    "AUGMENTATIONS",
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "Batch",
    "DataError",
    "DataStream",
    "Dataset",
    "MixtureDataset",
    "TensorDataset",
    "digits",
    "grid25",
    "load_dataset",
    "load_dataset_uri",
    "make_stream",
    "mix_seed",
    "pixels_to_float",
    "ring8",
]
