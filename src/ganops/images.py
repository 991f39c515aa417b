"""Pictures of samples: image grids and 2-D scatter plots as PNG, with Pillow and numpy only."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw


def to_uint8(images: np.ndarray) -> np.ndarray:
    """NCHW floats in [-1, 1] → NHWC uint8 (C kept: 1 = grey, 3 = RGB, 4 = RGBA)."""
    scaled = np.clip((images + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(scaled.transpose(0, 2, 3, 1))


def grid(images: np.ndarray, *, columns: int | None = None, padding: int = 2) -> np.ndarray:
    """NCHW floats in [-1, 1] → one HWC uint8 picture of them tiled."""
    pixels = to_uint8(images)
    n, h, w, c = pixels.shape
    cols = columns or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    canvas = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        canvas[y : y + h, x : x + w] = pixels[i]
    return canvas


def pil_image(pixels: np.ndarray) -> Image.Image:
    if pixels.shape[-1] == 1:
        return Image.fromarray(pixels[..., 0], mode="L")
    return Image.fromarray(pixels, mode="RGBA" if pixels.shape[-1] == 4 else "RGB")


def encode_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    pil_image(pixels).save(buf, format="PNG")
    return buf.getvalue()


def scatter(points: np.ndarray, *, size: int = 512, extent: float | None = None,
            centers: np.ndarray | None = None) -> np.ndarray:
    """2-D points → an RGB scatter plot (what a sample grid is for the toy datasets)."""
    limit = extent or float(max(np.abs(points).max(initial=1.0), 1e-6) * 1.1)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)

    def px(p: np.ndarray) -> tuple[float, float]:
        return ((p[0] / limit + 1) * size / 2, (1 - p[1] / limit) * size / 2)

    if centers is not None:
        for c in centers:
            x, y = px(c)
            draw.ellipse((x - 5, y - 5, x + 5, y + 5), outline=(220, 60, 60), width=2)
    for p in points:
        if np.all(np.isfinite(p)):
            x, y = px(p)
            draw.point((x, y), fill=(30, 30, 160))
    return np.asarray(image)
