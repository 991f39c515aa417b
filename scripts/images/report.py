"""`reports/images.md` and `reports/images.json`: what the built images are and what their smoke runs found.

    python -m scripts.images.report          # after `make images` (and `make images-test` for the smoke column)

Per image: size (uncompressed layers, as ``docker images`` counts) and layer count with the biggest layers, build
time (``.ganops/images/build.json``), Python and torch versions, the installed Python packages' licences (from
their metadata and licence files; AGPL/GPL flagged, and ONNX models whose metadata names the AGPL) and the biggest
packages, and the smoke results (``.ganops/images/smoke.json``, written by ``tests/images/test_images.py``). The
facts from inside an image come from running a script in it with :mod:`scripts.images.runtime` (read-only root, as
uid 10001), so the report describes the image, not the build machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import IMAGES, ROOT, STATE, cache_dir
from .engine import Engine, detect
from .runtime import Container, Mount, Security, image_config

REPORT = ROOT / "reports" / "images"
# The smoke steps tests/images/test_images.py records per image (a step that did not run is not in smoke.json).
SMOKE_STEPS = {"operator": 4, "trainer": 3, "serving": 3}

# Run inside each image: its Python, torch, packages (licences, sizes) and bundled models.
INSPECT = r"""
import importlib.metadata as md, json, os, re, sys
def licence(dist):
    meta = dist.metadata
    expr = meta.get("License-Expression") or ""
    text = (meta.get("License") or "").strip()
    classifiers = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    files = []
    for f in dist.files or []:
        name = f.name.lower()
        if name.startswith(("license", "licence", "copying", "notice")) and \
                f.suffix.lower() in ("", ".txt", ".md", ".rst"):
            try:
                files.append(f.locate().read_text(errors="replace")[:4000])
            except OSError:
                pass
    return {"expression": expr, "license": text if len(text) < 120 else text.splitlines()[0][:120],
            "classifiers": classifiers, "files": [t[:300] for t in files],
            "agpl_text": any("GNU AFFERO GENERAL PUBLIC LICENSE" in t.upper() for t in files),
            "gpl_text": any(re.search(r"GNU GENERAL PUBLIC LICENSE", t.upper()) and "LESSER" not in t.upper()[:400]
                            for t in files)}
def size(dist):
    total = 0
    for f in dist.files or []:
        try:
            total += os.path.getsize(f.locate())
        except OSError:
            pass
    return total
packages, models = [], []
for dist in md.distributions():
    packages.append({"name": dist.metadata["Name"], "version": dist.version, "size": size(dist), **licence(dist)})
    for f in dist.files or []:
        if f.suffix == ".onnx":
            data = f.locate().read_bytes()
            notes = sorted({m.decode(errors="replace") for m in re.findall(rb"(?:AGPL|GPL)[-A-Za-z0-9. ]{0,20}", data)})
            models.append({"package": dist.metadata["Name"], "file": str(f), "size": len(data), "licence_marks": notes})
try:
    import torch
    t = {"version": torch.__version__, "cuda": torch.version.cuda, "cpu_only": torch.version.cuda is None}
except Exception as exc:
    t = {"version": None, "error": type(exc).__name__}
dpkg = 0
try:
    dpkg = sum(1 for line in open("/var/lib/dpkg/status") if line.startswith("Package: "))
except OSError:
    pass
print("INSPECT " + json.dumps({"python": sys.version.split()[0], "torch": t, "packages": packages, "models": models,
                              "debian_packages": dpkg}))
"""


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.2f} GB" if unit == "GB" else f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def inspect_inside(engine: Engine, image: str) -> dict[str, Any]:
    config = image_config(engine, image)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tmp"
        folder.mkdir()
        folder.chmod(0o1777)
        user, _, group = config.user.partition(":")
        security = Security(int(user or 10001), int(group or user or 10001), None)
        container = Container(engine, image, ["python3", "-c", INSPECT], dict(config.env), [Mount(folder, "/tmp")],
                              security, Path(tmp) / "log")
        container.start()
        try:
            code = container.wait(300)
        finally:
            container.stop()
        lines = [line for line in container.log(10**7).splitlines() if line.startswith("INSPECT ")]
        if code != 0 or not lines:
            raise RuntimeError(f"inspecting {image} failed ({code}):\n{container.log()}")
        result: dict[str, Any] = json.loads(lines[-1].removeprefix("INSPECT "))
        return result


def short_licence(package: dict[str, Any]) -> str:
    if package["expression"]:
        return str(package["expression"])
    if package["license"] and len(package["license"]) <= 40 and "\n" not in package["license"]:
        return str(package["license"])
    if package["classifiers"]:
        return " / ".join(package["classifiers"])
    return str(package["license"][:40]) or "unknown"


def flag(package: dict[str, Any]) -> str | None:
    """Why a package is copyleft (AGPL, or GPL that is not LGPL), or None."""
    described = " ".join([package["expression"], package["license"], *package["classifiers"]]).upper()
    if package["agpl_text"] or "AGPL" in described or "AFFERO" in described:
        said = short_licence(package)
        return f"AGPL-3.0 licence text shipped (metadata says {said!r})" if package["agpl_text"] and \
            "AGPL" not in said.upper() and "AFFERO" not in said.upper() else f"AGPL ({said})"
    gpl_words = described.replace("LGPL", "").replace("LESSER GENERAL", "")
    if "GPL" in gpl_words or "GNU GENERAL PUBLIC" in gpl_words or package["gpl_text"]:
        return f"GPL ({short_licence(package)})"
    return None


def summarise(image: str, inside: dict[str, Any], info: dict[str, Any], build: dict[str, Any],
              smoke: dict[str, Any]) -> dict[str, Any]:
    packages = inside["packages"]
    counts: dict[str, int] = {}
    for package in packages:
        key = short_licence(package)
        counts[key] = counts.get(key, 0) + 1
    flagged = [{"package": p["name"], "version": p["version"], "why": why} for p in packages
               if (why := flag(p)) is not None]
    for model in inside["models"]:
        if any("AGPL" in mark for mark in model["licence_marks"]):
            flagged.append({"package": model["package"], "version": "", "why":
                            f"bundled model {model['file']} ({human(model['size'])}) marked "
                            f"{', '.join(model['licence_marks'])}"})
    biggest = sorted(packages, key=lambda p: -p["size"])[:8]
    history = [h for h in info.get("history") or [] if not h.get("empty_layer")]
    layers = []
    for i, size in enumerate(info.get("layer_sizes") or []):
        created_by = (history[i].get("created_by") if i < len(history) else "") or ""
        layers.append({"size": size, "created_by": " ".join(created_by.split())[:100]})
    steps = {k: v for k, v in (smoke.get("steps") or {}).items() if k.split(":")[0] == image}
    return {
        "tag": (build.get("tags") or [""])[-1], "size_bytes": info["size"], "size": human(info["size"]),
        "layers": len(info["layers"]), "layer_sizes": layers, "build_seconds": build.get("seconds"),
        "python": inside["python"], "torch": inside["torch"], "python_packages": len(packages),
        "debian_packages": inside["debian_packages"], "licences": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        "flagged": flagged, "biggest_packages": [{"name": p["name"], "version": p["version"], "size": human(p["size"]),
                                                  "size_bytes": p["size"]} for p in biggest],
        "torch_bytes": {p["name"]: p["size"] for p in packages
                        if p["name"].lower().startswith(("torch", "nvidia-", "triton", "cuda-"))},
        "smoke": steps,
    }


def disk() -> dict[str, str]:
    out = {}
    for label, path in (("buildah storage", Path("/var/lib/containers/storage")),
                        ("base image cache", cache_dir()),
                        ("buildah build cache (pip)", Path("/var/tmp"))):
        if label.startswith("buildah build cache"):
            caches = sorted(path.glob("buildah-cache*"))
            if not caches:
                continue
            path = caches[0]
        if path.exists():
            used = subprocess.run(["du", "-sh", str(path)], capture_output=True, text=True, check=False).stdout
            out[label] = f"{used.split()[0] if used else '?'} ({path})"
    out["/ free"] = human(shutil.disk_usage("/").free)
    return out


def torch_table(images: dict[str, dict[str, Any]]) -> list[str]:
    def total(image: str, prefix: tuple[str, ...]) -> int:
        return sum(v for k, v in images.get(image, {}).get("torch_bytes", {}).items() if k.lower().startswith(prefix))

    rows = ["| torch from | where | torch | CUDA libraries (nvidia-*, cuda-*) | triton | together |",
            "|---|---|---|---|---|---|"]
    for image, what in (("trainer", "PyPI `torch==2.13.0` + its closure (`TORCH_SOURCE=lock`)"),
                        ("serving", "PyPI, without triton and NVTX (`serving-torch.lock`)")):
        if image not in images:
            continue
        t, c, tr = total(image, ("torch",)), total(image, ("nvidia-", "cuda-")), total(image, ("triton",))
        rows.append(f"| {what} | {image} image | {human(t)} | {human(c)} | {human(tr) if tr else '-'} | "
                    f"{human(t + c + tr)} |")
    rows.append("| PyTorch's CPU index (`TORCH_SOURCE=https://download.pytorch.org/whl/cpu`, the published serving "
                "build) | not reachable here: not measured | about 0.2 GB wheel (PyTorch's index lists it) | none "
                "| - | |")
    return rows


def markdown(report: dict[str, Any]) -> str:
    images = report["images"]
    lines = ["# The images", "",
             f"Generated by `python -m scripts.images.report` (`make images-test`) on {report['generated']}: "
             f"{report['engine']} build (storage `{report.get('storage_driver')}`), base "
             f"`{report.get('base_image') or 'Dockerfile defaults'}`, torch from `{report.get('torch_source')}`, "
             f"revision `{report.get('revision')}`.", "",
             "| image | size | layers | build | Python | torch | Python packages | copyleft flags | smoke |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, img in images.items():
        smoke = img["smoke"]
        passed = sum(1 for s in smoke.values() if s.get("passed"))
        unrun = SMOKE_STEPS.get(name, len(smoke)) - len(smoke)
        verdict = (f"{passed}/{len(smoke)} passed" + (f", {unrun} not run" if unrun > 0 else "")) if smoke \
            else "not run"
        build = f"{img['build_seconds'] / 60:.1f} min" if img.get("build_seconds") else "?"
        torch = img["torch"].get("version") or "none"
        lines.append(f"| {name} | {img['size']} | {img['layers']} | {build} | {img['python']} | {torch} | "
                     f"{img['python_packages']} | {len(img['flagged'])} | {verdict} |")
    for name in report.get("not_built") or []:
        lines.append(f"| {name} | not built in this run | | | | | | | not run |")
    if report.get("base_seconds") is not None:
        lines += ["", f"The local base image took {report['base_seconds']:.0f} s this time (0 when cached)."]
    lines += ["", "## Smoke runs", "",
              "Each image ran under the chart's securityContext (read-only root file system, uid/gid 10001, "
              "fsGroup 10001, no capabilities, no_new_privs, shells masked) with host folders bound where the pods "
              "mount emptyDirs (`tests/images/test_images.py`, `scripts/images/runtime.py`).", "",
              "| step | result | seconds | what it showed |", "|---|---|---|---|"]
    for img in images.values():
        for step, result in img["smoke"].items():
            shown = {k: v for k, v in result.items() if k not in ("passed", "seconds", "error", "probe",
                                                                   "security_context")}
            if "probe" in result:
                probe = result["probe"]
                shown = {"uid": probe["uid"], "groups": probe["groups"], "caps": probe["cap_eff"],
                         "no_new_privs": probe["no_new_privs"], "/": probe["/"], "shell": probe["shell"]}
            text = result.get("error") or "; ".join(f"{k}: {v}" for k, v in shown.items())
            lines.append(f"| {step} | {'passed' if result.get('passed') else 'FAILED'} | {result.get('seconds')} | "
                         f"{text.replace('|', '/')[:400]} |")
    lines += ["", "## torch: what it costs", ""]
    lines += torch_table(images)
    lines += ["", report["torch_note"], "", "## Licences", "",
              "From each installed distribution's metadata (License-Expression, License, classifiers) and the "
              "licence files it ships; the Debian packages of the base are not listed (GPL and LGPL system "
              "packages, as in any Debian image).", ""]
    for name, img in images.items():
        top = ", ".join(f"{k} ×{v}" for k, v in list(img["licences"].items())[:8])
        lines.append(f"- **{name}** ({img['python_packages']} packages, {img['debian_packages']} Debian): {top}")
        for item in img["flagged"]:
            lines.append(f"  - ⚑ `{item['package']}` {item['version']}: {item['why']}")
    lines += ["", "## Layers and biggest packages", ""]
    for name, img in images.items():
        layers = ", ".join(human(layer["size"]) for layer in img["layer_sizes"])
        biggest = ", ".join(f"{p['name']} {p['size']}" for p in img["biggest_packages"])
        lines.append(f"- **{name}** `{img['tag']}`: layers {layers}; biggest: {biggest}")
    lines += ["", "## Disk", ""] + [f"- {k}: {v}" for k, v in report["disk"].items()]
    return "\n".join(lines) + "\n"


TORCH_NOTE = (
    "PyPI's `torch==2.13.0` for Linux x86_64 is the CUDA 13 build: its wheel links against the CUDA libraries, "
    "which come as `nvidia-*` and `cuda-*` packages, so `import torch` needs them even on a CPU. The serving "
    "image drops what a CPU forward pass never loads (triton, the GPU compiler, and NVTX): every other CUDA "
    "library is a link-time dependency of `libtorch_cuda.so`. PyTorch's CPU wheels are only on its own index "
    "(download.pytorch.org), which the published serving build uses and this machine cannot reach; "
    "`TORCH_WHEELS=<dir>` builds from a local copy of them."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write reports/images.md and reports/images.json.")
    parser.add_argument("--output", type=Path, default=REPORT, help="path without suffix")
    args = parser.parse_args(argv)
    build = json.loads((STATE / "build.json").read_text()) if (STATE / "build.json").exists() else {}
    smoke = json.loads((STATE / "smoke.json").read_text()) if (STATE / "smoke.json").exists() else {}
    engine = detect(build.get("engine") or "buildah")
    images: dict[str, Any] = {}
    missing = []
    for image in IMAGES:
        record = (build.get("images") or {}).get(image) or {}
        tag = (record.get("tags") or [None])[-1]
        if not tag or not engine.exists(tag):
            print(f"images: {image} is not built; the report says so", file=sys.stderr)
            missing.append(image)
            continue
        images[image] = summarise(image, inspect_inside(engine, tag), engine.config(tag), record, smoke)
    report = {"generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "engine": build.get("engine"),
              "storage_driver": build.get("storage_driver"), "base_image": build.get("base_image"),
              "base_seconds": build.get("base_seconds"), "torch_source": build.get("torch_source"),
              "revision": build.get("revision"), "smoke_finished": smoke.get("finished"), "images": images,
              "not_built": missing,
              "torch_note": TORCH_NOTE, "disk": disk()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {args.output.with_suffix('.md').relative_to(ROOT)} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
