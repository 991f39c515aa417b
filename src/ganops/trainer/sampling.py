"""Write samples of a trained generator to disk: a PNG grid (scatter plot for 2-D data) or raw `.npy`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ganops import images, storage
from ganops.trainer.checkpoint import CheckpointError
from ganops.trainer.export import load_generator
from ganops.trainer.loop import generate


class SamplingError(RuntimeError):
    pass


def write_samples(checkpoint_uri: str, *, n: int, output: Path, seed: int = 0, ema: bool = True) -> np.ndarray:
    try:
        generator, manifest = load_generator(checkpoint_uri, ema=ema)
    except (CheckpointError, storage.StorageError, KeyError) as exc:
        raise SamplingError(f"cannot load a generator from {checkpoint_uri}: {exc}") from exc
    model = manifest["model"]
    with torch.inference_mode():
        samples = generate(generator, n, seed, int(model.get("latentDim", 64)), model.get("numClasses"),
                           torch.device("cpu")).numpy()
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".npy":
        np.save(output, samples)
    elif samples.ndim == 2:  # 2-D points
        output.write_bytes(images.encode_png(images.scatter(samples)))
    else:
        output.write_bytes(images.encode_png(images.grid(samples)))
    return samples
