"""The data plane both faces of the API share (``/v1/generate`` and the Open Inference Protocol's ``infer``):
route a seed to a deployment, check the request against the model and the policy, queue it for a forward pass,
the generator runs safety, watermark and encoding after it (for a whole micro-batch at once when batching) — all
within the request timeout."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

from ganops.serving.auth import Principal
from ganops.serving.batching import QueueFull, ShuttingDown
from ganops.serving.dependencies import Services
from ganops.serving.errors import ApiError
from ganops.serving.generation import Format, GenerationOutput, PostJob
from ganops.serving.model_store import Deployment, NotReady
from ganops.serving.safety import RequestContext, check_request

__all__ = ["GenerationJob", "GenerationResult", "problem_field", "run_generation"]


@dataclass(frozen=True)
class GenerationJob:
    n: int = 1
    seed: int | None = None
    label: int | None = None
    truncation: float | None = None
    format: Format = "png"
    grid: bool = False
    model: str | None = None  # must name the served model when given
    version: str | None = None  # pin a loaded version (OIP versions/{v}/infer); no canary split then


@dataclass(frozen=True)
class GenerationResult:
    deployment: Deployment
    seed: int
    truncation: float | None
    output: GenerationOutput
    labels: list[int] | None


def problem_field(problem: str) -> str:
    """Which request field a problem from :func:`check_request` is about."""
    if problem.startswith(("n ", "n=", "images of")):
        return "n"
    if problem.startswith("truncation"):
        return "truncation"
    if problem.startswith("format"):
        return "format"
    return "label"


def _unavailable(services: Services, reason: str, message: str) -> ApiError:
    services.metrics.rejected.labels(reason).inc()
    retry = str(services.settings.limits.retry_after_s)
    return ApiError(503, message, headers={"Retry-After": retry})


async def run_generation(
    services: Services, principal: Principal, request_id: str, job: GenerationJob
) -> GenerationResult:
    services.charge(principal, job.n)  # one token per sample asked for (429 before any work)
    if services.draining:
        raise _unavailable(services, "draining", "the server is shutting down")
    seed = job.seed if job.seed is not None else secrets.randbits(63)
    store = services.store
    if job.version is not None:
        found = store.by_version(job.version)
        if found is None:
            raise ApiError(404, f"version {job.version!r} is not served here", field="version")
        deployment = found
    else:
        try:
            deployment = store.route(seed)
        except NotReady:
            raise _unavailable(services, "not_ready", "no model is loaded yet") from None
    model = deployment.model
    if job.model is not None and job.model != model.name:
        raise ApiError(404, f"unknown model {job.model!r}; this server serves {model.name!r}", field="model")

    truncation = job.truncation if job.truncation is not None else model.default_truncation
    problems = check_request(
        job.n,
        job.label,
        job.truncation,
        image_size=model.image_size,
        num_classes=model.num_classes,
        output_format=job.format,
        policy=services.policy,
    )
    if problems:
        fields = [(problem_field(p), p) for p in problems]
        raise ApiError(422, "; ".join(problems), field=fields[0][0], fields=fields)

    z = model.latents(job.n, seed, truncation)
    y = model.labels(job.n, job.label)
    labels = None if y is None else [int(v) for v in y]
    context = RequestContext(request_id, model.name, model.version, job.label, principal.key_id)
    settings = services.settings
    post = PostJob(job.n, labels, context, job.format, job.grid, settings.jpeg_quality, settings.png_compress_level)
    try:
        async with asyncio.timeout(settings.limits.request_timeout_s):
            output: GenerationOutput = await services.generator.submit(model, z, y, post)
    except QueueFull:
        raise _unavailable(services, "queue_full", "the server is busy (queue full); retry shortly") from None
    except ShuttingDown:
        raise _unavailable(services, "draining", "the server is shutting down") from None
    except TimeoutError:
        services.metrics.rejected.labels("timeout").inc()
        raise ApiError(504, f"the request did not finish within {settings.limits.request_timeout_s:g} s") from None
    services.metrics.stage_duration.labels("safety").observe(output.safety_seconds)
    services.metrics.stage_duration.labels("encode").observe(output.encode_seconds)
    return GenerationResult(deployment, seed, truncation, output, labels)
