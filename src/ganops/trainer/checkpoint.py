"""Writing and loading a job's checkpoints (the layout itself, and reading it without torch, is
`ganops.checkpoints`).

A crash at any point leaves `latest.json` pointing at the previous complete checkpoint. On load, every file's
sha256 is checked against the manifest; a checkpoint that fails is refused with a warning and the previous
valid one is used. Weights are safetensors (serving never unpickles); the train state is loaded with
`weights_only=True`.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ganops import storage
from ganops.checkpoints import (
    FORMAT_VERSION,
    LATEST,
    MANIFEST,
    TRAIN_STATE,
    WEIGHT_FILES,
    CheckpointError,
    finite_number,
    latest_entry,
    list_steps,
    read_latest,
    read_manifest,
    sha256_file,
    step_dir_name,
    weights_file,
)

log = logging.getLogger(__name__)

__all__ = ["Checkpoint", "CheckpointError", "CheckpointManager"]


@dataclass
class Checkpoint:
    """A verified checkpoint, downloaded: weights as state dicts, the train state, the manifest."""

    step: int
    uri: str
    manifest: dict[str, Any]
    weights: dict[str, dict[str, torch.Tensor]]
    train_state: dict[str, Any] = field(default_factory=dict)


def _portable(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage (e.g. tied or parametrized weights): give each its own.
    return {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in state.items()}


class CheckpointManager:
    """Saves, finds, verifies and prunes checkpoints under one job's root URI."""

    def __init__(self, root_uri: str, *, keep_last: int = 3, keep_best: int = 1, staging: Path | None = None):
        self.root = root_uri.rstrip("/")
        self.store = storage.open_store(self.root)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.staging = staging

    def preflight(self) -> None:
        """Prove the store takes our writes before any GPU time is spent: missing credentials, a missing bucket
        or a read-only prefix fail here with the store's message, not at the first checkpoint."""
        probe = storage.join(self.root, ".ganops-write-probe")
        self.store.put_bytes(probe, b"ok")
        self.store.delete(probe)

    # ----------------------------------------------------------------- save

    def save(
        self,
        step: int,
        weights: dict[str, dict[str, torch.Tensor]],
        train_state: dict[str, Any],
        *,
        info: dict[str, Any] | None = None,
        metric: float | None = None,
    ) -> dict[str, Any]:
        """Write one checkpoint; returns the `latest.json` record. Raises CheckpointError, leaving the previous
        checkpoint as the valid one, if anything fails."""
        step_uri = storage.join(self.root, step_dir_name(step))
        with tempfile.TemporaryDirectory(prefix="ganops-ckpt-", dir=self.staging) as tmp:
            local = Path(tmp)
            files: dict[str, str] = {}
            for name in WEIGHT_FILES:
                path = local / weights_file(name)
                save_file(_portable(weights[name]), str(path), metadata={"step": str(step), "format": "pt"})
                files[path.name] = sha256_file(path)
            torch.save(train_state, local / TRAIN_STATE)
            files[TRAIN_STATE] = sha256_file(local / TRAIN_STATE)
            manifest = {
                "formatVersion": FORMAT_VERSION,
                "step": step,
                "time": _now(),
                "files": files,
                "sizes": {name: (local / name).stat().st_size for name in files},
                "metric": metric,
                **(info or {}),
            }
            manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
            try:
                # This step's folder may remain from an attempt killed after its manifest but before latest.json
                # named it (the resumed run reaches the same step again, with other bytes unless deterministic):
                # drop that manifest first, so a re-upload cut short never sits beside a manifest that vouches for
                # other files.
                self.store.delete(storage.join(step_uri, MANIFEST))
                for name in files:
                    self.store.put_file(storage.join(step_uri, name), local / name)
                self.store.put_bytes(storage.join(step_uri, MANIFEST), manifest_bytes)
                self._verify_upload(step_uri, manifest)
                latest = latest_entry(step, step_uri, manifest_bytes, manifest, metric)
                self.store.put_bytes(storage.join(self.root, LATEST), json.dumps(latest, indent=2).encode())
            except (storage.StorageError, OSError) as exc:
                raise CheckpointError(
                    f"checkpoint at step {step} was not saved ({exc}); the previous checkpoint stays valid"
                ) from exc
        self._prune(latest_step=step)
        return latest

    def _verify_upload(self, step_uri: str, manifest: dict[str, Any]) -> None:
        """Every file is in the store with the size we wrote, before latest.json may point at it."""
        present = {uri.rsplit("/", 1)[-1] for uri in self.store.list(step_uri)}
        missing = sorted((set(manifest["files"]) | {MANIFEST}) - present)
        if missing:
            raise storage.StorageError(f"upload to {step_uri} incomplete: missing {', '.join(missing)}", step_uri)
        for name, size in manifest["sizes"].items():
            stored = self.store.size(storage.join(step_uri, name))
            if stored != size:
                raise storage.StorageError(f"{step_uri}/{name} is {stored} bytes, expected {size}", step_uri)

    # ----------------------------------------------------------------- find and load

    def latest_record(self) -> dict[str, Any] | None:
        return read_latest(self.store, self.root)

    def steps(self) -> list[int]:
        return list_steps(self.store, self.root)

    def load_latest(self, *, map_location: str = "cpu") -> Checkpoint | None:
        """The newest checkpoint that verifies: latest.json's first, then older step folders, newest first."""
        record = self.latest_record()
        candidates = sorted(self.steps(), reverse=True)
        if record is not None:
            newest = int(record["step"])
            candidates = [newest] + [s for s in candidates if s < newest]
        for step in candidates:
            try:
                return self.load_step(step, map_location=map_location)
            except CheckpointError as exc:
                log.warning("refusing checkpoint %s: %s; trying the previous one", step_dir_name(step), exc)
        return None

    def load_step(self, step: int, *, map_location: str = "cpu", weights_only: bool = False) -> Checkpoint:
        step_uri = storage.join(self.root, step_dir_name(step))
        try:
            read = read_manifest(self.store, step_uri)
        except (storage.StorageError, CheckpointError) as exc:
            raise CheckpointError(f"no readable manifest ({exc})") from exc
        if read is None:
            raise CheckpointError(f"no readable manifest ({storage.join(step_uri, MANIFEST)} does not exist)")
        manifest = read[0]
        with tempfile.TemporaryDirectory(prefix="ganops-load-", dir=self.staging) as tmp:
            local = Path(tmp)
            wanted = [weights_file(n) for n in WEIGHT_FILES] + ([] if weights_only else [TRAIN_STATE])
            for name in wanted:
                expected = manifest.get("files", {}).get(name)
                if expected is None:
                    raise CheckpointError(f"manifest lists no {name}")
                try:
                    self.store.get_file(storage.join(step_uri, name), local / name)
                except storage.StorageError as exc:
                    raise CheckpointError(f"cannot download {name} ({exc})") from exc
                actual = sha256_file(local / name)
                if actual != expected:
                    raise CheckpointError(
                        f"checksum mismatch for {name}: manifest {expected[:12]}…, file {actual[:12]}…"
                    )
            try:
                weights = {n: load_file(str(local / weights_file(n)), device=map_location) for n in WEIGHT_FILES}
                train_state: dict[str, Any] = (
                    {} if weights_only
                    else torch.load(local / TRAIN_STATE, map_location=map_location, weights_only=True)
                )
            except Exception as exc:  # a file that hashes right but will not parse is still a bad checkpoint
                raise CheckpointError(f"cannot parse checkpoint files ({exc})") from exc
        return Checkpoint(step=step, uri=step_uri, manifest=manifest, weights=weights, train_state=train_state)

    # ----------------------------------------------------------------- retention

    def _prune(self, latest_step: int) -> None:
        """Keep the newest `keep_last` and the `keep_best` lowest-metric checkpoints; drop the rest."""
        steps = [s for s in self.steps() if s <= latest_step]
        keep = set(steps[-self.keep_last:]) | {latest_step}
        if self.keep_best:
            scored = []
            for step in steps:
                metric = self._metric_of(step)
                if metric is not None:
                    scored.append((metric, step))
            keep |= {step for _, step in sorted(scored)[: self.keep_best]}
        for step in steps:
            if step not in keep:
                try:
                    self.store.delete_prefix(storage.join(self.root, step_dir_name(step)))
                except storage.StorageError as exc:  # retention is housekeeping: never fail training over it
                    log.warning("could not prune %s: %s", step_dir_name(step), exc)

    def _metric_of(self, step: int) -> float | None:
        try:
            read = read_manifest(self.store, storage.join(self.root, step_dir_name(step)))
        except (storage.StorageError, CheckpointError):
            return None
        return finite_number(read[0].get("metric")) if read is not None else None

    def best_step(self) -> int | None:
        scored = [(m, s) for s in self.steps() if (m := self._metric_of(s)) is not None]
        return min(scored)[1] if scored else None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

