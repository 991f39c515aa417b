"""The local base image: Debian bookworm (debootstrap, minbase) with Debian's python3.11, built once per recipe.

No image registry is reachable on these machines, so ``python:3.11-slim-bookworm`` and the CUDA base cannot be
pulled; this image stands in for both in the local build. It is made with buildah from ``scratch``::

    buildah from scratch → mount → debootstrap --variant=minbase --include=<PACKAGES> bookworm <mount> <mirror>
    → buildah run: bookworm-updates + bookworm-security upgrades, apt caches and lists removed → commit

and cached by version: the tag is the hash of this recipe (`BASE_RECIPE`), kept in buildah's storage and, as an OCI
archive, in ``${XDG_CACHE_HOME:-~/.cache}/ganops/images/`` (outside the clone: a fresh clone or ``git clean`` does
not rebuild it; a machine whose buildah storage was wiped loads the archive instead of bootstrapping again).
``--refresh`` rebuilds it (newer Debian security updates).

    python -m scripts.images.base [--refresh]      # prints the image name
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import sys
import time

from . import cache_dir
from .engine import Engine, detect, log, run

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# What python:3.11-slim-bookworm has that matters here: an interpreter, venv (ensurepip, for the build stage),
# CA certificates (HTTPS to S3 and MLflow at run time). Debian's python3.11 is 3.11.2 plus Debian's security patches.
PACKAGES = ("python3", "python3-venv", "ca-certificates")
UPGRADE = (
    "set -e; "
    f"printf 'deb {MIRROR} {SUITE} main\\ndeb {MIRROR} {SUITE}-updates main\\n"
    f"deb http://deb.debian.org/debian-security {SUITE}-security main\\n' > /etc/apt/sources.list; "
    "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; apt-get -y -qq upgrade; apt-get clean; "
    "rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log /var/log/alternatives.log"
)
CONFIG = {"env": ["LANG=C.UTF-8", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
          "cmd": '["python3"]'}
# Everything that decides the image's content: change any of it and the version (the tag) changes.
BASE_RECIPE = json.dumps({"suite": SUITE, "variant": "minbase", "mirror": MIRROR, "packages": PACKAGES,
                          "upgrade": UPGRADE, "config": CONFIG, "recipe": 1}, sort_keys=True)
NAME = "localhost/ganops/debian-python"


def version() -> str:
    return f"3.11-{SUITE}-{hashlib.sha256(BASE_RECIPE.encode()).hexdigest()[:12]}"


def image() -> str:
    return f"{NAME}:{version()}"


def archive() -> str:
    return str(cache_dir() / f"debian-python-{version()}.oci.tar")


def _bootstrap(engine: Engine, tag: str) -> None:
    started = time.monotonic()
    container = engine.output("from", "scratch").splitlines()[-1]
    try:
        mount = engine.output("mount", container).splitlines()[-1]
        log(f"debootstrap {SUITE} ({', '.join(PACKAGES)}) into {container} (about 75 s and 200 MB)")
        run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, mount, MIRROR],
            env=engine.environ(), capture=True)
        engine.run("umount", container, capture=True)
        engine.run("run", "--network", "host", container, "--", "sh", "-c", UPGRADE, capture=True)
        created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        engine.run("config", *[arg for env in CONFIG["env"] for arg in ("--env", env)], "--cmd", str(CONFIG["cmd"]),
                   "--label", f"org.opencontainers.image.title={NAME}",
                   "--label", f"org.opencontainers.image.version={version()}",
                   "--label", f"org.opencontainers.image.created={created}",
                   "--label", f"org.opencontainers.image.description=Debian {SUITE} minbase with Debian's "
                              "python3.11 (ganops local base)",
                   "--created-by", "debootstrap (scripts/images/base.py)", container)
        engine.run("commit", "--rm", "--quiet", container, tag, capture=True)
        container = ""
    finally:
        if container:
            engine.run("rm", container, check=False, capture=True)
    log(f"built {tag} in {time.monotonic() - started:.0f} s")


def ensure(engine: Engine, *, refresh: bool = False) -> str:
    """The base image's name, building (or loading from the cache archive) what is missing."""
    tag = image()
    path = archive()
    if refresh:
        engine.remove(tag)
        cache = cache_dir() / path.rsplit("/", 1)[-1]
        cache.unlink(missing_ok=True)
    if engine.exists(tag):
        return tag
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    if (cache / path.rsplit("/", 1)[-1]).exists():
        log(f"loading the base image from {path}")
        image_id = engine.output("pull", "--quiet", f"oci-archive:{path}").splitlines()[-1]
        engine.run("tag", image_id, tag, check=False, capture=True)
        if engine.exists(tag):
            return tag
        log("the cached archive did not load: bootstrapping again")
    _bootstrap(engine, tag)
    partial = f"{path}.partial"
    engine.run("push", "--quiet", tag, f"oci-archive:{partial}:{tag}", capture=True)
    (cache / (path.rsplit("/", 1)[-1] + ".partial")).rename(path)
    log(f"cached {tag} as {path}")
    return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build (once) the local Debian bookworm + python3.11 base image.")
    parser.add_argument("--refresh", action="store_true", help="rebuild it (newer Debian security updates)")
    args = parser.parse_args(argv)
    engine = detect("buildah")
    print(ensure(engine, refresh=args.refresh))
    return 0


if __name__ == "__main__":
    sys.exit(main())
