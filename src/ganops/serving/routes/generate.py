"""``POST /v1/generate``: samples of the served model, each with its safety verdicts, watermarked and encoded."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ganops.serving.dependencies import PrincipalDep, ServicesDep
from ganops.serving.errors import responses
from ganops.serving.schemas import GenerateRequest, GenerateResponse, GridOut, SampleOut, VerdictOut
from ganops.serving.service import GenerationJob, run_generation

router = APIRouter(tags=["generate"])


@router.post(
    "/v1/generate",
    response_model=GenerateResponse,
    summary="Generate samples",
    responses=responses(400, 401, 404, 413, 422, 429, 500, 503, 504),
)
async def generate(body: GenerateRequest, request: Request, services: ServicesDep, principal: PrincipalDep) -> Response:
    request_id: str = request.state.request_id
    job = GenerationJob(
        n=body.n, seed=body.seed, label=body.label, truncation=body.truncation, format=body.format, grid=body.grid,
        model=body.model,
    )
    result = await run_generation(services, principal, request_id, job)
    deployment, output = result.deployment, result.output
    samples = [
        SampleOut(
            index=item.index,
            label=item.label,
            allowed=item.decision.allowed,
            replaced=item.decision.replaced,
            blocked_by=item.decision.blocked_by,
            reason=item.decision.reason or None,
            data=item.data_b64,
            point=item.point,
            verdicts=[VerdictOut(filter=v.filter, outcome=v.outcome, reason=v.reason, score=v.score)
                      for v in item.decision.verdicts],
        )
        for item in output.samples
    ]
    grid = None
    if output.grid is not None:
        count = sum(1 for s in output.samples if s.decision.output is not None)
        grid = GridOut(data=output.grid_b64 or "", media_type=output.media_type, count=count)
    response = GenerateResponse(
        request_id=request_id,
        model=deployment.model.name,
        version=deployment.ref.version,
        alias=deployment.alias,
        seed=result.seed,
        n=body.n,
        label=body.label,
        truncation=result.truncation,
        format=body.format,
        media_type=output.media_type,
        watermarked=deployment.model.is_image or body.grid,
        blocked=output.blocked,
        samples=samples,
        grid=grid,
    )
    return Response(response.model_dump_json(), media_type="application/json")
