"""The CRD on the real API server: `kubectl apply` installs it (structural schema, CEL rules within the cost
budget), and the API server's CEL refuses a job that breaks one of `ganops.api.rules` at `kubectl apply`."""

from __future__ import annotations

import subprocess

import yaml

from ganops.api.rules import RULES
from tests.support.controlplane import ControlPlane
from tests.support.jobs import grid_job

CRD = "gantrainingjobs.ganops.io"


def test_crd_applies_with_real_kubectl(control_plane: ControlPlane,
                                       ganops_crd: subprocess.CompletedProcess[str]) -> None:
    assert f"customresourcedefinition.apiextensions.k8s.io/{CRD}" in ganops_crd.stdout
    crd = control_plane.client().get("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, CRD)
    conditions = {c["type"]: c for c in crd["status"]["conditions"]}
    assert conditions["Established"]["status"] == "True"
    assert conditions["NamesAccepted"]["status"] == "True"
    # a structural schema: the API server would set NonStructuralSchema otherwise
    assert "NonStructuralSchema" not in conditions
    # the kind is served, with the printer columns and the short name
    resources = control_plane.kubectl("api-resources", "--api-group=ganops.io", "-o", "name").stdout.split()
    assert resources == [CRD]
    assert control_plane.kubectl("get", "gtj", "-A").returncode == 0


def test_api_server_refuses_a_job_that_breaks_a_rule(control_plane: ControlPlane, cp_namespace: str,
                                                      ganops_crd: subprocess.CompletedProcess[str]) -> None:
    rule = next(r for r in RULES if r.node == "spec.dataset" and r.field == "uri")
    good = grid_job("good")
    bad = grid_job("bad-dataset", dataset={"uri": "https://example.com/grid.npz"})
    for job in (good, bad):
        job["metadata"]["namespace"] = cp_namespace

    accepted = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(good))
    assert "gantrainingjob.ganops.io/good created (server dry run)" in accepted.stdout

    refused = control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
    assert refused.returncode == 1, refused.stdout
    # kubectl prints the API server's 422: the rule's CEL failed, with the rule's message at the field
    assert 'The GanTrainingJob "bad-dataset" is invalid' in refused.stderr, refused.stderr
    assert "spec.dataset.uri" in refused.stderr and rule.message in refused.stderr, refused.stderr
    assert control_plane.client().get_or_none("ganops.io/v1alpha1", "GanTrainingJob", cp_namespace,
                                              "bad-dataset") is None


def test_numeric_bounds_hold_for_integral_values(control_plane: ControlPlane, cp_namespace: str) -> None:
    """`loss.labelSmoothing` is in [0, 0.5). kube-openapi compares an integral value with the bound cast to an
    integer, so an `exclusiveMaximum: 0.5` refused `0`; the CRD states that bound as a CEL rule instead."""
    def apply(name: str, value: float) -> tuple[int, str]:
        job = grid_job(name, loss={"labelSmoothing": value})
        job["metadata"]["namespace"] = cp_namespace
        result = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(job), check=False)
        return result.returncode, result.stdout + result.stderr

    for name, value in (("zero", 0), ("quarter", 0.25)):
        code, said = apply(name, value)
        assert code == 0, said
    code, said = apply("half", 0.5)
    assert code == 1 and "spec.loss.labelSmoothing: Invalid value" in said and "must be less than 0.5" in said, said
