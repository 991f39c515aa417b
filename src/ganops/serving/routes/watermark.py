"""``POST /v1/watermark/verify``: does an image carry this server's watermark, and which model version made it?

The image comes as JSON ``{"image": "<base64>"}`` or as the raw body (``image/png``, ``image/jpeg``, ``image/webp``,
``application/x-npy``, ``application/octet-stream``). PNG, JPEG, WebP and ``.npy`` (``uint8``, HW or HWC) are read.

Bounded at every step (docs/security.md): the body by ``limits.max_body_bytes``; the image by
``limits.max_verify_pixels``, read from its header before anything is decoded (a ``.npy`` header is parsed by hand
and must match the bytes that follow it: no header can make numpy allocate what the body does not hold); the
caller's bucket is charged one token per ``limits.rate_limit_pixels_per_token`` pixels before decoding; JSON
parsing, decoding and verification run off the event loop, ``limits.verify_concurrency`` at a time, at most
``limits.verify_queue`` waiting (503), each caller answered within ``limits.verify_timeout_s`` (504); verification
keeps no per-shape state (:mod:`ganops.serving.safety.watermark`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from PIL import PngImagePlugin
from pydantic import ValidationError

from ganops.serving.dependencies import PrincipalDep, ServicesDep
from ganops.serving.errors import ApiError, responses
from ganops.serving.safety import WatermarkResult
from ganops.serving.schemas import VerifyRequest, VerifyResponse

# PNG text chunks are inflated while the header is read, before any size check: cap them well below Pillow's
# defaults (1 MB per chunk, 64 MB per image). Watermark verification never needs them.
PngImagePlugin.MAX_TEXT_CHUNK = 64 * 1024
PngImagePlugin.MAX_TEXT_MEMORY = 256 * 1024

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
NPY_MAX_HEADER = 1024  # a real image's header is ~100 bytes
router = APIRouter(tags=["watermark"])

RAW_TYPES = ("image/png", "image/jpeg", "image/webp", "application/x-npy", "application/octet-stream")
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": VerifyRequest.model_json_schema()},
            **{media: _BINARY for media in RAW_TYPES},
        },
    }
}


@dataclass(frozen=True)
class Upload:
    """An image whose header has been read: its size, and how to decode it (the costly part)."""

    height: int
    width: int
    decode: Callable[[], np.ndarray]

    @property
    def pixels(self) -> int:
        return self.height * self.width


def _too_many_pixels(height: int, width: int, max_pixels: int) -> ApiError:
    return ApiError(413, f"the image has {height} x {width} pixels, more than the {max_pixels} accepted",
                    field="image")


def open_upload(data: bytes, max_pixels: int) -> Upload:
    """Read the header of a PNG/JPEG/WebP/.npy: 400 when it is none of them, 413 over ``max_pixels``."""
    if data.startswith(b"\x93NUMPY"):
        return _open_npy(data, max_pixels)
    return _open_image(data, max_pixels)


def _open_npy(data: bytes, max_pixels: int) -> Upload:
    fp = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=NPY_MAX_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=NPY_MAX_HEADER)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise ApiError(400, f"not a readable .npy header ({type(exc).__name__})", field="image") from None
    shape = tuple(int(d) for d in shape)
    if dtype != np.uint8 or len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
        raise ApiError(400, f"a .npy image must be uint8 HW or HWC (C in 1, 3, 4), got {dtype} {shape}",
                       field="image")
    height, width = shape[0], shape[1]
    if height * width > max_pixels:
        raise _too_many_pixels(height, width, max_pixels)
    count = math.prod(shape)
    offset = fp.tell()
    if len(data) - offset != count:
        raise ApiError(400, f"the .npy header promises {count} bytes of pixels, the body holds {len(data) - offset}",
                       field="image")

    def decode() -> np.ndarray:  # a view of the body: nothing is allocated for the pixels
        array = np.frombuffer(data, dtype=np.uint8, count=count, offset=offset).reshape(
            shape, order="F" if fortran else "C")
        return array if array.ndim == 3 else array[..., None]

    return Upload(height, width, decode)


def _open_image(data: bytes, max_pixels: int) -> Upload:
    from PIL import Image, UnidentifiedImageError

    failures = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
    try:
        image: Image.Image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # the header only
    except failures as exc:
        raise ApiError(400, f"not a decodable PNG/JPEG/WebP image ({type(exc).__name__})", field="image") from None
    width, height = image.size
    if width * height > max_pixels:
        raise _too_many_pixels(height, width, max_pixels)

    def decode() -> np.ndarray:
        try:
            with image:
                if image.mode in ("L", "RGB", "RGBA"):
                    decoded = np.array(image)
                else:
                    mode = "RGBA" if "A" in image.mode or "transparency" in image.info else "RGB"
                    with image.convert(mode) as converted:
                        decoded = np.array(converted)
        except failures as exc:
            raise ApiError(400, f"not a decodable PNG/JPEG/WebP image ({type(exc).__name__})",
                           field="image") from None
        return decoded if decoded.ndim == 3 else decoded[..., None]  # Pillow's buffers are freed by now

    return Upload(height, width, decode)


def _media(request: Request) -> str:
    media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if media not in RAW_TYPES and media != "application/json":
        raise ApiError(415, f"send application/json or one of {', '.join(RAW_TYPES)}", field="content-type")
    return media


def image_bytes(body: bytes, media: str) -> bytes:
    """The image's bytes: the raw body, or the base64 of a JSON body's ``image``."""
    if media in RAW_TYPES:
        if not body:
            raise ApiError(400, "the body is empty", field="body")
        return body
    try:
        parsed = VerifyRequest.model_validate(json.loads(body))
    except ValidationError as exc:
        fields = [(".".join(str(p) for p in e["loc"]) or "body", str(e["msg"])) for e in exc.errors()]
        raise ApiError(422, "; ".join(f"{f}: {m}" for f, m in fields), field=fields[0][0], fields=fields) from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, absurd nesting
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise ApiError(400, f"the body is not valid JSON: {why}", code="malformed_json", field="body") from None
    try:
        return base64.b64decode(parsed.image, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "image must be base64", field="image") from None


@router.post(
    "/v1/watermark/verify",
    response_model=VerifyResponse,
    summary="Verify the invisible watermark",
    openapi_extra=_OPENAPI,
    responses=responses(400, 401, 413, 422, 429, 500, 503, 504) | {415: {"description": "Unsupported content type.",
                                                               "model": responses(400)[400]["model"]}},
)
async def verify(request: Request, services: ServicesDep, principal: PrincipalDep) -> VerifyResponse:
    media = _media(request)
    body = await request.body()
    limits = services.settings.limits
    verifier = services.verifier
    known = sorted(services.store.known_model_ids)

    def work() -> WatermarkResult:  # in the verify thread pool, behind the gate
        upload = open_upload(image_bytes(body, media), limits.max_verify_pixels)
        services.charge(principal, math.ceil(upload.pixels / limits.rate_limit_pixels_per_token))
        return verifier.verify(upload.decode(), known)

    result = await services.verify_gate.run(services.post_executor, work)
    model = None
    if result.present and result.payload is not None:
        model = next((m for m in known if verifier.payload_for(m) == result.payload), None)
    return VerifyResponse(
        present=result.present, score=result.score, payload=result.payload, method=result.method, model=model
    )
