"""A real ``mlflow server`` (sqlite backend, proxied artifacts) on 127.0.0.1, for tests and scripts.

Plain Python use::

    with start_mlflow_server(tmp_dir) as mlflow:     # waits for /health
        Tracker.open(mlflow.url, "exp", "run")
        mlflow.stop(); mlflow.start()                # an outage: same port, same database and artifacts
        mlflow.pause(); mlflow.resume()              # a hung server (SIGSTOP/SIGCONT), no restart cost

Pytest: load this module as a plugin (``pytest_plugins = ["tests.support.mlflow_server"]``) and take
``mlflow_server`` (one server for the whole session; a test that stops it must start it again) or ``mlflow_uri``
(its URL, with the server started again first if an earlier test left it stopped).
Each test should use its own experiment and model names (e.g. with a uuid): the server is shared.

Clients need no shared disk: artifacts go through the server (``mlflow-artifacts:`` URIs, ``--serve-artifacts``)
into ``<root>/artifacts``, or into ``artifacts_destination`` (e.g. ``s3://bucket/mlflow`` with the moto env).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import pytest

START_TIMEOUT_S = 90.0


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def mlflow_executable() -> str:
    """The ``mlflow`` script next to the running interpreter (the project's venv)."""
    candidate = Path(sys.executable).parent / "mlflow"
    if not candidate.exists():
        raise FileNotFoundError(f"no mlflow executable next to {sys.executable}; install the trainer extra")
    return str(candidate)


@dataclass
class MlflowServer:
    """An ``mlflow server`` subprocess. ``url`` stays the same across stop()/start()."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 0
    artifacts_destination: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # extra environment (e.g. moto's AWS_* for s3:// artifacts)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def backend_store_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> MlflowServer:
        """Start (or restart) the server and wait until ``/health`` answers."""
        return self.launch().wait(timeout)

    def launch(self) -> MlflowServer:
        """Start the process without waiting for it (``wait()`` does); no-op when already running."""
        if self.running:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = _free_port(self.host)
        destination = self.artifacts_destination or str(self.root / "artifacts")
        command = [
            mlflow_executable(),
            "server",
            "--workers",
            "1",
            "--backend-store-uri",
            self.backend_store_uri,
            "--serve-artifacts",
            "--artifacts-destination",
            destination,
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.env}
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            env.pop(name, None)
        with self.log_path.open("ab") as log:
            log.write(f"\n--- start {time.strftime('%H:%M:%S')} port {self.port}\n".encode())
            log.flush()
            # Own session: stop() signals the whole group (mlflow server + its uvicorn worker).
            self._proc = subprocess.Popen(
                command, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def wait(self, timeout: float = START_TIMEOUT_S) -> MlflowServer:
        """Wait until ``/health`` answers; raise (with the log's tail) if the process exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None:
                raise RuntimeError("mlflow server is not running: call launch() or start()")
            if self._proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                self._proc = None
                raise RuntimeError(f"mlflow server exited during start-up:\n{tail}")
            if self.healthy():
                return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"mlflow server not healthy after {timeout:.0f} s; see {self.log_path}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server (SIGTERM to its process group, SIGKILL after ``timeout``); the port is free after."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGCONT)  # in case it was paused
                os.killpg(proc.pid, signal.SIGTERM)  # the group this Popen created, nothing else
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # The uvicorn worker may outlive the parent by a moment: wait until nothing answers on the port.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._port_open():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.1)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are accepted by the kernel but never answered, like a hung
        server or a network black hole. ``resume()`` continues it, with no restart cost."""
        if self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGCONT)

    def _port_open(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            return sock.connect_ex((self.host, self.port)) == 0

    def __enter__(self) -> MlflowServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_mlflow_server(
    tmp_dir: str | os.PathLike[str],
    *,
    artifacts_destination: str | None = None,
    env: dict[str, str] | None = None,
    port: int = 0,
) -> MlflowServer:
    """Start an ``mlflow server`` keeping its state under ``tmp_dir``; use as a context manager to stop it."""
    server = MlflowServer(
        root=Path(tmp_dir), port=port, artifacts_destination=artifacts_destination, env=dict(env or {})
    )
    return server.start()


# ---------------------------------------------------------------------------------------------- pytest


_PRESTARTED = pytest.StashKey[MlflowServer]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Launch the session's server as soon as collection shows a test needs it, so its ~10 s start-up overlaps
    the tests that run before the first MLflow test (the fixture then only waits for /health)."""
    if any("mlflow_server" in getattr(item, "fixturenames", ()) for item in session.items):
        root = Path(tempfile.mkdtemp(prefix="ganops-mlflow-"))
        session.config.stash[_PRESTARTED] = MlflowServer(root=root).launch()


def pytest_sessionfinish(session: pytest.Session) -> None:
    server = session.config.stash.get(_PRESTARTED, None)
    if server is not None:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One real MLflow server for the session (~10 s to start). Tests may stop()/start() it (outages)."""
    server = request.config.stash.get(_PRESTARTED, None)
    if server is None:  # used without collection (e.g. requested dynamically)
        with start_mlflow_server(tmp_path_factory.mktemp("mlflow")) as started:
            yield started
        return
    server.start()  # waits for the launched process (or starts it again)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mlflow_uri(mlflow_server: MlflowServer) -> str:
    """The session server's URL, started again first if an earlier test left it stopped."""
    if not mlflow_server.running:
        mlflow_server.start()
    return mlflow_server.url
