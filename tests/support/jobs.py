"""Small job files for tests: real specs, sized to train in seconds on two CPU cores."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from ganops.api.loader import job_from_object
from ganops.api.spec import GanTrainingJob


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def grid_job(name: str = "grid", **spec: Any) -> dict[str, Any]:
    base = {
        "apiVersion": "ganops.io/v1alpha1",
        "kind": "GanTrainingJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"architecture": "mlp", "imageSize": 2, "latentDim": 2, "width": 16, "depth": 2},
            "dataset": {"uri": "builtin:grid25"},
            "training": {"steps": 20, "batchSize": 32, "seed": 3, "logEverySteps": 5},
            "checkpoint": {"everySteps": 10},
            "evaluation": {"metrics": ["modes"], "featureExtractor": "raw", "everySteps": 1000},
        },
    }
    return _merge(base, {"spec": spec})


def digits_job(name: str = "digits", **spec: Any) -> dict[str, Any]:
    base = {
        "apiVersion": "ganops.io/v1alpha1",
        "kind": "GanTrainingJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"architecture": "dcgan", "imageSize": 8, "channels": 1, "latentDim": 8, "width": 8},
            "dataset": {"uri": "builtin:digits"},
            "training": {"steps": 10, "batchSize": 16, "seed": 5, "logEverySteps": 5},
            "checkpoint": {"everySteps": 5},
            "evaluation": {"everySteps": 1000, "featureExtractor": "digits"},
        },
    }
    return _merge(base, {"spec": spec})


def as_job(obj: dict[str, Any]) -> GanTrainingJob:
    return job_from_object(obj)


def write_job(obj: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path
