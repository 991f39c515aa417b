"""A real Prometheus (Debian's ``/usr/bin/prometheus``) on 127.0.0.1, scraping given targets, for tests and scripts.

Plain Python use::

    with start_prometheus(tmp_dir, targets=["127.0.0.1:9400"]) as prom:   # waits for /-/ready
        prom.wait_for_target_up()                                        # first scrape done
        prom.query('ganops_train_step{job="digits"}')                    # → [{"metric": {...}, "value": [t, "12"]}]
        prom.set_targets(["127.0.0.1:9401"])                             # rewrite the config, POST /-/reload

Pytest: load as a plugin (``pytest_plugins = ["tests.support.prometheus"]``) and take ``prometheus`` (one server
per session, with no targets; call ``set_targets`` in the test, which also forgets earlier targets) or
``prometheus_factory`` (``prometheus_factory(targets=[...], rule_files=[...])`` starts a private one per call,
stopped at the end of the test). Tests are skipped when no ``prometheus`` binary exists (``make system-deps``).

Defaults chosen for tests: scrape and evaluation interval 1 s, TSDB under the temporary directory, the lifecycle
API enabled (reload), ``honor_labels: true`` like the chart's trainer PodMonitor is expected to set, so the
trainer's own ``job``/``namespace`` labels win over the scrape job's (otherwise Prometheus renames them
``exported_job``/``exported_namespace``). The scrape job is called ``ganops-test``; each target also gets the label
``scrape_target="<host:port>"``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import yaml

START_TIMEOUT_S = 30.0
SCRAPE_JOB = "ganops-test"


def prometheus_executable() -> str | None:
    return os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class PrometheusError(RuntimeError):
    pass


@dataclass
class PrometheusServer:
    """A ``prometheus`` subprocess with a generated config. ``url`` stays the same across reloads."""

    root: Path
    targets: list[str] = field(default_factory=list)
    rule_files: list[Path] = field(default_factory=list)
    scrape_interval: str = "1s"
    evaluation_interval: str = "1s"
    honor_labels: bool = True
    metrics_path: str = "/metrics"
    host: str = "127.0.0.1"
    port: int = 0
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    # --------------------------------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.root / "prometheus.yml"

    @property
    def log_path(self) -> Path:
        return self.root / "prometheus.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def config(self) -> dict[str, Any]:
        scrape: dict[str, Any] = {
            "job_name": SCRAPE_JOB,
            "scrape_interval": self.scrape_interval,
            "scrape_timeout": self.scrape_interval,
            "metrics_path": self.metrics_path,
            "honor_labels": self.honor_labels,
            "static_configs": [{"targets": [t], "labels": {"scrape_target": t}} for t in self.targets],
        }
        return {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.evaluation_interval},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [scrape],
        }

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        tmp.replace(self.config_path)

    def start(self, timeout: float = START_TIMEOUT_S) -> PrometheusServer:
        if self.running:
            return self
        binary = prometheus_executable()
        if binary is None:
            raise FileNotFoundError("no prometheus binary: apt-get install prometheus (make system-deps)")
        if not self.port:
            self.port = _free_port(self.host)
        self.write_config()
        command = [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.root / 'data'}",
            f"--web.listen-address={self.host}:{self.port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                command, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise PrometheusError(f"prometheus exited during start-up:\n{self.log_tail()}")
            if self._get_status("/-/ready") == 200:
                return self
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"prometheus not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the session this Popen created, nothing else
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def set_targets(self, targets: Sequence[str], rule_files: Sequence[Path] | None = None) -> None:
        """Replace the scrape targets (and rule files, when given) and reload; waits until the API shows them."""
        self.targets = list(targets)
        if rule_files is not None:
            self.rule_files = list(rule_files)
        self.write_config()
        self._request("/-/reload", method="POST")
        wanted = set(self.targets)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            active = {t["labels"].get("scrape_target") for t in self.targets_status()}
            if active == wanted:
                return
            time.sleep(0.1)
        raise TimeoutError(f"prometheus did not pick up targets {sorted(wanted)}:\n{self.log_tail()}")

    def __enter__(self) -> PrometheusServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --------------------------------------------------------------------------------------- HTTP API

    def _get_status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return None

    def _request(self, path: str, params: dict[str, str] | None = None, method: str = "GET") -> Any:
        query = urllib.parse.urlencode(params or {})
        data = query.encode() if method == "POST" and query else None
        url = self.url + path + (f"?{query}" if query and method == "GET" else "")
        request = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise PrometheusError(f"{method} {path} → {exc.code}: {exc.read().decode(errors='replace')}") from None
        if not body or path.startswith("/-/"):
            return None
        payload = json.loads(body)
        if payload.get("status") != "success":
            raise PrometheusError(f"{path}: {payload}")
        return payload["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query: the result vector (``[{"metric": {...}, "value": [t, "v"]}, ...]``), or for a range
        selector (``x[30s]``) the matrix (``[{"metric": {...}, "values": [[t, "v"], ...]}, ...]``)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._request("/api/v1/query", params)
        if data["resultType"] not in ("vector", "matrix"):
            return [{"metric": {}, "value": data["result"]}]  # scalar/string: one pseudo-sample
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_value(self, expr: str) -> float | None:
        """The value of a query returning at most one series (None when empty)."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{expr!r} returned {len(result)} series: {[r['metric'] for r in result]}")
        return float(result[0]["value"][1])

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        """Range query: ``[{"metric": {...}, "values": [[t, "v"], ...]}, ...]``."""
        data = self._request(
            "/api/v1/query_range", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": str(step)}
        )
        result: list[dict[str, Any]] = data["result"]
        return result

    def series(self, match: str, start: float | None = None) -> list[dict[str, str]]:
        params = {"match[]": match}
        if start is not None:
            params["start"] = f"{start:.3f}"
        result: list[dict[str, str]] = self._request("/api/v1/series", params)
        return result

    def targets_status(self) -> list[dict[str, Any]]:
        """The active targets as ``/api/v1/targets`` reports them (health, lastError, labels, …)."""
        active: list[dict[str, Any]] = self._request("/api/v1/targets", {"state": "active"})["activeTargets"]
        return active

    def rules(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self._request("/api/v1/rules")["groups"]
        return groups

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self._request("/api/v1/alerts")["alerts"]
        return alerts

    # --------------------------------------------------------------------------------------- waiting

    def wait_until(self, check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.25,
                   what: str = "condition") -> Any:
        """Poll ``check`` until it returns something truthy; return that. Raise with context on timeout."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(interval)
        raise TimeoutError(f"{what} not met within {timeout:.0f} s (last: {last!r}); targets: "
                           f"{[(t['scrapeUrl'], t['health'], t['lastError']) for t in self.targets_status()]}")

    def wait_for_target_up(self, target: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until ``target`` (default: every target) has been scraped successfully at least once."""

        def check() -> dict[str, Any] | None:
            status = self.targets_status()
            chosen = [t for t in status if target is None or t["labels"].get("scrape_target") == target]
            if chosen and all(t["health"] == "up" for t in chosen):
                return chosen[0]
            return None

        result: dict[str, Any] = self.wait_until(check, timeout, what=f"target {target or 'all'} up")
        return result

    def wait_for_query(self, expr: str, predicate: Callable[[list[dict[str, Any]]], bool] = bool,
                       timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until ``predicate(query(expr))`` holds (default: the result is non-empty); return the result."""

        def check() -> list[dict[str, Any]] | None:
            result = self.query(expr)
            return result if predicate(result) else None

        result: list[dict[str, Any]] = self.wait_until(check, timeout, what=f"query {expr!r}")
        return result


def start_prometheus(
    tmp_dir: str | os.PathLike[str],
    targets: Sequence[str] = (),
    *,
    rule_files: Sequence[Path] = (),
    scrape_interval: str = "1s",
    honor_labels: bool = True,
) -> PrometheusServer:
    """Start Prometheus keeping its config and TSDB under ``tmp_dir``; use as a context manager to stop it."""
    server = PrometheusServer(
        root=Path(tmp_dir), targets=list(targets), rule_files=list(rule_files), scrape_interval=scrape_interval,
        evaluation_interval=scrape_interval, honor_labels=honor_labels,
    )
    return server.start()


# ---------------------------------------------------------------------------------------------- pytest


def _require_binary() -> None:
    if prometheus_executable() is None:
        pytest.skip(reason="prometheus is not installed (make system-deps)")


@pytest.fixture(scope="session")
def prometheus() -> Iterator[PrometheusServer]:
    """One Prometheus for the session with no targets; a test points it with ``set_targets([...])``."""
    _require_binary()
    root = Path(tempfile.mkdtemp(prefix="ganops-prometheus-"))
    try:
        with start_prometheus(root) as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    """``prometheus_factory(targets=[...], rule_files=[...], scrape_interval="1s")`` → a started, private server."""
    _require_binary()
    started: list[PrometheusServer] = []

    def make(targets: Sequence[str] = (), **kwargs: Any) -> PrometheusServer:
        server = start_prometheus(tmp_path / f"prometheus-{len(started)}", targets, **kwargs)
        started.append(server)
        return server

    try:
        yield make
    finally:
        for server in started:
            server.stop()
