"""Building, running and reporting the operator, trainer and serving images (`make images`, `make images-test`).

- :mod:`scripts.images.engine`: Docker when an engine answers, else Debian's buildah (installed when missing);
- :mod:`scripts.images.base`: the local Debian bookworm base with Debian's python3.11, built once and cached by
  version outside the clone;
- :mod:`scripts.images.build`: the three images, tagged with version and revision (``python -m scripts.images.build``);
- :mod:`scripts.images.lock`: the pinned, hashed lock files in ``images/locks/`` (``uv pip compile`` against PyPI);
- :mod:`scripts.images.runtime`: run an image's process the way a kubelet would (read-only root, the pod's mounts,
  user and dropped capabilities) without a container engine;
- :mod:`scripts.images.report`: ``reports/images.md`` and ``reports/images.json``.

Only the standard library: ``make images`` works before the project's virtualenv exists.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ("operator", "trainer", "serving")
LOCKS = ROOT / "images" / "locks"
# Build state (build times, the engine, the tags) and smoke results: inside the clone, ignored by git.
STATE = ROOT / ".ganops" / "images"
REGISTRY = os.environ.get("IMAGE_REGISTRY", "ghcr.io/ganops")


def cache_dir() -> Path:
    """Where the local base image is cached, outside the clone: survives `git clean` and fresh clones."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ganops" / "images"


def project_version() -> str:
    match = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    if not match:  # pragma: no cover - pyproject.toml always has one
        raise RuntimeError("no version in pyproject.toml")
    return match.group(1)
