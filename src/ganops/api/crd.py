"""Generate the GanTrainingJob CustomResourceDefinition from the pydantic models.

Pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3.0 schema: no $ref, no anyOf with
null (use `nullable`), boolean `exclusiveMinimum`, `items` instead of `prefixItems`, defaults that the API server
applies, and the cross-field rules of `ganops.api.rules` as `x-kubernetes-validations`.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel

from ganops.api.rules import RULES_BY_MODEL
from ganops.api.spec import GanTrainingJobSpec, GanTrainingJobStatus
from ganops.contracts import API_GROUP, KIND, PLURAL, SHORT_NAME, VERSION

_DROP = {"title", "additionalProperties", "$defs"}


def _defaults_of(model: type[BaseModel]) -> dict[str, Any]:
    """Wire-name → default for fields whose default is built by a factory (pydantic leaves those out).

    A nested model's default is written out whole, not as `{}`: the API server validates a default as it stands,
    CEL rules included, before any nested default applies, so `{}` fails a rule that reads a defaulted field
    (`no such key: architecture`). At run time both give the same object."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if field.default_factory is not None:
            value = field.default_factory()  # type: ignore[call-arg]
            if isinstance(value, BaseModel):
                value = value.model_dump(mode="json", by_alias=True, exclude_none=True)
            out[field.alias or name] = value
    return out


def _exclusive_bound(out: dict[str, Any], key: str, value: float) -> None:
    """`gt`/`lt`: an exclusive bound. kube-openapi checks an integral value (JSON `0`) against the bound cast to an
    integer, so `exclusiveMaximum` 0.5 refuses 0 ("should be less than 0"): a non-integral bound becomes an inclusive
    one plus a CEL rule, which compares as doubles."""
    bound = "minimum" if key == "exclusiveMinimum" else "maximum"
    out[bound] = value
    if float(value).is_integer():
        out[key] = True
        return
    op, word = (">", "greater") if key == "exclusiveMinimum" else ("<", "less")
    out.setdefault("x-kubernetes-validations", []).append(
        {"rule": f"self {op} {value!r}", "message": f"must be {word} than {value!r}"})


def _models_by_name() -> dict[str, type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {}

    def walk(model: type[BaseModel]) -> None:
        if model.__name__ in found:
            return
        found[model.__name__] = model
        for field in model.model_fields.values():
            for candidate in _classes_in(field.annotation):
                walk(candidate)

    walk(GanTrainingJobSpec)
    walk(GanTrainingJobStatus)
    return found


def _classes_in(annotation: Any) -> list[type[BaseModel]]:
    from typing import get_args

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [c for arg in get_args(annotation) for c in _classes_in(arg)]


def _structural(node: Any, defs: dict[str, Any], models: dict[str, type[BaseModel]], owner: str | None) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs, models, None) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        merged = {**copy.deepcopy(defs[name]), **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs, models, name)
    any_of = node.get("anyOf")
    if any_of is not None:
        non_null = [option for option in any_of if option.get("type") != "null"]
        if len(non_null) == 1 and len(non_null) < len(any_of):
            # Optional fields are simply not required. No `nullable`: the API server then prunes explicit
            # nulls, so CEL's has() means "set to a value".
            rest = {k: v for k, v in node.items() if k not in ("anyOf", "default")}
            merged = {**non_null[0], **rest}
            if node.get("default") is not None:
                merged["default"] = node["default"]
            return _structural(merged, defs, models, None)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {prop: _structural(schema, defs, models, None) for prop, schema in value.items()}
        elif key == "prefixItems":
            out["items"] = _structural(value[0], defs, models, None)
            out["minItems"] = out["maxItems"] = len(value)
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            _exclusive_bound(out, key, value)
        elif key == "const":
            out["enum"] = [value]
        elif key == "default" and value is None:
            continue
        else:
            out[key] = _structural(value, defs, models, None)
    additional = node.get("additionalProperties")
    if isinstance(additional, dict):
        out["additionalProperties"] = _structural(additional, defs, models, None)
    if owner is not None and owner in models:
        model = models[owner]
        for prop, default in _defaults_of(model).items():
            out.setdefault("properties", {}).setdefault(prop, {}).setdefault("default", default)
        rules = RULES_BY_MODEL.get(owner, [])
        if rules:
            out["x-kubernetes-validations"] = out.get("x-kubernetes-validations", []) + [
                {"rule": r.cel, "message": r.full_message, "fieldPath": _field_path(r.field)} for r in rules
            ]
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _field_path(field: str) -> str:
    return "".join(f".{part}" for part in field.split("."))


def _schema_of(model: type[BaseModel], models: dict[str, type[BaseModel]]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    result: dict[str, Any] = _structural(raw, defs, models, model.__name__)
    return result


def _conditions_as_map(status: dict[str, Any]) -> None:
    conditions = status["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]


def openapi_schema() -> dict[str, Any]:
    models = _models_by_name()
    spec = _schema_of(GanTrainingJobSpec, models)
    status = _schema_of(GanTrainingJobStatus, models)
    _conditions_as_map(status)
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def build_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{API_GROUP}",
            "labels": {"app.kubernetes.io/name": "ganops", "app.kubernetes.io/part-of": "ganops"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": [SHORT_NAME],
                "categories": ["ganops", "all"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Step", "type": "integer", "jsonPath": ".status.step"},
                        {"name": "FID", "type": "number", "jsonPath": ".status.metrics.fid"},
                        {"name": "Cost", "type": "number", "jsonPath": ".status.cost.usd",
                         "description": "US dollars spent so far"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `ganops crd` from ganops.api.spec: do not edit by hand (tests fail on drift).\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)
