"""Run the serving app under uvicorn: :func:`run`, what ``ganops serve`` (and its alias ``python -m ganops.serving``)
calls after :func:`preflight`.

On SIGTERM/SIGINT uvicorn stops accepting connections, lets in-flight requests finish for up to
``shutdown_timeout_s``, then the app's lifespan drains the batcher and stops its threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import uvicorn

from ganops import logs
from ganops.serving.app import create_app
from ganops.serving.model_store import CheckpointResolver, ModelRef, RegistryResolver
from ganops.serving.protocol import guarded_protocol
from ganops.serving.settings import ServingSettings

__all__ = ["CannotServe", "preflight", "run", "uvicorn_config"]


class CannotServe(RuntimeError):
    """What the settings name cannot be served: no such model/alias, MLflow or the checkpoint unreachable."""


def preflight(settings: ServingSettings) -> ModelRef:
    """Resolve what ``settings`` name once, before starting (``ganops serve``): the version the server will load.

    A long-running server tolerates an unreachable MLflow (it stays not-ready and keeps polling); a person typing
    ``ganops serve --model digits@production`` wants to hear at once that the name, the alias or the store is wrong.
    Raises :class:`CannotServe` with a one-line reason.
    """
    from ganops import storage, tracking
    from ganops.checkpoints import CheckpointError, require_manifest

    if settings.checkpoint_uri:
        try:
            ref, _ = CheckpointResolver(settings.checkpoint_uri, settings.model_name).resolve()
        except (storage.StorageError, CheckpointError, ValueError, KeyError) as exc:
            raise CannotServe(f"cannot read checkpoint {settings.checkpoint_uri}: {exc}") from None
        assert ref is not None
        return ref
    if not settings.model:
        raise CannotServe("nothing to serve: give a model ('name@alias' in MLflow) or a checkpoint URI")
    uri = settings.resolved_mlflow_uri()
    assert uri is not None  # the settings validator insists
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise CannotServe(f"no MLflow store at {path} (train and promote first, e.g. `ganops run JOB.yaml`)")
    name, alias = settings.registered_name, settings.alias
    where = tracking.redact(uri)
    try:
        primary, _ = RegistryResolver(uri, name, alias).resolve()
        if primary is None:
            versions = tracking.list_versions(uri, name)
    except tracking.TrackingError as exc:
        raise CannotServe(str(exc)) from None
    if primary is None:
        if not versions:
            raise CannotServe(f"model {name!r} is not registered in MLflow at {where}")
        known = sorted({a for v in versions for a in v.aliases})
        raise CannotServe(
            f"model {name!r} has no alias {alias!r} in MLflow at {where} "
            f"(aliases: {', '.join(known) if known else 'none'}; versions: {', '.join(v.version for v in versions)})"
        )
    try:
        require_manifest(primary.checkpoint_uri)
    except (storage.StorageError, CheckpointError) as exc:
        problem = f"{name}@{alias} is version {primary.version}, whose checkpoint cannot be read: {exc}"
        raise CannotServe(problem) from None
    return primary


def uvicorn_config(settings: ServingSettings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for ``settings``: the app, and the connection limits of ``settings.server``.

    * ``http``: the httptools protocol with a head-size limit (431) and head/body read timeouts (408)
      (:mod:`ganops.serving.protocol`);
    * ``limit_concurrency``: connections + requests in progress beyond it get 503 at once;
    * ``proxy_headers`` only with ``server.trusted_proxies``, and then ``X-Forwarded-For`` is honoured from those
      addresses alone (uvicorn's default would trust it from 127.0.0.1 and ``FORWARDED_ALLOW_IPS``);
    * no WebSockets (the API has none: no upgrade path to attack).
    """
    app = create_app(settings)
    metrics = app.state.services.metrics
    server = settings.server

    def refused(reason: str) -> None:
        metrics.rejected.labels(reason).inc()

    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": None,  # uvicorn's loggers go to the root handler of ganops.logs, in the same format
        "access_log": settings.access_log,
        "timeout_graceful_shutdown": int(settings.shutdown_timeout_s),
        "lifespan": "on",
        "server_header": False,
        "date_header": True,
        "http": guarded_protocol(
            max_header_bytes=server.max_header_bytes, header_timeout_s=server.header_timeout_s,
            body_timeout_s=server.body_timeout_s, on_refusal=refused,
        ),
        "ws": "none",
        "limit_concurrency": server.limit_concurrency,
        "timeout_keep_alive": server.keep_alive_timeout_s,
        "backlog": server.backlog,
        "proxy_headers": bool(server.trusted_proxies),
        "forwarded_allow_ips": list(server.trusted_proxies),
        **overrides,
    }
    return uvicorn.Config(app, **options)


def run(settings: ServingSettings | None = None) -> None:
    """Serve until SIGTERM/SIGINT (blocking)."""
    settings = settings or ServingSettings()
    logs.setup(settings.log_level)
    uvicorn.Server(uvicorn_config(settings)).run()
