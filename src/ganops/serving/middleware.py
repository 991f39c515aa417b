"""One pure ASGI middleware for every HTTP request, run before any route reads a byte of the body:

1. a request id (``X-Request-ID`` on the response, ``request.state.request_id`` for handlers and audit records);
2. the client's address (the peer, or what a trusted proxy's ``X-Forwarded-For`` says: uvicorn resolves it with
   ``server.trusted_proxies`` only, see ``server.uvicorn_config``) and its request budget (429, before
   authentication; probes and ``/metrics`` excepted);
3. authentication, on every path except the open ones (401; an address that failed too often gets 429 without its
   key even being looked at), so that nothing parses the body of a caller it does not know;
4. the body-size limit (413 before reading when ``Content-Length`` says so, else as soon as the streamed body
   passes it);
5. ``ganops_serving_request_duration_seconds{route,status}`` labelled by the route template
   (``/v2/models/{name}/infer``), never the raw path.

The authenticated :class:`~ganops.serving.auth.Principal` goes to routes as ``scope["state"]["principal"]``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ganops.serving.auth import ApiKeyStore, Principal, TokenBuckets, client_key
from ganops.serving.errors import BodyTooLarge
from ganops.serving.metrics import ServingMetrics

__all__ = ["PROBE_PATHS", "EdgeGuard", "ServingMiddleware", "presented_key"]

# Kubelet and Prometheus call these; they are never rate limited (a 429 would restart or unschedule the pod).
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})


def presented_key(headers: Collection[tuple[bytes, bytes]]) -> str | None:
    """The API key of ``X-API-Key: <key>`` or ``Authorization: Bearer <key>`` (the former wins), else None."""
    bearer: str | None = None
    for name, value in headers:
        if name == b"x-api-key" and value:
            return value.decode("latin-1").strip() or None
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                bearer = credentials.strip()
    return bearer


@dataclass
class Refusal:
    status: int
    code: str
    message: str
    reason: str  # ganops_serving_rejected_total{reason}
    headers: Mapping[str, str] = field(default_factory=dict)
    field: str | None = None


@dataclass(eq=False)
class EdgeGuard:
    """Who is calling and whether to let them in, from the headers alone."""

    keys: ApiKeyStore
    addresses: TokenBuckets  # requests per client address, before authentication
    failures: TokenBuckets  # failed authentications per client address
    open_paths: frozenset[str] = frozenset()  # answered without a key (probes, metrics, the schema)

    def admit(self, scope: Scope) -> Principal | Refusal:
        peer = scope.get("client")
        host = peer[0] if peer else "unknown"
        address = client_key(str(host))
        path = str(scope.get("path", ""))
        if path not in PROBE_PATHS:
            wait = self.addresses.take(address)
            if wait > 0:
                return _too_many(wait, "address_rate_limited", "too many requests from this address")
        if path in self.open_paths or not self.keys.enabled:
            return Principal(None, address)
        wait = self.failures.wait(address)
        if wait > 0:
            return _too_many(wait, "auth_failures", "too many failed authentications from this address")
        key = presented_key(scope.get("headers", []))
        key_id = self.keys.verify(key) if key else None
        if key_id is None:
            self.failures.take(address)
            message = "invalid API key" if key else "an API key is required (Authorization: Bearer <key> or X-API-Key)"
            return Refusal(401, "unauthorized", message, "unauthorized", {"WWW-Authenticate": "Bearer"})
        return Principal(key_id, address)


def _too_many(wait: float, reason: str, message: str) -> Refusal:
    retry = TokenBuckets.retry_after(wait)
    return Refusal(429, "rate_limited", f"{message}; retry in {retry} s", reason, {"Retry-After": str(retry)})


class ServingMiddleware:
    def __init__(
        self, app: ASGIApp, *, metrics: ServingMetrics, max_body_bytes: int, guard: EdgeGuard | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            if self.guard is not None:
                admitted = self.guard.admit(scope)
                if isinstance(admitted, Refusal):
                    status = admitted.status
                    self.metrics.rejected.labels(admitted.reason).inc()
                    await _send_json(send, admitted.status, _error(admitted, request_id), request_id,
                                     admitted.headers)
                    return
                state["principal"] = admitted
            length = _content_length(scope)
            if length is not None and length > self.max_body_bytes:
                status = 413
                await _send_json(send, 413, _too_large(self.max_body_bytes, request_id), request_id)
                return
            await self.app(scope, _limited(receive, self.max_body_bytes), send_with_id)
        except BodyTooLarge:  # raised outside a route (no exception handler ran)
            if not response_started:
                status = 413
                await _send_json(send, 413, _too_large(self.max_body_bytes, request_id), request_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.request_duration.labels(template, str(status)).observe(time.perf_counter() - started)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _limited(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return wrapped


def _error(refusal: Refusal, request_id: str) -> dict[str, Any]:
    detail: dict[str, Any] = {"code": refusal.code, "message": refusal.message}
    if refusal.field is not None:
        detail["field"] = refusal.field
    detail["request_id"] = request_id
    return {"error": detail}


def _too_large(limit: int, request_id: str) -> dict[str, Any]:
    return {
        "error": {
            "code": "payload_too_large",
            "message": f"the request body is larger than {limit} bytes",
            "field": "body",
            "request_id": request_id,
        }
    }


async def _send_json(
    send: Send, status: int, body: dict[str, Any], request_id: str, headers: Mapping[str, str] | None = None
) -> None:
    """An answer before the app ran: the body was not read, so the connection closes (nothing is left to parse)."""
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"x-request-id", request_id.encode()),
                (b"connection", b"close"),
                *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
