"""Patch semantics of the API server: JSON merge patch (RFC 7386) and JSON patch (RFC 6902).

Strategic merge patch is approximated by the JSON merge patch: lists are replaced, not merged by key.
Server-side apply is not supported (415).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import jsonpatch

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH_PREFIX = "application/apply-patch"


class PatchError(Exception):
    """A patch cannot be applied. `status` is the HTTP status the API server would answer with."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge recursively, `null` deletes a key, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result: dict[str, Any] = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def apply_patch(target: dict[str, Any], patch: Any, content_type: str | None) -> dict[str, Any]:
    """Apply a PATCH body the way the API server would for the given Content-Type."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype.startswith(APPLY_PATCH_PREFIX):
        raise PatchError(415, "UnsupportedMediaType", "server-side apply is not emulated")
    if ctype == JSON_PATCH:
        if not isinstance(patch, list):
            # The real API server fails the same way (e.g. a client forcing this type on a dict body).
            raise PatchError(400, "BadRequest", "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
        try:
            result = jsonpatch.apply_patch(copy.deepcopy(target), patch, in_place=False)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise PatchError(422, "Invalid", f"the server rejected our request: test failed: {exc}") from exc
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise PatchError(422, "Invalid", f"the server rejected our request: {exc}") from exc
        if not isinstance(result, dict):
            raise PatchError(422, "Invalid", "the patched object is not an object")
        return result
    if ctype in ("", MERGE_PATCH, STRATEGIC_MERGE_PATCH, "application/json"):
        if not isinstance(patch, Mapping):
            raise PatchError(400, "BadRequest", "a merge patch must be a JSON object")
        result = merge_patch(target, patch)
        assert isinstance(result, dict)
        return result
    raise PatchError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {ctype}")
