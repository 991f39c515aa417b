"""Unauthenticated probes and metrics: ``/healthz`` (the process answers), ``/readyz`` (a model is loaded and
requests are accepted), ``/metrics`` (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from ganops.serving.dependencies import ServicesDep
from ganops.serving.metrics import CONTENT_TYPE_LATEST
from ganops.serving.schemas import HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse, summary="Liveness")
async def healthz() -> HealthResponse:
    return HealthResponse()


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    summary="Readiness: a model is loaded",
    responses={503: {"model": ReadyResponse, "description": "Not ready (starting, no model yet, or draining)."}},
)
async def readyz(services: ServicesDep) -> JSONResponse:
    services.update_ready()
    primary = services.store.primary
    body = ReadyResponse(
        ready=services.ready,
        reason=services.not_ready_reason(),
        model=primary.model.name if primary is not None else None,
        version=primary.ref.version if primary is not None else None,
    )
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                     "description": "Prometheus text exposition format."}},
)
async def metrics(services: ServicesDep) -> Response:
    services.update_ready()
    return Response(services.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
