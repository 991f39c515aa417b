"""The errors every store raises, whatever the backend: one hierarchy under :class:`StorageError`.

Messages name the URI and the store's error code, never credentials; :data:`CREDENTIALS_HELP` is the fix appended
when no credentials could be found.
"""

from __future__ import annotations

__all__ = [
    "CREDENTIALS_HELP",
    "AccessDeniedError",
    "CredentialsMissing",
    "InvalidURIError",
    "ObjectNotFound",
    "StorageError",
]

CREDENTIALS_HELP = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary credentials) in the "
    "environment - in Kubernetes, from a Secret via envFrom.secretRef or env.valueFrom.secretKeyRef - or use a "
    "role: AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE (IRSA), AWS_PROFILE with a shared credentials file, or an "
    "instance/container role"
)


# ---------------------------------------------------------------------------------------------------- errors


class StorageError(Exception):
    """Base of every error raised by `ganops.storage`. ``uri`` names the object or prefix concerned."""

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
