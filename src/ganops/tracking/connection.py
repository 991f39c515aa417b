"""The one way the tracking package reaches MLflow: an :class:`mlflow.MlflowClient` for a tracking URI.

Only the client is used (never the fluent ``mlflow.start_run`` state), so a process may hold several trackers.
On first use this sets process-wide defaults for MLflow's HTTP client unless already set in the environment:
``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` (retries are ours, so an outage is noticed at once),
``MLFLOW_HTTP_REQUEST_TIMEOUT=10`` and ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=true``.
"""

from __future__ import annotations

import os
from typing import Any

_MLFLOW_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def _configure_mlflow_env() -> None:
    for name, value in _MLFLOW_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


def client(tracking_uri: str) -> Any:
    """An ``MlflowClient`` for ``tracking_uri`` (tracking and registry both), after MLflow's HTTP defaults are set."""
    _configure_mlflow_env()
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _quote(value: str) -> str:
    """A value for an MLflow search filter's single-quoted string."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


__all__ = ["client"]
