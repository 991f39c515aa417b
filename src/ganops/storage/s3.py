"""``s3://bucket/key`` through boto3: :class:`S3Store` (errors are classified in `ganops.storage.s3_errors`).

Configuration (all optional)
    endpoint: ``endpoint_url=`` argument, else ``GANOPS_S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL_S3``, else
    ``AWS_ENDPOINT_URL``, else AWS. Credentials come only from boto3's standard chain (env vars, shared files,
    web identity / IRSA, container and instance roles); they are never logged nor put into messages.
    Addressing style: ``GANOPS_S3_ADDRESSING_STYLE`` (``path`` by default when a custom endpoint is set).

Integrity on the wire
    Covered by botocore's request checksums (CRC32 by default; set ``AWS_REQUEST_CHECKSUM_CALCULATION=when_required``
    for S3-compatible stores that reject them). The stored size is verified after every put (``head_object``).

Retries
    botocore retries each HTTP request (mode ``standard``); on top of that every store operation as a whole
    (e.g. a multipart upload or a streamed read) is retried with exponential backoff and jitter on transient
    errors: connection failures, timeouts, HTTP 5xx and throttling. The policy is :class:`ganops.retry.RetryPolicy`
    (by default 4 tries, 0.5 s doubling up to 10 s, scaled by a random factor in [0.5, 1]).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

from ganops import retry as retries
from ganops.contracts import ENV_S3_ADDRESSING_STYLE, ENV_S3_ENDPOINT_URL
from ganops.retry import RetryPolicy
from ganops.storage.base import _CHUNK, MiB, ObjectInfo, ObjectStore, PathLike, URIs, _sha256_file, _verify_size
from ganops.storage.errors import InvalidURIError, ObjectNotFound, StorageError
from ganops.storage.local import _FILE_MODE, _TMP_MARKER, _fsync_dir
from ganops.storage.s3_errors import _client_error_info, _retryable, _translate
from ganops.storage.uri import SplitURI

logger = logging.getLogger(__name__)

__all__ = ["S3Store"]

T = TypeVar("T")


def _endpoint_from_env() -> str | None:
    for name in (ENV_S3_ENDPOINT_URL, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
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
            or os.environ.get(ENV_S3_ADDRESSING_STYLE, "").strip()
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
        """Run ``fn`` retrying the whole operation on transient errors (``self.retry``); translate every error."""

        def on_retry(exc: BaseException, attempt: int, delay: float) -> None:
            logger.warning(
                "%s; retrying in %.2fs (attempt %d of %d)",
                _translate(exc, op, uri),
                delay,
                attempt + 1,
                self.retry.attempts,
            )

        try:
            return retries.call(fn, self.retry, retry_if=_retryable, on_retry=on_retry)
        except Exception as exc:
            error = _translate(exc, op, uri)
            if not _retryable(exc):
                raise error from exc
            raise type(error)(f"{error} (gave up after {retries.attempts_made(exc)} attempts)", uri) from exc

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
