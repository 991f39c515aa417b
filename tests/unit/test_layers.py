"""The layer map is enforced: `lint-imports` (what `make lint` runs) passes on the tree and fails, naming the edge,
when a module imports across a forbidden edge, including through a lazy import inside a function."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(ROOT / "pyproject.toml")], cwd=src,
                          env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("layers") / "src"
    shutil.copytree(ROOT / "src" / "ganops", src / "ganops", ignore=shutil.ignore_patterns("__pycache__"))
    return src


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "bad_import", "edge"), [
    # a component reaching into another, lazily inside a function
    ("trainer/health.py", "from ganops.serving import metrics", "ganops.trainer.health -> ganops.serving.metrics"),
    ("operator/budget.py", "import ganops.trainer.loop", "ganops.operator.budget -> ganops.trainer.loop"),
    # promotion reaching up into a component
    ("promotion.py", "from ganops.serving import model_store", "ganops.promotion -> ganops.serving.model_store"),
    # a contract module reaching up
    ("checkpoints.py", "from ganops import generator", "ganops.checkpoints -> ganops.generator"),
    ("contracts.py", "from ganops import storage", "ganops.contracts -> ganops.storage"),
    # torch in a module the operator image loads
    ("operator/budget.py", "import torch", "ganops.operator.budget -> torch"),
])
def test_a_forbidden_import_breaks_the_lint(tree: Path, tmp_path: Path, module: str, bad_import: str,
                                            edge: str) -> None:
    src = tmp_path / "src"
    shutil.copytree(tree, src)
    target = src / "ganops" / module
    target.write_text(target.read_text() + f"\n\ndef _reaches_across() -> None:\n    {bad_import}  # noqa\n")
    result = _lint(src)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout
    assert edge in result.stdout, result.stdout
