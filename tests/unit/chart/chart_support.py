"""Rendering the Helm chart for the chart tests: the real Helm engine (helm-python-sdk), cached per values set."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from scripts import chart

CHART = chart.CHART
CI_DIR = CHART / "ci"
CI_FILES = sorted(CI_DIR.glob("*-values.yaml"))
# Every values set the acceptance names: the defaults and each ci/ file.
VALUE_SETS: dict[str, Path | None] = {"defaults": None, **{p.name.removesuffix("-values.yaml"): p for p in CI_FILES}}
MONITORING_API = "monitoring.coreos.com/v1"

Obj = dict[str, Any]


def values_of(name: str) -> dict[str, Any]:
    path = VALUE_SETS[name]
    return yaml.safe_load(path.read_text()) if path else {}


@functools.cache
def _render_cached(values_json: str, api_versions: tuple[str, ...]) -> dict[str, str]:
    return chart.render(json.loads(values_json), api_versions=list(api_versions) or None)


def render(values: dict[str, Any] | None = None, *, api_versions: tuple[str, ...] = ()) -> dict[str, str]:
    return _render_cached(json.dumps(values or {}, sort_keys=True), api_versions)


@functools.cache
def _objects_cached(values_json: str, api_versions: tuple[str, ...]) -> list[Obj]:
    return [doc for _, doc in chart.documents(_render_cached(values_json, api_versions))]


def objects(values: dict[str, Any] | None = None, *, api_versions: tuple[str, ...] = ()) -> list[Obj]:
    """The rendered objects, parsed (a fresh copy each call: tests may change them)."""
    return copy.deepcopy(_objects_cached(json.dumps(values or {}, sort_keys=True), api_versions))


def render_set(name: str) -> list[Obj]:
    """The objects of one named values set, rendered as on a cluster that serves the monitoring API."""
    return objects(values_of(name), api_versions=(MONITORING_API,))


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[Obj], kind: str, component: str) -> Obj:
    """The one object of `kind` whose app.kubernetes.io/component label is `component`."""
    found = [o for o in of_kind(objs, kind)
             if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"expected one {kind} of {component}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


def pod_specs(objs: list[Obj]) -> Iterator[tuple[str, Obj]]:
    """(where, pod spec) of every pod the objects would run (workload templates and CronJobs)."""
    for obj in objs:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in POD_TEMPLATE_KINDS:
            yield where, obj["spec"]["template"]["spec"]
        elif obj["kind"] == "CronJob":
            yield where, obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif obj["kind"] == "Pod":
            yield where, obj["spec"]
