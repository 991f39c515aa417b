"""One pure ASGI middleware for every HTTP request: a request id (``X-Request-ID`` on the response, ``request.state
.request_id`` for handlers and audit records), the body-size limit (413 before reading when ``Content-Length``
says so, else as soon as the streamed body passes it), and ``ganops_serving_request_duration_seconds{route,status}``
labelled by the route template (``/v2/models/{name}/infer``), never the raw path."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ganops.serving.errors import BodyTooLarge
from ganops.serving.metrics import ServingMetrics

__all__ = ["ServingMiddleware"]


class ServingMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: ServingMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
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


def _too_large(limit: int, request_id: str) -> dict[str, Any]:
    return {
        "error": {
            "code": "payload_too_large",
            "message": f"the request body is larger than {limit} bytes",
            "field": "body",
            "request_id": request_id,
        }
    }


async def _send_json(send: Send, status: int, body: dict[str, Any], request_id: str) -> None:
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
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
