"""ganops.storage against a real S3 HTTP endpoint: moto in server mode on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ganops import storage
from ganops.storage import (
    AccessDeniedError,
    CredentialsMissing,
    InvalidURIError,
    ObjectNotFound,
    RetryPolicy,
    S3Store,
    StorageError,
    join,
    open_store,
)
from tests.support.moto_server import MotoS3Server, free_port

pytest_plugins = ["tests.support.fixtures"]  # harmless if tests/conftest.py loads it too

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
SECRET = "s3cr3t-value-that-must-never-be-printed"


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record (and skip) the store's backoff sleeps."""
    recorded: list[float] = []
    monkeypatch.setattr(time, "sleep", recorded.append)
    return recorded


def test_roundtrip_and_verify(s3_bucket: str) -> None:
    store = open_store(s3_bucket)
    uri = join(s3_bucket, "ns", "job", "step-000000500", "manifest.json")
    info = store.put_json(uri, {"step": 500})
    assert store.get_json(uri) == {"step": 500}
    assert store.exists(uri) and store.size(uri) == info.size
    assert store.sha256(uri) == info.sha256
    store.put_bytes(uri, b"")  # empty objects are fine
    assert store.get_bytes(uri) == b"" and store.size(uri) == 0


def test_list_list_dirs_delete(s3_bucket: str) -> None:
    store = open_store(s3_bucket)
    job = join(s3_bucket, "ckpt", "ns", "job")
    for step in ("step-000000500", "step-000001000", "step-000010000"):
        for name in ("generator.safetensors", "manifest.json"):
            store.put_bytes(join(job, step, name), step.encode())
    store.put_json(join(job, "latest.json"), {"step": 10000})
    store.put_json(join(s3_bucket, "ckpt", "ns", "jobx", "latest.json"), {})

    listed = store.list(job + "/")
    assert len(listed) == 7 and listed == sorted(listed) and listed[0] == join(job, "latest.json")
    assert len(store.list(join(job, "step-00000"))) == 4
    assert store.list(join(s3_bucket, "nothing") + "/") == []
    steps = [join(job, s) + "/" for s in ("step-000000500", "step-000001000", "step-000010000")]
    assert store.list_dirs(job) == steps
    assert store.list_dirs(job + "/") == steps
    assert store.list_dirs(join(s3_bucket, "ckpt", "ns")) == [job + "/", join(s3_bucket, "ckpt", "ns", "jobx") + "/"]
    assert store.list_dirs(s3_bucket) == [join(s3_bucket, "ckpt") + "/"]

    store.delete(join(job, "latest.json"))
    store.delete(join(job, "latest.json"))  # idempotent
    assert not store.exists(join(job, "latest.json"))
    assert store.delete_prefix(join(job, "step-000001000") + "/") == 2
    assert store.list_dirs(job) == [steps[0], steps[2]]
    assert store.delete_prefix(job + "/") == 4
    assert store.list(job + "/") == []
    with pytest.raises(InvalidURIError):
        store.delete_prefix(s3_bucket)


def test_missing_object_and_missing_bucket(s3_bucket: str, tmp_path: Path) -> None:
    store = open_store(s3_bucket)
    missing = join(s3_bucket, "nope", "latest.json")
    assert not store.exists(missing)
    readers: list[Callable[[str], object]] = [store.get_bytes, store.size, store.sha256]
    readers.append(lambda u: store.get_file(u, tmp_path / "x"))
    for call in readers:
        with pytest.raises(ObjectNotFound, match=r"nope/latest\.json"):
            call(missing)
    assert os.listdir(tmp_path) == []
    assert not store.exists(s3_bucket + "/")  # a prefix is not an object

    no_bucket = "s3://ganops-no-such-bucket-4f1c/latest.json"
    for call in [*readers[:3], store.exists, store.list, lambda u: store.put_bytes(u, b"x")]:
        with pytest.raises(StorageError, match="does not exist") as info:
            call(no_bucket)
        assert not isinstance(info.value, ObjectNotFound)


def test_multipart_put_file_get_file(s3_bucket: str, moto_s3: MotoS3Server, tmp_path: Path) -> None:
    store = S3Store(multipart_threshold=5 * storage.MiB, multipart_chunksize=5 * storage.MiB, max_concurrency=2)
    src = tmp_path / "generator.safetensors"
    src.write_bytes(os.urandom(11 * storage.MiB))
    uri = join(s3_bucket, "step-000000500", "generator.safetensors")
    info = store.put_file(uri, src)
    assert info.size == 11 * storage.MiB

    bucket, key = storage.split_uri(uri)[1:]
    etag = moto_s3.client().head_object(Bucket=bucket, Key=key)["ETag"]
    assert etag.strip('"').endswith("-3"), f"expected a 3-part multipart upload, ETag {etag}"

    dest = tmp_path / "out" / "g.safetensors"
    store.get_file(uri, dest)
    assert dest.read_bytes() == src.read_bytes()
    assert os.listdir(dest.parent) == ["g.safetensors"]  # no temporary left behind
    assert store.sha256(uri) == info.sha256
    small = tmp_path / "small.json"
    small.write_bytes(b"{}")
    store.put_file(join(s3_bucket, "small.json"), small)
    head = moto_s3.client().head_object(Bucket=bucket, Key="small.json")
    assert "-" not in head["ETag"]


def test_verification_catches_size_mismatch(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = S3Store()
    real_head = store._head
    monkeypatch.setattr(store, "_head", lambda b, k: {**real_head(b, k), "ContentLength": 1})
    with pytest.raises(StorageError, match=r"verification of .* failed: stored 1 bytes, expected 3"):
        store.put_bytes(join(s3_bucket, "x"), b"abc")


def test_endpoint_from_env_precedence(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    good = os.environ["AWS_ENDPOINT_URL_S3"]
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", dead)
    monkeypatch.setenv("GANOPS_S3_ENDPOINT_URL", good)
    S3Store().put_bytes(join(s3_bucket, "a"), b"1")
    monkeypatch.setenv("GANOPS_S3_ENDPOINT_URL", dead)
    assert S3Store(good).get_bytes(join(s3_bucket, "a")) == b"1"


def test_unreachable_endpoint_fails_after_bounded_retries(moto_s3: MotoS3Server, sleeps: list[float]) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = S3Store(endpoint, retry=FAST, max_attempts=1, connect_timeout=1)
    with pytest.raises(StorageError) as info:
        store.get_bytes("s3://bucket/ns/job/latest.json")
    message = str(info.value)
    assert "s3://bucket/ns/job/latest.json" in message and "gave up after 3 attempts" in message
    assert "EndpointConnectionError" in message or "Could not connect" in message
    # bounded by events, not by the clock: 3 attempts (no hidden client retries: every sleep is recorded here),
    # with the policy's backoff between them and nothing else
    assert len(sleeps) == 2 and all(0 < s <= FAST.max_delay for s in sleeps), sleeps


def test_retry_survives_server_restart(monkeypatch: pytest.MonkeyPatch, moto_s3: MotoS3Server) -> None:
    """The endpoint goes away and comes back on the same port within the retry window."""
    flaky = MotoS3Server().start()
    try:
        bucket = flaky.create_bucket("flaky")
        uri = f"s3://{bucket}/latest.json"
        store = S3Store(
            flaky.endpoint_url,
            retry=RetryPolicy(attempts=30, base_delay=0.05, max_delay=0.1),
            max_attempts=1,
            connect_timeout=1,
            read_timeout=5,
        )
        store.put_bytes(uri, b'{"step": 1}')
        flaky.stop()
        restarter = threading.Timer(0.4, flaky.start)
        restarter.start()
        try:
            assert store.get_bytes(uri) == b'{"step": 1}'  # moto's state is process-wide: the object survives
            store.put_bytes(uri, b'{"step": 2}')
        finally:
            restarter.join()
        assert store.get_bytes(uri) == b'{"step": 2}'
    finally:
        flaky.stop()


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        yield self.body


def inject(store: S3Store, operation: str, failures: list[tuple[int, str]]) -> list[str]:
    """Answer the next len(failures) calls of ``operation`` with these (status, code) errors instead of sending."""
    from botocore.awsrequest import AWSResponse

    calls: list[str] = []

    def before_send(request: Any, **kwargs: Any) -> AWSResponse | None:
        calls.append(request.url)
        if not failures:
            return None
        status, code = failures.pop(0)
        body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
        return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, _Raw(body))

    store.client.meta.events.register(f"before-send.s3.{operation}", before_send)
    return calls


def test_throttling_and_5xx_are_retried(s3_bucket: str, sleeps: list[float]) -> None:
    store = S3Store(retry=FAST, max_attempts=1)
    uri = join(s3_bucket, "x")
    store.put_bytes(uri, b"data")
    calls = inject(store, "GetObject", [(503, "SlowDown"), (500, "InternalError")])
    assert store.get_bytes(uri) == b"data"
    assert len(calls) == 3 and len(sleeps) == 2


def test_permanent_errors_are_not_retried(s3_bucket: str, sleeps: list[float]) -> None:
    store = S3Store(retry=FAST, max_attempts=1)
    uri = join(s3_bucket, "x")
    calls = inject(store, "PutObject", [(403, "AccessDenied")])
    with pytest.raises(AccessDeniedError, match="denied"):
        store.put_bytes(uri, b"data")
    assert len(calls) == 1 and sleeps == []


def test_missing_credentials(
    moto_s3: MotoS3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sleeps: list[float]
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = open_store("s3://bucket")
    with pytest.raises(CredentialsMissing) as info:
        store.get_bytes("s3://bucket/ns/job/latest.json")
    message = str(info.value)
    assert "s3://bucket/ns/job/latest.json" in message
    assert "AWS_ACCESS_KEY_ID" in message and "AWS_SECRET_ACCESS_KEY" in message and "Secret" in message
    assert sleeps == []


def test_secrets_never_in_messages_or_logs(
    moto_s3: MotoS3Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, sleeps: list[float]
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    bucket = moto_s3.create_bucket()
    caplog.set_level(logging.DEBUG, logger="ganops.storage")
    messages: list[str] = []
    with pytest.raises(ObjectNotFound) as missing:
        S3Store().get_bytes(f"s3://{bucket}/missing")
    messages.append(str(missing.value))
    dead = S3Store(f"http://127.0.0.1:{free_port()}", retry=FAST, max_attempts=1)
    with pytest.raises(StorageError) as unreachable:
        dead.put_bytes(f"s3://{bucket}/x", b"1")
    messages.append(str(unreachable.value))
    assert caplog.records, "retries should have been logged"
    for text in [*messages, caplog.text]:
        assert SECRET not in text
        assert "testing" not in text  # the access key id
