"""Tests against the real control plane (tests/support/controlplane): etcd, kube-apiserver, kube-controller-manager
and kube-scheduler built by `make controlplane`, and the test node. Skipped, with the reason, where the binaries
are not built (unless GANOPS_CONTROLPLANE=required). The fixtures come from tests/support/controlplane/fixtures.py,
loaded by the root conftest: one control plane for the whole pytest session."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.controlplane.identity import TokenClient
from tests.support.kube import KopfProcess
from tests.support.node import Node

OperatorFactory = Callable[..., KopfProcess]
CHECKPOINTS = "checkpoints"  # under the test's tmp_path: the operator and the pods share this machine's files


@pytest.fixture(scope="session", autouse=True)
def _crd_first(ganops_crd: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """The CRD as this directory's first tests start (see `ganops_crd`: the garbage collector's discovery)."""
    return ganops_crd


@pytest.fixture
def start_operator(cp_operator_kube: TokenClient, cp_namespace: str, cp_node: Node, ganops_crd: Any,
                   tmp_path: Path) -> Iterator[OperatorFactory]:
    """`kopf run` as a subprocess watching the test's namespace, logged in as the chart's operator ServiceAccount
    (a TokenRequest token of the release `cp_chart` installed with helm): the real RBAC authorizer judges every
    request by the chart's ClusterRole, so a verb the operator needs and the chart lacks fails here."""
    processes: list[KopfProcess] = []

    def start(**env: str) -> KopfProcess:
        process = KopfProcess(cp_operator_kube, ["ganops.operator.main"], namespaces=[cp_namespace])
        processes.append(process)
        return process.start({
            "GANOPS_CHECKPOINT_URI": f"file://{tmp_path / CHECKPOINTS}",
            "GANOPS_OPERATOR_RESYNC_SECONDS": "1",
            "GANOPS_OPERATOR_METRICS_PORT": "0",
            "GANOPS_TERMINATION_GRACE_SECONDS": "10",
            **env,
        })

    yield start
    for process in processes:
        process.close()
