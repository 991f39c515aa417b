"""Turn pydantic's validation errors into one line per problem that names the field and the fix."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails


def _unwrap(annotation: Any) -> Any:
    """The model class inside Optional[...], list[...], dict[..., ...], Annotated[...], if any."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (Union, types.UnionType, list, tuple, dict):
        for arg in get_args(annotation):
            inner = _unwrap(arg)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return annotation


def _wire_names(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    names: dict[str, type[BaseModel] | None] = {}
    for name, field in model.model_fields.items():
        inner = _unwrap(field.annotation)
        names[field.alias or name] = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None
    return names


def _model_at(root: type[BaseModel] | None, loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    model = root
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        model = _wire_names(model).get(part)
    return model


def _path(prefix: str, loc: tuple[str | int, ...]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out or "(document)"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(error: ErrorDetails, *, prefix: str = "", root: type[BaseModel] | None = None) -> list[str]:
    """The lines for one pydantic error: `<field> <what is wrong and the fix>`."""
    loc = tuple(error["loc"])
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    path = _path(prefix, loc)
    got = f" (got {_shown(error.get('input'))})"
    if kind == "ganops_rule":
        return [f"{_path(prefix, loc)}.{field} {fix}" if path != "(document)" else f"{field} {fix}"
                for field, fix in ctx["problems"]]
    if kind == "missing":
        return [f"{path} is required: add it"]
    if kind == "extra_forbidden":
        parent = _model_at(root, loc[:-1])
        hint = ""
        if parent is not None:
            close = difflib.get_close_matches(str(loc[-1]), list(_wire_names(parent)), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known fields: {', '.join(_wire_names(parent))}"
        return [f"{path} is not a known field{hint}"]
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return [f"{path} must be {bounds[kind]} {limit}{got}"]
    if kind == "literal_error":
        return [f"{path} must be one of {ctx.get('expected')}{got}"]
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return [f"{path} must be a whole number{got}"]
    if kind in ("float_type", "float_parsing"):
        return [f"{path} must be a number{got}"]
    if kind == "finite_number":
        return [f"{path} must be a finite number{got}"]
    if kind in ("bool_type", "bool_parsing"):
        return [f"{path} must be true or false{got}"]
    if kind in ("string_type",):
        return [f"{path} must be a string{got}"]
    if kind == "string_too_long":
        return [f"{path} must be at most {ctx.get('max_length')} characters long"]
    if kind == "string_too_short":
        return [f"{path} must not be empty"]
    if kind == "string_pattern_mismatch":
        return [f"{path} must match {ctx.get('pattern')}{got}"]
    if kind == "too_long":
        return [f"{path} must have at most {ctx.get('max_length')} items"]
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return [f"{path} must be a mapping of fields{got}"]
    if kind in ("list_type", "tuple_type"):
        return [f"{path} must be a list{got}"]
    return [f"{path}: {error['msg']}"]


def format_validation_error(
    err: ValidationError, *, prefix: str = "", root: type[BaseModel] | None = None
) -> list[str]:
    lines: list[str] = []
    for error in err.errors():
        for line in describe(error, prefix=prefix, root=root):
            if line not in lines:
                lines.append(line)
    return lines
