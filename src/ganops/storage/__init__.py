"""Object store by URI: ``s3://bucket/key`` (boto3) and ``file://path`` (local disk), same semantics.

Every store takes full URIs, so one store serves any bucket (S3) or any directory (file). Pick one with
:func:`open_store`::

    store = open_store("s3://ganops-ckpt/runs")
    store.put_file(join(base, "step-000000500", "generator.safetensors"), local_path)
    store.put_json(join(base, "latest.json"), {"step": 500})    # written last

The package, by responsibility (import the names from here; the modules are the owners):

- `ganops.storage.uri`: :class:`SplitURI`, :func:`split_uri`, :func:`join`;
- `ganops.storage.errors`: :class:`StorageError` and its subclasses, ``CREDENTIALS_HELP``;
- `ganops.storage.base`: :class:`ObjectStore` (the contract: atomicity, verification), :class:`ObjectInfo`;
- `ganops.storage.local`: :class:`FileStore` and the atomic write through a temporary file;
- `ganops.storage.s3`: :class:`S3Store` (configuration, retries); `ganops.storage.s3_errors`: which S3 errors are
  transient and the :class:`StorageError` each becomes.

Whole-operation retries follow :class:`RetryPolicy`, the one policy of `ganops.retry`.
"""

from __future__ import annotations

from typing import Any

from ganops.retry import RetryPolicy
from ganops.storage.base import MiB, ObjectInfo, ObjectStore, PathLike
from ganops.storage.errors import (
    CREDENTIALS_HELP,
    AccessDeniedError,
    CredentialsMissing,
    InvalidURIError,
    ObjectNotFound,
    StorageError,
)
from ganops.storage.local import FileStore
from ganops.storage.s3 import S3Store
from ganops.storage.uri import SplitURI, join, split_uri

__all__ = [
    "CREDENTIALS_HELP",
    "AccessDeniedError",
    "CredentialsMissing",
    "FileStore",
    "InvalidURIError",
    "MiB",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "PathLike",
    "RetryPolicy",
    "S3Store",
    "SplitURI",
    "StorageError",
    "join",
    "open_store",
    "split_uri",
]


def open_store(uri: str, **s3_options: Any) -> ObjectStore:
    """The store for ``uri``'s scheme: :class:`S3Store` for ``s3://`` (``s3_options`` go to its constructor),
    :class:`FileStore` for ``file://`` and plain paths."""
    scheme = split_uri(uri).scheme
    if scheme == "s3":
        return S3Store(**s3_options)
    if s3_options:
        raise TypeError(f"options {sorted(s3_options)} only apply to s3:// stores")
    return FileStore()
