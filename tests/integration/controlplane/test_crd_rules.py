"""Every rule of `ganops.api.rules` on the real API server (issue 14, findings 3 and 4).

The cases are generated from each rule's own examples (`Rule.good` / `Rule.bad`, merged into the digits example):
the API server's CEL refuses every bad example at create with the rule's message, and accepts every good one. For
the rules on metadata.name and on the fields the operator copies into its Job (resources, tolerations, node
selector, queue), the good examples also go the whole way: rendered into the operator's children, the Job, the
Service and the ConfigMap are accepted by the real API server's own validation (server-side dry run, in a namespace
that enforces the restricted Pod Security profile). So a value the CRD accepts is never a 422 at Job creation.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from ganops.api.loader import job_from_object
from ganops.api.rules import RULES, Rule
from ganops.operator import children
from ganops.operator.settings import OperatorConfig
from tests.support.controlplane import ControlPlane
from tests.support.kube.client import KubeApiError, KubeClient

ROOT_EXAMPLE = "manifests/examples/digits.yaml"
DRY_RUN = {"dryRun": "All"}
# the rules about what reaches the Job and its pods (the others are about the trainer's configuration)
POD_SHAPING = ("metadata.name", "spec.resources", "spec.queueName")


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _base() -> dict[str, Any]:
    return dict(yaml.safe_load((Path(__file__).resolve().parents[3] / ROOT_EXAMPLE).read_text()))


def _create(kube: KubeClient, obj: dict[str, Any], namespace: str) -> KubeApiError | None:
    ref = kube.resource(obj["apiVersion"], obj["kind"])
    try:
        kube.request("POST", ref.path(namespace), json_body=obj, params=DRY_RUN)
    except KubeApiError as exc:
        return exc
    return None


def _cases(kind: str) -> list[tuple[str, Rule, dict[str, Any]]]:
    return [(f"{i}:{rule.full_message.split(' ')[0]}:{kind}{n}", rule, patch)
            for i, rule in enumerate(RULES) for n, patch in enumerate(rule.good if kind == "good" else rule.bad)]


BAD = _cases("bad")
GOOD = _cases("good")


@pytest.mark.parametrize(("name", "rule", "patch"), BAD, ids=[c[0] for c in BAD])
def test_the_api_server_refuses_each_bad_example_with_its_rule(
        name: str, rule: Rule, patch: dict[str, Any], cp_kube: KubeClient, cp_namespace: str) -> None:
    job = _merge(_base(), patch)
    error = _create(cp_kube, job, cp_namespace)
    assert error is not None, f"the CRD accepted {patch}: {rule.full_message}"
    assert error.status == 422 and rule.full_message in error.message, error.message


@pytest.mark.parametrize(("name", "rule", "patch"), GOOD, ids=[c[0] for c in GOOD])
def test_each_good_example_is_accepted_and_its_children_too(
        name: str, rule: Rule, patch: dict[str, Any], cp_kube: KubeClient, cp_namespace: str) -> None:
    job = _merge(_base(), patch)
    error = _create(cp_kube, job, cp_namespace)
    broken = [r.full_message for r in RULES if error is not None and r.full_message in error.message]
    assert rule.full_message not in broken, error
    if error is not None or not rule.full_message.startswith(POD_SHAPING):
        return  # another rule refused the example (its patch is about this rule only): nothing to render
    parsed = job_from_object(copy.deepcopy(job))
    owner = children.Owner(parsed.metadata.name, cp_namespace, "00000000-0000-4000-8000-000000000000")
    for child in children.render(owner, parsed.spec, OperatorConfig(), attempt=1):
        refused = _create(cp_kube, child, cp_namespace)
        assert refused is None, f"{child['kind']} of {patch}: {refused}"


def test_a_name_too_long_for_its_pods_fails_at_kubectl_apply(control_plane: ControlPlane, cp_namespace: str) -> None:
    """Finding 3 as a user meets it: `kubectl apply` of a 62-character name (the Indexed Job's pod `<name>-0` would
    have a 64-character hostname) is refused with the rule's message, and a 61-character one is accepted."""
    rule = next(r for r in RULES if r.field == "metadata.name" and "too long" in r.message)
    for name, code in (("a" * 61, 0), ("a" * 62, 1)):
        job = _merge(_base(), {"metadata": {"name": name, "namespace": cp_namespace}})
        result = control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(job), check=False)
        assert result.returncode == code, result.stdout + result.stderr
    assert rule.full_message in result.stderr, result.stderr
