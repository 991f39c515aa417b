"""The contract every backend keeps: :class:`ObjectStore`, what a put returns, and how a put is verified.

Atomicity
    A single object is replaced atomically on both backends: readers see the old bytes or the new bytes, never
    a torn write. On ``file://`` a put writes a temporary file in the target directory, fsyncs it and
    ``os.replace``s it into place; on S3 a PUT (and a completed multipart upload) is atomic by itself.
    ``get_file`` downloads into a temporary file next to the destination and renames it into place.
    There is no atomicity across objects ("directories"): the checkpoint layer gets it by writing every file of
    ``step-NNNNNNNNN/`` first, verifying them, and writing ``latest.json`` last (see DESIGN.md).

Verification
    After every put the stored size is checked against the local size (``head_object`` on S3); a mismatch raises
    :class:`StorageError`.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from ganops.storage.errors import InvalidURIError, StorageError
from ganops.storage.uri import SplitURI, split_uri

__all__ = ["MiB", "ObjectInfo", "ObjectStore", "PathLike"]

PathLike = str | os.PathLike[str]
URIs = list[str]  # a module-level alias: inside the classes `list` is the method

MiB = 1024 * 1024
_CHUNK = 1 * MiB


@dataclass(frozen=True)
class ObjectInfo:
    """What a put stored: its URI, size in bytes and the hex SHA-256 of its content."""

    uri: str
    size: int
    sha256: str


def _sha256_file(path: PathLike) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class ObjectStore(ABC):
    """Objects addressed by URI. Puts replace one object atomically; keys ending in ``/`` are prefixes."""

    scheme: str = ""

    @abstractmethod
    def put_bytes(self, uri: str, data: bytes) -> ObjectInfo:
        """Store ``data`` at ``uri`` atomically (replacing any object there); verify the stored size."""

    @abstractmethod
    def get_bytes(self, uri: str) -> bytes:
        """The whole object. :class:`ObjectNotFound` when it does not exist."""

    @abstractmethod
    def put_file(self, uri: str, local_path: PathLike) -> ObjectInfo:
        """Upload a local file atomically (multipart on S3 above the threshold); verify the stored size."""

    @abstractmethod
    def get_file(self, uri: str, local_path: PathLike) -> None:
        """Download to ``local_path`` atomically (temporary file + rename); creates parent directories."""

    @abstractmethod
    def exists(self, uri: str) -> bool:
        """Whether an object exists at exactly ``uri`` (a "folder" prefix is not an object)."""

    @abstractmethod
    def size(self, uri: str) -> int:
        """Size in bytes. :class:`ObjectNotFound` when it does not exist."""

    @abstractmethod
    def list(self, prefix_uri: str) -> URIs:
        """Sorted URIs of every object whose URI starts with ``prefix_uri`` (recursive, string-prefix semantics)."""

    @abstractmethod
    def list_dirs(self, prefix_uri: str) -> URIs:
        """Sorted immediate sub-folders of the folder ``prefix_uri``, each ending with ``/``.

        ``prefix_uri`` is treated as a folder (a ``/`` is appended if missing). Only folders holding at least
        one object count, as on S3.
        """

    @abstractmethod
    def delete(self, uri: str) -> None:
        """Delete one object; deleting a missing object is not an error."""

    @abstractmethod
    def delete_prefix(self, prefix_uri: str) -> int:
        """Delete every object under ``prefix_uri`` (string-prefix semantics); returns how many were deleted.

        An empty key (a whole bucket or the current directory) is refused with :class:`InvalidURIError`.
        """

    @abstractmethod
    def sha256(self, uri: str) -> str:
        """Hex SHA-256 of the stored content, computed by streaming the object."""

    # Conveniences shared by the backends.

    def put_json(self, uri: str, obj: Any) -> ObjectInfo:
        """Store ``obj`` as UTF-8 JSON (sorted keys, indented) atomically."""
        data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
        return self.put_bytes(uri, data)

    def get_json(self, uri: str) -> Any:
        """Load a JSON object; :class:`StorageError` when it is not valid JSON."""
        data = self.get_bytes(uri)
        try:
            return json.loads(data)
        except ValueError as exc:
            raise StorageError(f"{uri} is not valid JSON: {exc}", uri) from exc

    def _check_scheme(self, uri: str) -> SplitURI:
        parts = split_uri(uri)
        if parts.scheme != self.scheme:
            raise InvalidURIError(f"{type(self).__name__} cannot handle {uri!r} (scheme {parts.scheme!r})", uri)
        return parts

    def _object(self, uri: str) -> SplitURI:
        parts = self._check_scheme(uri)
        if not parts.key or parts.key.endswith("/"):
            raise InvalidURIError(f"{uri!r} names a prefix, not an object", uri)
        return parts


def _verify_size(uri: str, stored: int, expected: int) -> None:
    if stored != expected:
        raise StorageError(f"verification of {uri} failed: stored {stored} bytes, expected {expected}", uri)
