"""Fixtures of the fault-injection tests (shared with tests/badinput): the ``figures`` each test records for the
resilience report. The real servers (moto S3, MLflow, the Kubernetes emulator) come from tests/support."""

from __future__ import annotations

from tests.support.figures import figures

__all__ = ["figures"]
