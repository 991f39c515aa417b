"""Fixtures of the bad-input tests (shared with tests/resilience): the ``figures`` each test records for the
resilience report."""

from __future__ import annotations

from tests.support.figures import figures

__all__ = ["figures"]
