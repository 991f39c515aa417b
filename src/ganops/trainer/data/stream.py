"""The resumable, shardable stream of batches the training loop draws from, and the augmentations it applies.

`DataStream` yields batches from a per-epoch permutation of the dataset derived from ``(seed, epoch)``; rank ``r`` of
``w`` takes the disjoint slice ``perm[r::w]`` (``N // w`` samples, so every rank sees epoch boundaries at the same
batch). Batches may straddle epochs: every sample is used equally often and every batch has the same size.
Randomness per batch (augmentations, 2-D draws) comes from a generator seeded by ``(seed, rank, batch number)``,
so the whole position is ``(epoch, index, batches)`` and identical on every rank: the state saved by rank 0
resumes every rank bitwise.

With ``device`` (the trainer passes its own), the whole dataset is copied there once (as uint8 when it came from
8-bit files: a quarter of float32's bytes), each epoch's shard of indices once per epoch, and every batch is
gathered, converted to float and augmented there, from a generator on that device: no host↔device copy and no
synchronisation per batch. On the CPU the batches are the same bits with or without ``device``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ganops.trainer.data.datasets import Batch, Dataset, MixtureDataset, TensorDataset, _error, pixels_to_float

logger = logging.getLogger(__name__)

__all__ = ["AUGMENTATIONS", "DataStream", "make_stream", "mix_seed"]

AUGMENTATIONS = ("hflip", "translate")
_STATE_VERSION = 1
_TAG_PERMUTATION = 0x5045524D
_TAG_BATCH = 0x42415443
_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A well-spread 63-bit seed from integers (splitmix64 over the values)."""
    h = 0x9E3779B97F4A7C15
    for value in values:
        z = (h + (value & _MASK64) + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h & ((1 << 63) - 1)


_mix = mix_seed


def _hflip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=g, device=g.device) < 0.5
    flip = (flip if flip.device == x.device else flip.to(x.device)).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


def _translate(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Shift each image by up to 1/8 of its size (at least 1 px) per axis; borders are filled by reflection."""
    b, c, h, w = x.shape
    s = max(1, min(h, w) // 8)
    shifts = torch.randint(-s, s + 1, (b, 2), generator=g, device=g.device)
    shifts = shifts if shifts.device == x.device else shifts.to(x.device)
    padded = F.pad(x, (s, s, s, s), mode="reflect")
    # Two separable gathers (rows, then columns): vectorised on any device, twice as fast as one 4-D index.
    rows = (torch.arange(h, device=x.device) + s - shifts[:, :1]).view(b, 1, h, 1).expand(b, c, h, w + 2 * s)
    cols = (torch.arange(w, device=x.device) + s - shifts[:, 1:]).view(b, 1, 1, w).expand(b, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


_AUGMENT: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "hflip": _hflip,
    "translate": _translate,
}


class DataStream(Iterator[Batch]):
    """An endless, deterministic, resumable stream of batches of ``batch_size`` samples for one rank.

    ``batch_size`` is per rank. Position: ``epoch``, ``index`` (samples of this rank's shard already used in the
    epoch) and ``batches`` (batches drawn so far); everything random is a function of them and the seed.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        augmentations: Sequence[str] = (),
        device: torch.device | str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
        unknown = [a for a in augmentations if a not in _AUGMENT]
        if unknown:
            raise _error(dataset.uri, f"unknown augmentation(s) {unknown} in spec.dataset.augmentations: use "
                                      f"{', '.join(AUGMENTATIONS)}")
        if augmentations and dataset.is_points:
            raise _error(dataset.uri, f"augmentations {list(augmentations)} apply to images only: remove "
                                      "spec.dataset.augmentations for the 2-D datasets")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.augmentations = tuple(augmentations)
        self.device = torch.device(device) if device is not None else None
        self.epoch = 0
        self.index = 0
        self.batches = 0
        self._gen = torch.Generator(device=self.device or "cpu")
        self._data: torch.Tensor | None = None
        self._pixels: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._shard_cache: tuple[int, torch.Tensor] | None = None
        self.shard_size = 0
        if isinstance(dataset, TensorDataset):
            if len(dataset) < world_size:
                raise _error(dataset.uri, f"{len(dataset)} samples cannot be shared by {world_size} ranks: "
                                          "add images or use fewer replicas/GPUs")
            self.shard_size = len(dataset) // world_size
            if self.device is not None and dataset.pixels is not None:
                self._pixels = dataset.pixels.to(self.device)  # uint8: converted per batch, on the device
            else:
                self._data = dataset.data if self.device is None else dataset.data.to(self.device)
            if dataset.labels is not None:
                self._labels = dataset.labels if self.device is None else dataset.labels.to(self.device)

    # ------------------------------------------------------------------ position

    def permutation(self, epoch: int) -> torch.Tensor:
        """The whole dataset's order in ``epoch`` (the same on every rank)."""
        n = self.dataset.num_samples
        if n is None:
            raise TypeError("an infinite dataset has no permutation")
        g = torch.Generator(device="cpu").manual_seed(_mix(self.seed, _TAG_PERMUTATION, epoch))
        return torch.randperm(n, generator=g)

    def shard(self, epoch: int) -> torch.Tensor:
        """This rank's indices in ``epoch``: ``permutation(epoch)[rank::world_size]``, ``shard_size`` long."""
        if self._shard_cache is None or self._shard_cache[0] != epoch:
            perm = self.permutation(epoch)
            shard = perm[self.rank :: self.world_size][: self.shard_size].clone()
            # Once per epoch to the device, so slicing a batch's indices never copies or synchronises.
            self._shard_cache = (epoch, shard if self.device is None else shard.to(self.device))
        return self._shard_cache[1]

    def _batch_generator(self) -> torch.Generator:
        return self._gen.manual_seed(_mix(self.seed, _TAG_BATCH, self.rank, self.batches))

    def _next_indices(self) -> torch.Tensor:
        parts: list[torch.Tensor] = []
        need = self.batch_size
        while need:
            take = min(need, self.shard_size - self.index)
            parts.append(self.shard(self.epoch)[self.index : self.index + take])
            self.index += take
            need -= take
            if self.index == self.shard_size:
                self.epoch += 1
                self.index = 0
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    # ------------------------------------------------------------------ batches

    def next_batch(self) -> Batch:
        g = self._batch_generator()
        if isinstance(self.dataset, MixtureDataset):
            x = self.dataset.sample(self.batch_size, g).x  # drawn on the generator's device
            self.index += self.batch_size
            self.batches += 1
            return Batch(x, None)
        idx = self._next_indices()
        if self._pixels is not None:
            x = pixels_to_float(self._pixels[idx])
        else:
            assert self._data is not None
            x = self._data[idx]
        y = None if self._labels is None else self._labels[idx]
        for name in self.augmentations:
            x = _AUGMENT[name](x, g)
        self.batches += 1
        return Batch(x, y)

    def __next__(self) -> Batch:
        return self.next_batch()

    def __iter__(self) -> DataStream:
        return self

    # ------------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        """The exact position, as plain ints (``torch.load(weights_only=True)`` reads it back).

        There is no generator state to save: the generator of each batch is re-seeded from
        ``(seed, rank, batches)``, so this state is the same on every rank and rank 0's copy resumes them all.
        """
        return {
            "version": _STATE_VERSION,
            "epoch": self.epoch,
            "index": self.index,
            "batches": self.batches,
            "seed": self.seed,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "num_samples": -1 if self.dataset.num_samples is None else self.dataset.num_samples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where ``state`` left off. Bitwise identical when seed, world size and dataset are the same;
        otherwise the same epoch and fraction of it (logged as a warning)."""
        if int(state.get("version", 0)) != _STATE_VERSION:
            raise ValueError(f"unsupported data stream state version {state.get('version')!r}")
        epoch, index, batches = int(state["epoch"]), int(state["index"]), int(state["batches"])
        n = self.dataset.num_samples
        same = (int(state["seed"]) == self.seed and int(state["world_size"]) == self.world_size
                and int(state["num_samples"]) == (-1 if n is None else n))
        if not same:
            logger.warning(
                "data stream state from seed=%s world_size=%s num_samples=%s resumed with seed=%s world_size=%s "
                "num_samples=%s: continuing at the same epoch and position, not bitwise identical",
                state["seed"], state["world_size"], state["num_samples"], self.seed, self.world_size, n,
            )
            if n is not None:
                consumed = index * int(state["world_size"])  # samples of the epoch used by all ranks
                index = min(consumed // self.world_size, self.shard_size - 1)
        self.epoch, self.index, self.batches = epoch, index, batches
        self._shard_cache = None

    # ------------------------------------------------------------------ info

    @property
    def batches_per_epoch(self) -> float:
        """Batches per pass over this rank's shard (inf for the infinite datasets)."""
        return float("inf") if not self.shard_size else self.shard_size / self.batch_size

    def __repr__(self) -> str:
        return (f"DataStream({self.dataset.uri!r}, batch_size={self.batch_size}, rank={self.rank}/"
                f"{self.world_size}, epoch={self.epoch}, index={self.index}, batches={self.batches})")


def make_stream(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    augmentations: Sequence[str] = (),
    *,
    device: torch.device | str | None = None,
) -> DataStream:
    """A `DataStream` of ``batch_size`` samples per rank; ``device`` moves the whole dataset there once."""
    return DataStream(dataset, batch_size, seed, rank=rank, world_size=world_size,
                      augmentations=augmentations, device=device)
