"""Fixtures of the fault-injection tests: real servers (moto S3, MLflow, the Kubernetes emulator with the real
operator, uvicorn) and the ``figures`` each test records for the resilience report."""

from __future__ import annotations

from typing import Any

import pytest

from tests.resilience.report import figures_for


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> dict[str, Any]:
    return figures_for(request.node.nodeid)
