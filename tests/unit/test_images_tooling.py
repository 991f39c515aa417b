"""The image tooling's pure parts (scripts/images): Kubernetes' command rules, the effective securityContext, the
lock file split, the licence flags. The images themselves are built and run by tests/images/test_images.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from scripts.images.lock import parse, torch_closure
from scripts.images.report import flag, short_licence
from scripts.images.runtime import ImageConfig, Security

IMAGE = ImageConfig.parse({"User": "10001:10001", "Env": ["PATH=/opt/venv/bin:/usr/bin", "HOME=/tmp"],
                           "Entrypoint": ["kopf", "run", "-m", "ganops.operator.main"],
                           "Cmd": ["--liveness=http://0.0.0.0:8081/healthz"], "ExposedPorts": {"8080/tcp": {}}})


@pytest.mark.parametrize(("command", "args", "expected"), [
    (None, None, ["kopf", "run", "-m", "ganops.operator.main", "--liveness=http://0.0.0.0:8081/healthz"]),
    (None, ["--verbose"], ["kopf", "run", "-m", "ganops.operator.main", "--verbose"]),
    (["ganops", "train"], None, ["ganops", "train"]),  # a command drops the image's CMD too
    (["ganops"], ["train"], ["ganops", "train"]),
])
def test_command_and_args_replace_entrypoint_and_cmd_as_kubernetes_does(command: list[str] | None,
                                                                       args: list[str] | None,
                                                                       expected: list[str]) -> None:
    assert IMAGE.argv(command, args) == expected
    assert IMAGE.env == {"PATH": "/opt/venv/bin:/usr/bin", "HOME": "/tmp"}


def test_the_container_context_wins_over_the_pods_and_the_image_fills_the_gaps() -> None:
    pod = {"securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 2000}}
    container = {"securityContext": {"runAsUser": 4242, "readOnlyRootFilesystem": True,
                                     "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}
    assert Security.from_pod(pod, container, "10001:10001") == Security(4242, 10001, 2000, True, True, True)
    bare = Security.from_pod({}, {}, "10001:10002")
    assert bare == Security(10001, 10002, None, read_only_root=False, no_new_privs=False,
                            drop_all_capabilities=False)


LOCK = """\
# header
torch==2.13.0 \\
    --hash=sha256:aa
    # via -r requirements.in
nvidia-cudnn-cu13==9.20.0.48 ; sys_platform == 'linux' \\
    --hash=sha256:bb
    # via torch
nvidia-cublas==13.1.1.3 ; sys_platform == 'linux' \\
    --hash=sha256:cc
    # via
    #   nvidia-cudnn-cu13
    #   torch
jinja2==3.1.6 \\
    --hash=sha256:dd
    # via
    #   flask
    #   torch
flask==3.1.3 \\
    --hash=sha256:ee
    # via mlflow
"""


def test_torchs_closure_is_what_only_torch_needs() -> None:
    entries = parse(LOCK)
    assert [e.name for e in entries] == ["torch", "nvidia-cudnn-cu13", "nvidia-cublas", "jinja2", "flask"]
    assert entries[2].via == {"nvidia-cudnn-cu13", "torch"}
    # jinja2 is needed by flask too: it stays in the image's own lock.
    assert torch_closure(entries) == {"torch", "nvidia-cudnn-cu13", "nvidia-cublas"}


def _package(**fields: Any) -> dict[str, Any]:
    return {"expression": "", "license": "", "classifiers": [], "files": [], "agpl_text": False, "gpl_text": False,
            **fields}


@pytest.mark.parametrize(("package", "flagged"), [
    (_package(expression="Apache-2.0"), None),
    (_package(classifiers=["MIT License"]), None),
    (_package(license="LGPL-3.0-or-later"), None),  # weak copyleft: listed, not flagged
    (_package(license="MIT", agpl_text=True), "AGPL-3.0 licence text shipped (metadata says 'MIT')"),  # nudenet
    (_package(classifiers=["GNU General Public License v3 (GPLv3)"]), "GPL (GNU General Public License v3 (GPLv3))"),
])
def test_copyleft_is_flagged_from_metadata_or_the_licence_text(package: dict[str, Any], flagged: str | None) -> None:
    assert flag(package) == flagged
    assert short_licence(package)


def test_mount_targets_resolve_links_inside_the_image(tmp_path: Path) -> None:
    """Debian's /var/run is a link to /run: a volume mounted at /var/run/x must land in the container's /run, never
    the host's (what filepath-securejoin does for container runtimes); `..` and absolute links stay inside."""
    from scripts.images.runtime import inside

    root = tmp_path / "rootfs"
    (root / "run").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to("/run")
    (root / "etc").mkdir()
    (root / "etc" / "escape").symlink_to("../../../../outside")
    assert inside(root, "/var/run/ganops") == root / "run" / "ganops"
    assert inside(root, "/etc/escape/x") == root / "outside" / "x"
    assert inside(root, "/../../tmp") == root / "tmp"


# The third-party modules the operator's code imports by name: the operator's own modules (eager and function-level
# imports: promotion imports ganops.promotion only when a job promotes), then the module-level imports of every ganops
# module that loaded (TYPE_CHECKING blocks aside), each with the distributions that provide it here.
_OPERATOR_IMPORTS = r"""
import ast, importlib, importlib.metadata as md, json, pathlib, sys
import ganops.operator

def imported(tree, functions):
    out = set()
    def visit(node):
        if not functions and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)
    visit(tree)
    return out

names = {"ganops.operator.main"}
for path in pathlib.Path(ganops.operator.__file__).parent.glob("*.py"):
    names |= imported(ast.parse(path.read_text()), True)
for name in sorted(names):
    try:
        importlib.import_module(name)
    except ImportError:
        pass  # `from x import a_function` names no module
third = {n.split(".")[0] for n in names}
for name, module in list(sys.modules.items()):
    if name.startswith("ganops") and getattr(module, "__file__", None):
        third |= {n.split(".")[0] for n in imported(ast.parse(pathlib.Path(module.__file__).read_text()), False)}
third = {t for t in third if t not in sys.stdlib_module_names and t != "ganops" and t != "__future__"}
providers = md.packages_distributions()
print(json.dumps({top: providers.get(top, []) for top in sorted(third)}))
"""


def test_the_operator_lock_has_what_the_operator_imports() -> None:
    """Every distribution the operator's code imports (eagerly or when it promotes) is in images/locks/operator.lock:
    the operator image has nothing else. Without numpy and Pillow, its first promotion failed in the image."""
    import json
    import os
    import re
    import subprocess
    import sys

    from scripts.images import LOCKS

    result = subprocess.run([sys.executable, "-c", _OPERATOR_IMPORTS], capture_output=True, text=True, check=False,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    modules = json.loads(result.stdout.strip().splitlines()[-1])
    locked = {m.group(1).lower() for m in re.finditer(r"^([A-Za-z0-9_.-]+)==", (LOCKS / "operator.lock").read_text(),
                                                      re.M)}
    assert {"kopf", "kubernetes", "numpy", "PIL"} <= set(modules)  # mlflow: imported inside ganops.tracking calls
    missing = {top: providers for top, providers in modules.items()
               if not {re.sub(r"[-_.]+", "-", p).lower() for p in providers} & locked}
    assert missing == {}
