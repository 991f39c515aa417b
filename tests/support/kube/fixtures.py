"""pytest fixtures for the Kubernetes emulator and the kopf runtime.

Use from a test module (or the root conftest):  `pytest_plugins = ["tests.support.kube.fixtures"]`

    def test_job(kube_api: KubeAPI, kopf_runner: KopfRunnerFactory) -> None:
        kube_api.register_crd(build_crd())
        runner = kopf_runner(["ganops.operator.main"])   # started; stopped at teardown
        kube_api.create(job_manifest)
        cm = kube_api.wait_for(lambda: kube_api.get_or_none("v1", "ConfigMap", "ns", "job-spec"))
        runner.restart()                                 # graceful stop + fresh start

- `kube_api`: a fresh emulator per test (~50 ms); `kube_api_options` (override it) feeds `KubeAPI(...)`.
- `kopf_runner`: kopf in a thread of the test process (~10 ms to start; graceful stops only).
- `kopf_process`: `kopf run` as a subprocess (~1-2 s to start; `.restart(kill=True)` SIGKILLs mid-handler).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import kopf
import pytest

from .emulator import KubeAPI
from .operator import KopfProcess, KopfProcessFactory, KopfRunner, KopfRunnerFactory


@pytest.fixture
def kube_api_options() -> dict[str, Any]:
    """Keyword arguments for `KubeAPI(...)`; override this fixture in a module to change them, e.g.
    `{"admission": schema_admission}` (CRD defaults & validation) or `{"auto_namespaces": False}`."""
    return {}


@pytest.fixture
def kube_api(monkeypatch: pytest.MonkeyPatch, kube_api_options: dict[str, Any]) -> Iterator[KubeAPI]:
    """A fresh emulator per test (starts in ~50 ms).

    KUBECONFIG and the `kubernetes` package (its default Configuration, and the default kubeconfig location that
    `kubernetes.config.load_kube_config()` / `load_config()` read, frozen at import time) point at it.
    """
    with KubeAPI(**kube_api_options) as kube:
        monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig_path))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # no in-cluster config by accident
        try:
            import kubernetes.client
            import kubernetes.config
            import kubernetes.config.kube_config
        except ImportError:  # pragma: no cover - the operator extra is not installed
            yield kube
            return
        monkeypatch.setattr(kubernetes.config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kube.kubeconfig_path))
        monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kube.kubeconfig_path))
        previous: Any = kubernetes.client.Configuration.get_default_copy()
        kubernetes.client.Configuration.set_default(kube.kubernetes_configuration())
        try:
            yield kube
        finally:
            kubernetes.client.Configuration.set_default(previous)


@pytest.fixture
def kopf_runner(kube_api: KubeAPI) -> Iterator[KopfRunnerFactory]:
    """Start the real kopf runtime with the given handler modules; every runner is stopped at teardown."""
    runners: list[KopfRunner] = []

    def factory(
        modules: Sequence[str],
        *,
        namespaces: Sequence[str] = (),
        configure: Callable[[kopf.OperatorSettings], None] | None = None,
        start: bool = True,
    ) -> KopfRunner:
        runner = KopfRunner(kube_api, modules, namespaces=namespaces, configure=configure)
        runners.append(runner)
        return runner.start() if start else runner

    yield factory
    for runner in reversed(runners):
        runner.stop()


@pytest.fixture
def kopf_process(kube_api: KubeAPI) -> Iterator[KopfProcessFactory]:
    """Start `kopf run` as a subprocess (killable mid-handler); every process is killed at teardown."""
    processes: list[KopfProcess] = []

    def factory(
        modules: Sequence[str],
        *,
        namespaces: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        start: bool = True,
    ) -> KopfProcess:
        process = KopfProcess(kube_api, modules, namespaces=namespaces)
        processes.append(process)
        return process.start(env) if start else process

    yield factory
    for process in reversed(processes):
        process.close()
