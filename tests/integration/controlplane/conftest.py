"""Tests against the real control plane (tests/support/controlplane): etcd, kube-apiserver, kube-controller-manager
and kube-scheduler built by `make controlplane`, and the test node. Skipped, with the reason, where the binaries
are not built (unless GANOPS_CONTROLPLANE=required). The fixtures come from tests/support/controlplane/fixtures.py,
loaded by the root conftest: one control plane for the whole pytest session."""

from __future__ import annotations

import subprocess

import pytest


@pytest.fixture(scope="session", autouse=True)
def _crd_first(ganops_crd: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """The CRD as this directory's first tests start (see `ganops_crd`: the garbage collector's discovery)."""
    return ganops_crd
