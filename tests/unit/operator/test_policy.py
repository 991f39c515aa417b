"""The platform's policy for what a job may choose (`ganops.operator.policy`, settings from the environment): a job
outside it is refused with `InvalidSpec` naming the field, before anything is created."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from ganops.api.loader import spec_from_object
from ganops.api.spec import GanTrainingJobSpec
from ganops.operator import policy
from ganops.operator.controller import Controller, JobMemory, Snapshot
from ganops.operator.settings import ConfigError, JobPolicy, OperatorConfig
from tests.support.jobs import grid_job
from tests.unit.operator.test_controller import FakeKube

NOW = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
DIGEST = "sha256:" + "ab" * 32


def spec_of(**spec: Any) -> GanTrainingJobSpec:
    return spec_from_object(grid_job("gan", **spec)["spec"])


def config(**env: str) -> OperatorConfig:
    return OperatorConfig.from_env({"GANOPS_TRAINER_IMAGE": "ghcr.io/ganops/trainer:0.1.0",
                                    "GANOPS_MLFLOW_URI": "http://mlflow.mlflow.svc:5000",
                                    "GANOPS_CHECKPOINT_URI": "s3://platform/runs", **env})


def test_the_settings_parse_and_default_to_nothing_beyond_the_platform_defaults() -> None:
    default = config()
    assert default.policy == JobPolicy()
    assert default.mlflow_uris == ("http://mlflow.mlflow.svc:5000",)
    assert default.checkpoint_uris == ("s3://platform/runs",)
    full = config(GANOPS_ALLOWED_MLFLOW_URIS="https://mlflow.example, https://mlflow.example",
                  GANOPS_ALLOWED_CHECKPOINT_URIS="s3://team-data/ckpt",
                  GANOPS_ALLOWED_IMAGES=f"ghcr.io/ganops/,{DIGEST}",
                  GANOPS_ALLOWED_PRIORITY_CLASSES="ml-batch", GANOPS_ALLOWED_NODE_SELECTORS="pool=gpu,zone",
                  GANOPS_ALLOWED_TOLERATIONS="dedicated=ml:NoSchedule", GANOPS_MIN_GATES="maxFID=60, minRecall=0.2",
                  GANOPS_ALLOW_FORCE_PROMOTION="false")
    assert full.mlflow_uris == ("http://mlflow.mlflow.svc:5000", "https://mlflow.example")
    assert full.checkpoint_uris == ("s3://platform/runs", "s3://team-data/ckpt")
    assert full.policy.allowed_images == ("ghcr.io/ganops/", DIGEST)
    assert full.policy.min_gates == (("maxFID", 60.0), ("minRecall", 0.2))
    gates = full.policy.min_gates_spec()
    assert gates is not None and gates.max_fid == 60.0 and gates.min_recall == 0.2
    assert full.policy.allow_force_promotion is False


def test_wrong_policy_settings_stop_the_operator_with_one_line_each() -> None:
    with pytest.raises(ConfigError) as err:
        config(GANOPS_ALLOWED_MLFLOW_URIS="https://user:pw@mlflow.example", GANOPS_MIN_GATES="maxFID=sixty,minRecal=1",
               GANOPS_ALLOWED_TOLERATIONS="k:Sometimes", GANOPS_ALLOW_FORCE_PROMOTION="maybe",
               GANOPS_ALLOWED_CHECKPOINT_URIS="s3://b/x?X-Amz-Signature=1", GANOPS_TRAINER_NETWORK_POLICY="[1]",
               GANOPS_ALLOWED_IMAGES="sha256:short")
    text = "\n".join(err.value.problems)
    for expected in ("GANOPS_ALLOWED_MLFLOW_URIS", "GANOPS_MIN_GATES: 'maxFID=sixty'", "minRecal",
                     "GANOPS_ALLOWED_TOLERATIONS", "GANOPS_ALLOW_FORCE_PROMOTION", "GANOPS_ALLOWED_CHECKPOINT_URIS",
                     "GANOPS_TRAINER_NETWORK_POLICY", "GANOPS_ALLOWED_IMAGES"):
        assert expected in text, (expected, text)


@pytest.mark.parametrize(("resources", "env", "allowed"), [
    ({}, {}, True),
    ({"image": "ghcr.io/ganops/trainer:0.1.0"}, {}, True),  # the platform's own image
    ({"image": "evil.example/miner:latest"}, {}, False),
    ({"image": "ghcr.io/ganops/trainer:dev"}, {"GANOPS_ALLOWED_IMAGES": "ghcr.io/ganops/trainer:"}, True),
    ({"image": "ghcr.io/ganopsx/trainer:1"}, {"GANOPS_ALLOWED_IMAGES": "ghcr.io/ganops/"}, False),
    ({"image": f"mirror.local/t@{DIGEST}"}, {"GANOPS_ALLOWED_IMAGES": DIGEST}, True),
    ({"image": "mirror.local/t:1"}, {"GANOPS_ALLOWED_IMAGES": DIGEST}, False),
    ({"image": "anything:1"}, {"GANOPS_ALLOWED_IMAGES": "*"}, True),
    ({"priorityClassName": "system-cluster-critical"}, {}, False),
    ({"priorityClassName": "system-cluster-critical"}, {"GANOPS_ALLOWED_PRIORITY_CLASSES": "ml-batch"}, False),
    ({"priorityClassName": "ml-batch"}, {"GANOPS_ALLOWED_PRIORITY_CLASSES": "ml-batch"}, True),
    ({"nodeSelector": {"pool": "gpu"}}, {}, False),
    ({"nodeSelector": {"pool": "gpu"}}, {"GANOPS_ALLOWED_NODE_SELECTORS": "pool=gpu"}, True),
    ({"nodeSelector": {"pool": "reserved"}}, {"GANOPS_ALLOWED_NODE_SELECTORS": "pool=gpu"}, False),
    ({"nodeSelector": {"zone": "b"}}, {"GANOPS_ALLOWED_NODE_SELECTORS": "pool=gpu,zone"}, True),
    ({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]}, {}, False),
    ({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]},
     {"GANOPS_ALLOWED_TOLERATIONS": "dedicated=ml:NoSchedule"}, True),
    ({"tolerations": [{"key": "dedicated", "operator": "Exists"}]},  # any value and every effect: broader
     {"GANOPS_ALLOWED_TOLERATIONS": "dedicated=ml:NoSchedule"}, False),
    ({"tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]},
     {"GANOPS_ALLOWED_TOLERATIONS": "dedicated:NoSchedule"}, True),
    ({"tolerations": [{"operator": "Exists"}]}, {"GANOPS_ALLOWED_TOLERATIONS": "dedicated"}, False),  # every taint
    ({"tolerations": [{"operator": "Exists"}]}, {"GANOPS_ALLOWED_TOLERATIONS": "*"}, True),
])
def test_pod_shaping_fields_follow_the_admin_policy(resources: dict[str, Any], env: dict[str, str],
                                                    allowed: bool) -> None:
    problems = policy.problems(spec_of(resources=resources), config(**env))
    assert (problems == []) is allowed, problems
    if not allowed:
        (line,) = problems
        assert line.startswith(f"spec.resources.{next(iter(resources))}") and "not allowed on this platform" in line


@pytest.mark.parametrize(("spec", "allowed"), [
    ({"tracking": {"mlflowUri": "http://mlflow.mlflow.svc:5000/"}}, True),
    ({"tracking": {"mlflowUri": "http://127.0.0.1:8000"}}, False),
    ({"tracking": {"mlflowUri": "http://169.254.169.254/latest"}}, False),
    ({"checkpoint": {"uri": "s3://platform/runs"}}, True),
    ({"checkpoint": {"uri": "s3://platform/runs/team-a"}}, True),
    ({"checkpoint": {"uri": "s3://platform/runs-evil"}}, False),
    ({"checkpoint": {"uri": "s3://other-team/ckpt"}}, False),
    ({"checkpoint": {"uri": "file:///var/run/secrets"}}, False),
])
def test_the_servers_a_job_names_must_be_the_platforms(spec: dict[str, Any], allowed: bool) -> None:
    problems = policy.problems(spec_of(**spec), config())
    assert (problems == []) is allowed, problems
    if not allowed:
        assert "of this platform" in problems[0]


def test_a_job_outside_the_policy_gets_invalid_spec_and_nothing_is_created() -> None:
    kube = FakeKube()
    memory = JobMemory()
    snap = Snapshot(name="gan", namespace="team-b", uid="u", generation=1, status={}, annotations={}, labels={},
                    spec=grid_job("gan", resources={"image": "evil.example/miner:1", "priorityClassName": "vip"},
                                  tracking={"mlflowUri": "http://127.0.0.1:9"})["spec"])
    outcome = Controller(config(), kube, now=lambda: NOW).reconcile(snap, memory)  # type: ignore[arg-type]
    assert kube.methods() == [("PATCH", "gantrainingjobs/status")]  # no ConfigMap, no Job
    assert outcome.phase == "Failed"
    (event,) = outcome.events
    assert event.type == "Warning" and event.reason == "InvalidSpec"
    for field in ("spec.tracking.mlflowUri", "spec.resources.image", "spec.resources.priorityClassName"):
        assert field in event.message
