"""The bad-input corpus against the CRD as the API server applies it: structural defaulting, the OpenAPI schema and
the CEL `x-kubernetes-validations` rules (evaluated offline with cel-python). Every malformed object is refused
with a message naming the field, or names a field the schema does not have (pruned, or refused by kubectl's
strict field validation); the few that only ganops can judge are left to the operator (test_operator_invalid)."""

from __future__ import annotations

from typing import Any

import celpy
import pytest

from ganops.api.crd import build_crd
from tests.badinput.corpus import CASES, Case, good
from tests.support.schema import apply_defaults, cel_failures, openapi_errors

SCHEMA = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
OBJECTS = [case for case in CASES if case.field is not None and case.crd != "unsendable"]


def _problems(obj: dict[str, Any]) -> list[str]:
    defaulted = apply_defaults(SCHEMA, obj)
    try:
        cel = cel_failures(SCHEMA, defaulted)
    except celpy.CELEvalError as exc:  # the API server refuses the object too ("no such key" evaluating a rule)
        cel = [f"CEL rule error: {exc.args[0] if exc.args else exc}"]
    return openapi_errors(SCHEMA, defaulted) + cel


def _declared(path: str) -> bool:
    node = SCHEMA
    for part in path.split("."):
        if node.get("x-kubernetes-preserve-unknown-fields"):
            return True
        props = node.get("properties") or {}
        if part not in props:
            return False
        node = props[part]
    return True


def test_the_good_job_passes() -> None:
    assert _problems(good()) == []


@pytest.mark.parametrize("case", OBJECTS, ids=[c.name for c in OBJECTS])
def test_the_schema_refuses_each_malformed_object_naming_the_field(case: Case, figures: dict[str, Any]) -> None:
    assert case.field is not None
    problems = _problems(case.obj())
    if case.crd == "rejects":
        assert problems, f"{case.name}: the CRD let it through"
        leaf = case.field.rsplit(".", 1)[-1]
        assert any(case.field in p or leaf in p for p in problems), problems
        figures["badinput_crd_refused"] = 1
    elif case.crd == "unknown":
        assert not _declared(case.field), f"{case.field} is in the schema"
        assert problems == [], problems  # pruned by the API server (or refused under strict field validation)
        figures["badinput_crd_unknown_field"] = 1
    else:
        assert problems == [], problems
