"""A real Kubernetes control plane for tests (etcd, kube-apiserver, kube-controller-manager, kube-scheduler built
by `make controlplane`) and the fixtures that start it (see cluster.py and fixtures.py; docs/development.md)."""

from .cluster import (
    Binaries,
    ControlPlane,
    ControlPlaneClient,
    ControlPlaneUnavailable,
    find_binaries,
    free_port,
    wait_gone,
)

__all__ = [
    "Binaries",
    "ControlPlane",
    "ControlPlaneClient",
    "ControlPlaneUnavailable",
    "find_binaries",
    "free_port",
    "wait_gone",
]
