"""The local state of `ganops run` (``--home``, default ``.ganops/``): where its MLflow store and artifacts live.

`ganops run` writes there; `ganops promote` and `ganops serve` find the same store without a tracking server. No
heavy imports: `ganops serve` in the serving image reads it too.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["LOCAL_MLFLOW_ARTIFACTS", "LOCAL_MLFLOW_DB", "local_artifact_root", "local_tracking_uri"]

LOCAL_MLFLOW_DB = "mlflow.db"
LOCAL_MLFLOW_ARTIFACTS = "mlartifacts"


def local_tracking_uri(home: Path) -> str:
    return f"sqlite:///{home.resolve() / LOCAL_MLFLOW_DB}"


def local_artifact_root(home: Path) -> str:
    return (home.resolve() / LOCAL_MLFLOW_ARTIFACTS).as_uri()
