"""Admission for custom resources as the API server does it from the CRD: structural defaults, OpenAPI checks, CEL.

Opt in per test module by overriding the `kube_api_options` fixture:

    @pytest.fixture
    def kube_api_options() -> dict[str, Any]:
        return {"admission": schema_admission}

It relies on `tests.support.schema` (defaulting, OpenAPI v3 checks, `x-kubernetes-validations` rules without
`oldSelf`); a rejected object gets 422 Invalid, as from a real API server. Status writes are not validated.
"""

from __future__ import annotations

from typing import Any


def schema_admission(crd: dict[str, Any], obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    from tests.support import schema

    version = str(obj.get("apiVersion", "")).rpartition("/")[2]
    served = [v for v in crd["spec"]["versions"] if v["name"] == version]
    openapi = served[0].get("schema", {}).get("openAPIV3Schema") if served else None
    if not openapi:
        return obj
    defaulted: dict[str, Any] = schema.apply_defaults(openapi, obj)
    problems = schema.openapi_errors(openapi, defaulted) + schema.cel_failures(openapi, defaulted)
    if problems:
        kind = obj.get("kind", "object")
        name = (obj.get("metadata") or {}).get("name")
        raise ValueError(f'{kind} "{name}" is invalid: ' + "; ".join(problems))
    return defaulted
