"""The real trainer (`ganops train`) as a process whose structured log lines a test can wait on. The checkpoint
audit every fault test ends with is `tests.resilience.checkpoint_audit` (independent of ganops' code)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
Event = dict[str, Any]


class TrainerProcess:
    """`ganops train --job <file>` in its own session; stderr's JSON events are parsed as they arrive."""

    def __init__(self, job_path: Path, work_dir: Path, env: Mapping[str, str],
                 command: list[str] | None = None) -> None:
        self.events: list[Event] = []
        self.lines: list[str] = []
        self._cond = threading.Condition()
        argv = command or [str(BIN / "ganops"), "train", "--job", str(job_path), "--work-dir", str(work_dir),
                           "--no-progress"]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, env={**os.environ, "GANOPS_METRICS_PORT": "0", **env}, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            at = line.find('{"event"')
            parsed: Event | None = None
            if at >= 0:
                try:
                    parsed = json.loads(line[at:])
                except ValueError:
                    parsed = None
            with self._cond:
                self.lines.append(line)
                if parsed is not None:
                    self.events.append(parsed)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_event(self, check: Callable[[Event], bool], timeout: float) -> Event | None:
        """The first event (from the start) that satisfies ``check``; None when the process ends or time is up."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for ev in self.events[seen:]:
                    if check(ev):
                        return ev
                seen = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    return None
                self._cond.wait(min(left, 0.2))

    def named(self, name: str) -> list[Event]:
        with self._cond:
            return [ev for ev in self.events if ev.get("event") == name]

    def max_step(self) -> int:
        steps = [int(ev["step"]) for ev in self.named("progress")] + [int(ev["step"]) for ev in self.named("resumed")]
        return max(steps, default=0)

    def resumed_step(self) -> int | None:
        found = self.named("resumed")
        return int(found[0]["step"]) if found else None

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def finish(self, timeout: float = 60) -> int:
        """Wait for the exit and for the last log line; SIGKILL if it outlives ``timeout``."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            code = self.proc.wait(10)
        self._reader.join(10)
        return code

    def tail(self, n: int = 40) -> str:
        return "".join(self.lines[-n:])
