"""An independent reader of the checkpoint layout, for the audits that end every fault test.

It uses nothing of ganops: the objects are listed and read with boto3 (``s3://``, endpoint from
``AWS_ENDPOINT_URL_S3``) or the file system (``file://``), each file's sha256 is recomputed with hashlib and
compared with its step's ``manifest.json``, and ``latest.json`` must name a complete step. The layout it checks is
the documented one (README "Checkpoints")::

    <root>/step-000000500/generator.safetensors, generator_ema.safetensors, discriminator.safetensors,
                          train_state.pt, manifest.json   (manifest: step, files {name: sha256}, sizes {name: bytes})
    <root>/latest.json    written last: step, uri of the step folder, manifestSha256

A bug in the trainer's own checkpoint code (what is written, or how it is verified on load) cannot hide behind
that same code here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3

LATEST = "latest.json"
MANIFEST = "manifest.json"
REQUIRED_FILES = frozenset({"generator.safetensors", "generator_ema.safetensors", "discriminator.safetensors",
                            "train_state.pt"})
STEP_DIR = re.compile(r"^step-(\d{9})$")


@dataclass
class Audit:
    """What is in the store after a fault: checkpoints that verify, corrupt ones, partial uploads."""

    latest_step: int | None
    verified: list[int] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    partial: list[int] = field(default_factory=list)  # a step folder without manifest: an upload cut short


class _Objects:
    """Read-only listing and reading of one root: boto3 for s3://, the file system for file://."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        url = urlparse(self.root)
        self.scheme = url.scheme
        if url.scheme == "s3":
            self.bucket, self.prefix = url.netloc, url.path.lstrip("/")
            self.s3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3"))
        elif url.scheme == "file":
            self.path = Path(url.path)
        else:
            raise ValueError(f"not an s3:// or file:// root: {root}")

    def names(self) -> list[str]:
        """Every object under the root, as a path relative to it."""
        if self.scheme == "file":
            if not self.path.is_dir():
                return []
            rels = [p.relative_to(self.path) for p in self.path.rglob("*") if p.is_file()]
            # a hidden file is a writer's temporary one (renamed into place when complete), not an object
            return sorted(str(rel) for rel in rels if not any(part.startswith(".") for part in rel.parts))
        out: list[str] = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + "/")
        for page in pages:
            out += [obj["Key"][len(self.prefix) + 1:] for obj in page.get("Contents", [])]
        return sorted(out)

    def read(self, key: str) -> bytes | None:
        if self.scheme == "file":
            path = self.path / key
            return path.read_bytes() if path.is_file() else None
        try:
            body: bytes = self.s3.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        return body


def read_latest(root: str) -> dict[str, Any] | None:
    """``latest.json`` as stored (None when there is none)."""
    raw = _Objects(root).read(LATEST)
    return None if raw is None else dict(json.loads(raw))


def _safetensors_problem(data: bytes) -> str | None:
    """The container's own consistency: an 8-byte header length, a JSON header, tensors inside the data."""
    if len(data) < 8:
        return "shorter than a safetensors header"
    (length,) = struct.unpack("<Q", data[:8])
    if 8 + length > len(data):
        return "header longer than the file"
    try:
        header = json.loads(data[8:8 + length])
    except ValueError:
        return "header is not JSON"
    body = len(data) - 8 - length
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end <= body:
            return f"tensor {name} lies outside the data"
    return None


def verify_step(objects: _Objects, step: int, names: set[str]) -> tuple[str | None, bytes | None]:
    """(problem or None, manifest bytes) for one step folder holding ``names``."""
    folder = f"step-{step:09d}"
    raw = objects.read(f"{folder}/{MANIFEST}")
    if raw is None:
        return "manifest vanished", None
    try:
        manifest = json.loads(raw)
        files: dict[str, str] = dict(manifest["files"])
        sizes: dict[str, int] = dict(manifest["sizes"])
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable manifest ({exc})", raw
    if manifest.get("step") != step:
        return f"manifest says step {manifest.get('step')}", raw
    if not set(files) >= REQUIRED_FILES:
        return f"manifest lacks {sorted(REQUIRED_FILES - set(files))}", raw
    unlisted = names - set(files) - {MANIFEST}
    if unlisted:
        return f"files the manifest does not vouch for: {sorted(unlisted)}", raw
    for name, expected in sorted(files.items()):
        data = objects.read(f"{folder}/{name}")
        if data is None:
            return f"{name} missing", raw
        if len(data) != sizes.get(name):
            return f"{name} is {len(data)} bytes, the manifest says {sizes.get(name)}", raw
        if hashlib.sha256(data).hexdigest() != expected:
            return f"sha256 of {name} differs from the manifest", raw
        if name.endswith(".safetensors") and (problem := _safetensors_problem(data)):
            return f"{name}: {problem}", raw
    return None, raw


def audit_checkpoints(root: str) -> Audit:
    """Every step folder with a manifest must verify (each file's sha256 and size as the manifest says, no file
    it does not list); latest.json must name one of those, by its folder and its manifest's sha256. A folder
    without a manifest is an interrupted upload (the manifest is written after the files), never pointed at."""
    objects = _Objects(root)
    by_step: dict[int, set[str]] = {}
    for key in objects.names():
        head, _, name = key.partition("/")
        m = STEP_DIR.match(head)
        if m and name and "/" not in name:
            by_step.setdefault(int(m.group(1)), set()).add(name)
    raw_latest = objects.read(LATEST)
    latest: dict[str, Any] | None = None
    audit = Audit(latest_step=None)
    if raw_latest is not None:
        try:
            latest = dict(json.loads(raw_latest))
            audit.latest_step = int(latest["step"])
        except (ValueError, KeyError, TypeError) as exc:
            audit.corrupt.append(f"latest.json is unreadable ({exc})")
    manifests: dict[int, bytes] = {}
    for step, names in sorted(by_step.items()):
        if MANIFEST not in names:
            audit.partial.append(step)
            continue
        problem, raw = verify_step(objects, step, names)
        if problem is None and raw is not None:
            audit.verified.append(step)
            manifests[step] = raw
        else:
            audit.corrupt.append(f"step {step}: {problem}")
    if latest is not None and audit.latest_step is not None:
        step = audit.latest_step
        if step not in audit.verified:
            audit.corrupt.append(f"latest.json points at step {step}, which does not verify")
        elif latest.get("uri") != f"{objects.root}/step-{step:09d}":
            audit.corrupt.append(f"latest.json names {latest.get('uri')} for step {step}")
        elif latest.get("manifestSha256") != hashlib.sha256(manifests[step]).hexdigest():
            audit.corrupt.append(f"latest.json's manifestSha256 is not that of step {step}'s manifest")
    return audit
