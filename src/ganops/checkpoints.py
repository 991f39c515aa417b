"""The checkpoint layout, defined once, and its readers that need no torch.

    <checkpoint.uri>/<namespace>/<job>/step-000000500/   generator.safetensors, generator_ema.safetensors,
                                                         discriminator.safetensors, train_state.pt, manifest.json
    <checkpoint.uri>/<namespace>/<job>/latest.json       written last, after every file of the step is verified
    <checkpoint.uri>/_reference/                         per-dataset files shared by jobs (reference statistics,
                                                         memorization indexes)

The trainer writes checkpoints (`ganops.trainer.checkpoint`, which needs torch for the train state); promotion,
serving and the operator read them through this module, which reads JSON only. Loading weights lives in
`ganops.generator`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ganops import storage

log = logging.getLogger(__name__)

WEIGHT_FILES = ("generator", "generator_ema", "discriminator")  # each as <name>.safetensors
TRAIN_STATE = "train_state.pt"
MANIFEST = "manifest.json"
LATEST = "latest.json"
REFERENCE_DIR = "_reference"
FORMAT_VERSION = 1
MEMORIZATION_KEY = "memorizationIndex"  # manifest field: URI of the training set's memorization index
_STEP_DIR = re.compile(r"^step-(\d{9})$")

__all__ = [
    "FORMAT_VERSION", "LATEST", "MANIFEST", "MEMORIZATION_KEY", "REFERENCE_DIR", "TRAIN_STATE", "WEIGHT_FILES",
    "CheckpointChoice", "CheckpointError", "HealthEvent", "LatestRecord", "RecordUnavailable", "choose",
    "finite_number", "job_root", "latest_entry", "latest_uri", "list_steps", "manifest_metrics",
    "memorization_index_of", "parse_latest", "parse_step_dir", "read_latest", "read_latest_record",
    "read_manifest", "reference_uri", "require_manifest", "resolve", "sha256_file", "step_dir_name", "step_uri",
    "weights_file",
]


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, unreadable or fails its checksums."""


# ------------------------------------------------------------------------------------------------ names and paths


def step_dir_name(step: int) -> str:
    return f"step-{step:09d}"


def parse_step_dir(name: str) -> int | None:
    """The step of a folder name (``step-000000500`` or a URI ending in it, with or without ``/``), else None."""
    match = _STEP_DIR.match(name.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def weights_file(name: str) -> str:
    return f"{name}.safetensors"


def job_root(checkpoint_uri: str, namespace: str, job: str) -> str:
    return storage.join(checkpoint_uri, namespace, job)


def step_uri(root: str, step: int) -> str:
    return storage.join(root, step_dir_name(step))


def latest_uri(checkpoint_uri: str, namespace: str, job: str) -> str:
    return storage.join(job_root(checkpoint_uri, namespace, job), LATEST)


def reference_uri(checkpoint_uri: str, name: str) -> str:
    """A per-dataset file shared by every job under ``checkpoint_uri``."""
    return storage.join(checkpoint_uri, REFERENCE_DIR, name)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def finite_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (booleans are not numbers here), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


# ------------------------------------------------------------------------------------------------ readers


def list_steps(store: storage.ObjectStore, root: str) -> list[int]:
    """The steps with a folder under a job's root, ascending (complete or not: see `read_manifest`)."""
    steps = {step for name in store.list_dirs(root) if (step := parse_step_dir(name)) is not None}
    return sorted(steps)


def read_manifest(store: storage.ObjectStore, step_folder: str) -> tuple[dict[str, Any], str] | None:
    """A step's manifest and the sha256 of its bytes; None when the step has none (an upload cut short).
    Raises CheckpointError when it exists but is not a JSON object, StorageError when the store fails."""
    try:
        raw = store.get_bytes(storage.join(step_folder, MANIFEST))
    except storage.ObjectNotFound:
        return None
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise CheckpointError(f"{step_folder}/{MANIFEST} is not JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{step_folder}/{MANIFEST} is not a JSON object")
    return manifest, hashlib.sha256(raw).hexdigest()


def require_manifest(step_folder: str) -> dict[str, Any]:
    """A step folder's manifest; CheckpointError when there is none (not a ganops checkpoint) or it is not JSON."""
    read = read_manifest(storage.open_store(step_folder), step_folder)
    if read is None:
        raise CheckpointError(f"{step_folder} holds no {MANIFEST}: not a ganops checkpoint")
    return read[0]


def read_latest(store: storage.ObjectStore, root: str) -> dict[str, Any] | None:
    """A job's latest.json; None when there is none or it is unreadable (then the step folders tell)."""
    try:
        data = json.loads(store.get_bytes(storage.join(root, LATEST)))
    except storage.ObjectNotFound:
        return None
    except (ValueError, storage.StorageError) as exc:
        log.warning("latest.json under %s is unreadable (%s); scanning step folders", root, exc)
        return None
    return data if isinstance(data, dict) else None


def resolve(uri: str) -> str:
    """A step folder as given; for a job's root, the step its latest.json points to."""
    uri = uri.rstrip("/")
    store = storage.open_store(uri)
    try:
        latest = json.loads(store.get_bytes(storage.join(uri, LATEST)))
        return str(latest["uri"])
    except storage.ObjectNotFound:
        return uri


def manifest_metrics(manifest: Mapping[str, Any]) -> dict[str, float]:
    """The numeric metrics a manifest (or latest.json) carries: ``metrics`` as a flat mapping, or an evaluation
    report holding one."""
    raw = manifest.get("metrics")
    if isinstance(raw, Mapping) and isinstance(raw.get("metrics"), Mapping):
        raw = raw["metrics"]
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): v for k, value in raw.items() if (v := finite_number(value)) is not None}


@dataclass(frozen=True)
class CheckpointChoice:
    step: int
    uri: str  # the step folder
    manifest: dict[str, Any]
    manifest_sha256: str
    reason: str  # "best metric 41.2 of 3 scored checkpoint(s)" | "latest (no checkpoint has a metric)" | "given"


def choose(uri: str) -> CheckpointChoice:
    """The checkpoint to judge under a job's root: the best by manifest ``metric`` (lower is better, ties to the
    earlier step), else the step latest.json names, else the newest step with a manifest; or ``uri`` itself when
    it is a step folder. Raises CheckpointError when there is none, StorageError when the store fails."""
    uri = uri.rstrip("/")
    store = storage.open_store(uri)
    own = read_manifest(store, uri)
    if own is not None:
        return CheckpointChoice(int(own[0].get("step", -1)), uri, own[0], own[1], "given")
    manifests = {step: read for step in list_steps(store, uri)
                 if (read := read_manifest(store, step_uri(uri, step))) is not None}
    if not manifests:
        raise CheckpointError(f"no checkpoint under {uri}")
    scored = [(m, s) for s, (man, _) in manifests.items() if (m := finite_number(man.get("metric"))) is not None]
    if scored:
        metric, step = min(scored)
        reason = f"best metric {metric:.4g} of {len(scored)} scored checkpoint(s)"
    else:
        step = max(manifests)
        try:
            named = int((read_latest(store, uri) or {})["step"])
        except (KeyError, TypeError, ValueError):
            named = None
        if named in manifests:
            step = named
        reason = "latest (no checkpoint has a metric)"
    manifest, sha = manifests[step]
    return CheckpointChoice(step, step_uri(uri, step), manifest, sha, reason)


def memorization_index_of(manifest: Mapping[str, Any], step_folder: str) -> str | None:
    """The memorization index a checkpoint's manifest names, if that object exists (reads no tensors).

    The trainer records the URI it wrote (``<checkpoint.uri>/_reference/<key>.memorization.safetensors``). When that
    URI does not resolve here (a relative ``file://`` checkpoint URI, a store mounted elsewhere), the same file name
    under the ``_reference/`` folder three levels above the step folder (``<checkpoint.uri>`` of
    ``<checkpoint.uri>/<namespace>/<job>/step-…``) is tried. None when neither exists."""
    recorded = manifest.get(MEMORIZATION_KEY)
    if not isinstance(recorded, str) or not recorded:
        return None
    candidates = [recorded]
    parts = step_folder.rstrip("/").rsplit("/", 3)
    if len(parts) == 4 and ("://" in parts[0] or "://" not in step_folder) and not parts[0].endswith(":/"):
        candidates.append(reference_uri(parts[0], recorded.rsplit("/", 1)[-1]))
    for uri in candidates:
        try:
            if storage.open_store(uri).exists(uri):
                return uri
        except storage.StorageError as exc:
            log.warning("memorization index %s not checked: %s", uri, exc)
    log.warning("the manifest of %s names memorization index %s, which does not exist: a model version made from it "
                "gets no memorization index (serving's memorization filter will be off for it)", step_folder, recorded)
    return None


# ------------------------------------------------------------------------------------------------ latest.json


def latest_entry(step: int, uri: str, manifest_bytes: bytes, manifest: Mapping[str, Any],
                 metric: float | None) -> dict[str, Any]:
    """What latest.json says of a verified checkpoint (what `parse_latest` reads back)."""
    return {
        "step": step,
        "uri": uri,
        "manifestSha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "time": manifest.get("time"),
        "metric": metric,
        **{k: manifest[k] for k in ("cost", "metrics", "mlflowRunId", "health") if k in manifest},
    }


@dataclass(frozen=True)
class HealthEvent:
    type: str
    step: int | None = None
    message: str = ""


@dataclass(frozen=True)
class LatestRecord:
    """latest.json, parsed: where the newest verified checkpoint is and what the run looks like."""

    step: int
    uri: str
    time: str | None = None
    manifest_sha256: str | None = None
    metric: float | None = None
    cost_usd: float | None = None
    cost_gpu_hours: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    health_events: tuple[HealthEvent, ...] = ()
    rollbacks: int = 0


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int:
    if isinstance(value, list):
        return len(value)
    if isinstance(value, bool):
        return 0
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def _health_event(raw: Any) -> HealthEvent | None:
    if isinstance(raw, str):
        return HealthEvent(type=raw)
    if isinstance(raw, dict) and isinstance(raw.get("type"), str):
        step = raw.get("step")
        return HealthEvent(type=raw["type"], step=step if isinstance(step, int) and not isinstance(step, bool)
                           else None, message=str(raw.get("message") or ""))
    return None


def parse_latest(data: Any) -> LatestRecord | None:
    """A `LatestRecord` from latest.json's JSON; None when it lacks a step or a URI. Unknown or malformed optional
    fields are ignored (a newer trainer may write more)."""
    if not isinstance(data, dict):
        return None
    step = data.get("step")
    uri = data.get("uri")
    if isinstance(step, bool) or not isinstance(step, int) or not isinstance(uri, str) or not uri:
        return None
    cost = _mapping(data.get("cost"))
    health = _mapping(data.get("health"))
    events = tuple(e for raw in health.get("events") or [] if (e := _health_event(raw)) is not None)
    run_id = data.get("mlflowRunId")
    return LatestRecord(
        step=step,
        uri=uri,
        time=data.get("time") if isinstance(data.get("time"), str) else None,
        manifest_sha256=data.get("manifestSha256") if isinstance(data.get("manifestSha256"), str) else None,
        metric=finite_number(data.get("metric")),
        cost_usd=finite_number(cost.get("usd")),
        cost_gpu_hours=finite_number(cost.get("gpuHours")),
        metrics={str(k): v for k, raw in _mapping(data.get("metrics")).items()
                 if (v := finite_number(raw)) is not None},
        mlflow_run_id=run_id if isinstance(run_id, str) and run_id else None,
        health_events=events,
        rollbacks=_count(health.get("rollbacks")),
    )


class RecordUnavailable(Exception):
    """The object store did not answer or refused: the record is unknown (not absent)."""


def read_latest_record(store: storage.ObjectStore, uri: str) -> LatestRecord | None:
    """The parsed latest.json at ``uri``; None when there is none yet (or it is not JSON: a trainer writes it
    atomically and never leaves half a file, so that is someone else's object). Raises RecordUnavailable when the
    store fails."""
    try:
        data = store.get_bytes(uri)
    except storage.ObjectNotFound:
        return None
    except storage.StorageError as exc:
        raise RecordUnavailable(str(exc)) from exc
    try:
        return parse_latest(json.loads(data))
    except ValueError:
        return None
