"""Object store by URI: ``s3://bucket/key`` (boto3) and ``file://path`` (local disk), same semantics.

Every store takes full URIs, so one store serves any bucket (S3) or any directory (file). Pick one with
:func:`open_store`::

    store = open_store("s3://ganops-ckpt/runs")
    store.put_file(join(base, "step-000000500", "generator.safetensors"), local_path)
    store.put_json(join(base, "latest.json"), {"step": 500})    # written last

Atomicity
    A single object is replaced atomically on both backends: readers see the old bytes or the new bytes, never
    a torn write. On ``file://`` a put writes a temporary file in the target directory, fsyncs it and
    ``os.replace``s it into place; on S3 a PUT (and a completed multipart upload) is atomic by itself.
    ``get_file`` downloads into a temporary file next to the destination and renames it into place.
    There is no atomicity across objects ("directories"): the checkpoint layer gets it by writing every file of
    ``step-NNNNNNNNN/`` first, verifying them, and writing ``latest.json`` last (see DESIGN.md).

Verification
    After every put the stored size is checked against the local size (``head_object`` on S3); a mismatch raises
    :class:`StorageError`. Data integrity on the wire is covered by botocore's request checksums (CRC32 by
    default; set ``AWS_REQUEST_CHECKSUM_CALCULATION=when_required`` for S3-compatible stores that reject them).

S3 configuration (all optional)
    endpoint: ``endpoint_url=`` argument, else ``GANOPS_S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL_S3``, else
    ``AWS_ENDPOINT_URL``, else AWS. Credentials come only from boto3's standard chain (env vars, shared files,
    web identity / IRSA, container and instance roles); they are never logged nor put into messages.
    Addressing style: ``GANOPS_S3_ADDRESSING_STYLE`` (``path`` by default when a custom endpoint is set).

Retries
    botocore retries each HTTP request (mode ``standard``); on top of that every store operation as a whole
    (e.g. a multipart upload or a streamed read) is retried with exponential backoff and jitter on transient
    errors: connection failures, timeouts, HTTP 5xx and throttling. See :class:`RetryPolicy`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, NamedTuple, TypeVar

logger = logging.getLogger(__name__)

__all__ = [
    "AccessDeniedError",
    "CredentialsMissing",
    "FileStore",
    "InvalidURIError",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "RetryPolicy",
    "S3Store",
    "SplitURI",
    "StorageError",
    "join",
    "open_store",
    "split_uri",
]

T = TypeVar("T")
PathLike = str | os.PathLike[str]
URIs = list[str]  # a module-level alias: inside the classes `list` is the method

MiB = 1024 * 1024
_CHUNK = 1 * MiB
_TMP_MARKER = ".ganops-tmp-"
_FILE_MODE = 0o644

CREDENTIALS_HELP = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary credentials) in the "
    "environment - in Kubernetes, from a Secret via envFrom.secretRef or env.valueFrom.secretKeyRef - or use a "
    "role: AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE (IRSA), AWS_PROFILE with a shared credentials file, or an "
    "instance/container role"
)


# ---------------------------------------------------------------------------------------------------- errors


class StorageError(Exception):
    """Base of every error raised by this module. ``uri`` names the object or prefix concerned."""

    def __init__(self, message: str, uri: str = "") -> None:
        super().__init__(message)
        self.uri = uri


class ObjectNotFound(StorageError):
    """The object does not exist (the bucket does; a missing bucket is a plain :class:`StorageError`)."""


class CredentialsMissing(StorageError):
    """boto3 found no credentials at all; the message says what to set."""


class AccessDeniedError(StorageError):
    """The store refused the credentials or the operation (403, invalid key, bad signature)."""


class InvalidURIError(StorageError, ValueError):
    """The URI is malformed, has an unsupported scheme, or names a prefix where an object is needed."""


# ------------------------------------------------------------------------------------------------------ URIs


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


# ---------------------------------------------------------------------------------------------- base class


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


# ------------------------------------------------------------------------------------------------ file://


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


def _verify_size(uri: str, stored: int, expected: int) -> None:
    if stored != expected:
        raise StorageError(f"verification of {uri} failed: stored {stored} bytes, expected {expected}", uri)


# -------------------------------------------------------------------------------------------------- s3://


@dataclass(frozen=True)
class RetryPolicy:
    """Whole-operation retries on transient errors: ``attempts`` tries in total, sleeping
    ``min(max_delay, base_delay * 2**n)`` scaled by a random factor in [0.5, 1] between them."""

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 10.0

    def delay(self, retry: int) -> float:
        return float(min(self.max_delay, self.base_delay * (2**retry)) * random.uniform(0.5, 1.0))


_TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "PriorRequestNotComplete",
    }
)
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_DENIED_CODES = frozenset(
    {
        "403",
        "AccessDenied",
        "Forbidden",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "AllAccessDisabled",
    }
)


def _client_error_info(exc: BaseException) -> tuple[str, int, str] | None:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return None
    err = exc.response.get("Error", {})
    meta = exc.response.get("ResponseMetadata", {})
    code = str(err.get("Code", ""))
    status = int(meta.get("HTTPStatusCode", 0) or 0)
    return code, status, str(err.get("Message", "") or "")


def _root_cause(exc: BaseException) -> BaseException:
    """Unwrap boto3's transfer wrappers (S3UploadFailedError, RetriesExceededError) to the botocore error."""
    from boto3.exceptions import RetriesExceededError, S3UploadFailedError

    if isinstance(exc, RetriesExceededError) and exc.last_exception is not None:
        return _root_cause(exc.last_exception)
    if isinstance(exc, S3UploadFailedError):
        inner = exc.__cause__ or exc.__context__
        if inner is not None:
            return _root_cause(inner)
    return exc


def _is_transient(exc: BaseException) -> bool:
    from boto3.exceptions import RetriesExceededError
    from botocore import exceptions as bex

    if isinstance(exc, RetriesExceededError):  # s3transfer gave up on streaming errors: try the whole op again
        return True
    exc = _root_cause(exc)
    if isinstance(exc, bex.SSLError):
        return False
    if isinstance(exc, bex.ConnectionError | bex.HTTPClientError | bex.IncompleteReadError | bex.ChecksumError):
        return True
    info = _client_error_info(exc)
    if info is None:
        return False
    code, status, _ = info
    return status >= 500 or status == 429 or code in _TRANSIENT_CODES


def _translate(exc: BaseException, op: str, uri: str) -> StorageError:
    """A StorageError naming the URI and the store's error code; never credentials."""
    from botocore import exceptions as bex

    if isinstance(exc, StorageError):
        return exc
    cause = _root_cause(exc)
    if isinstance(cause, bex.NoCredentialsError | bex.PartialCredentialsError):
        return CredentialsMissing(f"no usable S3 credentials to {op} {uri}: {CREDENTIALS_HELP}", uri)
    if isinstance(cause, bex.CredentialRetrievalError):
        return CredentialsMissing(f"could not obtain S3 credentials to {op} {uri} ({cause}): {CREDENTIALS_HELP}", uri)
    info = _client_error_info(cause)
    if info is not None:
        code, status, message = info
        detail = f"{code or status}" + (f": {message}" if message else "")
        if code == "NoSuchBucket":
            return StorageError(f"{op} {uri} failed: the bucket does not exist ({detail})", uri)
        if code in _NOT_FOUND_CODES:
            return ObjectNotFound(f"no object at {uri}", uri)
        if code in _DENIED_CODES:
            return AccessDeniedError(
                f"{op} {uri} was denied ({detail}): check the credentials and the bucket policy", uri
            )
        return StorageError(f"{op} {uri} failed: {detail}", uri)
    return StorageError(f"{op} {uri} failed: {type(cause).__name__}: {cause}", uri)


def _endpoint_from_env() -> str | None:
    for name in ("GANOPS_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


class S3Store(ObjectStore):
    """``s3://bucket/key`` through boto3. The client is created lazily and is safe to share across threads.

    ``multipart_threshold`` / ``multipart_chunksize`` go to boto3's ``TransferConfig`` (S3 needs parts of at
    least 5 MiB); ``max_attempts`` is botocore's per-request budget (total tries, 1 = no botocore retry);
    ``retry`` is the whole-operation policy.
    """

    scheme = "s3"

    def __init__(
        self,
        endpoint_url: str | None = None,
        *,
        region_name: str | None = None,
        addressing_style: str | None = None,
        retry: RetryPolicy | None = None,
        max_attempts: int = 5,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        multipart_threshold: int = 64 * MiB,
        multipart_chunksize: int = 16 * MiB,
        max_concurrency: int = 4,
        verify: bool = True,
    ) -> None:
        self.endpoint_url = endpoint_url or _endpoint_from_env()
        self.region_name = region_name
        self.addressing_style = (
            addressing_style
            or os.environ.get("GANOPS_S3_ADDRESSING_STYLE", "").strip()
            or ("path" if self.endpoint_url else "auto")
        )
        self.retry = retry or RetryPolicy()
        self.max_attempts = max_attempts
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize
        self.max_concurrency = max_concurrency
        self.verify = verify
        self._client: Any = None
        self._known_buckets: set[str] = set()

    def __repr__(self) -> str:
        return f"S3Store(endpoint_url={self.endpoint_url!r})"

    @property
    def client(self) -> Any:
        """The boto3 S3 client (created on first use)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"mode": "standard", "total_max_attempts": self.max_attempts},
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                s3={"addressing_style": self.addressing_style},
                max_pool_connections=max(10, self.max_concurrency * 2),
            )
            session = boto3.session.Session()
            self._client = session.client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region_name, config=config
            )
        return self._client

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunksize,
            max_concurrency=self.max_concurrency,
            use_threads=self.max_concurrency > 1,
        )

    def _call(self, op: str, uri: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` retrying the whole operation on transient errors; translate every error."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except Exception as exc:
                error = _translate(exc, op, uri)
                if not _is_transient(exc) or isinstance(exc, StorageError):
                    raise error from exc
                if attempt >= self.retry.attempts:
                    raise type(error)(f"{error} (gave up after {attempt} attempts)", uri) from exc
                delay = self.retry.delay(attempt - 1)
                logger.warning(
                    "%s; retrying in %.2fs (attempt %d of %d)", error, delay, attempt + 1, self.retry.attempts
                )
                time.sleep(delay)

    def _head(self, bucket: str, key: str) -> dict[str, Any]:
        result: dict[str, Any] = self.client.head_object(Bucket=bucket, Key=key)
        return result

    def _not_found(self, parts: SplitURI, uri: str, op: str) -> ObjectNotFound:
        """HEAD answers a bare 404 for a missing bucket too: tell the two apart (once per bucket)."""
        from botocore.exceptions import ClientError

        if parts.bucket not in self._known_buckets:
            try:
                self.client.head_bucket(Bucket=parts.bucket)
                self._known_buckets.add(parts.bucket)
            except ClientError as exc:
                info = _client_error_info(exc)
                if info is not None and (info[0] in {"404", "NoSuchBucket", "NotFound"}):
                    raise StorageError(f"{op} {uri} failed: the bucket {parts.bucket!r} does not exist", uri) from exc
            except Exception:  # best effort only: keep the plain "not found"
                pass
        return ObjectNotFound(f"no object at {uri}", uri)

    def _verify(self, parts: SplitURI, uri: str, expected: int) -> None:
        if not self.verify:
            return
        head = self._head(parts.bucket, parts.key)
        _verify_size(uri, int(head["ContentLength"]), expected)

    def put_bytes(self, uri: str, data: bytes) -> ObjectInfo:
        parts = self._object(uri)

        def run() -> None:
            self.client.put_object(Bucket=parts.bucket, Key=parts.key, Body=data)
            self._verify(parts, uri, len(data))

        self._call("put", uri, run)
        return ObjectInfo(uri, len(data), hashlib.sha256(data).hexdigest())

    def get_bytes(self, uri: str) -> bytes:
        parts = self._object(uri)

        def run() -> bytes:
            response = self.client.get_object(Bucket=parts.bucket, Key=parts.key)
            with contextlib.closing(response["Body"]) as body:
                data: bytes = body.read()
            expected = int(response.get("ContentLength", len(data)))
            if len(data) != expected:
                from botocore.exceptions import IncompleteReadError

                raise IncompleteReadError(actual_bytes=len(data), expected_bytes=expected)
            return data

        return self._call("get", uri, run)

    def put_file(self, uri: str, local_path: PathLike) -> ObjectInfo:
        parts = self._object(uri)
        try:
            digest, size = _sha256_file(local_path)
        except OSError as exc:
            raise StorageError(f"put {uri} failed: cannot read {os.fspath(local_path)}: {exc.strerror}", uri) from exc

        def run() -> None:
            self.client.upload_file(os.fspath(local_path), parts.bucket, parts.key, Config=self._transfer_config())
            self._verify(parts, uri, size)

        self._call("put", uri, run)
        return ObjectInfo(uri, size, digest)

    def get_file(self, uri: str, local_path: PathLike) -> None:
        parts = self._object(uri)
        dest = os.fspath(local_path)
        directory = os.path.dirname(dest) or "."

        def run() -> None:
            expected = int(self._head(parts.bucket, parts.key)["ContentLength"])
            fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(dest) + _TMP_MARKER, dir=directory)
            try:
                os.fchmod(fd, _FILE_MODE)
                os.close(fd)
                self.client.download_file(parts.bucket, parts.key, tmp, Config=self._transfer_config())
                got = os.path.getsize(tmp)
                if got != expected:
                    from botocore.exceptions import IncompleteReadError

                    raise IncompleteReadError(actual_bytes=got, expected_bytes=expected)
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, dest)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            _fsync_dir(directory)

        try:
            os.makedirs(directory, exist_ok=True)
            self._call("get", uri, run)
        except ObjectNotFound as exc:
            raise self._not_found(parts, uri, "get") from exc
        except OSError as exc:
            raise StorageError(f"get {uri} failed: cannot write {dest}: {exc}", uri) from exc

    def exists(self, uri: str) -> bool:
        parts = self._check_scheme(uri)
        if not parts.key or parts.key.endswith("/"):
            return False
        try:
            self._call("head", uri, lambda: self._head(parts.bucket, parts.key))
        except ObjectNotFound:
            self._not_found(parts, uri, "head")
            return False
        return True

    def size(self, uri: str) -> int:
        parts = self._object(uri)
        try:
            head = self._call("head", uri, lambda: self._head(parts.bucket, parts.key))
        except ObjectNotFound as exc:
            raise self._not_found(parts, uri, "head") from exc
        return int(head["ContentLength"])

    def _pages(self, bucket: str, prefix: str, delimiter: str | None) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        return list(self.client.get_paginator("list_objects_v2").paginate(**kwargs))

    def _keys(self, bucket: str, prefix: str, uri: str) -> list[str]:
        pages = self._call("list", uri, lambda: self._pages(bucket, prefix, None))
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def list(self, prefix_uri: str) -> URIs:
        parts = self._check_scheme(prefix_uri)
        return sorted(f"s3://{parts.bucket}/{key}" for key in self._keys(parts.bucket, parts.key, prefix_uri))

    def list_dirs(self, prefix_uri: str) -> URIs:
        parts = self._check_scheme(prefix_uri)
        prefix = parts.key if (not parts.key or parts.key.endswith("/")) else parts.key + "/"
        pages = self._call("list", prefix_uri, lambda: self._pages(parts.bucket, prefix, "/"))
        return sorted(f"s3://{parts.bucket}/{cp['Prefix']}" for page in pages for cp in page.get("CommonPrefixes", []))

    def delete(self, uri: str) -> None:
        parts = self._object(uri)
        self._call("delete", uri, lambda: self.client.delete_object(Bucket=parts.bucket, Key=parts.key))

    def delete_prefix(self, prefix_uri: str) -> int:
        parts = self._check_scheme(prefix_uri)
        if not parts.key:
            raise InvalidURIError(f"refusing to delete a whole bucket ({prefix_uri!r})", prefix_uri)
        keys = self._keys(parts.bucket, parts.key, prefix_uri)
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]

            def run(batch: list[str] = batch) -> None:
                response = self.client.delete_objects(
                    Bucket=parts.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
                errors = response.get("Errors", [])
                if errors:
                    first = errors[0]
                    raise StorageError(
                        f"delete {prefix_uri} failed for {len(errors)} object(s), e.g. "
                        f"s3://{parts.bucket}/{first.get('Key')}: {first.get('Code')}: {first.get('Message')}",
                        prefix_uri,
                    )

            self._call("delete", prefix_uri, run)
        return len(keys)

    def sha256(self, uri: str) -> str:
        parts = self._object(uri)

        def run() -> str:
            h = hashlib.sha256()
            response = self.client.get_object(Bucket=parts.bucket, Key=parts.key)
            with contextlib.closing(response["Body"]) as body:
                for chunk in body.iter_chunks(_CHUNK):
                    h.update(chunk)
            return h.hexdigest()

        return self._call("read", uri, run)


# ------------------------------------------------------------------------------------------------- factory


def open_store(uri: str, **s3_options: Any) -> ObjectStore:
    """The store for ``uri``'s scheme: :class:`S3Store` for ``s3://`` (``s3_options`` go to its constructor),
    :class:`FileStore` for ``file://`` and plain paths."""
    scheme = split_uri(uri).scheme
    if scheme == "s3":
        return S3Store(**s3_options)
    if s3_options:
        raise TypeError(f"options {sorted(s3_options)} only apply to s3:// stores")
    return FileStore()
