"""URIs: ``s3://bucket/key`` and ``file://path`` (or a plain path), split and joined the same way everywhere."""

from __future__ import annotations

from typing import NamedTuple

from ganops.storage.errors import InvalidURIError

__all__ = ["SplitURI", "join", "split_uri"]


class SplitURI(NamedTuple):
    """``scheme`` is ``"s3"`` or ``"file"``; ``bucket`` is empty for files; ``key`` is the S3 key or local path."""

    scheme: str
    bucket: str
    key: str


def split_uri(uri: str) -> SplitURI:
    """``s3://bucket/key`` → ``("s3", "bucket", "key")``; ``file://p`` or a plain path ``p`` → ``("file", "", p)``.

    ``file://.ganops/ckpt`` is the relative path ``.ganops/ckpt``; ``file:///data`` is the absolute ``/data``.
    """
    if uri.startswith("s3://"):
        rest = uri[len("s3://") :]
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise InvalidURIError(f"S3 URI without a bucket: {uri!r}", uri)
        return SplitURI("s3", bucket, key)
    if uri.startswith("file://"):
        path = uri[len("file://") :]
        if not path:
            raise InvalidURIError(f"file URI without a path: {uri!r}", uri)
        return SplitURI("file", "", path)
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise InvalidURIError(f"unsupported URI scheme {scheme!r} in {uri!r}: use s3:// or file://", uri)
    if not uri:
        raise InvalidURIError("empty URI", uri)
    return SplitURI("file", "", uri)


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with single slashes: ``join("s3://b/x/", "ns", "job/")`` → ``s3://b/x/ns/job/``.

    A trailing slash on the last part is kept (it marks a prefix); leading/trailing slashes of parts are merged.
    """
    out = uri
    for part in parts:
        if not part:
            continue
        head = out if out.endswith("://") else out.rstrip("/") + "/"
        out = head + part.lstrip("/")
    return out


def _as_prefix(uri: str) -> str:
    """A "folder" URI: the same URI ending with exactly one slash (or unchanged when it names a bucket root)."""
    if uri.endswith("/") or uri.endswith("://"):
        return uri
    return uri + "/"
