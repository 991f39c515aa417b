"""Every benchmark writes reports/<name>.json (figures) and reports/<name>.md (the same, for people)."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

REPORTS = Path(__file__).resolve().parents[1] / "reports"


def environment() -> dict[str, Any]:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
    }


def write(name: str, figures: dict[str, Any], markdown: str) -> Path:
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / f"{name}.json").write_text(json.dumps({"environment": environment(), **figures}, indent=2) + "\n")
    path = REPORTS / f"{name}.md"
    path.write_text(markdown.rstrip() + "\n")
    return path
