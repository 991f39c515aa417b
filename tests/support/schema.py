"""Offline stand-ins for what the API server does with a CRD schema: defaulting, OpenAPI checks and CEL rules."""

from __future__ import annotations

import copy
from typing import Any

import celpy
import jsonschema

KUBERNETES_VERSION = "1.34"  # the one version every rendered object is validated against


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Structural defaulting as the API server does it: fill missing properties that have a default, recursively."""
    if not isinstance(obj, dict) or schema.get("type") != "object":
        if isinstance(obj, list) and "items" in schema:
            return [apply_defaults(schema["items"], item) for item in obj]
        return obj
    out = dict(obj)
    for name, prop in schema.get("properties", {}).items():
        if name not in out and "default" in prop:
            out[name] = copy.deepcopy(prop["default"])
        if name in out:
            out[name] = apply_defaults(prop, out[name])
    return out


def openapi_errors(schema: dict[str, Any], obj: Any) -> list[str]:
    """OpenAPI v3.0 checks (draft-4 semantics: boolean exclusiveMinimum); x-kubernetes-* keys are ignored."""
    validator = jsonschema.Draft4Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def cel_failures(schema: dict[str, Any], obj: Any, path: str = "") -> list[str]:
    """Evaluate every x-kubernetes-validations rule on the (defaulted) object; return the failing messages."""
    failures: list[str] = []
    if isinstance(obj, dict):
        for rule in schema.get("x-kubernetes-validations", []):
            env = celpy.Environment()
            program = env.program(env.compile(rule["rule"]))
            if not bool(program.evaluate({"self": celpy.json_to_cel(obj)})):
                failures.append(rule["message"])
        for name, prop in schema.get("properties", {}).items():
            if name in obj:
                failures += cel_failures(prop, obj[name], f"{path}.{name}")
    elif isinstance(obj, list) and "items" in schema:
        for item in obj:
            failures += cel_failures(schema["items"], item, path)
    return failures
