"""The operator's startup handler: kopf retries it when it fails, so a failure must leave nothing behind."""

from __future__ import annotations

import socket
from typing import Any

import kopf
import pytest

from ganops.operator import main
from tests.support.moto_server import free_port


def test_a_startup_that_cannot_reach_the_api_can_be_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """No API client (no in-cluster config, no kubeconfig): the startup fails before the metrics port is taken, so
    kopf's retry can bind it once the API is reachable (found by running the operator image without a kubeconfig)."""
    port = free_port()
    monkeypatch.setenv("GANOPS_OPERATOR_METRICS_PORT", str(port))

    def unreachable(workers: int = 8) -> Any:
        raise RuntimeError("Invalid kube-config file. No configuration found.")

    monkeypatch.setattr(main, "load_api_client", unreachable)
    with pytest.raises(RuntimeError, match="No configuration found"):
        main.startup(settings=kopf.OperatorSettings(), memo=kopf.Memo(), logger=None)  # type: ignore[arg-type]
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", port))  # free: nothing listens after the failed attempt
