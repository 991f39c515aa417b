"""What the trainer decides from the device it runs on: matmul precision, memory format, fused optimizers, and
whether ``torch.compile`` can run here at all.

- **Matmul precision** (``training.matmulPrecision``): ``tf32`` or ``ieee`` for fp32 matmuls *and* convolutions on
  CUDA, set explicitly at start (torch's own defaults differ: cuBLAS IEEE, cuDNN TF32) and recorded in every
  checkpoint's manifest; CPU kernels ignore it. Evaluation always runs IEEE (`torch_metrics.ieee_matmuls`).
- **channels_last** for the conv networks on CUDA: NHWC is what tensor-core convolutions want (no transposes around
  every cuDNN call); on the CPU it does not pay and would change the bits of the CPU reference runs.
- **Fused Adam** on CUDA: one kernel for every parameter's update instead of a dozen per tensor, and GradScaler
  skips its ``found_inf`` host sync for it (fp16); on the CPU the for-each path keeps the reference bits.
- **compile**: Triton builds small C launchers at run time, inductor's CPU kernels are C++: both need a compiler and
  Python's headers where the trainer runs. `compile_problem` says what is missing, so a job that cannot compile
  fails at start (exit 3) instead of at its first step.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sysconfig
from pathlib import Path
from typing import Literal

import torch

from ganops.api.spec import GanTrainingJobSpec

MatmulPrecision = Literal["tf32", "ieee"]

__all__ = ["compile_problem", "configure_matmul_precision", "fp32_precision", "set_fp32_precision",
           "use_channels_last", "use_fused_optimizer"]


def fp32_precision() -> dict[str, str]:
    """fp32 precision of CUDA matmuls (cuBLAS) and convolutions (cuDNN) now in effect: "tf32", "ieee" or "none"."""
    conv = getattr(torch.backends.cudnn, "conv")  # noqa: B009 - torch's stubs lack the sub-module
    return {"matmul": str(torch.backends.cuda.matmul.fp32_precision), "conv": str(conv.fp32_precision)}


def set_fp32_precision(matmul: str, conv: str) -> None:
    torch.backends.cuda.matmul.fp32_precision = matmul
    getattr(torch.backends.cudnn, "conv").fp32_precision = conv  # noqa: B009


def configure_matmul_precision(precision: MatmulPrecision) -> dict[str, str]:
    """Set fp32 matmul and convolution precision on CUDA; returns what is now in effect (for the manifest)."""
    set_fp32_precision(precision, precision)
    return fp32_precision()


def use_channels_last(spec: GanTrainingJobSpec, device: torch.device) -> bool:
    return device.type == "cuda" and spec.model.architecture in ("dcgan", "resnet")


def use_fused_optimizer(device: torch.device) -> bool:
    return device.type == "cuda"


def _c_compiler() -> str | None:
    configured = os.environ.get("CC", "").split()
    for name in ([configured[0]] if configured else []) + ["cc", "gcc", "clang"]:
        found = shutil.which(name)
        if found:
            return found
    return None


def compile_problem(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run here (None when it can): no C compiler, no Python headers, no Triton (CUDA)."""
    missing = []
    if _c_compiler() is None:
        missing.append("a C compiler (cc/gcc/clang on PATH, or CC)")
    include = sysconfig.get_paths().get("include")
    if not include or not (Path(include) / "Python.h").is_file():
        missing.append(f"Python's headers (Python.h under {include})")
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        missing.append("triton")
    if not missing:
        return None
    return ("spec.training.compile is true but this trainer cannot compile: it lacks " + " and ".join(missing)
            + " (Triton and inductor build code at run time). Set compile: false, or run an image with gcc and "
            "python3-dev (docs/gpu.md)")
