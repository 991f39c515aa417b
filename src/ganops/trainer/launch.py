"""`ganops launch TORCHRUN_ARGS…`: torchrun under a supervisor that turns a preemption into checkpoint + exit 0.

torchrun alone cannot: on SIGTERM its agent forwards the signal to the workers, waits its shutdown timeout (30 s by
default, whatever the pod's grace period), SIGKILLs what is left and then re-raises the signal as
``SignalException``: torchrun exits 1 even when every worker checkpointed and exited 0, and the operator would spend
``runPolicy.backoffLimit`` on a preemption. So the operator runs ``ganops launch`` as the container's command (PID 1)
with torchrun's arguments:

1. it starts ``python -m torch.distributed.run --shutdown-timeout=<grace − margin> ARGS…`` (unless the arguments
   set one), the grace being ``GANOPS_TERMINATION_GRACE_SECONDS`` (the pod's terminationGracePeriodSeconds), so
   torchrun waits for the workers' checkpoint for nearly the whole grace period and still exits before the kubelet's
   SIGKILL;
2. it gives the workers ``GANOPS_STOP_MARKER_DIR``, a fresh folder: a worker stopped by SIGTERM writes
   ``stopped-<rank>.json`` there after the checkpoint barrier (`write_stop_marker`);
3. it forwards SIGTERM/SIGINT to torchrun and, when torchrun is done, exits 0 if torchrun did, or if a signal came
   and every local rank (``LOCAL_RANK`` 0 … ``LOCAL_WORLD_SIZE`` − 1) left its marker; a signal without every
   marker exits 128 + the signal (143: the operator's "terminated by signal", a preemption too); anything else
   passes torchrun's exit code through.

With every pod exiting 0 and latest.json short of the last step, the operator classifies the attempt as
``StoppedEarly`` (`ganops.operator.faults`): a preemption, relaunched for free.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from ganops.contracts import ENV_STOP_MARKER_DIR, ENV_TERMINATION_GRACE
from ganops.logs import event

log = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS = 30.0  # Kubernetes' default terminationGracePeriodSeconds
MARGIN_SECONDS = 10.0  # torchrun's SIGKILL of late workers and its own exit, before the kubelet's SIGKILL
MIN_SHUTDOWN_SECONDS = 5

__all__ = ["launch", "read_stop_markers", "shutdown_timeout", "torchrun_command", "write_stop_marker"]


def shutdown_timeout(grace_seconds: float) -> int:
    """torchrun's ``--shutdown-timeout`` for a pod grace period: the grace less `MARGIN_SECONDS` (at least 5 s)."""
    return max(MIN_SHUTDOWN_SECONDS, int(grace_seconds - MARGIN_SECONDS))


def _grace_from_env() -> float:
    raw = os.environ.get(ENV_TERMINATION_GRACE, "").strip()
    try:
        return float(raw) if raw else DEFAULT_GRACE_SECONDS
    except ValueError:
        log.warning("%s=%r is not a number: assuming %ss", ENV_TERMINATION_GRACE, raw, DEFAULT_GRACE_SECONDS)
        return DEFAULT_GRACE_SECONDS


def torchrun_command(args: Sequence[str], grace_seconds: float) -> list[str]:
    """``python -m torch.distributed.run`` with `args`, and a shutdown timeout fitted to the grace period."""
    own = any(a.split("=", 1)[0] in ("--shutdown-timeout", "--shutdown_timeout") for a in args)
    timeout = [] if own else [f"--shutdown-timeout={shutdown_timeout(grace_seconds)}"]
    return [sys.executable, "-m", "torch.distributed.run", *timeout, *args]


def write_stop_marker(step: int, *, signal_name: str | None = None) -> Path | None:
    """Called by a worker that stopped on a signal after its checkpoint: ``stopped-<rank>.json`` in
    ``GANOPS_STOP_MARKER_DIR`` (None when not under `ganops launch`)."""
    folder = os.environ.get(ENV_STOP_MARKER_DIR)
    if not folder:
        return None
    rank = int(os.environ.get("RANK", "0"))
    marker = {
        "rank": rank,
        "localRank": int(os.environ.get("LOCAL_RANK", "0")),
        "localWorldSize": int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        "step": step,
        "signal": signal_name,
    }
    path = Path(folder) / f"stopped-{rank}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(marker))
    tmp.replace(path)
    return path


def read_stop_markers(folder: Path) -> list[dict[str, Any]]:
    markers = []
    for path in sorted(folder.glob("stopped-*.json")):
        try:
            markers.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return markers


def every_local_rank_stopped(markers: Sequence[dict[str, Any]]) -> bool:
    if not markers:
        return False
    size = int(markers[0].get("localWorldSize", 0))
    return size > 0 and {int(m.get("localRank", -1)) for m in markers} == set(range(size))


def exit_code(torchrun_code: int, signals: Sequence[int], markers: Sequence[dict[str, Any]]) -> int:
    """The launcher's exit code (module docstring): a pure function of what happened."""
    if torchrun_code == 0:
        return 0
    if signals:
        return 0 if every_local_rank_stopped(markers) else 128 + signals[0]
    return torchrun_code if torchrun_code > 0 else 128 - torchrun_code  # Popen: -N means killed by signal N


def launch(args: Sequence[str], *, grace_seconds: float | None = None) -> int:
    """Run torchrun with `args` under the supervisor; returns the exit code for the pod."""
    grace = _grace_from_env() if grace_seconds is None else grace_seconds
    folder = Path(tempfile.mkdtemp(prefix="ganops-stop-"))
    command = torchrun_command(args, grace)
    env = {**os.environ, ENV_STOP_MARKER_DIR: str(folder)}
    received: list[int] = []
    proc = subprocess.Popen(command, env=env)

    def forward(signum: int, _frame: FrameType | None) -> None:
        if not received:
            event(log, "launch_signal", signal=signal.Signals(signum).name, grace_seconds=grace,
                  note="forwarded to torchrun; workers checkpoint and stop")
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    markers = read_stop_markers(folder)
    shutil.rmtree(folder, ignore_errors=True)
    result = exit_code(code, received, markers)
    if received:
        event(log, "launch_stopped", torchrun_exit=code, exit=result, stopped_ranks=sorted(m["rank"] for m in markers),
              note="every local rank checkpointed and stopped: exit 0" if result == 0 else
              "not every local rank reported its stop")
    return result


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(launch(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
