"""`make gpu-check` at toy sizes on the CPU, so the script a GPU run depends on never rots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_gpu_check_runs_green_on_the_cpu_at_tiny_sizes(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--tiny", "--device", "cpu",
                             "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    figures = json.loads((tmp_path / "gpu.json").read_text())
    assert (tmp_path / "gpu.md").read_text().startswith("# gpu-check on cpu (tiny sizes)")
    assert [r["precision"] for r in figures["throughput"]] == ["fp32", "bf16", "fp16"]
    for row in figures["throughput"]:
        assert row["trainer_images_per_second"] > 0 and row["bare_images_per_second"] > 0
        assert row["syncs_per_step"] is None  # counted on CUDA only
    assert figures["throughput"][2]["grad_scaler_skip_rate"] is not None  # fp16 has a GradScaler
    # everything that can be checked on a CPU passes; the GPU targets say n/a (null)
    checks = figures["checks"]
    assert [v for v in checks.values() if v is not None] and all(v in (True, None) for v in checks.values()), checks
    assert figures["torchrun_sigterm"]["exit_code"] == 0 and figures["torchrun_sigterm"]["verdict"] == "Preempted"
    assert figures["evaluation"]["seconds"] > 0
    assert figures["serving"]["max_grey_level_difference"] == 0
