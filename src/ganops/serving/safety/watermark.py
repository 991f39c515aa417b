"""Invisible watermark on every returned image, and its verification.

What is embedded: a *message* of ``payload_bits`` + 32 bits. The payload is ``HMAC-SHA256(key, model id)``
truncated to ``payload_bits`` (it names the model version to whoever holds the key); the last 32 bits are a tag,
``HMAC-SHA256(key, payload)`` truncated, so verification needs no list of model versions and a random image
passes the tag check with probability 2^-32.

Two carriers:

``keyed-qim`` (every image, any size from ``message bits`` values up)
    Quantisation-index modulation with step 4 on the colour values (not alpha), at positions, dither and
    whitening drawn from the key (SHAKE-256 of an HMAC of the key and the image shape: stable across numpy
    versions). Each value moves by at most 2 grey levels (mean 1). Message bits are spread over the image,
    each repeated ``values / message bits`` times; decoding takes a majority vote per bit.
    The layout is drawn in chunks of ``LAYOUT_CHUNK`` (2^18) colour values, each from its own SHAKE-256 stream,
    so embedding and verifying any image needs O(chunk) memory for it, never O(image) (an image of up to one
    chunk, which covers every single sample up to 256 px RGB, has the layout it always had). Verification keeps
    no per-shape state: an upload of a new shape costs time in proportion to its pixels and nothing afterwards.
    Embedding caches each shape's target residues (1 byte per value) up to ``TARGET_CACHE_BYTES`` in all.
    Exact under PNG (lossless). Not designed to survive JPEG, resizing or cropping: after JPEG a small image
    verifies as ``present=False`` (see docs/safety.md for measured rates).

``dwtDct`` (RGB/RGBA images with H x W >= 256 x 256, the minimum ``imwatermark`` accepts)
    ``invisible-watermark``'s DWT-DCT embedding of the same message, added before the QIM layer. It tolerates
    JPEG without chroma subsampling at quality >= 90 on photographs. ``imwatermark`` imports torch (via its
    rivaGan module), so it is imported only when a large image is seen; without it that layer is skipped.
    Its decoded bits may hold errors: besides the exact tag check, they are matched against the messages of
    known model ids (>= ``dwt_min_agreement`` of the bits).

:meth:`Watermarker.verify` returns ``present=True`` only when the QIM message has a valid tag and at least
``min_score`` of the values agree with it, or the dwtDct bits have a valid tag or match a known model's message.
The key comes from settings (a Kubernetes Secret); it is never hard-coded outside tests.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DWT_MIN_PIXELS", "LAYOUT_CHUNK", "TAG_BITS", "WatermarkError", "WatermarkResult", "Watermarker"]

logger = logging.getLogger(__name__)

TAG_BITS = 32
QIM_STEP = 4
DWT_MIN_PIXELS = 256 * 256
MIN_KEY_BYTES = 16
# Colour values per layout chunk: a chunk's layout (keys, permutation, dither) is a few MB at most, whatever the
# image. 2^18 >= 256 x 256 x 3: every single sample the server makes keeps the one-chunk layout.
LAYOUT_CHUNK = 1 << 18
# Bytes of cached embedding targets (1 byte per colour value) per Watermarker; least recently used go first.
TARGET_CACHE_BYTES = 64 << 20


class WatermarkError(ValueError):
    """The image cannot carry the watermark (too small, wrong type)."""


@dataclass(frozen=True)
class WatermarkResult:
    """``payload``: hex of the payload bits when ``present``; ``method``: the carrier that verified (or was tried)."""

    present: bool
    score: float
    payload: str | None
    method: str


@dataclass(frozen=True)
class _Layout:
    """The layout of one chunk of colour values (flattened HWC order) starting at ``start``."""

    start: int
    bit_of_value: np.ndarray  # message-bit index carried by each value (uint8: message_bits <= 96)
    whitening: np.ndarray  # 0/1 per value (uint8)
    dither: np.ndarray  # 0..QIM_STEP-1 per value (uint8)


def _bits(data: bytes, count: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:count].astype(np.uint8)


def _check_pixels(pixels: np.ndarray) -> np.ndarray:
    """``uint8`` HWC (C in 1, 3, 4); a 2-D grey array (as PIL decodes grey PNGs) is taken as HW1."""
    if isinstance(pixels, np.ndarray) and pixels.ndim == 2:
        pixels = pixels[..., None]
    if (
        not isinstance(pixels, np.ndarray)
        or pixels.dtype != np.uint8
        or pixels.ndim != 3
        or pixels.shape[2]
        not in (
            1,
            3,
            4,
        )
    ):
        shape = getattr(pixels, "shape", None)
        raise WatermarkError(f"expected uint8 HWC pixels with 1, 3 or 4 channels, got {shape}")
    return pixels


class Watermarker:
    """Embeds and verifies the watermark. ``key``: secret bytes (>= 16); ``payload_bits``: 32-64, multiple of 8.

    ``model_id`` (e.g. ``"digits-dcgan:7"``) is what the payload names; :meth:`embed` can override it.
    """

    def __init__(
        self,
        key: bytes,
        payload_bits: int = 32,
        *,
        model_id: str = "",
        min_score: float = 0.75,
        use_dwt: bool = True,
        dwt_min_agreement: float = 0.9,
    ) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the watermark key must be at least {MIN_KEY_BYTES} bytes")
        if not 32 <= payload_bits <= 64 or payload_bits % 8:
            raise ValueError("payload_bits must be 32, 40, 48, 56 or 64")
        self._key = bytes(key)
        self.payload_bits = payload_bits
        self.message_bits = payload_bits + TAG_BITS
        self.model_id = model_id
        self.min_score = min_score
        self.use_dwt = use_dwt
        self.dwt_min_agreement = dwt_min_agreement
        self._targets: OrderedDict[tuple[tuple[int, int, int], str], np.ndarray] = OrderedDict()
        self._target_bytes = 0
        self._targets_lock = threading.Lock()

    def __repr__(self) -> str:  # never show the key
        return f"Watermarker(payload_bits={self.payload_bits}, model_id={self.model_id!r})"

    # ------------------------------------------------------------------------------------------- message

    def _mac(self, label: bytes, data: bytes) -> bytes:
        return hmac.new(self._key, label + b"\x00" + data, hashlib.sha256).digest()

    def payload_for(self, model_id: str) -> str:
        """Hex of the payload embedded for ``model_id`` (what :meth:`verify` returns as ``payload``)."""
        return self._mac(b"payload", model_id.encode()).hex()[: self.payload_bits // 4]

    def _tag(self, payload: bytes) -> bytes:
        return self._mac(b"tag", payload)[: TAG_BITS // 8]

    def _message(self, model_id: str) -> np.ndarray:
        payload = bytes.fromhex(self.payload_for(model_id))
        return _bits(payload + self._tag(payload), self.message_bits)

    def _split(self, message: np.ndarray) -> tuple[bytes, bool, float]:
        """``(payload bytes, tag valid, fraction of tag bits that match)`` for decoded message bits."""
        packed = np.packbits(message.astype(np.uint8)).tobytes()
        payload, tag = packed[: self.payload_bits // 8], packed[self.payload_bits // 8 :]
        expected = _bits(self._tag(payload), TAG_BITS)
        agreement = float((expected == _bits(tag, TAG_BITS)).mean())
        return payload, hmac.compare_digest(tag, self._tag(payload)), agreement

    # -------------------------------------------------------------------------------------------- layout

    def _layouts(self, shape: tuple[int, int, int]) -> Iterator[_Layout]:
        """The layout of an image of ``shape`` (colour channels only), chunk by chunk; nothing is kept.

        One chunk (``values <= LAYOUT_CHUNK``): the stream is SHAKE-256 of ``HMAC(key, "layout", shape)``, its
        first 8 bytes per value are sort keys whose order deals the message bits out in turn (so every bit gets
        ``values / message_bits`` values, give or take one) and the last byte per value gives whitening and dither.
        More chunks: chunk ``j`` does the same with its own stream (``HMAC(key, "layout-chunk", shape, j)``),
        dealing on from where chunk ``j - 1`` stopped, so the bits stay exactly as balanced.
        """
        n = shape[0] * shape[1] * shape[2]
        chunks = max(1, -(-n // LAYOUT_CHUNK))
        for j in range(chunks):
            start = j * LAYOUT_CHUNK
            size = min(LAYOUT_CHUNK, n - start)
            if chunks == 1:
                seed = self._mac(b"layout", struct.pack("<III", *shape))
            else:
                seed = self._mac(b"layout-chunk", struct.pack("<IIII", *shape, j))
            stream = hashlib.shake_256(seed).digest(9 * size)
            order = np.argsort(np.frombuffer(stream, dtype="<u8", count=size), kind="stable")
            bit_of_value = np.empty(size, dtype=np.uint8)
            bit_of_value[order] = (np.arange(start, start + size, dtype=np.int64) % self.message_bits).astype(np.uint8)
            del order
            extra = np.frombuffer(stream, dtype=np.uint8, offset=8 * size)
            yield _Layout(start, bit_of_value, extra & 1, (extra >> 1) % QIM_STEP)

    @staticmethod
    def _colour(pixels: np.ndarray) -> np.ndarray:
        return pixels[..., :3] if pixels.shape[2] == 4 else pixels

    def capacity(self, shape: tuple[int, ...]) -> int:
        """Colour values an image of ``shape`` (HWC) offers; it must be at least ``message_bits``."""
        return int(shape[0] * shape[1] * min(shape[2], 3))

    # ------------------------------------------------------------------------------------------- embed

    def embed(self, pixels: np.ndarray, model_id: str | None = None) -> np.ndarray:
        """A watermarked copy of ``pixels`` (``uint8`` HWC, 1/3/4 channels, or HW grey); same shape and dtype."""
        shape = pixels.shape
        pixels = _check_pixels(pixels)
        marked: np.ndarray = self.embed_many(pixels[None], model_id)[0].reshape(shape)
        return marked

    def embed_many(self, images: np.ndarray, model_id: str | None = None) -> np.ndarray:
        """Watermarked copies of a batch of images of one shape (``uint8`` NHWC), one vectorised QIM pass.

        The result is the same, image by image, as :meth:`embed` on each (which calls this with a batch of one).
        """
        if not isinstance(images, np.ndarray) or images.ndim != 4:
            raise WatermarkError(f"expected a batch of uint8 NHWC images, got {getattr(images, 'shape', None)}")
        if len(images) == 0:
            return np.array(images, dtype=np.uint8, copy=True)
        first = _check_pixels(images[0])
        if self.capacity(first.shape) < self.message_bits:
            raise WatermarkError(
                f"image {first.shape} has {self.capacity(first.shape)} colour values; "
                f"the watermark needs at least {self.message_bits}"
            )
        model = self.model_id if model_id is None else model_id
        out = np.array(images, dtype=np.uint8, copy=True)
        if len(out) and self._dwt_eligible(out[0]):
            message = self._message(model)
            for i in range(len(out)):
                out[i] = self._dwt_embed(out[i], message)
        channels = out.shape[3]
        colour = out[..., :3] if channels == 4 else out
        marked = self._qim_embed_many(colour, model)
        if channels == 4:
            out[..., :3] = marked
            return out
        return marked

    def _target(self, shape: tuple[int, int, int], model_id: str) -> np.ndarray:
        """Per colour value, the residue mod ``QIM_STEP`` the embedded value must have (uint8; cached per shape and
        id within ``TARGET_CACHE_BYTES``: only shapes this server generates get here, never uploads)."""
        key = (shape, model_id)
        with self._targets_lock:
            target = self._targets.get(key)
            if target is not None:
                self._targets.move_to_end(key)
                return target
        message = self._message(model_id)
        target = np.empty(shape[0] * shape[1] * shape[2], dtype=np.uint8)
        for chunk in self._layouts(shape):
            end = chunk.start + len(chunk.bit_of_value)
            target[chunk.start : end] = (
                chunk.dither + QIM_STEP // 2 * (message[chunk.bit_of_value] ^ chunk.whitening)
            ) % QIM_STEP
        target.setflags(write=False)
        if target.nbytes <= TARGET_CACHE_BYTES // 4:
            with self._targets_lock:
                if key not in self._targets:
                    self._targets[key] = target
                    self._target_bytes += target.nbytes
                while self._target_bytes > TARGET_CACHE_BYTES:
                    _, dropped = self._targets.popitem(last=False)
                    self._target_bytes -= dropped.nbytes
        return target

    def _qim_embed_many(self, colour: np.ndarray, model_id: str) -> np.ndarray:
        """QIM on ``(N, H, W, C)`` colour values: each value moves to the nearest one with its target residue."""
        n, h, w, c = colour.shape
        target = self._target((h, w, c), model_id)
        x = colour.reshape(n, -1).astype(np.int16)
        r = (x - target) & (QIM_STEP - 1)  # (x - target) mod 4: the distance down to the target lattice
        # Up when it is nearer (r > 2); on a tie (r == 2) towards mid-grey, so clipping never interferes.
        up = (r > QIM_STEP // 2) | ((r == QIM_STEP // 2) & (x < 128))
        y = x - r + QIM_STEP * up.astype(np.int16)
        y[y < 0] += QIM_STEP
        y[y > 255] -= QIM_STEP
        marked: np.ndarray = y.astype(np.uint8).reshape(colour.shape)
        return marked

    # ------------------------------------------------------------------------------------------ verify

    def verify(self, pixels: np.ndarray, model_ids: Iterable[str] = ()) -> WatermarkResult:
        """Whether ``pixels`` carries our watermark. Never raises for a well-formed image.

        ``model_ids``: candidate model ids (besides ``self.model_id``) for the ``dwtDct`` carrier, whose decoded
        bits may hold a few errors: it then matches the bits against each candidate's message instead of
        checking the tag exactly (present when at least ``dwt_min_agreement`` of the bits agree).
        """
        pixels = _check_pixels(pixels)
        if self.capacity(pixels.shape) < self.message_bits:
            return WatermarkResult(False, 0.0, None, "none")
        result = self._qim_verify(self._colour(pixels))
        if result.present or not self._dwt_eligible(pixels):
            return result
        dwt = self._dwt_verify(pixels, [self.model_id, *model_ids])
        return dwt if dwt.present else result

    def _qim_verify(self, colour: np.ndarray) -> WatermarkResult:
        """Majority vote per message bit over every chunk, then the tag check. One pass, O(chunk) extra memory:
        the share of values agreeing with the decoded message is, per bit, the larger of its ones and its zeros."""
        flat = colour.reshape(-1)  # a view for RGB/grey; one uint8 copy for the colour of RGBA
        ones = np.zeros(self.message_bits, dtype=np.int64)
        votes = np.zeros(self.message_bits, dtype=np.int64)
        for chunk in self._layouts((colour.shape[0], colour.shape[1], colour.shape[2])):
            x = flat[chunk.start : chunk.start + len(chunk.bit_of_value)]
            residue = (x - chunk.dither) % QIM_STEP  # uint8 wraps modulo 256, a multiple of QIM_STEP
            decided = (residue % 2) == 0  # residues 1 and 3 lie between the two lattices: erasures
            bits = chunk.bit_of_value[decided]
            ones += np.bincount(bits, weights=(residue[decided] // 2) ^ chunk.whitening[decided],
                                minlength=self.message_bits).astype(np.int64)
            votes += np.bincount(bits, minlength=self.message_bits)
        message = (ones * 2 > votes).astype(np.uint8)
        agree = np.where(message == 1, ones, votes - ones).sum()
        score = float(agree / max(1, flat.size))
        payload, tag_ok, _ = self._split(message)
        present = bool(tag_ok and (votes > 0).all() and score >= self.min_score)
        return WatermarkResult(present, score, payload.hex() if present else None, "keyed-qim")

    # --------------------------------------------------------------------------------------------- dwt

    def _dwt_eligible(self, pixels: np.ndarray) -> bool:
        large = pixels.shape[2] in (3, 4) and pixels.shape[0] * pixels.shape[1] >= DWT_MIN_PIXELS
        return self.use_dwt and large and _imwatermark_available()

    def _dwt_embed(self, pixels: np.ndarray, message: np.ndarray) -> np.ndarray:
        encoder_cls, _ = _imwatermark()
        encoder = encoder_cls()
        encoder.set_watermark("bits", [int(b) for b in message])
        bgr = np.ascontiguousarray(pixels[..., 2::-1])
        encoded = np.asarray(encoder.encode(bgr, "dwtDct"))
        out = pixels.copy()
        out[..., :3] = np.clip(encoded, 0, 255).astype(np.uint8)[..., ::-1]
        return out

    def _dwt_verify(self, pixels: np.ndarray, model_ids: list[str]) -> WatermarkResult:
        _, decoder_cls = _imwatermark()
        decoder = decoder_cls("bits", self.message_bits)
        bgr = np.ascontiguousarray(pixels[..., 2::-1])
        bits = np.asarray(decoder.decode(bgr, "dwtDct"), dtype=np.uint8)
        payload, tag_ok, agreement = self._split(bits)
        if tag_ok:
            return WatermarkResult(True, 1.0, payload.hex(), "dwtDct")
        best, best_id = 0.0, ""
        for model_id in dict.fromkeys(model_ids):
            score = float((bits == self._message(model_id)).mean())
            if score > best:
                best, best_id = score, model_id
        if best >= self.dwt_min_agreement:
            return WatermarkResult(True, best, self.payload_for(best_id), "dwtDct")
        return WatermarkResult(False, max(best, agreement), None, "dwtDct")


_IMWATERMARK: list[bool] = []


def _imwatermark_available() -> bool:
    """Whether ``imwatermark`` imports (checked once; without it large images get the QIM layer only)."""
    if not _IMWATERMARK:
        try:
            _imwatermark()
            _IMWATERMARK.append(True)
        except Exception:
            logger.warning("invisible-watermark is not importable: large images get the keyed-qim watermark only")
            _IMWATERMARK.append(False)
    return _IMWATERMARK[0]


def _imwatermark() -> tuple[Any, Any]:
    from imwatermark import WatermarkDecoder, WatermarkEncoder  # MIT; pulls torch through its rivaGan module

    return WatermarkEncoder, WatermarkDecoder
