"""Run the real kopf runtime against the emulator, and stop/restart (or kill) it at will.

`KopfRunner`: `kopf.operator()` in a background thread of the test process (fast, ~10 ms to start).
`KopfProcess`: `kopf run` as a subprocess (~1-2 s to start) that can be SIGKILLed mid-handler.

    runner = KopfRunner(kube, ["ganops.operator.main"])
    runner.start()        # returns once kopf's startup handlers have finished
    ...                   # create objects through `kube`, poll for the operator's effects
    runner.restart()      # a new operator process, as after a pod restart: same registry, fresh memory
    runner.stop()         # graceful; re-raises a crash of the operator itself

The handler modules are imported (or re-imported) once per set of modules into a fresh
`kopf.OperatorRegistry`, so handlers must be registered at import time of the listed modules. kopf connects
to the emulator through a login handler that this runner adds to that registry (it reads the server URL from
`memo.kube_emulator_url`); the operator's own API clients should follow KUBECONFIG, which the `kube_api`
fixture points at the emulator.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import httpx
import kopf

from .client import KubeClient
from .emulator import KubeAPI

MEMO_URL_KEY = "kube_emulator_url"
REPO_ROOT = Path(__file__).resolve().parents[3]
_REGISTRIES: dict[tuple[str, ...], kopf.OperatorRegistry] = {}
_REGISTRIES_LOCK = threading.Lock()


def _login_to_emulator(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(server=memo[MEMO_URL_KEY], token="test", insecure=True, default_namespace="default")


def load_registry(modules: Sequence[str]) -> kopf.OperatorRegistry:
    """A registry with the handlers of these modules (imported or re-imported into it), cached per module set."""
    key = tuple(modules)
    with _REGISTRIES_LOCK:
        if key not in _REGISTRIES:
            registry = kopf.OperatorRegistry()
            previous = kopf.get_default_registry()
            kopf.set_default_registry(registry)
            try:
                for name in modules:
                    if name in sys.modules:
                        importlib.reload(sys.modules[name])
                    else:
                        importlib.import_module(name)
            finally:
                kopf.set_default_registry(previous)
            kopf.on.login(registry=registry, id="kube-emulator-login")(_login_to_emulator)
            _REGISTRIES[key] = registry
        return _REGISTRIES[key]


def fast_settings() -> kopf.OperatorSettings:
    """kopf settings for tests: fast retries and reconnects, never SIGKILL the test process."""
    settings = kopf.OperatorSettings()
    settings.process.ultimate_exiting_timeout = None  # kopf would otherwise SIGKILL its thread = pytest
    settings.networking.request_timeout = 15
    settings.networking.connect_timeout = 5
    settings.networking.error_backoffs = [0.1, 0.2, 0.5, 1.0]
    settings.watching.reconnect_backoff = 0.05
    settings.queueing.exit_timeout = 0.5
    settings.posting.level = logging.INFO
    return settings


class _RecordCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class KopfRunner:
    """The real kopf operator (`kopf.operator()`) in its own thread and event loop."""

    def __init__(
        self,
        kube: KubeAPI,
        modules: Sequence[str],
        *,
        namespaces: Sequence[str] = (),
        configure: Callable[[kopf.OperatorSettings], None] | None = None,
        startup_timeout: float = 15.0,
        stop_timeout: float = 20.0,
    ) -> None:
        self.kube = kube
        self.modules = tuple(modules)
        self.namespaces = tuple(namespaces)
        self.configure = configure
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.registry = load_registry(self.modules)
        self.starts = 0
        self._thread: threading.Thread | None = None
        self._stop_flag = threading.Event()
        self._ready_flag = threading.Event()
        self._done = threading.Event()
        self._failure: BaseException | None = None
        self._settings: kopf.OperatorSettings | None = None
        self._collector = _RecordCollector()
        self._previous_level: int | None = None

    # ------------------------------------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Self:
        """Start a new operator "process" and wait until its startup handlers have run."""
        if self.running:
            raise RuntimeError("the operator is already running")
        self._stop_flag = threading.Event()
        self._ready_flag = threading.Event()
        self._done = threading.Event()
        self._failure = None
        self._settings = fast_settings()
        if self.configure is not None:
            self.configure(self._settings)
        kopf_logger = logging.getLogger("kopf")
        if self._previous_level is None:
            self._previous_level = kopf_logger.level
            kopf_logger.setLevel(logging.INFO)
            kopf_logger.addHandler(self._collector)
        self._thread = threading.Thread(target=self._run, name=f"kopf-operator-{self.starts}", daemon=True)
        self.starts += 1
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._ready_flag.wait(0.02):
            if self._done.is_set():
                self._thread = None
                failure, self._failure = self._failure, None
                raise RuntimeError("the operator exited during startup") from failure
            if time.monotonic() > deadline:
                self._stop_thread()
                errors = "\n".join(self.messages(logging.ERROR)[-5:]) or "(no errors logged)"
                raise RuntimeError(f"the operator did not become ready in {self.startup_timeout}s:\n{errors}")
        return self

    def stop(self) -> None:
        """Stop gracefully (as on SIGTERM) and wait; re-raise if the operator itself crashed."""
        self._stop_thread()
        kopf_logger = logging.getLogger("kopf")
        kopf_logger.removeHandler(self._collector)
        if self._previous_level is not None:
            kopf_logger.setLevel(self._previous_level)
            self._previous_level = None
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise RuntimeError("the kopf operator crashed") from failure

    def restart(self) -> Self:
        """Stop and start again: a new operator instance with no in-memory state, as after a pod restart."""
        self._stop_thread()
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise RuntimeError("the kopf operator crashed before the restart") from failure
        return self.start()

    def _stop_thread(self) -> None:
        if self._thread is None:
            return
        self._stop_flag.set()
        self._thread.join(self.stop_timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"the operator did not stop in {self.stop_timeout}s")
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        settings = self._settings
        assert settings is not None
        try:
            loop.run_until_complete(
                kopf.operator(
                    registry=self.registry,
                    settings=settings,
                    clusterwide=not self.namespaces,
                    namespaces=self.namespaces,
                    standalone=True,
                    stop_flag=self._stop_flag,
                    ready_flag=self._ready_flag,
                    memo=kopf.Memo({MEMO_URL_KEY: self.kube.url}),
                )
            )
        except asyncio.CancelledError:
            pass
        except BaseException as exc:
            self._failure = exc
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(asyncio.sleep(0))
            finally:
                loop.close()
                executor = settings.execution.executor
                executor.shutdown(wait=False, cancel_futures=True)
                self._done.set()

    # ------------------------------------------------------------------------------------------------ logs
    @property
    def records(self) -> list[logging.LogRecord]:
        """kopf's log records (INFO and above) since this runner was first started."""
        return list(self._collector.records)

    @property
    def error_records(self) -> list[logging.LogRecord]:
        return [record for record in self._collector.records if record.levelno >= logging.ERROR]

    def messages(self, level: int = logging.INFO) -> list[str]:
        return [record.getMessage() for record in self._collector.records if record.levelno >= level]


class KopfProcess:
    """The operator as a real `kopf run` subprocess, killable at any point (SIGKILL), like a crashed pod.

    Slower to start than `KopfRunner` (~1-2 s: a fresh interpreter imports kopf and the handlers), but a kill
    really stops everything at once, sync handlers included (kopf's graceful stop waits for sync handlers to
    return). The subprocess logs in through the `kubernetes` package and KUBECONFIG, which points at the
    emulator (or at a real API server, given its client); readiness is kopf's liveness endpoint answering.
    `env` adds environment variables (e.g. to make a handler pause at a chosen point) for one start.
    """

    def __init__(
        self,
        kube: KubeClient,
        modules: Sequence[str],
        *,
        namespaces: Sequence[str] = (),
        startup_timeout: float = 30.0,
        stop_timeout: float = 20.0,
        verbose: bool = True,
    ) -> None:
        self.kube = kube
        self.modules = tuple(modules)
        self.namespaces = tuple(namespaces)
        self.verbose = verbose  # False: kopf's default (warnings and errors only), e.g. for load tests
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.starts = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="kopf-process-", suffix=".log", delete=False)  # noqa: SIM115
        self.log_path = Path(self._log.name)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def output(self) -> str:
        """Everything the operator processes printed (all starts), for assertions and failure messages."""
        return self.log_path.read_text(errors="replace")

    def start(self, env: Mapping[str, str] | None = None) -> Self:
        if self.running:
            raise RuntimeError("the operator is already running")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        liveness = f"http://127.0.0.1:{port}/healthz"
        scope = [arg for ns in self.namespaces for arg in ("--namespace", ns)] or ["--all-namespaces"]
        modules = [arg for module in self.modules for arg in ("-m", module)]
        command = [sys.executable, "-m", "kopf", "run", "--standalone", *(["--verbose"] if self.verbose else []),
                   "--liveness", liveness]
        process_env = {key: value for key, value in os.environ.items() if key != "KUBERNETES_SERVICE_HOST"}
        process_env.update(
            KUBECONFIG=str(self.kube.kubeconfig_path),
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            **(env or {}),
        )
        self._log.write(f"===== start #{self.starts}: {' '.join(command + scope + modules)}\n".encode())
        self._log.flush()
        self.starts += 1
        self._process = subprocess.Popen(
            [*command, *scope, *modules], cwd=REPO_ROOT, env=process_env, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"the operator exited during startup:\n{self.output[-4000:]}")
            try:
                if httpx.get(liveness, timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the operator did not become ready in {self.startup_timeout}s")
            time.sleep(0.05)

    def stop(self) -> int | None:
        """SIGTERM and wait (kopf stops gracefully); returns the exit code."""
        if self._process is None:
            return None
        process, self._process = self._process, None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def kill(self) -> None:
        """SIGKILL: the operator dies wherever it is, as on a node failure or an OOM kill."""
        if self._process is None:
            return
        process, self._process = self._process, None
        if process.poll() is None:
            process.kill()
        process.wait()

    def restart(self, *, kill: bool = False, env: Mapping[str, str] | None = None) -> Self:
        self.kill() if kill else self.stop()
        return self.start(env)

    def close(self) -> None:
        self.kill()
        self._log.close()
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class KopfRunnerFactory(Protocol):
    def __call__(
        self,
        modules: Sequence[str],
        *,
        namespaces: Sequence[str] = (),
        configure: Callable[[kopf.OperatorSettings], None] | None = None,
        start: bool = True,
    ) -> KopfRunner: ...


class KopfProcessFactory(Protocol):
    def __call__(
        self,
        modules: Sequence[str],
        *,
        namespaces: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        start: bool = True,
    ) -> KopfProcess: ...
