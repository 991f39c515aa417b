"""The Helm chart through Helm's own engine (helm-python-sdk): lint, render every values set, validate every object
against the Kubernetes OpenAPI schemas of the pinned version (kubernetes-validate) and the monitoring kinds against
models generated from the prometheus-operator CRDs, and the values schema."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import helm_python
import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate
import pytest
import yaml
from scripts import chart

from ganops.operator.settings import OperatorConfig
from ganops.serving.settings import ServingSettings
from tests.unit.chart.chart_support import (
    CHART,
    CI_FILES,
    MONITORING_API,
    VALUE_SETS,
    Obj,
    objects,
    of_kind,
    one,
    render,
    render_set,
    values_of,
)

MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def test_ci_files_cover_the_acceptance_cases() -> None:
    assert {p.name for p in CI_FILES} >= {
        "monitoring-on-values.yaml", "monitoring-off-values.yaml", "canary-values.yaml",
        "watch-namespace-values.yaml", "ingress-values.yaml",
    }


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_is_clean(name: str) -> None:
    report = helm_python.lint(CHART, values_of(name) or None, strict=True, kube_version=f"v{chart.KUBE_VERSION}")
    assert report["errors"] == []
    # Severity 1 is INFO; the only one is "icon is recommended" (the project has no icon to point at).
    findings = [(m["severity"], m["path"], m["error"]) for m in report["messages"]]
    assert findings == [(1, "Chart.yaml", "icon is recommended")], findings


def _unknown_fields(given: Any, kept: Any, where: str = "") -> list[str]:
    """Keys present in `given` that the model dropped (pydantic ignores fields a CRD schema does not have)."""
    if isinstance(given, dict):
        if not isinstance(kept, dict):
            return [where or "."]
        out = []
        for key, value in given.items():
            if key not in kept:
                out.append(f"{where}.{key}")
            else:
                out.extend(_unknown_fields(value, kept[key], f"{where}.{key}"))
        return out
    if isinstance(given, list) and isinstance(kept, list):
        pairs = enumerate(zip(given, kept, strict=True))
        return [f for i, (g, k) in pairs for f in _unknown_fields(g, k, f"{where}[{i}]")]
    return []


def validate_monitoring_object(obj: Obj) -> None:
    """ServiceMonitor/PodMonitor/PrometheusRule against cloudcoil's pydantic models, which are generated from the
    prometheus-operator CRDs' OpenAPI schemas: types, enums and required fields are checked by the model, and any
    field the CRD does not define (which pydantic drops) is reported."""
    from cloudcoil.models.prometheus_operator import v1

    model = {"ServiceMonitor": v1.ServiceMonitor, "PodMonitor": v1.PodMonitor,
             "PrometheusRule": v1.PrometheusRule}[obj["kind"]]
    parsed = model.model_validate(obj)
    kept = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert _unknown_fields(obj, kept) == [], f"{obj['kind']}/{obj['metadata']['name']}: fields not in the CRD"


def _chart_crds() -> dict[tuple[str, str], Obj]:
    """(apiVersion, kind) → openAPIV3Schema of every CRD the chart ships in crds/."""
    out = {}
    with helm_python.Chart.load(CHART) as loaded:
        for crd in loaded.crds:
            for doc in yaml.safe_load_all(crd["data"]):
                if doc:
                    for version in doc["spec"]["versions"]:
                        key = (f"{doc['spec']['group']}/{version['name']}", doc["spec"]["names"]["kind"])
                        out[key] = version["schema"]["openAPIV3Schema"]
    return out


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_rendered_object_validates(name: str) -> None:
    objs = render_set(name)
    assert objs
    own_crds = _chart_crds()
    for obj in objs:
        if obj["kind"] in MONITORING_KINDS:
            validate_monitoring_object(obj)
            continue
        if (obj["apiVersion"], obj["kind"]) in own_crds:  # kopf's peering objects: the chart's own CRDs
            jsonschema.validate(obj, own_crds[obj["apiVersion"], obj["kind"]])
            continue
        try:
            kubernetes_validate.validate(obj, chart.KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']}: {exc.caught.message} at "
                                 f"{list(exc.caught.path)}") from exc


def test_the_validators_catch_mistakes() -> None:
    """The checks above can fail: a typo in a Deployment and in a ServiceMonitor is found."""
    deployment = one(objects(), "Deployment", "operator")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, chart.KUBE_VERSION, strict=True)
    monitor = one(render_set("defaults"), "ServiceMonitor", "operator")
    monitor["spec"]["endpoints"][0]["honorLabel"] = True
    with pytest.raises(AssertionError, match="fields not in the CRD"):
        validate_monitoring_object(monitor)


def test_crds_validate_and_carry_the_schema() -> None:
    with helm_python.Chart.load(CHART) as loaded:
        crds = [doc for crd in loaded.crds for doc in yaml.safe_load_all(crd["data"]) if doc]
    names = sorted(c["metadata"]["name"] for c in crds)
    assert names == ["clusterkopfpeerings.kopf.dev", "gantrainingjobs.ganops.io", "kopfpeerings.kopf.dev"]
    for crd in crds:
        kubernetes_validate.validate(crd, chart.KUBE_VERSION, strict=True)


# ------------------------------------------------------------------------------------------ monitoring gating
def _kinds(objs: list[Obj]) -> set[str]:
    return {o["kind"] for o in objs}


def test_monitors_follow_the_clusters_capabilities() -> None:
    assert not _kinds(objects()) & MONITORING_KINDS  # offline render: the API is not served
    assert _kinds(objects(api_versions=(MONITORING_API,))) >= MONITORING_KINDS
    assert _kinds(objects({"monitoring": {"forceEnable": True}})) >= MONITORING_KINDS
    assert not _kinds(objects({"monitoring": {"enabled": False}}, api_versions=(MONITORING_API,))) & MONITORING_KINDS
    notes = render()["ganops/templates/NOTES.txt"]
    assert "monitoring.coreos.com/v1 is not served" in notes


def test_monitoring_off_renders_no_monitors_dashboards_or_policies() -> None:
    kinds = _kinds(render_set("monitoring-off"))
    assert not kinds & (MONITORING_KINDS | {"NetworkPolicy"})
    assert not [o for o in of_kind(render_set("monitoring-off"), "ConfigMap") if "dashboard" in o["metadata"]["name"]]


def test_additional_labels_reach_every_monitor() -> None:
    for obj in render_set("monitoring-on"):
        if obj["kind"] in MONITORING_KINDS:
            assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack", obj["metadata"]["name"]


# ------------------------------------------------------------------------------------------------ values schema
@pytest.mark.parametrize("values", [
    {"servng": {"enabled": True}},
    {"serving": {"canary": {"precent": 10}}},
    {"operator": {"image": {"tagg": "1.0"}}},
    {"monitoring": {"dashboards": {"lable": "x"}}},
    {"serving": {"config": {"batching": {"max_batch": 8}}}},
    {"networkPolicy": {"servingClients": [{"namespaceSelectr": {}}]}},
])
def test_schema_rejects_misspelt_keys(values: dict[str, Any]) -> None:
    with helm_python.Chart.load(CHART) as loaded, \
            pytest.raises(helm_python.HelmValuesError, match="additional properties"):
        loaded.validate_schema(values)
    report = helm_python.lint(CHART, values)
    assert report["errors"] or any(m["severity"] == 3 for m in report["messages"])


@pytest.mark.parametrize("values", [
    {"serving": {"canary": {"alias": "canary", "percent": 150}}},
    {"operator": {"postingLevel": "LOUD"}},
    {"operator": {"watchNamespaces": ["Team_A"]}},
    {"containerSecurityContext": {"allowPrivilegeEscalation": True}},
    {"serving": {"image": {"digest": "sha256:nothex"}}},
    {"serving": {"config": {"safety": {"watermark_key": "secret-in-a-configmap"}}}},
])
def test_schema_rejects_bad_values(values: dict[str, Any]) -> None:
    with helm_python.Chart.load(CHART) as loaded, pytest.raises(helm_python.HelmValuesError):
        loaded.validate_schema(values)


def _walk_schema(node: Any, where: str = "$") -> list[str]:
    """Objects with named properties that still accept other keys."""
    bad = []
    if isinstance(node, dict):
        if "properties" in node and node.get("additionalProperties") is not False:
            bad.append(where)
        if node.get("type") == "object" and "properties" not in node and "additionalProperties" not in node \
                and "x-ganops-opaque" not in node:
            bad.append(where + " (object without a schema)")
        for key, sub in node.items():
            bad.extend(_walk_schema(sub, f"{where}.{key}"))
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            bad.extend(_walk_schema(sub, f"{where}[{i}]"))
    return bad


def test_schema_is_closed_at_every_object_level() -> None:
    """additionalProperties: false wherever keys are named; maps (labels, annotations, the price table) type their
    values instead; Kubernetes structures passed through verbatim (affinity, tolerations, valueFrom) are marked
    x-ganops-opaque and validated by kubernetes-validate once rendered."""
    with helm_python.Chart.load(CHART) as loaded:
        schema = loaded.schema
    assert schema is not None
    assert _walk_schema(schema) == []


def test_every_value_is_documented() -> None:
    text = (CHART / "values.yaml").read_text()
    docs = chart.value_comments(text)

    def leaves(node: Any, path: str) -> list[str]:
        if isinstance(node, dict) and node and path not in ("podSecurityContext", "containerSecurityContext",
                                                            "networkPolicy.monitoringNamespaceSelector") \
                and not path.endswith(".resources"):
            return [leaf for key, sub in node.items() for leaf in leaves(sub, f"{path}.{key}" if path else key)]
        return [path]

    undocumented = [leaf for leaf in leaves(yaml.safe_load(text), "") if leaf not in docs]
    assert undocumented == []


def test_inconsistent_values_fail_with_every_problem_named() -> None:
    with pytest.raises(helm_python.HelmRenderError) as caught:
        render({"serving": {"model": "", "canary": {"percent": 5},
                            "autoscaling": {"minReplicas": 5, "maxReplicas": 2}}})
    message = str(caught.value)
    with pytest.raises(helm_python.HelmRenderError, match="no node could ever be drained"):
        render({"serving": {"replicas": 1, "autoscaling": {"enabled": False}}})
    render({"serving": {"replicas": 2, "autoscaling": {"enabled": False}}})
    assert "serving.model" in message and "serving.canary.alias" in message and "minReplicas > maxReplicas" in message


# ----------------------------------------------------------------------------- what the processes will accept
def _env(container: Obj) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_operator_accepts_its_rendered_environment(name: str) -> None:
    objs = render_set(name)
    deployment = one(objs, "Deployment", "operator")
    env = _env(deployment["spec"]["template"]["spec"]["containers"][0])
    config = OperatorConfig.from_env(env)  # raises ConfigError on any bad value
    assert config.metrics_port == 8080
    assert config.replicas == deployment["spec"]["replicas"]
    if name == "watch-namespace":
        assert env["KOPF_RUN_NAMESPACE"] == "team-a,team-b" and "KOPF_RUN_CLUSTERWIDE" not in env
    else:
        assert env["KOPF_RUN_CLUSTERWIDE"] == "true"
    if name == "canary":
        assert json.loads(env["GANOPS_PRICE_TABLE"]) == {"a100-80gb": 3.2, "h100-80gb": 5.5}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_serving_accepts_its_rendered_settings(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Deployment's environment and the ConfigMap's serving.yaml, fed to the real settings class."""
    objs = render_set(name)
    deployment = one(objs, "Deployment", "serving")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    config_map = one(objs, "ConfigMap", "serving")
    config_file = tmp_path / "serving.yaml"
    config_file.write_text(config_map["data"]["serving.yaml"])
    env = _env(container)
    assert env["GANOPS_SERVING_CONFIG_FILE"] == "/etc/ganops/serving.yaml"
    env["GANOPS_SERVING_CONFIG_FILE"] = str(config_file)
    for key in list(os.environ):
        if key.startswith("GANOPS_SERVING_") or key == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = ServingSettings()
    assert settings.model == values_of(name).get("serving", {}).get("model", "digits@production")
    assert settings.require_api_keys is True
    assert settings.port == 8080 and settings.host == "0.0.0.0"
    if name == "canary":
        assert settings.canary.alias == "canary" and settings.canary.percent == 10
        assert settings.batching.max_batch_size == 32 and settings.safety.mode == "replace"
        assert settings.safety.watermark_key_file == "/secrets/watermark/key"
        assert settings.safety.audit_uri == "s3://ganops-audit/faces"


@pytest.mark.parametrize("version", ["1.30.0", kubernetes_validate.latest_version()])
def test_objects_also_validate_at_the_supported_bounds(version: str) -> None:
    """The pinned version is chart.KUBE_VERSION; Chart.yaml's kubeVersion floor (1.30) and the newest schemas
    kubernetes-validate ships must accept the same objects (nothing removed, nothing too new)."""
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"] == ">=1.30.0-0"
    unique = {json.dumps(obj, sort_keys=True): obj for name in VALUE_SETS for obj in render_set(name)}
    for obj in unique.values():  # each distinct object once: most are the same in every values set
        if obj["kind"] in MONITORING_KINDS or obj["apiVersion"].startswith("kopf.dev/"):
            continue
        kubernetes_validate.validate(obj, version, strict=True)
