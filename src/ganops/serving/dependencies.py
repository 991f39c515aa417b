"""The app's shared parts (:class:`Services`) and the typed FastAPI dependencies routes declare."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from ganops.serving.auth import ApiKeyStore, Principal, TokenBuckets
from ganops.serving.batching import Generator
from ganops.serving.errors import ApiError
from ganops.serving.metrics import ServingMetrics
from ganops.serving.model_store import ModelStore
from ganops.serving.safety import RequestPolicy, Watermarker
from ganops.serving.settings import ServingSettings

__all__ = ["PrincipalDep", "Services", "ServicesDep", "authenticate", "get_services"]


@dataclass(eq=False)
class Services:
    settings: ServingSettings
    metrics: ServingMetrics
    store: ModelStore
    generator: Generator
    keys: ApiKeyStore
    buckets: TokenBuckets
    verifier: Watermarker  # same key as every model's watermarker; verifies any of them
    policy: RequestPolicy
    post_executor: ThreadPoolExecutor | None = None
    started: bool = False
    draining: bool = False

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and self.store.ready

    def not_ready_reason(self) -> str | None:
        if self.draining:
            return "shutting down"
        if not self.started:
            return "starting"
        if not self.store.ready:
            return "no model loaded yet" + (f" ({self.store.last_error})" if self.store.last_error else "")
        return None

    def update_ready(self) -> None:
        self.metrics.ready.set(1 if self.ready else 0)


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <API key>")


async def authenticate(
    request: Request,
    services: ServicesDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_api_key)],
) -> Principal:
    """The caller's key id (401 without a valid key when keys are configured), after its rate limit (429)."""
    client = request.client.host if request.client is not None else "unknown"
    if services.keys.enabled:
        presented = header_key or (bearer.credentials if bearer is not None and bearer.scheme.lower() == "bearer"
                                   else None)
        if not presented:
            services.metrics.rejected.labels("unauthorized").inc()
            raise ApiError(401, "an API key is required (Authorization: Bearer <key> or X-API-Key)",
                           headers={"WWW-Authenticate": "Bearer"})
        key_id = services.keys.verify(presented)
        if key_id is None:
            services.metrics.rejected.labels("unauthorized").inc()
            raise ApiError(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
        principal = Principal(key_id, client)
    else:
        principal = Principal(None, client)
    wait = services.buckets.take(principal.bucket)
    if wait > 0:
        services.metrics.rejected.labels("rate_limited").inc()
        retry = TokenBuckets.retry_after(wait)
        raise ApiError(429, f"rate limit exceeded; retry in {retry} s", headers={"Retry-After": str(retry)})
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]
