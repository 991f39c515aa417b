"""``file://`` URIs and plain paths: :class:`FileStore`, with atomic writes through a temporary file + rename."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import IO

from ganops.storage.base import (
    _CHUNK,
    ObjectInfo,
    ObjectStore,
    PathLike,
    URIs,
    _sha256_file,
    _verify_size,
)
from ganops.storage.errors import InvalidURIError, ObjectNotFound, StorageError
from ganops.storage.uri import _as_prefix

__all__ = ["FileStore"]

_TMP_MARKER = ".ganops-tmp-"
_FILE_MODE = 0o644


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _atomic_write(dest: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``dest`` through a temporary file in its directory: fsync, ``os.replace``, fsync the directory.

    On any failure the temporary file is removed and ``dest`` is left as it was.
    """
    directory = os.path.dirname(dest) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(dest) + _TMP_MARKER, dir=directory)
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp creates 0600; objects should be readable like any written file
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _copy_from(src: PathLike) -> Callable[[IO[bytes]], None]:
    def write(f: IO[bytes]) -> None:
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f, _CHUNK)

    return write


def _write_all(f: IO[bytes], data: bytes) -> None:
    f.write(data)


def _is_tmp(name: str) -> bool:
    return name.startswith(".") and _TMP_MARKER in name


class FileStore(ObjectStore):
    """``file://`` URIs and plain paths on the local file system. URIs it returns keep the caller's style."""

    scheme = "file"

    @staticmethod
    def _style(uri: str) -> str:
        return "file://" if uri.startswith("file://") else ""

    def put_bytes(self, uri: str, data: bytes) -> ObjectInfo:
        path = self._object(uri).key
        with _errors("put", uri, missing_is_error=True):
            _atomic_write(path, lambda f: _write_all(f, data))
            stored = os.path.getsize(path)
        _verify_size(uri, stored, len(data))
        return ObjectInfo(uri, len(data), hashlib.sha256(data).hexdigest())

    def get_bytes(self, uri: str) -> bytes:
        path = self._object(uri).key
        with _errors("get", uri), open(path, "rb") as f:
            return f.read()

    def put_file(self, uri: str, local_path: PathLike) -> ObjectInfo:
        path = self._object(uri).key
        with _errors("put", uri, missing_is_error=True):
            digest, size = _sha256_file(local_path)
            _atomic_write(path, _copy_from(local_path))
            stored = os.path.getsize(path)
        _verify_size(uri, stored, size)
        return ObjectInfo(uri, size, digest)

    def get_file(self, uri: str, local_path: PathLike) -> None:
        path = self._object(uri).key
        if not os.path.isfile(path):
            raise ObjectNotFound(f"no object at {uri}", uri)
        with _errors("get", uri, missing_is_error=True):
            _atomic_write(os.fspath(local_path), _copy_from(path))

    def exists(self, uri: str) -> bool:
        path = self._check_scheme(uri).key
        return not path.endswith("/") and os.path.isfile(path)

    def size(self, uri: str) -> int:
        path = self._object(uri).key
        with _errors("stat", uri):
            if not os.path.isfile(path):
                raise FileNotFoundError(path)
            return os.path.getsize(path)

    @staticmethod
    def _walk(prefix: str, include_tmp: bool = False) -> Iterator[tuple[str, bool]]:
        """``(path, is_dir)`` for every file and folder whose path starts with ``prefix``, deepest first.

        Paths are spelled as ``prefix``'s directory + the relative path, so they keep the caller's style
        (relative, ``./``-prefixed or absolute). Folders that cannot hold a match are not entered.
        """
        base = prefix if prefix.endswith("/") else os.path.dirname(prefix)
        if base and not base.endswith("/"):
            base += "/"
        if not os.path.isdir(base or "."):
            return

        def could_match(spelled_dir: str) -> bool:  # spelled_dir ends with "/"
            return spelled_dir.startswith(prefix) or prefix.startswith(spelled_dir)

        def visit(directory: str) -> Iterator[tuple[str, bool]]:
            try:
                entries = sorted(os.scandir(directory or "."), key=lambda e: e.name)
            except (FileNotFoundError, NotADirectoryError):
                return
            for entry in entries:
                path = directory + entry.name
                if entry.is_dir(follow_symlinks=False):
                    if could_match(path + "/"):
                        yield from visit(path + "/")
                        if path.startswith(prefix):
                            yield path, True
                elif path.startswith(prefix) and (include_tmp or not _is_tmp(entry.name)):
                    yield path, False

        yield from visit(base)

    def list(self, prefix_uri: str) -> URIs:
        prefix = self._check_scheme(prefix_uri).key
        style = self._style(prefix_uri)
        with _errors("list", prefix_uri):
            return sorted(style + path for path, is_dir in self._walk(prefix) if not is_dir)

    def list_dirs(self, prefix_uri: str) -> URIs:
        prefix_uri = _as_prefix(prefix_uri)
        base = self._check_scheme(prefix_uri).key
        out: URIs = []
        with _errors("list", prefix_uri):
            if not os.path.isdir(base):
                return []
            for entry in os.scandir(base):
                if entry.is_dir(follow_symlinks=False) and any(
                    not is_dir for _, is_dir in self._walk(base + entry.name + "/")
                ):
                    out.append(prefix_uri + entry.name + "/")
        return sorted(out)

    def delete(self, uri: str) -> None:
        path = self._object(uri).key
        with _errors("delete", uri), contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def delete_prefix(self, prefix_uri: str) -> int:
        """Also removes temporary files and the folders left empty under the prefix."""
        prefix = self._check_scheme(prefix_uri).key
        if prefix.rstrip("/") in ("", "."):
            raise InvalidURIError(f"refusing to delete everything under {prefix_uri!r}", prefix_uri)
        count = 0
        with _errors("delete", prefix_uri):
            for path, is_dir in list(self._walk(prefix, include_tmp=True)):  # deepest first
                if is_dir:
                    with contextlib.suppress(OSError):  # not empty: something appeared meanwhile
                        os.rmdir(path)
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    count += not _is_tmp(os.path.basename(path))
            if prefix.endswith("/"):
                with contextlib.suppress(OSError):
                    os.rmdir(prefix)
        return count

    def sha256(self, uri: str) -> str:
        path = self._object(uri).key
        with _errors("read", uri):
            return _sha256_file(path)[0]


@contextlib.contextmanager
def _errors(op: str, uri: str, missing_is_error: bool = False) -> Iterator[None]:
    """Translate OSError into StorageError (FileNotFoundError → ObjectNotFound unless it is a local source)."""
    try:
        yield
    except StorageError:
        raise
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        if missing_is_error:
            raise StorageError(f"{op} {uri} failed: {exc.strerror}: {exc.filename}", uri) from exc
        raise ObjectNotFound(f"no object at {uri}", uri) from exc
    except OSError as exc:
        raise StorageError(f"{op} {uri} failed: {exc}", uri) from exc
