"""``GET /v1/models``: what serves now (primary and canary), with the generation settings and active filters.

Names and versions only: where the weights are stored (bucket paths) is the operators' business, not every key
holder's (docs/security.md)."""

from __future__ import annotations

from fastapi import APIRouter

from ganops.serving.dependencies import PrincipalDep, ServicesDep
from ganops.serving.errors import responses
from ganops.serving.model_store import Deployment
from ganops.serving.schemas import ModelOut, ModelsResponse

router = APIRouter(tags=["models"])


def model_out(deployment: Deployment, canary_percent: float, has_canary: bool) -> ModelOut:
    model = deployment.model
    spec = model.spec
    share = 100.0 - canary_percent if has_canary else 100.0
    if deployment.role == "canary":
        share = canary_percent
    return ModelOut(
        name=model.name,
        version=deployment.ref.version,
        alias=deployment.alias,
        role=deployment.role,
        traffic_percent=share,
        architecture=spec.architecture,
        kind="image" if model.is_image else "points",
        image_size=model.image_size,
        channels=spec.channels if model.is_image else None,
        latent_dim=spec.latent_dim,
        num_classes=spec.num_classes,
        ema=model.ema,
        default_truncation=model.default_truncation,
        step=model.step,
        loaded_at=model.loaded_at,
        filters=model.pipeline.filter_names,
        skipped_filters=dict(model.skipped_filters),
    )


@router.get("/v1/models", response_model=ModelsResponse, summary="Served models",
            responses=responses(401, 429, 500))
async def list_models(services: ServicesDep, principal: PrincipalDep) -> ModelsResponse:
    services.charge(principal, 1)
    store = services.store
    deployments = store.deployments()
    has_canary = store.canary is not None and store.canary_percent > 0
    percent = store.canary_percent if has_canary else 0.0
    return ModelsResponse(models=[model_out(d, percent, has_canary) for d in deployments])
