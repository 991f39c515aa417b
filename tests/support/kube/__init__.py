"""A Kubernetes API test bed: kmock's KubernetesEmulator over real HTTP, and the real kopf runtime on it.

- `KubeClient` (client.py): the httpx client (create/get/list/patch/...), for the emulator or a real API server.
- `KubeAPI` (emulator.py): the server in a background thread + that client.
- `KubeEmulator` (server.py): the kmock subclass with the API-server behaviours tests need.
- `KopfRunner` (operator.py): `kopf.operator()` in a thread, start/stop/restart.
- `KopfProcess` (operator.py): `kopf run` in a subprocess, start/stop/kill/restart.
- fixtures.py: `kube_api`, `kopf_runner`, `kopf_process` (use `pytest_plugins = ["tests.support.kube.fixtures"]`).
"""

from .client import KubeApiError, KubeClient, KubeEvent, ResourceRef
from .emulator import KubeAPI, RequestRecord
from .operator import KopfProcess, KopfProcessFactory, KopfRunner, KopfRunnerFactory, load_registry
from .polling import WaitTimeoutError, wait_for
from .server import Fault, KubeEmulator

__all__ = [
    "Fault",
    "KopfProcess",
    "KopfProcessFactory",
    "KopfRunner",
    "KopfRunnerFactory",
    "KubeAPI",
    "KubeApiError",
    "KubeClient",
    "KubeEmulator",
    "KubeEvent",
    "RequestRecord",
    "ResourceRef",
    "WaitTimeoutError",
    "load_registry",
    "wait_for",
]
