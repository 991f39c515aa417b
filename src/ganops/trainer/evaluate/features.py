"""Feature extractors behind one protocol: images (N, C, H, W) in [-1, 1] → features (N, dim) float32.

- ``RawFeatures``: identity / flatten (2-D points, tiny images).
- ``InceptionV3``: pool3 (2048-d) of the FID Inception network; weights (pytorch-fid's
  ``pt_inception-2015-12-05-6726825d.pth`` or the same state dict as safetensors) come from a configured URI and
  are loaded and checked at construction, so a wrong or missing file fails at start, not at the first
  evaluation. Nothing is ever downloaded.
- ``DigitsFeatures``: the bundled small CNN for ``builtin:digits``.

``build_extractor(name, ...)`` builds one by name (``raw`` | ``digits`` | ``inception``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from ganops.contracts import DATASET_DIGITS, MIXTURE_DATASETS
from ganops.trainer.evaluate.digits import DigitsNet, preprocess_digits
from ganops.trainer.evaluate.errors import FeatureExtractorError
from ganops.trainer.evaluate.inception import FIDInceptionV3

__all__ = [
    "DIGITS_WEIGHTS_PATH",
    "EXTRACTOR_NAMES",
    "DigitsFeatures",
    "FeatureExtractor",
    "InceptionV3",
    "LoadBytes",
    "RawFeatures",
    "build_extractor",
    "default_extractor_name",
    "load_state_dict_checked",
    "read_weights",
]

F32 = NDArray[np.float32]
LoadBytes = Callable[[str], bytes]

DIGITS_WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "digits_features.safetensors"
EXTRACTOR_NAMES = ("raw", "digits", "inception")


@runtime_checkable
class FeatureExtractor(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def __call__(self, images: torch.Tensor) -> F32: ...


# --------------------------------------------------------------------------- weights


def _read_bytes(uri: str, load_bytes: LoadBytes | None) -> bytes:
    if load_bytes is not None:
        try:
            return load_bytes(uri)
        except Exception as exc:
            raise FeatureExtractorError(f"cannot read feature extractor weights {uri!r}: {exc}") from exc
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        # file:///abs/path and file://localhost/abs/path; file://rel/path is taken as the relative path rel/path
        host = "" if parsed.netloc in ("", "localhost") else parsed.netloc
        path = Path(url2pathname(host + parsed.path))
    elif parsed.scheme == "":
        path = Path(uri)
    else:
        raise FeatureExtractorError(
            f"cannot read feature extractor weights {uri!r}: scheme {parsed.scheme!r} needs a load_bytes callable"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FeatureExtractorError(f"cannot read feature extractor weights {uri!r}: {exc}") from exc


def read_weights(uri: str, load_bytes: LoadBytes | None = None) -> dict[str, torch.Tensor]:
    """A state dict from ``uri`` (local path, ``file://``, or anything ``load_bytes`` reads, e.g. ``s3://``).

    ``*.safetensors`` files are read with safetensors; anything else with ``torch.load(weights_only=True)``.
    """
    data = _read_bytes(uri, load_bytes)
    try:
        if urlparse(uri).path.endswith(".safetensors"):
            from safetensors.torch import load as load_safetensors

            state: Any = load_safetensors(data)
        else:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FeatureExtractorError(f"cannot load feature extractor weights {uri!r}: {exc}") from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise FeatureExtractorError(f"weights {uri!r} are not a state dict (a mapping of names to tensors)")
    return dict(state)


def _listing(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"{shown}, … ({len(items)} in all)" if len(items) > limit else shown


def load_state_dict_checked(module: nn.Module, state: Mapping[str, torch.Tensor], uri: str, arch: str) -> None:
    """Load ``state`` into ``module`` after checking every key and shape; the error names what differs.

    BatchNorm ``num_batches_tracked`` buffers are optional (old state dicts, like pytorch-fid's, lack them).
    """
    expected = module.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: expected {tuple(expected[k].shape)}, got {tuple(state[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if mismatched:
        problems.append(f"shape mismatch: {_listing(mismatched)}")
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if problems:
        raise FeatureExtractorError(f"weights {uri!r} do not match the {arch} architecture: " + "; ".join(problems))
    module.load_state_dict(dict(state), strict=False)


# --------------------------------------------------------------------------- extractors


def _as_tensor(images: torch.Tensor | NDArray[Any]) -> torch.Tensor:
    return images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))


class RawFeatures:
    """Identity for 2-D points (N, 2); images are flattened to (N, C*H*W). ``dim`` is checked on each call."""

    def __init__(self, dim: int = 2) -> None:
        self.name = "raw"
        self.dim = dim

    def __call__(self, images: torch.Tensor) -> F32:
        x = _as_tensor(images).detach().to("cpu", torch.float32)
        out = x.reshape(x.shape[0], -1).numpy().copy()
        if out.shape[1] != self.dim:
            raise ValueError(f"raw features have dimension {out.shape[1]}, expected {self.dim}")
        return out

    def tensor(self, images: torch.Tensor) -> torch.Tensor:
        """The same features as a float32 tensor on the images' device."""
        x = _as_tensor(images).detach().to(torch.float32)
        out = x.reshape(x.shape[0], -1).clone()
        if out.shape[1] != self.dim:
            raise ValueError(f"raw features have dimension {out.shape[1]}, expected {self.dim}")
        return out


class _NetworkExtractor:
    name: str
    dim: int

    def __init__(self, net: nn.Module, device: str | torch.device, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.net = net.to(self.device).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def _batched(self, images: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], width: int) -> NDArray[Any]:
        return self._batched_tensor(images, fn, width).cpu().numpy()

    def _batched_tensor(self, images: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor],
                        width: int) -> torch.Tensor:
        """``fn`` over batches on the extractor's device; the result stays there."""
        x = _as_tensor(images)
        if x.ndim != 4:
            raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            return torch.zeros((0, width), dtype=torch.float32, device=self.device)
        outputs = []
        with torch.inference_mode():
            for chunk in torch.split(x, self.batch_size):
                outputs.append(fn(chunk.to(self.device, torch.float32)).float())
        return torch.cat(outputs)

    def tensor(self, images: torch.Tensor) -> torch.Tensor:
        """The features of `__call__` as a float32 tensor on the extractor's device."""
        return self._batched_tensor(images, self._features, self.dim)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class InceptionV3(_NetworkExtractor):
    """FID Inception pool3 features (2048-d) with weights from ``weights_uri``, checked at construction."""

    def __init__(
        self,
        weights_uri: str,
        *,
        load_bytes: LoadBytes | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
    ) -> None:
        self.name = "inception"
        self.dim = FIDInceptionV3.FEATURE_DIM
        self.weights_uri = weights_uri
        net = FIDInceptionV3()
        load_state_dict_checked(net, read_weights(weights_uri, load_bytes), weights_uri, "FID Inception-v3")
        super().__init__(net, device, batch_size)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        elif x.shape[1] != 3:
            raise ValueError(f"expected 1 or 3 channels, got {x.shape[1]}")
        size = FIDInceptionV3.INPUT_SIZE
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        out: torch.Tensor = self.net(x)
        return out.float()

    def __call__(self, images: torch.Tensor) -> F32:
        out: F32 = self._batched(images, self._features, self.dim).astype(np.float32, copy=False)
        return out


class DigitsFeatures(_NetworkExtractor):
    """Bundled digits CNN: 128-d penultimate features of gray digits from 8×8 up to 32×32."""

    def __init__(
        self,
        weights_uri: str | None = None,
        *,
        load_bytes: LoadBytes | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 512,
    ) -> None:
        self.name = "digits"
        self.dim = DigitsNet.FEATURE_DIM
        self.weights_uri = weights_uri or str(DIGITS_WEIGHTS_PATH)
        net = DigitsNet()
        load_state_dict_checked(net, read_weights(self.weights_uri, load_bytes), self.weights_uri, "digits CNN")
        super().__init__(net, device, batch_size)
        self._digits_net = net  # the same module, typed

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self._digits_net.features(preprocess_digits(x))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self._digits_net(preprocess_digits(x))
        return out

    def __call__(self, images: torch.Tensor) -> F32:
        out: F32 = self._batched(images, self._features, self.dim).astype(np.float32, copy=False)
        return out

    def classify(self, images: torch.Tensor) -> NDArray[np.int64]:
        """Predicted digit class per image (e.g. to count the classes a generator covers)."""
        logits = self._batched(images, self._logits, DigitsNet.NUM_CLASSES)
        out: NDArray[np.int64] = np.argmax(logits, axis=1).astype(np.int64)
        return out


def build_extractor(
    name: str,
    *,
    weights_uri: str | None = None,
    load_bytes: LoadBytes | None = None,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    dim: int = 2,
) -> FeatureExtractor:
    """``raw`` (``dim`` features), ``digits`` (bundled weights unless ``weights_uri``) or ``inception``
    (``weights_uri`` required). Weights are loaded and checked here; problems raise ``FeatureExtractorError``.
    """
    if name == "raw":
        return RawFeatures(dim)
    if name == "digits":
        return DigitsFeatures(weights_uri, load_bytes=load_bytes, device=device, batch_size=batch_size or 512)
    if name == "inception":
        if not weights_uri:
            raise FeatureExtractorError(
                "the inception feature extractor needs weights_uri (e.g. a local copy of pytorch-fid's "
                "pt_inception-2015-12-05-6726825d.pth); nothing is downloaded at run time"
            )
        return InceptionV3(weights_uri, load_bytes=load_bytes, device=device, batch_size=batch_size or 32)
    raise ValueError(f"unknown feature extractor {name!r}: expected one of {', '.join(EXTRACTOR_NAMES)}")


def default_extractor_name(dataset_uri: str) -> str:
    """The extractor ``auto`` resolves to: ``raw`` for the 2-D builtins, ``digits`` for builtin digits,
    ``inception`` otherwise."""
    if dataset_uri in MIXTURE_DATASETS:
        return "raw"
    if dataset_uri == DATASET_DIGITS:
        return "digits"
    return "inception"
