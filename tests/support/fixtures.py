"""Pytest fixtures for a real S3 endpoint (moto server). Load with ``pytest_plugins = ["tests.support.fixtures"]``.

``moto_s3`` (function scope) gives the session's server and points the environment at it for the test::

    def test_upload(moto_s3):
        bucket = moto_s3.create_bucket()          # fresh, unique bucket
        store = open_store(f"s3://{bucket}")      # finds the endpoint via AWS_ENDPOINT_URL_S3
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .moto_server import ENV_TO_CLEAR, MotoS3Server, running_moto_server


@pytest.fixture(scope="session")
def moto_s3_server() -> Iterator[MotoS3Server]:
    """One moto S3 server on 127.0.0.1 for the whole session (does not touch the environment)."""
    with running_moto_server() as server:
        yield server


@pytest.fixture
def moto_s3(moto_s3_server: MotoS3Server, monkeypatch: pytest.MonkeyPatch) -> MotoS3Server:
    """The session's moto server, with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION /
    AWS_ENDPOINT_URL_S3 set for this test (and variables that could redirect boto3 removed)."""
    for name in ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    for name, value in moto_s3_server.env().items():
        monkeypatch.setenv(name, value)
    return moto_s3_server


@pytest.fixture
def s3_bucket(moto_s3: MotoS3Server) -> str:
    """``s3://<fresh bucket>`` on the moto server, environment set as by ``moto_s3``."""
    return f"s3://{moto_s3.create_bucket()}"
