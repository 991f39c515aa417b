"""What a run says about where its weights came from: the job key, the spec as params, and lineage tags."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
from typing import Any

from ganops import contracts
from ganops.api.spec import GanTrainingJob, GanTrainingJobSpec, spec_hash
from ganops.tracking.errors import redact

MAX_PARAM_VALUE_CHARS = 6000  # MLflow's limit for a param value


def job_key(namespace: str | None, name: str) -> str:
    """The value of the ``ganops.job`` tag: ``<namespace>/<name>`` (namespace ``default`` when unset)."""
    return f"{namespace or 'default'}/{name}"


def _as_spec(spec: GanTrainingJob | GanTrainingJobSpec) -> GanTrainingJobSpec:
    return spec.spec if isinstance(spec, GanTrainingJob) else spec


def flatten_spec(spec: GanTrainingJob | GanTrainingJobSpec) -> dict[str, str]:
    """The spec as MLflow params: dotted camelCase wire names (``model.latentDim``) → string values.

    Unset (null) fields and empty maps are left out; lists are JSON (``optimizer.betas`` → ``[0.5, 0.999]``);
    booleans are ``true``/``false`` as in the job file. Values longer than MLflow's limit are truncated. Every value
    is redacted (`redact`): user-info and query strings of URIs never become params, whoever can read the run.
    """
    wire = _as_spec(spec).model_dump(mode="json", by_alias=True)
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key in sorted(value):
                walk(f"{prefix}.{key}" if prefix else str(key), value[key])
            return
        if value is None:
            return
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        flat[prefix] = redact(text)[:MAX_PARAM_VALUE_CHARS]

    walk("", wire)
    return flat


def _git_commit() -> str | None:
    commit = os.environ.get(contracts.ENV_GIT_COMMIT, "").strip()
    if commit:
        return commit
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=3, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    out = result.stdout.strip()
    return out if result.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", out) else None


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def lineage_tags(
    spec: GanTrainingJob | GanTrainingJobSpec,
    dataset_digest: str | None = None,
    image: str | None = None,
    *,
    job: str | None = None,
) -> dict[str, str]:
    """Run tags that say where a run's weights came from.

    ``ganops.job`` (from ``job``, else a :class:`GanTrainingJob`'s metadata), ``ganops.specHash``,
    ``ganops.datasetDigest``, ``ganops.gitCommit`` (env ``GANOPS_GIT_COMMIT``, else ``git rev-parse HEAD`` when
    run inside a repository; also as ``mlflow.source.git.commit``), ``ganops.version.{ganops,torch,mlflow}``
    (installed distributions, without importing them) and ``ganops.image`` (``image``, else env ``GANOPS_IMAGE``,
    else the spec's ``resources.image``). Unknown values are left out, never set to a placeholder.
    """
    tags: dict[str, str] = {}
    if job is None and isinstance(spec, GanTrainingJob):
        job = job_key(spec.metadata.namespace, spec.metadata.name)
    if job:
        tags[contracts.TAG_JOB] = job
    tags[contracts.TAG_SPEC_HASH] = spec_hash(spec)
    if dataset_digest:
        tags[contracts.TAG_DATASET_DIGEST] = dataset_digest
    commit = _git_commit()
    if commit:
        tags[contracts.TAG_GIT_COMMIT] = commit
        tags[contracts.MLFLOW_GIT_COMMIT_TAG] = commit
    for package in ("ganops", "torch", "mlflow"):
        version = _package_version(package)
        if version:
            tags[contracts.TAG_VERSION_PREFIX + package] = version
    image = image or os.environ.get(contracts.ENV_IMAGE) or _as_spec(spec).resources.image
    if image:
        tags[contracts.TAG_IMAGE] = image
    return {key: redact(value) for key, value in tags.items()}


__all__ = ["MAX_PARAM_VALUE_CHARS", "flatten_spec", "job_key", "lineage_tags"]
