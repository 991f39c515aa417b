"""The URI policy of a job: which URIs a GanTrainingJob may name, defined once.

Two halves, for the two places that can check them:

* **Shape** (no configuration needed): the patterns below, turned into CEL for the CRD (`x-kubernetes-validations`,
  so the API server refuses the job at admission) and into the same Python predicate for pydantic (`ganops
  validate`, the trainer, the operator) by `ganops.api.rules`. An object-store URI is ``s3://<bucket>[/key]`` or
  ``file://…``; an MLflow URI is ``http(s)://<host>[:port][/path]``. Neither may carry user-info (``user:pw@``), a
  query string (presigned ``X-Amz-Signature=…``, ``token=…``) or a fragment, and object-store URIs may not climb
  out of their prefix with a ``..`` segment. Credentials reach MLflow and S3 only through the environment of the
  process that talks to them, never through a URI a user wrote.

* **Place** (needs the platform's configuration, so only the operator checks it): `same_server` (is this MLflow
  one of the platform's?) and `within` (does this object-store URI lie under one of the platform's prefixes?).

The patterns avoid backslashes and quotes so that the same text is a valid CEL string literal and a Python regex
(RE2 and `re` agree on them; `tests/unit/api/test_crd.py` runs both).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable

S3_SCHEME = "s3://"
FILE_SCHEME = "file://"
# s3://<bucket> then "/" or the end: a bucket name is lowercase letters, digits, dots and hyphens (S3's own rule;
# this also keeps user-info and ports out of the authority).
S3_PATTERN = "^s3://[a-z0-9][a-z0-9.-]{0,62}(/|$)"
# http(s)://<host>[:port] then "/" or the end: a host name or IPv4 address, no user-info.
MLFLOW_PATTERN = "^https?://[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?(/|$)"
DOTDOT_PATTERN = "(^|/)[.][.](/|$)"  # a ".." path segment
QUERY, FRAGMENT, USERINFO = "?", "#", "@"


def _cel_clean(field: str, *, no_userinfo: bool) -> str:
    parts = [f"!{field}.contains('{QUERY}')", f"!{field}.contains('{FRAGMENT}')"]
    if no_userinfo:
        parts.append(f"!{field}.contains('{USERINFO}')")
    return " && ".join(parts)


def object_store_cel(field: str) -> str:
    """CEL: `field` (e.g. ``self.uri``) is a clean ``s3://`` or ``file://`` URI."""
    return (f"({field}.matches('{S3_PATTERN}') || {field}.startsWith('{FILE_SCHEME}')) && "
            f"{_cel_clean(field, no_userinfo=False)} && !{field}.matches('{DOTDOT_PATTERN}')")


def object_store_ok(uri: str) -> bool:
    """Python twin of `object_store_cel`."""
    return ((re.search(S3_PATTERN, uri) is not None or uri.startswith(FILE_SCHEME))
            and QUERY not in uri and FRAGMENT not in uri and re.search(DOTDOT_PATTERN, uri) is None)


def mlflow_cel(field: str) -> str:
    """CEL: `field` is a clean ``http(s)://host[:port][/path]`` URL."""
    return f"{field}.matches('{MLFLOW_PATTERN}') && {_cel_clean(field, no_userinfo=True)}"


def mlflow_ok(uri: str) -> bool:
    """Python twin of `mlflow_cel`."""
    return (re.search(MLFLOW_PATTERN, uri) is not None
            and QUERY not in uri and FRAGMENT not in uri and USERINFO not in uri)


OBJECT_STORE_SHAPE = ("an s3://<bucket>/… or file://… URI without a query string (?), fragment (#) or '..' "
                      "segment: credentials come from the pod's Secret, never from the URI")
MLFLOW_SHAPE = ("an http(s)://<host>[:port][/path] URL without user-info (@), query string (?) or fragment (#): "
                "MLflow credentials come from the pod's Secret, never from the URI")


# ------------------------------------------------------------------------------------------------ place


def server_key(uri: str) -> tuple[str, str, int | None, str]:
    """(scheme, host, port, path) of an http(s) URL, normalised: lowercase scheme and host, the scheme's default
    port made explicit, no trailing slash. Two spellings of one server compare equal."""
    parts = urllib.parse.urlsplit(uri.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port, parts.path.rstrip("/")


def same_server(uri: str, allowed: Iterable[str]) -> str | None:
    """The entry of `allowed` that names the same MLflow server as `uri` (the platform's own spelling, which is
    what the operator then connects to), else None."""
    if not mlflow_ok(uri):
        return None
    key = server_key(uri)
    return next((entry for entry in allowed if server_key(entry) == key), None)


def within(uri: str, roots: Iterable[str]) -> str | None:
    """The entry of `roots` (object-store prefixes) that `uri` equals or lies under, else None. Only whole path
    segments count (``s3://b/runs`` covers ``s3://b/runs/x``, not ``s3://b/runs-x``), and a URI with a ``..``
    segment, a query string or a fragment is under nothing."""
    if not object_store_ok(uri):
        return None
    for root in roots:
        base = root.rstrip("/")
        if uri.rstrip("/") == base or uri.startswith(base + "/"):
            return root
    return None


__all__ = [
    "MLFLOW_SHAPE", "OBJECT_STORE_SHAPE", "mlflow_cel", "mlflow_ok", "object_store_cel", "object_store_ok",
    "same_server", "server_key", "within",
]
