"""The last act of `make demo`: serve the promoted model locally and fetch one generated grid through the API.

    python -m scripts.serve_demo --home .ganops/demo [--model digits@production] [--n 64] [--seed 0]

It makes a demo API key (the key file holds only its SHA-256) and a watermark key under --home, starts
`ganops serve --model digits@production --home <home>` on 127.0.0.1 (a free port) in its own process, waits for
/readyz, POSTs /v1/generate for a grid with the key, saves the PNG under --home, checks its watermark through
/v1/watermark/verify, prints the path, the model version and the safety verdicts, and stops the server with
SIGTERM (a clean stop exits 0). Exit 0 when all of that worked, 1 otherwise (the server's log is under --home).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DemoError", "DemoResult", "main", "serve_and_fetch"]

DEMO_KEY_ID = "demo"


class DemoError(RuntimeError):
    """A step of the served demo failed; the message says which and what the server logged."""


@dataclass
class DemoResult:
    grid_path: Path
    model: str
    version: str
    alias: str
    seed: int
    samples: list[dict[str, Any]]
    watermark: dict[str, Any]
    server_exit_code: int | None
    log_path: Path
    url: str = ""
    verdicts: Counter[str] = field(default_factory=Counter)
    filters: list[str] = field(default_factory=list)
    skipped_filters: dict[str, str] = field(default_factory=dict)

    @property
    def allowed(self) -> int:
        return sum(1 for s in self.samples if s["allowed"])

    def lines(self) -> list[str]:
        blocked = [s for s in self.samples if not s["allowed"]]
        out = [
            f"served:     {self.model}@{self.alias} version {self.version} at {self.url} (ganops serve, API key "
            f"{DEMO_KEY_ID!r})",
            f"grid:       {self.grid_path} ({self.allowed} of {len(self.samples)} samples, seed {self.seed})",
            f"safety:     {self.allowed} allowed, {len(blocked)} blocked; verdicts: "
            + (", ".join(f"{name} x{count}" for name, count in sorted(self.verdicts.items())) or "none"),
        ]
        skipped = ", ".join(f"{name} ({why})" for name, why in sorted(self.skipped_filters.items()))
        out.append(f"filters:    {', '.join(self.filters) or 'none'}" + (f"; skipped: {skipped}" if skipped else ""))
        reasons = Counter(f"{s['blocked_by']}: {s['reason']}" for s in blocked)
        out += [f"            blocked {count}x by {reason}" for reason, count in reasons.most_common(5)]
        wm = self.watermark
        out.append(f"watermark:  present={wm.get('present')} method={wm.get('method')} model={wm.get('model')}")
        out.append(f"stopped:    server exit code {self.server_exit_code} (log: {self.log_path})")
        return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _request(url: str, body: dict[str, Any] | None = None, key: str | None = None,
             timeout: float = 60.0) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("X-API-Key", key)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def write_keys(home: Path) -> tuple[str, Path, Path]:
    """A fresh demo API key (returned) with its hashed key file, and a watermark key file, both mode 0600."""
    home.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    keys_file = home / "api-keys"
    keys_file.write_text(f"{DEMO_KEY_ID}:{hashlib.sha256(key.encode()).hexdigest()}\n")
    keys_file.chmod(0o600)
    watermark_file = home / "watermark.key"
    if not watermark_file.exists():
        watermark_file.write_text("hex:" + secrets.token_hex(32) + "\n")
    watermark_file.chmod(0o600)
    return key, keys_file, watermark_file


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return None


def serve_and_fetch(
    home: Path,
    model: str = "digits@production",
    *,
    n: int = 64,
    seed: int = 0,
    output: Path | None = None,
    ready_timeout: float = 120.0,
    extra_env: dict[str, str] | None = None,
) -> DemoResult:
    """Start `ganops serve` on ``home``'s MLflow store, fetch one grid, stop the server. Raises :class:`DemoError`."""
    home = home.resolve()
    key, keys_file, watermark_file = write_keys(home)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = home / "serve.log"
    env = {
        **os.environ,
        "GANOPS_SERVING_LOG_LEVEL": "warning",
        "GANOPS_SERVING_SAFETY__AUDIT_URI": (home / "audit").as_uri(),
        "GANOPS_SERVING_SAFETY__WATERMARK_KEY_FILE": str(watermark_file),
        "GANOPS_SERVING_SHUTDOWN_TIMEOUT_S": "10",
        **(extra_env or {}),
    }
    command = [sys.executable, "-m", "ganops.cli", "serve", "--model", model, "--home", str(home),
               "--host", "127.0.0.1", "--port", str(port), "--api-keys-file", str(keys_file)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    exit_code: int | None = None
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise DemoError(f"`ganops serve` exited with code {proc.returncode} before it was ready:\n"
                                f"{_tail(log_path)}")
            with contextlib.suppress(OSError):
                status, _ = _request(url + "/readyz", timeout=2)
                if status == 200:
                    break
            if time.monotonic() > deadline:
                raise DemoError(f"the server was not ready within {ready_timeout:g} s:\n{_tail(log_path)}")
            time.sleep(0.2)
        status, models = _request(url + "/v1/models", key=key)
        if status != 200:
            raise DemoError(f"GET /v1/models answered {status}: {models}")
        served: dict[str, Any] = next((m for m in models.get("models", []) if m.get("role") == "primary"), {})
        status, body = _request(url + "/v1/generate", {"n": n, "seed": seed, "grid": True, "format": "png"}, key)
        if status != 200:
            raise DemoError(f"POST /v1/generate answered {status}: {body}")
        if not body.get("grid"):
            raise DemoError(f"no grid in the answer: every sample was withheld ({body.get('blocked')} blocked)")
        png = base64.b64decode(body["grid"]["data"])
        grid_path = (output or home / "served-grid.png").resolve()
        grid_path.parent.mkdir(parents=True, exist_ok=True)
        grid_path.write_bytes(png)
        status, watermark = _request(url + "/v1/watermark/verify", {"image": body["grid"]["data"]}, key)
        if status != 200:
            raise DemoError(f"POST /v1/watermark/verify answered {status}: {watermark}")
        verdicts: Counter[str] = Counter(
            f"{v['filter']} {v['outcome']}" for sample in body["samples"] for v in sample["verdicts"])
    finally:
        exit_code = _stop(proc, 30)
    if exit_code != 0:
        raise DemoError(f"the server did not stop cleanly (exit code {exit_code}):\n{_tail(log_path)}")
    return DemoResult(grid_path, body["model"], str(body["version"]), str(body.get("alias")), int(body["seed"]),
                      list(body["samples"]), watermark, exit_code, log_path, url, verdicts,
                      list(served.get("filters", [])), dict(served.get("skipped_filters", {})))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.serve_demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path(".ganops/demo"), help="where `ganops run` left its state")
    parser.add_argument("--model", default="digits@production")
    parser.add_argument("--n", type=int, default=64, help="samples in the grid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="where to save the grid (default: <home>/served-grid.png)")
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    try:
        result = serve_and_fetch(args.home, args.model, n=args.n, seed=args.seed, output=args.output,
                                 ready_timeout=args.ready_timeout)
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for line in result.lines():
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
