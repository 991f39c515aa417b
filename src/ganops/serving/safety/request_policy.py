"""Checks on a generation request before anything is generated: how many, how large, which labels.

:func:`check_request` returns a list of problems (empty = acceptable), each a sentence fit for a 4xx response.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["RequestPolicy", "check_request"]


@dataclass(frozen=True)
class RequestPolicy:
    """Limits on one request.

    ``max_n``: samples per request. ``max_image_size``: largest side (pixels) a model may serve.
    ``max_pixels_per_request``: n × H × W cap (bounds memory and time per request).
    ``allowed_labels``: labels a conditional model may be asked for (``None`` = every class of the model).
    ``truncation``: accepted range (inclusive) of the truncation factor (1.0 = no truncation).
    """

    max_n: int = 64
    max_image_size: int = 256
    max_pixels_per_request: int = 64 * 256 * 256
    allowed_labels: frozenset[int] | None = None
    min_truncation: float = 0.0
    max_truncation: float = 2.0
    allowed_formats: frozenset[str] = frozenset({"png", "jpeg", "npy"})


def check_request(
    n: int,
    label: int | None = None,
    truncation: float | None = None,
    *,
    image_size: int | None = None,
    num_classes: int | None = None,
    output_format: str | None = None,
    policy: RequestPolicy | None = None,
) -> list[str]:
    """Problems with a request for ``n`` samples of a model (``image_size`` per side, ``num_classes`` when
    conditional, ``None`` for unconditional models and 2-D models). An empty list means it may go ahead."""
    policy = policy or RequestPolicy()
    problems: list[str] = []

    if isinstance(n, bool) or not isinstance(n, int):
        problems.append(f"n must be an integer, not {type(n).__name__}")
    elif n < 1:
        problems.append(f"n must be at least 1 (got {n})")
    elif n > policy.max_n:
        problems.append(f"n must be at most {policy.max_n} (got {n})")

    if image_size is not None:
        if image_size > policy.max_image_size:
            problems.append(f"images of {image_size} px exceed the limit of {policy.max_image_size} px per side")
        elif isinstance(n, int) and n >= 1 and n * image_size * image_size > policy.max_pixels_per_request:
            most = max(1, policy.max_pixels_per_request // (image_size * image_size))
            problems.append(
                f"n={n} images of {image_size}x{image_size} exceed the per-request pixel budget: at most {most}"
            )

    if label is not None:
        if isinstance(label, bool) or not isinstance(label, int):
            problems.append(f"label must be an integer class index, not {type(label).__name__}")
        elif not num_classes:
            problems.append("this model is not conditional: omit label")
        elif not 0 <= label < num_classes:
            problems.append(f"label must be in [0, {num_classes - 1}] (got {label})")
        elif policy.allowed_labels is not None and label not in policy.allowed_labels:
            problems.append(f"label {label} is not allowed")
    elif num_classes and policy.allowed_labels is not None and not set(range(num_classes)) <= policy.allowed_labels:
        # Without a label a conditional model draws random classes: only acceptable if every class is allowed.
        allowed = ", ".join(map(str, sorted(policy.allowed_labels)))
        problems.append(f"this model restricts labels: give one of {allowed}")

    if truncation is not None:
        if isinstance(truncation, bool) or not isinstance(truncation, int | float) or not math.isfinite(truncation):
            problems.append("truncation must be a finite number")
        elif not policy.min_truncation < truncation <= policy.max_truncation:
            bounds = f"({policy.min_truncation}, {policy.max_truncation}]"
            problems.append(f"truncation must be in {bounds} (got {truncation})")

    if output_format is not None and output_format not in policy.allowed_formats:
        problems.append(f"format must be one of {', '.join(sorted(policy.allowed_formats))} (got {output_format!r})")

    return problems
