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
from ganops.serving.gate import WorkGate
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
    verify_gate: WorkGate
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
        if not self.store.ready:  # the error's kind only: its message may name internal hosts and bucket paths
            error = self.store.last_error
            return "no model loaded yet" + (f" ({error.split(':', 1)[0]})" if error else "")
        return None

    def update_ready(self) -> None:
        self.metrics.ready.set(1 if self.ready else 0)

    def charge(self, principal: Principal, cost: float) -> None:
        """Take ``cost`` tokens from the caller's bucket (samples asked for, uploaded pixels) or raise 429."""
        wait = self.buckets.take(principal.bucket, max(1.0, cost))
        if wait > 0:
            self.metrics.rejected.labels("rate_limited").inc()
            retry = TokenBuckets.retry_after(wait)
            raise ApiError(429, f"rate limit exceeded; retry in {retry} s", headers={"Retry-After": str(retry)})


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <API key>")


async def authenticate(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_api_key)],
) -> Principal:
    """The caller, as the edge guard (:class:`~ganops.serving.middleware.EdgeGuard`) authenticated it from the
    headers before the app read the body. The header dependencies only document the two ways to send a key in
    the OpenAPI schema. Without the guard's answer the request is refused (fail-closed)."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        raise ApiError(401, "an API key is required (Authorization: Bearer <key> or X-API-Key)",
                       headers={"WWW-Authenticate": "Bearer"})
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]
