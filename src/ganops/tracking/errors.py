"""How MLflow failures are told apart and described: the two exceptions, transient or not, and redaction.

Every message the tracking package writes goes through :func:`redact` (credentials reach MLflow only through its own
environment variables, ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN``, and never appear in a log line).
"""

from __future__ import annotations

import os
import re

_SECRET_ENV = (
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "DATABRICKS_TOKEN",
    "DATABRICKS_CLIENT_SECRET",
)


class TrackingError(Exception):
    """MLflow refused a request (bad argument, missing model or version, permission): retrying will not help."""


class TrackingUnavailable(TrackingError):
    """MLflow did not answer (down, unreachable, timing out, 5xx) after a few quick retries."""


_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
# The query string of a URL: presigned URLs carry their credential there (X-Amz-Credential, X-Amz-Signature,
# X-Amz-Security-Token, X-Goog-Signature, Azure's sig=, token=…). All of it goes, whatever the parameter names.
_URL_QUERY = re.compile(r"(://[^\s?#'\"]*)\?[^\s#'\"]*")
# name=value pairs outside a URL whose name says secret (e.g. "token=abc" in an error message).
_SECRET_PAIR = re.compile(
    r"(?i)\b([\w.-]*(?:token|password|passwd|secret|api_?key|signature|credential|sig)=)[^&\s'\"#]+"
)


def redact(text: str) -> str:
    """``text`` without credentials: URL user-info, URL query strings (presigned URLs), secret ``name=value``
    pairs and values of known secret env vars. Applied to every message ganops writes about MLflow and to every
    param and tag value it sends there."""
    text = _USERINFO.sub("***@", text)
    text = _URL_QUERY.sub(r"\1?***", text)
    text = _SECRET_PAIR.sub(r"\1***", text)
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _short(exc: BaseException, limit: int = 300) -> str:
    """One redacted line describing ``exc`` (MLflow's messages can carry pages of advice)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status an MLflow or requests error stands for; None for transport failures (refused, reset,
    DNS, timeout), which MLflow's client wraps as plain INTERNAL_ERROR exceptions."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status
    try:
        from mlflow.exceptions import ERROR_CODE_TO_HTTP_STATUS, MlflowException, RestException
    except ImportError:  # pragma: no cover - mlflow is an extra
        return None
    if not isinstance(exc, MlflowException):
        return None
    if not isinstance(exc, RestException):
        message = str(exc)
        if message.startswith("API request to") and (
            " failed with exception " in message or " failed with timeout exception " in message
        ):
            return None
    code = _error_code(exc)
    return ERROR_CODE_TO_HTTP_STATUS.get(code, 500) if code else 500


def _error_code(exc: BaseException) -> str | None:
    code = getattr(exc, "error_code", None)
    return code if isinstance(code, str) else None


def is_transient(exc: BaseException) -> bool:
    """Whether retrying later may succeed: transport failures, timeouts, 5xx, 429, and auth failures (401/403: a
    rotated Secret is picked up by the next attempt; discarding data because a token expired would be worse).
    Anything else (4xx, or a non-I/O error such as a TypeError) will fail again the same way."""
    if _error_code(exc) == "ENDPOINT_NOT_FOUND":  # a proxy in front of a server that is still starting
        return True
    status = _http_status(exc)
    if status is None:
        return isinstance(exc, OSError | TimeoutError) or _error_code(exc) is not None
    return status >= 500 or status in (401, 403, 408, 429)


def _not_found(exc: BaseException) -> bool:
    return _error_code(exc) == "RESOURCE_DOES_NOT_EXIST"


def _already_exists(exc: BaseException) -> bool:
    return _error_code(exc) == "RESOURCE_ALREADY_EXISTS"


__all__ = ["TrackingError", "TrackingUnavailable", "is_transient", "redact"]
