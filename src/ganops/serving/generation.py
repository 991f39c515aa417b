"""After the forward pass: the safety pipeline, the watermark, encoding. Runs in a worker thread, one request at a
time (the pipeline's near-duplicate check and audit records are per request).

Every image that leaves the server is watermarked: allowed samples, grey replacements, grids and 2-D scatter plots.
``npy`` output is the watermarked ``uint8`` HWC array (images) or the float32 point (2-D models), never the raw
float output, which would carry no watermark.
"""

from __future__ import annotations

import base64
import io
import math
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ganops.images import pil_image, scatter
from ganops.serving.metrics import ServingMetrics
from ganops.serving.model_store import LoadedModel
from ganops.serving.safety import RequestContext, SampleDecision, make_samples

__all__ = ["EncodedSample", "Format", "GenerationOutput", "encode_image", "postprocess", "tile"]

Format = Literal["png", "jpeg", "npy"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "npy": "application/x-npy"}


@dataclass
class EncodedSample:
    index: int
    label: int | None
    decision: SampleDecision
    data: bytes | None = None  # encoded per-sample payload (None when withheld or when a grid was asked for)
    point: list[float] | None = None
    pixels: np.ndarray | None = field(default=None, repr=False)  # the watermarked output (images)


@dataclass
class GenerationOutput:
    samples: list[EncodedSample]
    grid: bytes | None
    media_type: str
    safety_seconds: float
    encode_seconds: float

    @property
    def blocked(self) -> int:
        return sum(1 for s in self.samples if not s.decision.allowed)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_image(pixels: np.ndarray, fmt: Format, *, jpeg_quality: int = 95) -> bytes:
    """``uint8`` HWC → PNG, JPEG (4:4:4, RGBA composited on white) or ``.npy`` bytes."""
    if fmt == "npy":
        return npy_bytes(pixels)
    buf = io.BytesIO()
    if fmt == "png":
        pil_image(pixels).save(buf, format="PNG", compress_level=1)
    else:
        image = pil_image(pixels)
        if image.mode == "RGBA":
            from PIL import Image

            background = Image.new("RGB", image.size, (255, 255, 255))
            background.paste(image, mask=image.getchannel("A"))
            image = background
        image.save(buf, format="JPEG", quality=jpeg_quality, subsampling=0)
    return buf.getvalue()


def tile(images: list[np.ndarray], *, padding: int = 2) -> np.ndarray:
    """``uint8`` HWC images of one shape → one HWC picture, about square, black padding."""
    h, w, c = images[0].shape
    cols = max(1, math.ceil(math.sqrt(len(images))))
    rows = math.ceil(len(images) / cols)
    canvas = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, c), dtype=np.uint8)
    if c == 4:
        canvas[..., 3] = 255
    for i, image in enumerate(images):
        r, col = divmod(i, cols)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        canvas[y : y + h, x : x + w] = image
    return canvas


def postprocess(
    model: LoadedModel,
    raw: np.ndarray,
    labels: list[int] | None,
    context: RequestContext,
    fmt: Format,
    grid: bool,
    metrics: ServingMetrics,
    *,
    jpeg_quality: int = 95,
) -> GenerationOutput:
    """Safety pipeline → watermark → encoding for one request's samples (``raw``: the generator's float output)."""
    started = time.perf_counter()
    samples = make_samples(raw, labels)
    decisions = model.pipeline.run(samples, context)
    for name, reason in model.skipped_filters.items():
        metrics.safety_skipped.labels(name, reason).inc(len(samples))
    safety_done = time.perf_counter()

    out: list[EncodedSample] = []
    marker = model.watermarker
    mark_each = not grid or fmt == "npy"  # a PNG/JPEG grid is watermarked as one picture instead
    for sample, decision in zip(samples, decisions, strict=True):
        item = EncodedSample(sample.index, sample.label, decision)
        if decision.output is not None:
            if sample.is_image:
                if mark_each:
                    item.pixels = marker.embed(np.asarray(decision.output, dtype=np.uint8))
            else:
                item.point = [float(v) for v in np.asarray(decision.output, dtype=np.float64).reshape(-1)]
        outcome = "allowed" if decision.allowed else ("replaced" if decision.replaced else "withheld")
        metrics.samples.labels(model.name, model.version, outcome).inc()
        out.append(item)

    grid_bytes: bytes | None = None
    if grid:
        grid_bytes = _grid(model, out, fmt, jpeg_quality)
    else:
        for item in out:
            if item.pixels is not None:
                item.data = encode_image(item.pixels, fmt, jpeg_quality=jpeg_quality)
            elif item.point is not None and fmt == "npy":
                item.data = npy_bytes(np.asarray(item.point, dtype=np.float32))
    media_type = MEDIA_TYPES[fmt] if (grid or model.is_image or fmt == "npy") else "application/json"
    done = time.perf_counter()
    return GenerationOutput(out, grid_bytes, media_type, safety_done - started, done - safety_done)


def _grid(model: LoadedModel, items: list[EncodedSample], fmt: Format, jpeg_quality: int) -> bytes | None:
    """One picture (or one ``.npy``) of every returned sample; withheld ones are left out."""
    marker = model.watermarker
    if model.is_image:
        shown = [np.asarray(i.decision.output, dtype=np.uint8) for i in items if i.decision.output is not None]
        if not shown:
            return None
        if fmt == "npy":  # (k, H, W, C) of the individually watermarked samples
            return npy_bytes(np.stack([i.pixels for i in items if i.pixels is not None]))
        return encode_image(marker.embed(tile(shown)), fmt, jpeg_quality=jpeg_quality)
    points = np.asarray([i.point for i in items if i.point is not None], dtype=np.float32).reshape(-1, 2)
    if fmt == "npy":
        return npy_bytes(points)
    if len(points) == 0:
        return None
    return encode_image(marker.embed(scatter(points, size=256)), fmt, jpeg_quality=jpeg_quality)


def b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")
