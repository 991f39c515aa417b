"""Operating the operator: its configuration, kopf settings, metrics and the manifests that deploy it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kopf
import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge

from ganops.operator import metrics
from ganops.operator.settings import ConfigError, OperatorConfig, Toleration, configure_kopf
from tests.support.schema import KUBERNETES_VERSION

MANIFESTS = Path(__file__).resolve().parents[3] / "manifests" / "operator"


def test_defaults_and_environment() -> None:
    default = OperatorConfig.from_env({})
    assert default == OperatorConfig()
    assert default.termination_grace_seconds == 120 and default.metrics_port == 8080 and default.replicas == 1
    config = OperatorConfig.from_env({
        "GANOPS_TRAINER_IMAGE": "registry/trainer:1", "GANOPS_CHECKPOINT_URI": "s3://b/c",
        "MLFLOW_TRACKING_URI": "http://mlflow", "GANOPS_S3_SECRET": "s3", "GANOPS_TERMINATION_GRACE_SECONDS": "300",
        "GANOPS_SPOT_NODE_LABEL": "cloud.google.com/gke-spot=true", "GANOPS_SPOT_TOLERATION": "spot:NoExecute",
        "GANOPS_OPERATOR_RESYNC_SECONDS": "0.5", "GANOPS_OPERATOR_POSTING_LEVEL": "warning",
        "GANOPS_OPERATOR_REPLICAS": "2", "GANOPS_IMAGE_PULL_POLICY": "Always",
    })
    assert config.image == "registry/trainer:1" and config.mlflow_uri == "http://mlflow"
    assert config.termination_grace_seconds == 300 and config.relaunch_wait_seconds == 330
    assert config.spot_node_label == ("cloud.google.com/gke-spot", "true")
    assert config.spot_toleration == Toleration("spot", None, "NoExecute")
    assert config.spot_toleration.as_wire() == {"key": "spot", "operator": "Exists", "effect": "NoExecute"}
    assert config.resync_seconds == 0.5 and config.posting_level == logging.WARNING and config.replicas == 2
    off = OperatorConfig.from_env({"GANOPS_SPOT_NODE_LABEL": "", "GANOPS_SPOT_TOLERATION": ""})
    assert off.spot_node_label is None and off.spot_toleration is None


def test_a_wrong_environment_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as err:
        OperatorConfig.from_env({"GANOPS_TERMINATION_GRACE_SECONDS": "soon", "GANOPS_OPERATOR_METRICS_PORT": "70000",
                                 "GANOPS_SPOT_NODE_LABEL": "spot", "GANOPS_OPERATOR_POSTING_LEVEL": "LOUD",
                                 "GANOPS_SPOT_TOLERATION": "k:Sometimes", "GANOPS_OPERATOR_REPLICAS": "1.5",
                                 "GANOPS_IMAGE_PULL_POLICY": "Sometimes"})
    problems = err.value.problems
    assert len(problems) == 7
    assert "GANOPS_TERMINATION_GRACE_SECONDS must be a number (got 'soon')" in problems


def test_one_place_configures_kopf() -> None:
    settings = kopf.OperatorSettings()
    configure_kopf(settings, OperatorConfig(posting_level=logging.WARNING, workers=12))
    assert settings.persistence.finalizer == "ganops.io/finalizer"
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert settings.persistence.progress_storage.prefix == "ganops.io"
    assert settings.posting.level == logging.WARNING and settings.posting.loggers is False
    assert settings.peering.standalone is True
    assert (settings.execution.max_workers or 0) >= 12
    assert list(settings.watching.label_selectors.values()) == ["ganops.io/job", "ganops.io/job"]
    peered = kopf.OperatorSettings()
    configure_kopf(peered, OperatorConfig(replicas=3, peering_name="gan-peers"))
    assert peered.peering.standalone is False and peered.peering.mandatory and peered.peering.name == "gan-peers"


def test_phase_book_keeps_the_jobs_gauge_in_step() -> None:
    gauge = Gauge("test_jobs", "test", ["phase"], registry=CollectorRegistry())
    book = metrics.PhaseBook(gauge)
    book.set(("ns", "a"), "Pending")
    book.set(("ns", "b"), "Pending")
    book.set(("ns", "a"), "Running")
    book.set(("ns", "a"), "Running")
    assert book.counts()["Pending"] == 1 and book.counts()["Running"] == 1
    book.forget(("ns", "b"))
    book.forget(("ns", "missing"))
    assert gauge.labels(phase="Pending")._value.get() == 0 and gauge.labels(phase="Running")._value.get() == 1


# ------------------------------------------------------------------------------------------------ manifests


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]


@pytest.mark.parametrize("name", ["rbac.yaml", "deployment.yaml", "peering.yaml"])
def test_manifests_validate_against_the_kubernetes_schemas(name: str) -> None:
    docs = documents(name)
    crds = {doc["spec"]["names"]["kind"]: doc for doc in docs if doc["kind"] == "CustomResourceDefinition"}
    for doc in docs:
        if doc["kind"] in crds:  # a custom object: check it against its CRD in the same file
            schema = crds[doc["kind"]]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            jsonschema.Draft4Validator(schema).validate(doc)
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{name}: {doc['kind']}: {str(exc).splitlines()[0]}") from None


def test_rbac_is_least_privilege_and_never_reads_secrets() -> None:
    (role,) = [doc for doc in documents("rbac.yaml") if doc["kind"] == "ClusterRole"]
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    assert not any(resource == "secrets" for _, resource in grants)
    assert grants[("ganops.io", "gantrainingjobs")] >= {"get", "list", "watch", "patch"}
    assert grants[("ganops.io", "gantrainingjobs/status")] >= {"patch"}
    assert grants[("ganops.io", "gantrainingjobs/finalizers")] == {"update"}
    assert grants[("batch", "jobs")] == {"get", "list", "watch", "create", "delete"}
    assert grants[("", "pods")] == {"get", "list", "watch"}  # pods are observed, never changed
    assert grants[("", "events")] == {"create", "patch"}
    assert {"create"} <= grants[("", "configmaps")] and {"create"} <= grants[("", "services")]
    binding = next(doc for doc in documents("rbac.yaml") if doc["kind"] == "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ganops-operator",
                                    "namespace": "ganops-system"}]


def test_the_deployment_is_restricted_and_runs_kopf_with_liveness_and_json_logs() -> None:
    deployment = next(doc for doc in documents("deployment.yaml") if doc["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    command = container["command"] + container["args"]
    assert command[:4] == ["kopf", "run", "-m", "ganops.operator.main"]
    assert "--log-format=json" in command and any(arg.startswith("--liveness=") for arg in command)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GANOPS_OPERATOR_METRICS_PORT"] == "8080"
    OperatorConfig.from_env({k: v for k, v in env.items() if v is not None})  # the Deployment's config is valid
    assert all("valueFrom" not in e or "secretKeyRef" not in e["valueFrom"] for e in container["env"])
    assert pod["serviceAccountName"] == "ganops-operator"


def test_the_operator_never_imports_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, ganops.operator.main, ganops.operator.promotion, ganops.promotion; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"
