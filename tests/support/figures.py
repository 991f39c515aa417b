"""The ``figures`` fixture of the fault-injection (tests/resilience) and bad-input (tests/badinput) tests: each
test records its numbers for the resilience report (``figures["kills"] = 100``, see tests/resilience/report.py).
Both folders' conftest.py import it from here."""

from __future__ import annotations

from typing import Any

import pytest

from tests.resilience.report import figures_for


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> dict[str, Any]:
    return figures_for(request.node.nodeid)
