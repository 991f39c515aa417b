"""What the trainer tells a person: a one-line progress bar on a terminal, `progress` events everywhere else."""

from __future__ import annotations

import logging
import sys
import time
from typing import IO

from ganops import logs

log = logging.getLogger(__name__)


class Progress:
    def __init__(self, total_steps: int, *, start_step: int = 0, stream: IO[str] | None = None,
                 interactive: bool | None = None, enabled: bool = True) -> None:
        self.total = total_steps
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.enabled = enabled
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def update(self, step: int, images: int, values: dict[str, float]) -> float:
        """Report progress at `step`, having processed `images` since the last report; returns images/s."""
        now = time.perf_counter()
        elapsed = max(now - self._last_time, 1e-9)
        rate = images / elapsed
        self._last_time, self._last_step = now, step
        if not self.enabled:
            return rate
        if self.interactive:
            width = 24
            filled = int(width * step / max(self.total, 1))
            parts = " ".join(f"{k}={v:.4g}" for k, v in values.items())
            self.stream.write(
                f"\r[{'#' * filled}{'.' * (width - filled)}] {step}/{self.total} {rate:,.0f} img/s {parts}\033[K"
            )
            self.stream.flush()
        else:
            logs.event(log, "progress", step=step, total=self.total, images_per_second=round(rate, 2),
                  **{k: round(v, 6) for k, v in values.items()})
        return rate

    def close(self) -> None:
        if self.enabled and self.interactive:
            self.stream.write("\n")
            self.stream.flush()
