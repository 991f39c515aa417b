"""Every error leaves the server as JSON ``{"error": {"code", "message", "field"?, "fields"?, "request_id"?}}``:
validation problems name the field, nothing ever carries a stack trace (those go to the log)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ganops.serving.schemas import ErrorResponse

__all__ = ["ERROR_RESPONSES", "ApiError", "BodyTooLarge", "error_response", "install_error_handlers"]

logger = logging.getLogger(__name__)

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
    504: "timeout",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        fields: Sequence[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _STATUS_CODES.get(status, "error")
        self.field = field
        self.fields = list(fields) if fields else None
        self.headers = dict(headers or {})


class BodyTooLarge(StarletteHTTPException):
    """The request body passed ``limits.max_body_bytes`` (raised while it is being read). An HTTPException so that
    FastAPI's body parsing lets it through instead of turning it into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")
        self.limit = limit


def _request_id(request: Request) -> str | None:
    value = getattr(request.state, "request_id", None)
    return str(value) if value is not None else None


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    fields: Sequence[tuple[str, str]] | None = None,
    request_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    detail: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        detail["field"] = field
    if fields:
        detail["fields"] = [{"field": f, "message": m} for f, m in fields]
    if request_id is not None:
        detail["request_id"] = request_id
    return JSONResponse({"error": detail}, status_code=status, headers=dict(headers or {}))


# What FastAPI raises (HTTPException 400) when decoding a JSON body fails with anything but a JSONDecodeError.
FASTAPI_BODY_PARSE_ERROR = "There was an error parsing the body"


def _field_name(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def _validation_response(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    for err in errors:
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            why = ctx.get("error", "invalid JSON")
            return error_response(
                400, "malformed_json", f"the body is not valid JSON: {why}", field="body",
                request_id=_request_id(request),
            )
    fields: list[tuple[str, str]] = []
    for err in errors:
        name = _field_name(err.get("loc", ()))
        message = str(err.get("msg", "invalid"))
        if err.get("type") == "missing" and name == "body":
            message = "a JSON object body is required"
        elif err.get("type") == "extra_forbidden":
            message = "unknown field"
        fields.append((name, message))
    summary = "; ".join(f"{name}: {message}" for name, message in fields[:5])
    return error_response(
        422, "invalid_request", summary, field=fields[0][0] if fields else None, fields=fields,
        request_id=_request_id(request),
    )


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(
            exc.status, exc.code, exc.message, field=exc.field, fields=exc.fields, request_id=_request_id(request),
            headers=exc.headers,
        )

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _validation_response(request, exc)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else str(jsonable_encoder(exc.detail))
        if exc.status_code == 400 and message == FASTAPI_BODY_PARSE_ERROR:  # json.loads raised other than a syntax
            return error_response(  # error: nested too deeply, a number of too many digits, bytes that are not UTF-8
                400, "malformed_json", "the body cannot be read as JSON (not UTF-8, nested too deeply, or a number "
                "with too many digits)", field="body", request_id=_request_id(request),
            )
        return error_response(
            exc.status_code, _STATUS_CODES.get(exc.status_code, "error"), message, request_id=_request_id(request),
            headers=exc.headers,
        )

    async def too_large(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BodyTooLarge)
        return error_response(
            413, "payload_too_large", f"the request body is larger than {exc.limit} bytes", field="body",
            request_id=_request_id(request),
        )

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error(
            "unhandled error in %s %s (request %s)", request.method, request.url.path, _request_id(request),
            exc_info=exc,
        )
        return error_response(500, "internal", "internal server error", request_id=_request_id(request))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(BodyTooLarge, too_large)
    app.add_exception_handler(Exception, unexpected)


def _doc(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _doc("Malformed request (bad JSON, undecodable image)."),
    401: _doc("Missing or invalid API key."),
    404: _doc("Unknown model or version."),
    413: _doc("Request body too large."),
    422: _doc("Invalid field values (the message names the field)."),
    429: _doc("Rate limit exceeded; see Retry-After."),
    500: _doc("Internal error (no details are returned; see the server log with the request id)."),
    503: _doc("Not ready, draining, or the queue is full; see Retry-After."),
    504: _doc("The request did not finish within limits.request_timeout_s."),
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: ERROR_RESPONSES[code] for code in codes}
