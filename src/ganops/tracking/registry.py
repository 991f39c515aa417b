"""The MLflow model registry as promotion and serving use it: versions, their tags and aliases.

These callers need an answer, so every call retries transient failures briefly and then raises
:class:`~ganops.tracking.TrackingUnavailable` (MLflow did not answer) or :class:`~ganops.tracking.TrackingError`
(MLflow refused).
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ganops import contracts, retry
from ganops.retry import RetryPolicy
from ganops.tracking import connection
from ganops.tracking.connection import _quote
from ganops.tracking.errors import (
    TrackingError,
    TrackingUnavailable,
    _already_exists,
    _not_found,
    _short,
    is_transient,
    redact,
)

T = TypeVar("T")

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelVersionInfo:
    """One registered model version, as promotion and serving see it."""

    name: str
    version: str
    source: str  # what MLflow stores: the checkpoint URI, or a runs:/ pointer for local (file://) checkpoints
    checkpoint_uri: str  # where the weights are (tag ganops.checkpoint_uri, else source)
    tags: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None
    aliases: tuple[str, ...] = ()
    description: str = ""
    created_at_ms: int = 0


def _version_info(mv: Any, aliases: Mapping[str, str] | None = None) -> ModelVersionInfo:
    tags = {str(k): str(v) for k, v in (mv.tags or {}).items()}
    version = str(mv.version)
    if aliases is not None:
        names = tuple(sorted(a for a, v in aliases.items() if str(v) == version))
    else:
        names = tuple(sorted(mv.aliases or ()))
    return ModelVersionInfo(
        name=str(mv.name),
        version=version,
        source=str(mv.source or ""),
        checkpoint_uri=tags.get(contracts.TAG_CHECKPOINT_URI) or str(mv.source or ""),
        tags=tags,
        run_id=str(mv.run_id) if mv.run_id else None,
        aliases=names,
        description=str(mv.description or ""),
        created_at_ms=int(mv.creation_timestamp or 0),
    )


# 3 tries, 0.2 s then 0.5 s apart, none that would likely end after 5 s from the first (see _registry_call).
REGISTRY_RETRY = RetryPolicy(attempts=3, base_delay=0.2, max_delay=0.5, multiplier=2.5, jitter=False, budget_s=5.0)


def _registry_call(tracking_uri: str, what: str, fn: Callable[[], T], policy: RetryPolicy = REGISTRY_RETRY) -> T:
    """Run ``fn``; retry transient errors briefly under ``policy`` (no try that would likely end after its budget, so
    a hung server costs about one HTTP timeout); map failures to TrackingUnavailable / TrackingError."""
    def retry_if(exc: BaseException) -> bool:
        return not isinstance(exc, TrackingError) and is_transient(exc)

    def on_retry(exc: BaseException, attempt_number: int, delay: float) -> None:
        _LOG.debug(
            "MLflow at %s did not answer (%s); retrying to %s in %.1f s", redact(tracking_uri), _short(exc), what, delay
        )

    try:
        return retry.call(fn, policy, retry_if=retry_if, on_retry=on_retry)
    except TrackingError:
        raise
    except Exception as exc:
        if not is_transient(exc):
            raise TrackingError(f"MLflow at {redact(tracking_uri)} refused to {what}: {_short(exc)}") from None
        raise TrackingUnavailable(
            f"MLflow at {redact(tracking_uri)} is unavailable ({_short(exc)}); could not {what}"
        ) from None


def _is_local_uri(uri: str) -> bool:
    scheme = urllib.parse.urlparse(uri).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and uri[1:3] in (":\\", ":/"))  # Windows drive


def _pointer_run(client: Any) -> str:
    experiment = client.get_experiment_by_name(contracts.REGISTRY_EXPERIMENT)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(contracts.REGISTRY_EXPERIMENT)
        except Exception as exc:
            if not _already_exists(exc):
                raise
            experiment_id = client.get_experiment_by_name(contracts.REGISTRY_EXPERIMENT).experiment_id
    else:
        experiment_id = experiment.experiment_id
    run = client.create_run(
        str(experiment_id), run_name="checkpoint pointers", tags={contracts.TAG_PURPOSE: "pointer"}
    )
    run_id = str(run.info.run_id)
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def register_version(
    tracking_uri: str,
    model_name: str,
    source_uri: str,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
    description: str | None = None,
) -> str:
    """Register the checkpoint at ``source_uri`` as a new version of ``model_name`` (created when missing) and
    return the version number. The checkpoint URI is always kept as tag ``ganops.checkpoint_uri`` (read it as
    :attr:`ModelVersionInfo.checkpoint_uri`).

    MLflow accepts remote sources (``s3://…``) as they are, but a tracking server refuses local paths
    (``file://…``) unless they lie inside the run's artifacts. For those, a small JSON pointer
    (``ganops/checkpoint-pointers/<model>/<id>.json``) is logged into ``run_id`` (or into a pointer run in the
    ``ganops-registry`` experiment) and the version's source is ``runs:/<run>/<that path>``.

    Raises :class:`TrackingUnavailable` when MLflow does not answer, :class:`TrackingError` when it refuses.
    """
    client = connection.client(tracking_uri)
    # Every value redacted (a checkpoint URI with a query string would lose it, and then fail to load: fail closed).
    source_uri = redact(source_uri)
    all_tags = {str(k): redact(str(v)) for k, v in (tags or {}).items()}
    all_tags[contracts.TAG_CHECKPOINT_URI] = source_uri
    description = redact(description) if description is not None else None

    def create_model() -> None:
        try:
            client.create_registered_model(model_name)
        except Exception as exc:
            if not _already_exists(exc):
                raise

    _registry_call(tracking_uri, f"create registered model {model_name!r}", create_model)
    source = source_uri
    if _is_local_uri(source_uri):
        holder = run_id or _registry_call(tracking_uri, "create a pointer run", lambda: _pointer_run(client))
        directory = f"ganops/checkpoint-pointers/{model_name}"
        name = f"{uuid.uuid4().hex[:12]}.json"
        pointer = json.dumps({"checkpoint_uri": source_uri, "model": model_name, "tags": all_tags}, indent=2)

        def log_pointer() -> None:
            with tempfile.TemporaryDirectory(prefix="ganops-pointer-") as tmp:
                path = Path(tmp) / name
                path.write_text(pointer)
                client.log_artifact(holder, str(path), artifact_path=directory)

        _registry_call(tracking_uri, "log the checkpoint pointer", log_pointer)
        source = f"runs:/{holder}/{directory}/{name}"
        version_run_id: str | None = holder
    else:
        version_run_id = run_id

    mv = _registry_call(
        tracking_uri,
        f"create a version of {model_name!r}",
        lambda: client.create_model_version(
            model_name,
            source,
            run_id=version_run_id,
            tags=all_tags,
            description=description,
            await_creation_for=0,
        ),
    )
    return str(mv.version)


def get_version(tracking_uri: str, model_name: str, version: str) -> ModelVersionInfo | None:
    """One version, or None if the model or version does not exist."""
    client = connection.client(tracking_uri)

    def get() -> ModelVersionInfo | None:
        try:
            return _version_info(client.get_model_version(model_name, str(version)))
        except Exception as exc:
            if _not_found(exc):
                return None
            raise

    return _registry_call(tracking_uri, f"read {model_name!r} version {version}", get)


def set_alias(tracking_uri: str, model_name: str, alias: str, version: str) -> None:
    """Point ``model_name@alias`` at ``version`` (moving it if set; rollback is setting it back)."""
    client = connection.client(tracking_uri)
    _registry_call(
        tracking_uri,
        f"set alias {model_name}@{alias} to version {version}",
        lambda: client.set_registered_model_alias(model_name, alias, str(version)),
    )


def get_alias(tracking_uri: str, model_name: str, alias: str) -> ModelVersionInfo | None:
    """The version ``model_name@alias`` points at, or None if the model or the alias does not exist."""
    client = connection.client(tracking_uri)

    def get() -> ModelVersionInfo | None:
        try:
            model = client.get_registered_model(model_name)
        except Exception as exc:
            if _not_found(exc):
                return None
            raise
        aliases = {str(k): str(v) for k, v in (model.aliases or {}).items()}
        version = aliases.get(alias)
        if version is None:
            return None
        try:
            return _version_info(client.get_model_version(model_name, version), aliases)
        except Exception as exc:
            if _not_found(exc):
                return None
            raise

    return _registry_call(tracking_uri, f"resolve {model_name}@{alias}", get)


def list_versions(tracking_uri: str, model_name: str) -> list[ModelVersionInfo]:
    """Every version of ``model_name``, oldest first, with their aliases; empty if the model does not exist."""
    client = connection.client(tracking_uri)

    def get() -> list[ModelVersionInfo]:
        try:
            model = client.get_registered_model(model_name)
        except Exception as exc:
            if _not_found(exc):
                return []
            raise
        aliases = {str(k): str(v) for k, v in (model.aliases or {}).items()}
        found: list[Any] = []
        token: str | None = None
        while True:
            page = client.search_model_versions(f"name = '{_quote(model_name)}'", max_results=1000, page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                break
        infos = [_version_info(mv, aliases) for mv in found]
        return sorted(infos, key=lambda info: int(info.version) if info.version.isdigit() else 0)

    return _registry_call(tracking_uri, f"list versions of {model_name!r}", get)


def delete_alias(tracking_uri: str, model_name: str, alias: str) -> None:
    """Remove ``model_name@alias``; no error if the alias or the model does not exist."""
    client = connection.client(tracking_uri)

    def delete() -> None:
        try:
            client.delete_registered_model_alias(model_name, alias)
        except Exception as exc:
            if not _not_found(exc):
                raise

    _registry_call(tracking_uri, f"delete alias {model_name}@{alias}", delete)


def ping(tracking_uri: str, timeout: float = 5.0) -> bool:
    """Whether MLflow answers a cheap request within about ``timeout`` seconds (never raises)."""
    client = connection.client(tracking_uri)
    result: list[bool] = []

    def probe() -> None:
        with contextlib.suppress(Exception):
            client.search_experiments(max_results=1)
            result.append(True)

    thread = threading.Thread(target=probe, daemon=True, name="ganops-mlflow-ping")
    thread.start()
    thread.join(timeout)
    return bool(result)


__all__ = [
    "ModelVersionInfo",
    "delete_alias",
    "get_alias",
    "get_version",
    "list_versions",
    "ping",
    "register_version",
    "set_alias",
]
