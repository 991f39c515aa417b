"""moto's S3 in server mode on 127.0.0.1: boto3 talks real HTTP to it.

Plain Python (no pytest) so scripts and benchmarks can use it too::

    with running_moto_server() as s3:
        bucket = s3.create_bucket()
        os.environ.update(s3.env())        # or pass s3.env() to a subprocess

Pytest users take the ``moto_s3`` fixture from ``fixtures.py`` instead.
moto keeps its state in process-wide globals: every server started in one process sees the same buckets, and
``reset()`` clears all of them (prefer a fresh bucket per test).
"""

from __future__ import annotations

import logging
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from moto.server import ThreadedMotoServer

REGION = "us-east-1"
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"

# Environment that could send boto3 elsewhere or make it look for real credentials.
ENV_TO_CLEAR = (
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "GANOPS_S3_ENDPOINT_URL",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (nothing listens on it afterwards)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class MotoS3Server:
    """A running (or stopped) moto server. ``endpoint_url`` is e.g. ``http://127.0.0.1:41234``."""

    host: str = "127.0.0.1"
    port: int = 0
    region: str = REGION
    _server: ThreadedMotoServer | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> MotoS3Server:
        """Start serving; ``port=0`` picks a free port, a later restart reuses the same one."""
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise
        server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        server.start()
        self.port = server.get_host_and_port()[1]
        self._server = server
        return self

    def stop(self) -> None:
        """Stop and close the listening socket (moto's own stop() leaves it open, so clients would hang)."""
        server, self._server = self._server, None
        if server is None:
            return
        inner = server._server  # the werkzeug server
        server.stop()
        if inner is not None:
            inner.server_close()

    @property
    def running(self) -> bool:
        return self._server is not None

    def env(self) -> dict[str, str]:
        """Environment pointing boto3 (and ganops.storage) at this server with dummy credentials."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> Any:
        """A boto3 S3 client for this server with explicit dummy credentials (independent of the environment)."""
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )

    def create_bucket(self, prefix: str = "test") -> str:
        """Create a bucket with a fresh unique name (``<prefix>-<12 hex>``) and return the name."""
        name = f"{prefix.lower()[:40]}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def reset(self) -> None:
        """Drop every bucket and object of every moto backend in this process."""
        request = urllib.request.Request(self.endpoint_url + "/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()


@contextmanager
def running_moto_server(host: str = "127.0.0.1", port: int = 0) -> Iterator[MotoS3Server]:
    """Start moto's S3 server on ``host:port`` (0: a free port), yield it, stop it."""
    server = MotoS3Server(host=host, port=port).start()
    try:
        yield server
    finally:
        server.stop()
