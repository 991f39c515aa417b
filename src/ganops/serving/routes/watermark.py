"""``POST /v1/watermark/verify``: does an image carry this server's watermark, and which model version made it?

The image comes as JSON ``{"image": "<base64>"}`` or as the raw body (``image/png``, ``image/jpeg``, ``image/webp``,
``application/x-npy``, ``application/octet-stream``). PNG, JPEG, WebP and ``.npy`` (``uint8``, HW or HWC; loaded
with ``allow_pickle=False``) are decoded; images over ``limits.max_verify_pixels`` are refused before decoding.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from pydantic import ValidationError

from ganops.serving.dependencies import PrincipalDep, ServicesDep
from ganops.serving.errors import ApiError, responses
from ganops.serving.schemas import VerifyRequest, VerifyResponse

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


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """``uint8`` HWC pixels of a PNG/JPEG/WebP/.npy; ``ApiError`` 400/413 for anything else."""
    if data.startswith(b"\x93NUMPY"):
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ApiError(400, f"not a readable .npy array ({type(exc).__name__})", field="image") from None
        if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
            raise ApiError(400, f"a .npy image must be uint8 HW or HWC (C in 1, 3, 4), got {array.dtype} {array.shape}",
                           field="image")
        if array.shape[0] * array.shape[1] > max_pixels:
            raise ApiError(413, f"the image has more than {max_pixels} pixels", field="image")
        pixels: np.ndarray = array if array.ndim == 3 else array[..., None]
        return pixels
    from PIL import Image, UnidentifiedImageError

    try:
        image: Image.Image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise ApiError(413, f"the image has more than {max_pixels} pixels", field="image")
        if image.format not in ("PNG", "JPEG", "WEBP"):
            raise ApiError(400, f"unsupported image format {image.format}", field="image")
        if image.mode not in ("L", "RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")
        decoded = np.asarray(image)
    except ApiError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ApiError(400, f"not a decodable PNG/JPEG/WebP image ({type(exc).__name__})", field="image") from None
    return decoded if decoded.ndim == 3 else decoded[..., None]


async def _image_bytes(request: Request) -> bytes:
    body = await request.body()
    media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if media in RAW_TYPES:
        if not body:
            raise ApiError(400, "the body is empty", field="body")
        return body
    if media != "application/json":
        raise ApiError(415, f"send application/json or one of {', '.join(RAW_TYPES)}", field="content-type")
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
    responses=responses(400, 401, 413, 422, 429, 500) | {415: {"description": "Unsupported content type.",
                                                               "model": responses(400)[400]["model"]}},
)
async def verify(request: Request, services: ServicesDep, principal: PrincipalDep) -> VerifyResponse:
    data = await _image_bytes(request)
    pixels = decode_image(data, services.settings.limits.max_verify_pixels)
    verifier = services.verifier
    known = sorted(services.store.known_model_ids)
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(services.post_executor, lambda: verifier.verify(pixels, known))
    model = None
    if result.present and result.payload is not None:
        model = next((m for m in known if verifier.payload_for(m) == result.payload), None)
    return VerifyResponse(
        present=result.present, score=result.score, payload=result.payload, method=result.method, model=model
    )
