"""The Open Inference Protocol (KServe v2, REST) as a second face of the same data plane.

``POST /v2/models/{name}/infer`` takes scalar input tensors (shape ``[1]``): ``n`` (INT*, default 1), ``seed``
(INT*), ``label`` (INT*), ``truncation`` (FP* or INT*). It answers the tensors ``samples`` (UINT8 ``[n, H, W, C]``,
watermarked, for image models; FP32 ``[n, 2]`` for 2-D models; zeros where a sample was withheld), ``allowed``
(BOOL ``[n]``) and, for conditional models, ``labels`` (INT64 ``[n]``), plus parameters ``seed``, ``alias``,
``blocked`` and ``reasons`` (a JSON list, one reason per sample, "" when allowed). ``versions/{version}/infer``
pins a loaded version (no canary split). Errors use this API's JSON error body, not the protocol's bare string.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ganops import __version__
from ganops.serving.dependencies import PrincipalDep, Services, ServicesDep
from ganops.serving.errors import ApiError, responses
from ganops.serving.model_store import Deployment
from ganops.serving.schemas import (
    V2InferRequest,
    V2InferResponse,
    V2Live,
    V2ModelMetadata,
    V2OutputTensor,
    V2Ready,
    V2ServerMetadata,
    V2TensorMetadata,
)
from ganops.serving.service import GenerationJob, run_generation

router = APIRouter(tags=["open inference protocol v2"])

_INT_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_FLOAT_TYPES = {"FP16", "FP32", "FP64"}
_INPUTS: dict[str, set[str]] = {
    "n": _INT_TYPES,
    "seed": _INT_TYPES,
    "label": _INT_TYPES,
    "truncation": _FLOAT_TYPES | _INT_TYPES,
}


@router.get("/v2", response_model=V2ServerMetadata, summary="Server metadata")
async def server_metadata() -> V2ServerMetadata:
    return V2ServerMetadata(name="ganops", version=__version__, extensions=[])


@router.get("/v2/health/live", response_model=V2Live, summary="Liveness (OIP)")
async def live() -> V2Live:
    return V2Live(live=True)


@router.get(
    "/v2/health/ready",
    response_model=V2Ready,
    summary="Readiness (OIP)",
    responses={503: {"model": V2Ready, "description": "Not ready."}},
)
async def ready(services: ServicesDep) -> JSONResponse:
    return JSONResponse({"ready": services.ready}, status_code=200 if services.ready else 503)


def _deployment(services: Services, name: str, version: str | None = None) -> Deployment:
    deployments = services.store.deployments()
    if not deployments:
        raise ApiError(503, "no model is loaded yet",
                       headers={"Retry-After": str(services.settings.limits.retry_after_s)})
    if name != deployments[0].model.name:
        raise ApiError(404, f"unknown model {name!r}", field="name")
    if version is None:
        return deployments[0]
    for dep in deployments:
        if dep.ref.version == version:
            return dep
    raise ApiError(404, f"version {version!r} of {name!r} is not served here", field="version")


def _metadata(services: Services, dep: Deployment) -> V2ModelMetadata:
    model = dep.model
    scalar = [1]
    inputs = [V2TensorMetadata(name="n", datatype="INT32", shape=scalar),
              V2TensorMetadata(name="seed", datatype="INT64", shape=scalar),
              V2TensorMetadata(name="truncation", datatype="FP32", shape=scalar)]
    if model.num_classes:
        inputs.append(V2TensorMetadata(name="label", datatype="INT32", shape=scalar))
    if model.is_image:
        samples = V2TensorMetadata(name="samples", datatype="UINT8", shape=[-1, *model.sample_shape])
    else:
        samples = V2TensorMetadata(name="samples", datatype="FP32", shape=[-1, 2])
    outputs = [samples, V2TensorMetadata(name="allowed", datatype="BOOL", shape=[-1])]
    if model.num_classes:
        outputs.append(V2TensorMetadata(name="labels", datatype="INT64", shape=[-1]))
    versions = sorted({d.ref.version for d in services.store.deployments()})
    return V2ModelMetadata(name=model.name, versions=versions, platform="pytorch_safetensors", inputs=inputs,
                           outputs=outputs)


@router.get("/v2/models/{name}", response_model=V2ModelMetadata, summary="Model metadata (OIP)",
            responses=responses(401, 404, 429, 503))
async def model_metadata(name: str, services: ServicesDep, principal: PrincipalDep) -> V2ModelMetadata:
    services.charge(principal, 1)
    return _metadata(services, _deployment(services, name))


@router.get("/v2/models/{name}/versions/{version}", response_model=V2ModelMetadata,
            summary="Model version metadata (OIP)", responses=responses(401, 404, 429, 503))
async def version_metadata(name: str, version: str, services: ServicesDep, principal: PrincipalDep) -> V2ModelMetadata:
    services.charge(principal, 1)
    return _metadata(services, _deployment(services, name, version))


@router.get("/v2/models/{name}/ready", response_model=V2Ready, summary="Model readiness (OIP)",
            responses=responses(401, 404, 429, 503))
async def model_ready(name: str, services: ServicesDep, principal: PrincipalDep) -> V2Ready:
    services.charge(principal, 1)
    _deployment(services, name)
    return V2Ready(ready=services.ready)


def _scalars(body: V2InferRequest) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for i, tensor in enumerate(body.inputs):
        where = f"inputs.{i}"
        if tensor.name not in _INPUTS:
            known = ", ".join(_INPUTS)
            raise ApiError(422, f"unknown input {tensor.name!r}; inputs are {known}", field=f"{where}.name")
        if tensor.name in values:
            raise ApiError(422, f"input {tensor.name!r} is given twice", field=f"{where}.name")
        if tensor.datatype not in _INPUTS[tensor.name]:
            raise ApiError(422, f"input {tensor.name!r} cannot be {tensor.datatype}", field=f"{where}.datatype")
        if any(d < 0 for d in tensor.shape) or math.prod(tensor.shape) != 1 or len(tensor.data) != 1:
            raise ApiError(422, f"input {tensor.name!r} must have shape [1] and one value", field=f"{where}.shape")
        value = tensor.data[0]
        if isinstance(value, bool):
            raise ApiError(422, f"input {tensor.name!r} must be a number", field=f"{where}.data")
        if tensor.datatype in _INT_TYPES and not isinstance(value, int):
            raise ApiError(422, f"input {tensor.name!r} must be an integer", field=f"{where}.data")
        if tensor.name == "truncation":
            number = float(value)
            if not math.isfinite(number):
                raise ApiError(422, "truncation must be a finite number", field=f"{where}.data")
            values[tensor.name] = number
        else:
            values[tensor.name] = int(value)
    if "seed" in values and not 0 <= values["seed"] < 2**63:
        raise ApiError(422, "seed must be in [0, 2^63)", field="seed")
    return values


async def _infer(services: Services, principal: Any, request: Request, name: str, version: str | None,
                 body: V2InferRequest) -> Response:
    dep = _deployment(services, name, version)
    values = _scalars(body)
    available = {"samples", "allowed"} | ({"labels"} if dep.model.num_classes else set())
    wanted = {o.name for o in body.outputs} if body.outputs else available
    if wanted - available:
        raise ApiError(422, f"unknown output(s) {', '.join(sorted(wanted - available))}; outputs are "
                       f"{', '.join(sorted(available))}", field="outputs")
    request_id: str = request.state.request_id
    job = GenerationJob(n=values.get("n", 1), seed=values.get("seed"), label=values.get("label"),
                        truncation=values.get("truncation"), format="npy", grid=False, model=name, version=version)
    result = await run_generation(services, principal, request_id, job)
    model = result.deployment.model
    items = result.output.samples
    n = len(items)
    if model.is_image:
        shape = model.sample_shape
        samples = np.zeros((n, *shape), dtype=np.uint8)
        for i, item in enumerate(items):
            if item.pixels is not None:
                samples[i] = item.pixels.reshape(shape)
        data: list[int] | list[float] = samples.reshape(-1).tolist()
        tensor = V2OutputTensor.model_construct(name="samples", shape=[n, *shape], datatype="UINT8", data=data)
    else:
        points = np.zeros((n, 2), dtype=np.float32)
        for i, item in enumerate(items):
            if item.point is not None:
                points[i] = item.point
        tensor = V2OutputTensor.model_construct(name="samples", shape=[n, 2], datatype="FP32",
                                                data=points.reshape(-1).tolist())
    outputs = [tensor, V2OutputTensor.model_construct(
        name="allowed", shape=[n], datatype="BOOL", data=[item.decision.allowed for item in items])]
    if result.labels is not None:
        outputs.append(V2OutputTensor.model_construct(name="labels", shape=[n], datatype="INT64", data=result.labels))
    outputs = [o for o in outputs if o.name in wanted]
    response = V2InferResponse.model_construct(
        model_name=model.name,
        model_version=result.deployment.ref.version,
        id=body.id or request_id,
        parameters={
            "seed": result.seed,
            "alias": result.deployment.alias,
            "blocked": result.output.blocked,
            "reasons": json.dumps([item.decision.reason for item in items]),
        },
        outputs=outputs,
    )
    return Response(response.model_dump_json(), media_type="application/json")


_INFER_ERRORS = responses(400, 401, 404, 413, 422, 429, 500, 503, 504)


@router.post("/v2/models/{name}/infer", response_model=V2InferResponse, summary="Inference (OIP)",
             responses=_INFER_ERRORS)
async def infer(name: str, body: V2InferRequest, request: Request, services: ServicesDep,
                principal: PrincipalDep) -> Response:
    return await _infer(services, principal, request, name, None, body)


@router.post("/v2/models/{name}/versions/{version}/infer", response_model=V2InferResponse,
             summary="Inference on a pinned version (OIP)", responses=_INFER_ERRORS)
async def infer_version(name: str, version: str, body: V2InferRequest, request: Request, services: ServicesDep,
                        principal: PrincipalDep) -> Response:
    return await _infer(services, principal, request, name, version, body)
