"""`ganops validate` on the bad-input corpus: exit code 2, one clear line naming the field and the fix, no
traceback, and fast (a YAML bomb is refused, not expanded)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.badinput.corpus import CASES, Case, good
from tests.support.jobs import write_job

BIN = Path(sys.executable).parent
LIMIT_S = 10.0  # per file, on a busy machine; the interpreter start is most of it


def _validate(path: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run([str(BIN / "ganops"), "validate", str(path)], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "COLUMNS": "200"})
    return result, time.monotonic() - started


def test_every_bad_job_file_is_refused_with_the_field_and_the_fix(tmp_path: Path, figures: dict[str, Any]) -> None:
    def check(case: Case) -> str | None:
        path = tmp_path / f"{case.name}.yaml"
        path.write_bytes(case.text.encode("utf-8", "surrogateescape"))
        result, seconds = _validate(path)
        lines = result.stderr.strip().splitlines()
        problems = []
        if result.returncode != 2:
            problems.append(f"exit {result.returncode}")
        if "Traceback" in result.stderr + result.stdout:
            problems.append("traceback")
        if not lines or not all(line.startswith(f"error: {path}: ") for line in lines):
            problems.append(f"not one 'error: <file>: ...' line per problem: {lines[:3]}")
        if len(lines) != 1 or case.says not in lines[0]:
            problems.append(f"expected one line with {case.says!r}, got {lines[:3]}")
        if seconds > LIMIT_S:
            problems.append(f"took {seconds:.1f} s")
        return f"{case.name}: {'; '.join(problems)}" if problems else None

    with ThreadPoolExecutor(4) as pool:
        failures = [f for f in pool.map(check, CASES) if f]
    figures.update(badinput_files=len(CASES), badinput_validate_refused=len(CASES) - len(failures))
    assert failures == []

    ok, _ = _validate(write_job(good(), tmp_path / "good.yaml"))
    assert ok.returncode == 0 and "valid GanTrainingJob 'good'" in ok.stdout, ok.stderr


def test_a_file_with_thousands_of_problems_gets_a_short_answer(tmp_path: Path) -> None:
    obj = good()
    obj["spec"].update({f"unknown{i}": i for i in range(5000)})
    result, seconds = _validate(write_job(obj, tmp_path / "many.yaml"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 21, lines[-3:]
    assert "spec.unknown0 is not a known field" in lines[0]
    assert lines[-1].endswith("... and 4980 more problems")
    assert seconds < LIMIT_S
