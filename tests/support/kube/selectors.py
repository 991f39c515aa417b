"""Label and field selectors as the API server parses them (`?labelSelector=` / `?fieldSelector=`).

Label selectors: equality (`a=b`, `a==b`, `a!=b`), set-based (`a in (x,y)`, `a notin (x,y)`),
existence (`a`, `!a`), comma-separated terms ANDed together.
Field selectors: `path=value`, `path==value`, `path!=value` on dotted paths (`metadata.name`,
`metadata.namespace`, `status.phase`, `spec.nodeName`, ...); a missing field compares as "".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Predicate = Callable[[Mapping[str, Any]], bool]
LabelCheck = Callable[[Mapping[str, str]], bool]

_SET_TERM = re.compile(r"^\s*(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s+\((?P<values>[^)]*)\)\s*$")
_EQ_TERM = re.compile(r"^\s*(?P<key>[^\s!=(),]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=(),]*)\s*$")
_EXISTS_TERM = re.compile(r"^\s*(?P<neg>!?)\s*(?P<key>[^\s!=(),]+)\s*$")


class SelectorError(ValueError):
    """The selector cannot be parsed (the API server answers 400 Bad Request)."""


def _split_terms(selector: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    terms: list[str] = []
    depth = 0
    current: list[str] = []
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    return [term for term in terms if term.strip()]


def _label_in(key: str, values: frozenset[str], negate: bool) -> LabelCheck:
    def check(labels: Mapping[str, str]) -> bool:
        return (labels.get(key) in values) != negate

    return check


def _label_exists(key: str, negate: bool) -> LabelCheck:
    def check(labels: Mapping[str, str]) -> bool:
        return (key in labels) != negate

    return check


def parse_label_selector(selector: str | None) -> Predicate:
    """Compile a label selector into a predicate over a whole object (reads `metadata.labels`)."""
    checks: list[LabelCheck] = []
    for term in _split_terms(selector or ""):
        if match := _SET_TERM.match(term):
            values = frozenset(v.strip() for v in match["values"].split(",") if v.strip())
            checks.append(_label_in(match["key"], values, negate=match["op"] == "notin"))
        elif match := _EQ_TERM.match(term):
            checks.append(_label_in(match["key"], frozenset([match["value"]]), negate=match["op"] == "!="))
        elif match := _EXISTS_TERM.match(term):
            checks.append(_label_exists(match["key"], negate=bool(match["neg"])))
        else:
            raise SelectorError(f"unable to parse requirement: {term!r}")

    def predicate(obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(check(labels) for check in checks)

    return predicate


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return ""
        value = value[part]
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _field_equals(path: str, value: str, negate: bool) -> Predicate:
    def check(obj: Mapping[str, Any]) -> bool:
        return (_field_value(obj, path) == value) != negate

    return check


def parse_field_selector(selector: str | None) -> Predicate:
    """Compile a field selector into a predicate over a whole object."""
    checks: list[Predicate] = []
    for term in _split_terms(selector or ""):
        match = _EQ_TERM.match(term)
        if not match:
            raise SelectorError(f"invalid field selector: {term!r}")
        checks.append(_field_equals(match["key"], match["value"], negate=match["op"] == "!="))

    def predicate(obj: Mapping[str, Any]) -> bool:
        return all(check(obj) for check in checks)

    return predicate


def match_labels(labels: Mapping[str, str]) -> str:
    """Render a `{key: value}` dict as an equality label selector string."""
    return ",".join(f"{key}={value}" for key, value in labels.items())
