"""How an S3 failure is classified and reported: transient (worth another try) or not, and the
:class:`StorageError` it becomes, naming the URI and the store's error code and never credentials."""

from __future__ import annotations

from ganops.storage.errors import (
    CREDENTIALS_HELP,
    AccessDeniedError,
    CredentialsMissing,
    ObjectNotFound,
    StorageError,
)

__all__: list[str] = []


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


def _retryable(exc: BaseException) -> bool:
    """Whether the whole operation is worth another try: a transient error that is not already ours."""
    return not isinstance(exc, StorageError) and _is_transient(exc)
