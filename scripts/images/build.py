"""`make images`: build the operator, trainer and serving images from their Dockerfiles.

    python -m scripts.images.build [operator trainer serving] [--engine auto|docker|buildah]

- **Docker** (an engine answers `docker info`): the published build, the Dockerfiles' defaults: bases
  ``python:3.11.11-slim-bookworm`` and ``nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04``, torch from PyTorch's
  indexes (CUDA 12.8 for the trainer, CPU for serving).
- **buildah** otherwise (installed from Debian when missing): the local build. No registry is reachable, so both
  bases are the local Debian bookworm + python3.11 image (:mod:`scripts.images.base`, built once and cached), and
  torch comes from PyPI pinned with hashes (``TORCH_SOURCE=lock``); ``TORCH_WHEELS=<dir>`` installs it from a local
  wheel directory instead. The host's CA bundle reaches pip as a build secret (never in a layer).

Environment: ``IMAGE_REGISTRY`` (ghcr.io/ganops), ``IMAGE_TAG`` (the project version), ``TORCH_SOURCE``,
``TORCH_WHEELS``, ``PYTHON_IMAGE`` / ``CUDA_IMAGE`` (other bases), ``IMAGES_PRUNE=1`` (drop the layer cache after the
build: CI). Each image is tagged ``<registry>/<image>:<version>`` and ``…:<version>-<revision>``; labels carry the
version, the revision (``-dirty`` when the tree has uncommitted changes) and the commit's date; buildah's
``--timestamp`` is the commit's time, so an unchanged tree rebuilds to the same layers.
Build times and tags go to ``.ganops/images/build.json`` (the report reads them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import IMAGES, REGISTRY, ROOT, STATE, base, project_version
from .engine import Engine, detect, log
from .lock import stale as stale_locks

HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
WHEELS = ROOT / "images" / "wheels"
# Disk a cold build of all three needs with buildah's overlay storage (vfs needs about twice as much).
NEEDED_GB = {"overlay": 30, "vfs": 60}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()


def revision() -> tuple[str, str, int]:
    """(full revision, short revision, commit time as epoch seconds); `-dirty` when the tree differs from HEAD."""
    full = git("rev-parse", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    epoch = int(git("log", "-1", "--format=%ct") or time.time())
    suffix = "-dirty" if dirty else ""
    return full + suffix, full[:12] + suffix, epoch


def tags(image: str, version: str, short: str) -> list[str]:
    repo = f"{REGISTRY}/{image}"
    return [f"{repo}:{version}", f"{repo}:{version}-{short}"]


def build_args(engine: Engine, image: str, base_image: str | None, torch_source: str, version: str, rev: str,
               created: str) -> dict[str, str]:
    args = {"VERSION": version, "REVISION": rev, "CREATED": created}
    if base_image is not None:
        args["BASE_IMAGE"] = base_image
        args["PYTHON_IMAGE" if image != "trainer" else "CUDA_IMAGE"] = base_image
    for name in ("PYTHON_IMAGE", "CUDA_IMAGE", "TORCH_VERSION"):
        if os.environ.get(name):
            args[name] = os.environ[name]
            if name in ("PYTHON_IMAGE", "CUDA_IMAGE"):
                args["BASE_IMAGE"] = os.environ[name]
    if image != "operator" and torch_source:
        args["TORCH_SOURCE"] = torch_source
    return args


def build_one(engine: Engine, image: str, image_tags: list[str], args: dict[str, str], epoch: int) -> float:
    argv = ["build", "-f", f"{image}/Dockerfile"]
    for tag in image_tags:
        argv += ["-t", tag]
    for key, value in args.items():
        argv += ["--build-arg", f"{key}={value}"]
    if HOST_CA.exists():
        argv += ["--secret", f"id=pip-cert,src={HOST_CA}"]
    if engine.name == "buildah":
        argv += ["--layers", "--timestamp", str(epoch), "--pull=never"]
    argv.append(".")
    log(f"building {image_tags[0]} with {engine.name}: {' '.join(f'{k}={v}' for k, v in args.items())}")
    started = time.monotonic()
    subprocess.run([engine.name, *argv], cwd=ROOT, env=engine.environ(), check=True)
    return time.monotonic() - started


def _free_gb(path: Path) -> float:
    usage = shutil.disk_usage(path if path.exists() else Path("/"))
    return usage.free / 1e9


def clean(engine: Engine) -> int:
    """Remove every tag of the three images, then build containers and untagged images (the layer cache)."""
    field = "{{.Name}}:{{.Tag}}" if engine.name == "buildah" else "{{.Repository}}:{{.Tag}}"
    listing = engine.output("images", "--format", field)
    for ref in listing.splitlines():
        if any(ref.startswith(f"{REGISTRY}/{image}:") for image in IMAGES):
            engine.remove(ref)
    engine.prune()
    log("removed the images and the layer cache; the base image stays cached")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the operator, trainer and serving images.")
    parser.add_argument("images", nargs="*", help=f"some of {', '.join(IMAGES)} (default: all)")
    parser.add_argument("--engine", default=os.environ.get("IMAGE_ENGINE", "auto"))
    parser.add_argument("--refresh-base", action="store_true", help="rebuild the local base image first")
    parser.add_argument("--clean", action="store_true", help="remove the images, build containers and layer cache")
    args = parser.parse_args(argv)
    if args.clean:
        return clean(detect(args.engine))
    unknown = sorted(set(args.images) - set(IMAGES))
    if unknown:
        parser.error(f"unknown image(s) {', '.join(unknown)}: choose from {', '.join(IMAGES)}")
    args.images = args.images or list(IMAGES)
    stale = stale_locks()
    if stale:
        raise SystemExit(f"images: lock files out of date with pyproject.toml: {', '.join(stale)}; run `make lock`")
    engine = detect(args.engine)
    version = os.environ.get("IMAGE_TAG") or project_version()
    rev, short, epoch = revision()
    created = dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    record: dict[str, Any] = {"engine": engine.name, "storage_driver": engine.env.get("STORAGE_DRIVER"),
                              "version": version, "revision": rev, "created": created, "images": {}}
    base_image: str | None = None
    torch_source = os.environ.get("TORCH_SOURCE", "")
    if engine.name == "buildah":
        driver = engine.env["STORAGE_DRIVER"]
        free = _free_gb(Path("/var/lib/containers"))
        if free < NEEDED_GB[driver]:
            log(f"warning: {free:.0f} GB free; a cold build of all three needs about {NEEDED_GB[driver]} GB "
                f"with {driver} storage")
        started = time.monotonic()
        base_image = base.ensure(engine, refresh=args.refresh_base)
        record["base_seconds"] = round(time.monotonic() - started, 1)
        record["base_image"] = base_image
        torch_source = torch_source or "lock"
    wheels_dir = os.environ.get("TORCH_WHEELS")
    if wheels_dir:
        found = sorted(Path(wheels_dir).glob("*.whl"))
        if not found:
            raise SystemExit(f"images: TORCH_WHEELS={wheels_dir} has no *.whl")
        for wheel in found:
            target = WHEELS / wheel.name
            if not target.exists():
                shutil.copy2(wheel, target)
        torch_source = "wheels"
    record["torch_source"] = torch_source or "Dockerfile default (PyTorch's index)"
    STATE.mkdir(parents=True, exist_ok=True)
    state_file = STATE / "build.json"
    previous = json.loads(state_file.read_text()) if state_file.exists() else {}
    record["images"] = dict(previous.get("images") or {}) if previous.get("engine") == engine.name else {}
    for image in args.images:
        image_tags = tags(image, version, short)
        build = build_args(engine, image, base_image, torch_source, version, rev, created)
        seconds = build_one(engine, image, image_tags, build, epoch)
        log(f"built {image_tags[0]} in {seconds / 60:.1f} min")
        record["images"][image] = {"tags": image_tags, "seconds": round(seconds, 1), "build_args": build,
                                   "finished": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        state_file.write_text(json.dumps(record, indent=2) + "\n")
    if os.environ.get("IMAGES_PRUNE") == "1":
        log("IMAGES_PRUNE=1: removing the layer cache and build containers")
        engine.prune()
    return 0


if __name__ == "__main__":
    sys.exit(main())
