"""`ganops validate` on the bad-input corpus: exit code 2, one clear line naming the field and the fix, no
traceback, and cheap (a YAML bomb is refused, not expanded): each run gets a CPU-time limit, so work that grows
with the input is killed by the kernel (SIGXCPU) whatever the load of the machine, where a wall-clock limit would
measure the other processes too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.badinput.corpus import CASES, Case, good
from tests.support.jobs import write_job

BIN = Path(sys.executable).parent
CPU_LIMIT_S = 10  # CPU seconds per file; the interpreter start (imports) is most of what a refusal costs


# Sets the limit, then becomes `ganops validate` (exec keeps the limit); no preexec_fn: the tests run in threads.
WITH_CPU_LIMIT = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_CPU, (int(sys.argv[1]),) * 2); "
                  "os.execv(sys.argv[2], sys.argv[2:])")


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITH_CPU_LIMIT, str(CPU_LIMIT_S), str(BIN / "ganops"), "validate",
                           str(path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


def _over_cpu_limit(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode in (-signal.SIGXCPU, -signal.SIGKILL)


def test_every_bad_job_file_is_refused_with_the_field_and_the_fix(tmp_path: Path, figures: dict[str, Any]) -> None:
    def check(case: Case) -> str | None:
        path = tmp_path / f"{case.name}.yaml"
        path.write_bytes(case.text.encode("utf-8", "surrogateescape"))
        result = _validate(path)
        lines = result.stderr.strip().splitlines()
        problems = []
        if _over_cpu_limit(result):
            problems.append(f"killed after {CPU_LIMIT_S} s of CPU")
        elif result.returncode != 2:
            problems.append(f"exit {result.returncode}")
        if "Traceback" in result.stderr + result.stdout:
            problems.append("traceback")
        if not lines or not all(line.startswith(f"error: {path}: ") for line in lines):
            problems.append(f"not one 'error: <file>: ...' line per problem: {lines[:3]}")
        if len(lines) != 1 or case.says not in lines[0]:
            problems.append(f"expected one line with {case.says!r}, got {lines[:3]}")
        return f"{case.name}: {'; '.join(problems)}" if problems else None

    with ThreadPoolExecutor(4) as pool:
        failures = [f for f in pool.map(check, CASES) if f]
    figures.update(badinput_files=len(CASES), badinput_validate_refused=len(CASES) - len(failures))
    assert failures == []

    ok = _validate(write_job(good(), tmp_path / "good.yaml"))
    assert ok.returncode == 0 and "valid GanTrainingJob 'good'" in ok.stdout, ok.stderr


def test_a_file_with_thousands_of_problems_gets_a_short_answer(tmp_path: Path) -> None:
    obj = good()
    obj["spec"].update({f"unknown{i}": i for i in range(5000)})
    result = _validate(write_job(obj, tmp_path / "many.yaml"))
    assert not _over_cpu_limit(result), f"killed after {CPU_LIMIT_S} s of CPU"
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 21, lines[-3:]
    assert "spec.unknown0 is not a known field" in lines[0]
    assert lines[-1].endswith("... and 4980 more problems")
