"""Run the serving app under uvicorn: ``python -m ganops.serving`` or :func:`run` (what ``ganops serve`` calls).

On SIGTERM/SIGINT uvicorn stops accepting connections, lets in-flight requests finish for up to
``shutdown_timeout_s``, then the app's lifespan drains the batcher and stops its threads.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from ganops.serving.app import create_app
from ganops.serving.settings import ServingSettings

__all__ = ["main", "run", "uvicorn_config"]


def uvicorn_config(settings: ServingSettings, **overrides: Any) -> uvicorn.Config:
    app = create_app(settings)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": settings.access_log,
        "timeout_graceful_shutdown": int(settings.shutdown_timeout_s),
        "lifespan": "on",
        "server_header": False,
        "date_header": True,
        **overrides,
    }
    return uvicorn.Config(app, **options)


def run(settings: ServingSettings | None = None) -> None:
    """Serve until SIGTERM/SIGINT (blocking)."""
    settings = settings or ServingSettings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    uvicorn.Server(uvicorn_config(settings)).run()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ganops.serving",
        description="Serve a ganops model over HTTP. Every setting can also come from GANOPS_SERVING_* variables "
        "or a YAML/JSON config file.",
    )
    parser.add_argument("--config", help="YAML/JSON settings file (GANOPS_SERVING_CONFIG_FILE)")
    parser.add_argument("--model", help="'name@alias' in the MLflow registry")
    parser.add_argument("--mlflow-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    parser.add_argument("--checkpoint-uri", help="serve a checkpoint directly (no MLflow)")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {
        "config_file": args.config,
        "model": args.model,
        "mlflow_uri": args.mlflow_uri,
        "checkpoint_uri": args.checkpoint_uri,
        "host": args.host,
        "port": args.port,
    }
    try:
        settings = ServingSettings(**{k: v for k, v in overrides.items() if v is not None})
    except (ValueError, FileNotFoundError) as exc:
        print(f"ganops serving: invalid settings: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if not settings.model and not settings.checkpoint_uri:
        print("ganops serving: nothing to serve: set --model (with --mlflow-uri) or --checkpoint-uri "
              "(or GANOPS_SERVING_MODEL / GANOPS_SERVING_CHECKPOINT_URI)", file=sys.stderr)
        raise SystemExit(2)
    run(settings)
