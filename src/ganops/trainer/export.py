"""Load a trained generator back from a checkpoint, reading only JSON and safetensors (no unpickling)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ganops import storage
from ganops.api.spec import ModelSpec
from ganops.trainer.checkpoint import LATEST, MANIFEST, CheckpointError, sha256_file
from ganops.trainer.models import build_models


def resolve_checkpoint(uri: str) -> str:
    """A step folder as given, or, for a job's root, the step its `latest.json` points to."""
    store = storage.open_store(uri)
    uri = uri.rstrip("/")
    try:
        latest = json.loads(store.get_bytes(storage.join(uri, LATEST)))
        return str(latest["uri"])
    except storage.ObjectNotFound:
        return uri


def read_manifest(step_uri: str) -> dict[str, Any]:
    store = storage.open_store(step_uri)
    try:
        manifest: dict[str, Any] = json.loads(store.get_bytes(storage.join(step_uri, MANIFEST)))
    except storage.ObjectNotFound:
        raise CheckpointError(f"{step_uri} holds no {MANIFEST}: not a ganops checkpoint") from None
    return manifest


def load_generator(uri: str, *, ema: bool = True, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The generator (EMA weights by default) of the checkpoint at `uri`, in eval mode, with its manifest."""
    step_uri = resolve_checkpoint(uri)
    manifest = read_manifest(step_uri)
    model_spec = ModelSpec.model_validate(manifest["model"])
    generator, _ = build_models(model_spec)
    name = "generator_ema.safetensors" if ema else "generator.safetensors"
    store = storage.open_store(step_uri)
    with tempfile.TemporaryDirectory(prefix="ganops-gen-") as tmp:
        local = Path(tmp) / name
        store.get_file(storage.join(step_uri, name), local)
        expected = manifest["files"].get(name)
        if expected != sha256_file(local):
            raise CheckpointError(f"checksum mismatch for {step_uri}/{name}: refusing to load it")
        state = load_file(str(local), device=device)
    generator.load_state_dict(state)
    generator.to(torch.device(device)).eval()
    return generator, {**manifest, "uri": step_uri}
