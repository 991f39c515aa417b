"""Wire models of the HTTP API (the OpenAPI schema at /docs comes from these)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

from ganops.serving.model_store import MAX_SEED

# ------------------------------------------------------------------------------------------------------ errors


class FieldError(BaseModel):
    field: str = Field(description="Where the problem is, e.g. 'n' or 'inputs.0.data'.")
    message: str


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable: invalid_request, unauthorized, rate_limited, …")
    message: str
    field: str | None = None
    fields: list[FieldError] | None = None
    request_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# ---------------------------------------------------------------------------------------------------- generate


class GenerateRequest(BaseModel):
    """Deterministic: the same (model version, seed, n, label, truncation) always gives the same samples."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"n": 4, "seed": 42, "format": "png"}, {"n": 16, "seed": 7, "grid": True}]},
    )

    n: int = Field(1, ge=1, le=1024, strict=True, description="How many samples (at most the server's limits.max_n).")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, strict=True, description="Latent seed; omitted: the server picks one and returns it."
    )
    label: int | None = Field(None, ge=0, le=9999, strict=True, description="Class for conditional models.")
    truncation: float | None = Field(
        None,
        gt=0,
        le=100,
        allow_inf_nan=False,
        strict=True,
        description="Truncation trick: latent entries with |z| > truncation are redrawn inside [-t, t]. "
        "Omitted: the model version's default (tag ganops.generation.truncation), else none.",
    )
    format: Literal["png", "jpeg", "npy"] = Field(
        "png", description="png/jpeg: base64 images; npy: base64 of .npy bytes (uint8 HWC, or float32 points)."
    )
    grid: StrictBool = Field(False, description="One picture of all samples instead of one per sample.")
    model: str | None = Field(None, min_length=1, max_length=256, description="Must name the served model.")


class VerdictOut(BaseModel):
    filter: str
    outcome: Literal["pass", "block", "error"]
    reason: str = ""
    score: float | None = None


class SampleOut(BaseModel):
    index: int
    label: int | None = None
    allowed: bool
    replaced: bool = False
    blocked_by: str | None = None
    reason: str | None = None
    data: str | None = Field(None, description="base64 PNG/JPEG/.npy; null when withheld or grid=true.")
    point: list[float] | None = Field(None, description="The sample of a 2-D model.")
    verdicts: list[VerdictOut]


class GridOut(BaseModel):
    data: str = Field(description="base64 of the picture (PNG/JPEG), or of one .npy of every returned sample.")
    media_type: str
    count: int


class GenerateResponse(BaseModel):
    request_id: str
    model: str
    version: str
    alias: str
    seed: int
    n: int
    label: int | None = None
    truncation: float | None = None
    format: str
    media_type: str
    watermarked: bool = Field(description="Every returned image carries the invisible watermark.")
    blocked: int = Field(description="Samples the safety pipeline did not let through (withheld or replaced).")
    samples: list[SampleOut]
    grid: GridOut | None = None


# ------------------------------------------------------------------------------------------------------ models


class ModelOut(BaseModel):
    name: str
    version: str
    alias: str
    role: Literal["primary", "canary"]
    traffic_percent: float
    architecture: str
    kind: Literal["image", "points"]
    image_size: int | None = None
    channels: int | None = None
    latent_dim: int
    num_classes: int | None = None
    ema: bool
    default_truncation: float | None = None
    step: int | None = None
    loaded_at: float
    filters: list[str]
    skipped_filters: dict[str, str]


class ModelsResponse(BaseModel):
    models: list[ModelOut]


# ------------------------------------------------------------------------------------------------------ health


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    ready: bool
    reason: str | None = None
    model: str | None = None
    version: str | None = None


# --------------------------------------------------------------------------------------------------- watermark


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str = Field(min_length=1, description="base64 of a PNG, JPEG, WebP or .npy (uint8 HWC) image.")


class VerifyResponse(BaseModel):
    present: bool
    score: float
    payload: str | None = None
    method: str
    model: str | None = Field(None, description="'name:version' whose payload matched, when known here.")


# ------------------------------------------------------------------------------------- Open Inference Protocol v2


V2InputName = Literal["n", "seed", "label", "truncation"]


class V2Tensor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: V2InputName
    shape: list[StrictInt] = Field(max_length=8)
    datatype: Literal["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16", "FP32",
                      "FP64"]
    data: list[StrictInt | StrictFloat | StrictBool] = Field(max_length=16)
    parameters: dict[str, Any] | None = None


class V2OutputRequest(BaseModel):
    name: Literal["samples", "allowed", "labels"]
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    """Inputs (each shape [1]): ``n`` (INT32/INT64, default 1), ``seed`` (INT64), ``label`` (INT32/INT64),
    ``truncation`` (FP32/FP64)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"id": "1", "inputs": [{"name": "n", "shape": [1], "datatype": "INT32", "data": [2]},
                                       {"name": "seed", "shape": [1], "datatype": "INT64", "data": [42]}]}
            ]
        }
    )

    id: str | None = Field(None, max_length=128)
    inputs: list[V2Tensor] = Field(max_length=8)
    outputs: list[V2OutputRequest] | None = Field(None, max_length=8)
    parameters: dict[str, Any] | None = None


class V2OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[int] | list[float] | list[bool]


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    parameters: dict[str, str | int | float | bool]
    outputs: list[V2OutputTensor]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool
