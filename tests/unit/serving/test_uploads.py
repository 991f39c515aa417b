"""Uploads to /v1/watermark/verify read from their header first (issue 13, finding 3): the pixel cap before any
decoding, `.npy` headers that must match the bytes sent, Pillow held to PNG/JPEG/WebP."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from ganops.serving.errors import ApiError
from ganops.serving.routes.watermark import open_upload


def npy(array: np.ndarray, version: tuple[int, int] = (1, 0)) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version)
    return buffer.getvalue()


def refused(data: bytes, max_pixels: int = 10_000) -> ApiError:
    with pytest.raises(ApiError) as info:
        open_upload(data, max_pixels).decode()
    return info.value


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_npy_images_are_used_in_place(version: tuple[int, int]) -> None:
    image = np.arange(6 * 5 * 3, dtype=np.uint8).reshape(6, 5, 3)
    upload = open_upload(npy(image, version), 10_000)
    assert (upload.height, upload.width, upload.pixels) == (6, 5, 30)
    assert np.array_equal(upload.decode(), image)
    fortran = np.asfortranarray(image[..., 0])
    assert np.array_equal(open_upload(npy(fortran), 10_000).decode()[..., 0], fortran)


def test_npy_headers_must_promise_a_small_uint8_image_and_the_bytes_that_follow() -> None:
    assert refused(npy(np.zeros((200, 200), np.uint8))).status == 413  # 40,000 pixels > 10,000
    assert refused(npy(np.zeros((10, 10), np.float32))).status == 400
    assert refused(npy(np.zeros((10, 10, 2), np.uint8))).status == 400
    assert refused(npy(np.zeros((10,), np.uint8))).status == 400
    short = npy(np.zeros((50, 50, 3), np.uint8))[:-1]
    assert "promises 7500 bytes of pixels, the body holds 7499" in refused(short).message
    assert refused(npy(np.zeros((5, 5), np.uint8)) + b"x").status == 400  # trailing bytes too
    assert refused(b"\x93NUMPY\x09\x00garbage").status == 400
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (2, 2), }"  # objects: never unpickled
    assert refused(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header).status == 400


def test_images_are_sized_from_their_header_and_only_png_jpeg_webp_are_read() -> None:
    buffer = io.BytesIO()
    Image.new("L", (4096, 4095)).save(buffer, "PNG")
    assert refused(buffer.getvalue()).status == 413
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, "GIF")
    assert refused(gif.getvalue()).status == 400
    palette = io.BytesIO()
    Image.new("P", (8, 8)).save(palette, "PNG")
    assert open_upload(palette.getvalue(), 10_000).decode().shape == (8, 8, 3)
    assert refused(b"not an image").status == 400


def test_png_text_chunks_are_capped_before_the_header_is_even_done() -> None:
    assert PngImagePlugin.MAX_TEXT_CHUNK == 64 * 1024 and PngImagePlugin.MAX_TEXT_MEMORY == 256 * 1024
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (1 << 20), zip=True)  # 1 MiB inflated from a few KB
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "PNG", pnginfo=info)
    assert refused(buffer.getvalue()).status == 400
