"""Which engine builds the images, and the few commands the rest needs from it.

Docker when ``docker info`` answers; otherwise Debian's ``buildah`` (rootful, ``--isolation chroot``), installed
with apt when missing. buildah's storage driver is ``overlay`` when this kernel and file system can mount it (about
half the disk of ``vfs`` and no full copy per layer), else ``vfs``; ``STORAGE_DRIVER`` (buildah's own variable)
chooses explicitly. A storage root already initialised keeps its driver.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

APT_PACKAGES = ("buildah", "debootstrap")
STORAGE_ROOT = Path("/var/lib/containers/storage")


def log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


def run(argv: list[str], *, env: dict[str, str] | None = None, capture: bool = False,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command (its output streams through unless `capture`), raising with its stderr when it fails."""
    result = subprocess.run(argv, env=env, text=True, check=False,
                            stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None)
    if check and result.returncode != 0:
        detail = (result.stderr or "").strip()[-2000:] if capture else ""
        raise RuntimeError(f"{' '.join(argv[:4])}… exited {result.returncode}{': ' + detail if detail else ''}")
    return result


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def ensure_buildah() -> None:
    """Install Debian's buildah and debootstrap when one is missing (root and apt-get needed)."""
    missing = [p for p in APT_PACKAGES if shutil.which(p) is None and not Path(f"/usr/sbin/{p}").exists()]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"{', '.join(missing)} missing and cannot be installed here (needs root and apt-get): "
                           f"apt-get install {' '.join(APT_PACKAGES)}, or run where a Docker engine answers")
    log(f"installing {', '.join(missing)} from Debian")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES], env=env)


def _initialised_driver() -> str | None:
    for driver in ("overlay", "vfs"):
        if (STORAGE_ROOT / f"{driver}-images" / "images.json").exists() or \
                (STORAGE_ROOT / f"{driver}-containers").exists():
            return driver
    return None


def _overlay_works() -> bool:
    """Create, mount and remove a scratch container on overlay storage."""
    env = {**os.environ, "STORAGE_DRIVER": "overlay"}
    made = subprocess.run(["buildah", "from", "scratch"], env=env, capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return False
    name = made.stdout.strip().splitlines()[-1]
    try:
        return subprocess.run(["buildah", "mount", name], env=env, capture_output=True, check=False).returncode == 0
    finally:
        subprocess.run(["buildah", "rm", name], env=env, capture_output=True, check=False)


@dataclass
class Engine:
    """`docker` or `buildah`, with the environment its commands need."""

    name: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def command(self) -> list[str]:
        return [self.name]

    def environ(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def run(self, *args: str, capture: bool = False, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([self.name, *args], env=self.environ(), capture=capture, check=check)

    def output(self, *args: str) -> str:
        return self.run(*args, capture=True).stdout.strip()

    def exists(self, image: str) -> bool:
        kind = ["image", "inspect"] if self.name == "docker" else ["inspect", "--type", "image"]
        return self.run(*kind, image, capture=True, check=False).returncode == 0

    def config(self, image: str) -> dict[str, Any]:
        """The image's OCI config (`User`, `Env`, `Entrypoint`, `Cmd`, `ExposedPorts`, `Labels`, …), its layer
        digests (`rootfs.diff_ids`) and history, and its size in bytes as the engine counts it."""
        if self.name == "docker":
            raw = json.loads(self.output("image", "inspect", image))[0]
            return {"config": raw.get("Config") or {}, "layers": raw["RootFS"].get("Layers") or [],
                    "layer_sizes": [], "size": int(raw.get("Size") or 0), "id": raw["Id"], "history": []}
        raw = json.loads(self.output("inspect", "--type", "image", image))
        oci = raw.get("OCIv1") or {}
        layers = (oci.get("rootfs") or {}).get("diff_ids") or []
        sizes = self.layer_sizes()
        return {"config": oci.get("config") or {}, "layers": layers,
                "layer_sizes": [sizes.get(layer, 0) for layer in layers],
                "size": sum(sizes.get(layer, 0) for layer in layers), "id": raw.get("FromImageID") or "",
                "history": oci.get("history") or []}

    def layer_sizes(self) -> dict[str, int]:
        """Uncompressed size of every layer in buildah's storage, by diff digest (what `docker images` adds up)."""
        driver = self.env.get("STORAGE_DRIVER", "overlay")
        path = STORAGE_ROOT / f"{driver}-layers" / "layers.json"
        if not path.exists():
            return {}
        return {layer["diff-digest"]: int(layer.get("diff-size") or 0) for layer in json.loads(path.read_text())
                if layer.get("diff-digest")}

    def remove(self, image: str) -> None:
        if self.name == "docker":
            self.run("rmi", "-f", image, check=False, capture=True)
        else:
            self.run("rmi", "-f", image, check=False, capture=True)

    def prune(self) -> None:
        """Dangling images and leftover build containers (buildah keeps them after a failed build)."""
        if self.name == "docker":
            self.run("image", "prune", "-f", check=False, capture=True)
            return
        self.run("rm", "--all", check=False, capture=True)
        self.run("rmi", "--prune", check=False, capture=True)


def detect(choice: str = "auto") -> Engine:
    """The engine to use: `docker`, `buildah`, or `auto` (Docker when it answers, else buildah)."""
    if choice == "docker" or (choice == "auto" and docker_answers()):
        if not docker_answers():
            raise RuntimeError("IMAGE_ENGINE=docker but `docker info` fails: no Docker engine reachable")
        return Engine("docker", {"DOCKER_BUILDKIT": "1"})
    if choice not in ("auto", "buildah"):
        raise ValueError(f"unknown engine {choice!r}: docker, buildah or auto")
    if choice == "auto":
        log("no Docker engine answers (`docker info`): building with buildah")
    ensure_buildah()
    env = {"BUILDAH_ISOLATION": os.environ.get("BUILDAH_ISOLATION", "chroot")}
    driver = os.environ.get("STORAGE_DRIVER") or _initialised_driver() or ("overlay" if _overlay_works() else "vfs")
    env["STORAGE_DRIVER"] = driver
    return Engine("buildah", env)
