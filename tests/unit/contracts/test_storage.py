"""ganops.storage: URIs, the file:// backend, and the S3 backend's configuration and error mapping (no network)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from ganops import storage
from ganops.storage import (
    AccessDeniedError,
    CredentialsMissing,
    FileStore,
    InvalidURIError,
    ObjectNotFound,
    RetryPolicy,
    S3Store,
    SplitURI,
    StorageError,
    join,
    local,
    open_store,
    s3_errors,
    split_uri,
)


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------------------ URIs


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/a/b.json", SplitURI("s3", "bucket", "a/b.json")),
        ("s3://bucket", SplitURI("s3", "bucket", "")),
        ("s3://bucket/", SplitURI("s3", "bucket", "")),
        ("s3://bucket/dir/", SplitURI("s3", "bucket", "dir/")),
        ("file:///abs/ckpt", SplitURI("file", "", "/abs/ckpt")),
        ("file://.ganops/ckpt", SplitURI("file", "", ".ganops/ckpt")),
        ("relative/dir/x", SplitURI("file", "", "relative/dir/x")),
        ("/abs/x", SplitURI("file", "", "/abs/x")),
    ],
)
def test_split_uri(uri: str, expected: SplitURI) -> None:
    assert split_uri(uri) == expected


@pytest.mark.parametrize("uri", ["gs://bucket/x", "http://host/x", "s3://", "s3:///key", "file://", ""])
def test_split_uri_rejects(uri: str) -> None:
    with pytest.raises(InvalidURIError):
        split_uri(uri)


def test_invalid_uri_is_a_value_error_and_storage_error() -> None:
    with pytest.raises(ValueError, match="unsupported URI scheme 'gs'"):
        split_uri("gs://b/k")
    assert issubclass(InvalidURIError, StorageError)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("s3://b", "ns", "job"), "s3://b/ns/job"),
        (("s3://b/", "/ns/", "job/"), "s3://b/ns/job/"),
        (
            ("s3://b/root/", "step-000000500", "generator.safetensors"),
            "s3://b/root/step-000000500/generator.safetensors",
        ),
        (("file://.ganops/ckpt", "x"), "file://.ganops/ckpt/x"),
        (("file:///data/", "x"), "file:///data/x"),
        (("/tmp/a", "", "b"), "/tmp/a/b"),
        (("s3://b/x",), "s3://b/x"),
    ],
)
def test_join(args: tuple[str, ...], expected: str) -> None:
    assert join(*args) == expected


def test_open_store_by_scheme() -> None:
    assert isinstance(open_store("s3://bucket/prefix"), S3Store)
    assert isinstance(open_store("file:///tmp/x"), FileStore)
    assert isinstance(open_store("plain/path"), FileStore)
    s3 = open_store("s3://b", multipart_threshold=5 * storage.MiB)
    assert isinstance(s3, S3Store) and s3.multipart_threshold == 5 * storage.MiB
    with pytest.raises(TypeError):
        open_store("file:///tmp", multipart_threshold=1)
    with pytest.raises(InvalidURIError):
        open_store("gs://bucket")


def test_store_rejects_other_scheme_and_prefix_uris(tmp_path: Path) -> None:
    store = FileStore()
    with pytest.raises(InvalidURIError):
        store.get_bytes("s3://b/k")
    with pytest.raises(InvalidURIError, match="names a prefix"):
        store.put_bytes(f"file://{tmp_path}/dir/", b"x")
    with pytest.raises(InvalidURIError):
        S3Store().put_bytes(f"file://{tmp_path}/x", b"x")
    with pytest.raises(InvalidURIError, match="names a prefix"):
        S3Store().put_bytes("s3://bucket", b"x")


# ---------------------------------------------------------------------------------------------- file: basic


@pytest.fixture
def root(tmp_path: Path) -> str:
    return f"file://{tmp_path}/store"


def test_put_get_roundtrip_creates_parents(root: str, tmp_path: Path) -> None:
    store = FileStore()
    uri = join(root, "ns", "job", "step-000000500", "manifest.json")
    info = store.put_bytes(uri, b"hello")
    assert info.size == 5 and info.uri == uri
    assert info.sha256 == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert store.get_bytes(uri) == b"hello"
    assert store.exists(uri) and store.size(uri) == 5 and store.sha256(uri) == info.sha256
    store.put_bytes(uri, b"replaced")
    assert store.get_bytes(uri) == b"replaced"
    assert files_under(tmp_path) == ["store/ns/job/step-000000500/manifest.json"]


def test_put_file_get_file(root: str, tmp_path: Path) -> None:
    store = FileStore()
    src = tmp_path / "weights.bin"
    src.write_bytes(os.urandom(3 * storage.MiB + 7))
    uri = join(root, "w.bin")
    info = store.put_file(uri, src)
    assert info.size == src.stat().st_size
    dest = tmp_path / "download" / "nested" / "w.bin"
    store.get_file(uri, dest)
    assert dest.read_bytes() == src.read_bytes()
    assert store.sha256(uri) == info.sha256
    assert sorted(os.listdir(dest.parent)) == ["w.bin"]


def test_json_helpers(root: str) -> None:
    store = FileStore()
    uri = join(root, "latest.json")
    store.put_json(uri, {"step": 500, "uri": "s3://x"})
    assert store.get_json(uri) == {"step": 500, "uri": "s3://x"}
    store.put_bytes(uri, b"{not json")
    with pytest.raises(StorageError, match="not valid JSON"):
        store.get_json(uri)


def test_missing_objects(root: str, tmp_path: Path) -> None:
    store = FileStore()
    missing = join(root, "nope.json")
    for call in (store.get_bytes, store.size, store.sha256, lambda u: store.get_file(u, tmp_path / "out")):
        with pytest.raises(ObjectNotFound) as info:
            call(missing)
        assert info.value.uri == missing and missing in str(info.value)
    assert not store.exists(missing)
    assert not (tmp_path / "out").exists()
    # A folder is not an object.
    store.put_bytes(join(root, "dir", "x"), b"1")
    assert not store.exists(join(root, "dir"))
    assert not store.exists(join(root, "dir") + "/")
    with pytest.raises(ObjectNotFound):
        store.get_bytes(join(root, "dir"))


def test_put_file_with_missing_source_is_not_object_not_found(root: str, tmp_path: Path) -> None:
    with pytest.raises(StorageError) as info:
        FileStore().put_file(join(root, "x"), tmp_path / "does-not-exist")
    assert not isinstance(info.value, ObjectNotFound)


# -------------------------------------------------------------------------------------------- file: atomic


def test_failed_replace_keeps_old_content_and_leaves_no_temp(
    root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore()
    uri = join(root, "latest.json")
    store.put_bytes(uri, b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError, match="No space left"):
        store.put_bytes(uri, b"new")
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    with pytest.raises(StorageError):
        store.put_file(uri, src)
    monkeypatch.undo()
    assert store.get_bytes(uri) == b"old"
    assert files_under(tmp_path / "store") == ["latest.json"]


def test_writer_raising_midway_leaves_target_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "d" / "generator.safetensors"
    target.parent.mkdir()
    target.write_bytes(b"previous")

    def half_write(f: IO[bytes]) -> None:
        f.write(b"partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        local._atomic_write(str(target), half_write)
    assert target.read_bytes() == b"previous"
    assert os.listdir(target.parent) == ["generator.safetensors"]


def test_failed_get_file_keeps_destination(root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore()
    uri = join(root, "x.bin")
    store.put_bytes(uri, b"remote")
    dest = tmp_path / "local" / "x.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"local")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StorageError, match="Input/output error"):
        store.get_file(uri, dest)
    monkeypatch.undo()
    assert dest.read_bytes() == b"local"
    assert os.listdir(dest.parent) == ["x.bin"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory(root: str, tmp_path: Path) -> None:
    store = FileStore()
    uri = join(root, "x")
    store.put_bytes(uri, b"old")
    (tmp_path / "store").chmod(0o555)
    try:
        with pytest.raises(StorageError):
            store.put_bytes(uri, b"new")
    finally:
        (tmp_path / "store").chmod(0o755)
    assert store.get_bytes(uri) == b"old"
    assert files_under(tmp_path / "store") == ["x"]


# ------------------------------------------------------------------------------------- file: list / delete


def make_layout(store: FileStore, root: str) -> None:
    for step in ("step-000000500", "step-000001000", "step-000010000"):
        for name in ("generator.safetensors", "manifest.json"):
            store.put_bytes(join(root, "ns", "job", step, name), step.encode())
    store.put_bytes(join(root, "ns", "job", "latest.json"), b"{}")
    store.put_bytes(join(root, "ns", "other", "latest.json"), b"{}")


def test_list_recursive_with_string_prefix_semantics(root: str, tmp_path: Path) -> None:
    store = FileStore()
    make_layout(store, root)
    job = join(root, "ns", "job")
    listed = store.list(job + "/")
    assert len(listed) == 7
    assert listed == sorted(listed)
    assert listed[0] == join(job, "latest.json")
    assert join(job, "step-000000500", "manifest.json") in listed
    # A prefix that is not a folder boundary matches like S3's: "step-00000" matches 500 and 1000, not 10000.
    assert store.list(join(job, "step-00000")) == [
        join(job, "step-000000500", "generator.safetensors"),
        join(job, "step-000000500", "manifest.json"),
        join(job, "step-000001000", "generator.safetensors"),
        join(job, "step-000001000", "manifest.json"),
    ]
    assert store.list(join(root, "ns", "jo")) == listed  # "other" does not start with "jo"
    assert store.list(join(root, "missing") + "/") == []
    assert store.list(join(job, "latest.json")) == [join(job, "latest.json")]
    # Temporary files of interrupted writes are not objects.
    (tmp_path / "store" / "ns" / "job" / ".latest.json.ganops-tmp-abc").write_bytes(b"partial")
    assert len(store.list(job + "/")) == 7


def test_list_dirs(root: str, tmp_path: Path) -> None:
    store = FileStore()
    make_layout(store, root)
    job = join(root, "ns", "job")
    expected = [join(job, s) + "/" for s in ("step-000000500", "step-000001000", "step-000010000")]
    assert store.list_dirs(job) == expected
    assert store.list_dirs(job + "/") == expected
    assert store.list_dirs(join(root, "ns")) == [join(root, "ns", "job") + "/", join(root, "ns", "other") + "/"]
    # Folders without objects do not count (as on S3).
    (tmp_path / "store" / "ns" / "job" / "empty" / "deeper").mkdir(parents=True)
    assert store.list_dirs(job) == expected
    assert store.list_dirs(join(root, "missing")) == []


def test_relative_file_uris_and_plain_paths_keep_their_style(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("file://.ganops/ckpt")
    store.put_bytes("file://.ganops/ckpt/ns/job/latest.json", b"{}")
    assert (tmp_path / ".ganops" / "ckpt" / "ns" / "job" / "latest.json").read_bytes() == b"{}"
    assert store.list("file://.ganops/ckpt/") == ["file://.ganops/ckpt/ns/job/latest.json"]
    assert store.list_dirs("file://.ganops/ckpt/ns") == ["file://.ganops/ckpt/ns/job/"]
    assert store.list(".ganops/ckpt/ns") == [".ganops/ckpt/ns/job/latest.json"]
    assert store.list("./.ganops/ckpt") == ["./.ganops/ckpt/ns/job/latest.json"]
    assert store.get_bytes(".ganops/ckpt/ns/job/latest.json") == b"{}"
    absolute = f"file://{tmp_path}/.ganops/ckpt/ns/job/latest.json"
    assert store.list(f"file://{tmp_path}/.ganops/") == [absolute]


def test_delete_and_delete_prefix(root: str, tmp_path: Path) -> None:
    store = FileStore()
    make_layout(store, root)
    job = join(root, "ns", "job")
    store.delete(join(job, "latest.json"))
    store.delete(join(job, "latest.json"))  # idempotent
    assert not store.exists(join(job, "latest.json"))
    # "step-000001000/" must not touch step-000010000.
    (tmp_path / "store" / "ns" / "job" / "step-000001000" / ".x.ganops-tmp-1").write_bytes(b"partial")
    assert store.delete_prefix(join(job, "step-000001000") + "/") == 2
    assert not (tmp_path / "store" / "ns" / "job" / "step-000001000").exists()
    assert store.list_dirs(job) == [join(job, "step-000000500") + "/", join(job, "step-000010000") + "/"]
    assert store.delete_prefix(join(job, "step-")) == 4
    assert store.list(job + "/") == []
    assert store.delete_prefix(job + "/") == 0
    assert not (tmp_path / "store" / "ns" / "job").exists()
    assert store.list(root + "/") == [join(root, "ns", "other", "latest.json")]


@pytest.mark.parametrize("prefix", ["file://.", "file://./", ".", "./"])
def test_delete_prefix_refuses_everything(prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep").write_bytes(b"1")
    with pytest.raises(InvalidURIError):
        FileStore().delete_prefix(prefix)
    assert (tmp_path / "keep").exists()


# ------------------------------------------------------------------------- S3 configuration (no network)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("GANOPS_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "GANOPS_S3_ADDRESSING_STYLE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_endpoint_precedence(clean_env: pytest.MonkeyPatch) -> None:
    assert S3Store().endpoint_url is None
    assert S3Store().addressing_style == "auto"
    clean_env.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    assert S3Store().endpoint_url == "http://generic:1"
    clean_env.setenv("AWS_ENDPOINT_URL_S3", "http://s3:2")
    assert S3Store().endpoint_url == "http://s3:2"
    clean_env.setenv("GANOPS_S3_ENDPOINT_URL", "http://ganops:3")
    store = S3Store()
    assert store.endpoint_url == "http://ganops:3" and store.addressing_style == "path"
    assert S3Store("http://explicit:4").endpoint_url == "http://explicit:4"
    clean_env.setenv("GANOPS_S3_ADDRESSING_STYLE", "virtual")
    assert S3Store().addressing_style == "virtual"


def test_client_config(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    store = S3Store("http://127.0.0.1:9", max_attempts=7, connect_timeout=1.5)
    config = store.client.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 7}
    assert config.connect_timeout == 1.5
    assert store.client.meta.endpoint_url == "http://127.0.0.1:9"
    assert store.client is store.client


def test_retry_policy_delay_bounds() -> None:
    policy = RetryPolicy(attempts=5, base_delay=0.5, max_delay=3.0)
    for retry, cap in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 3.0), (10, 3.0)]:
        for _ in range(20):
            assert cap / 2 <= policy.delay(retry) <= cap


def client_error(code: str, status: int, message: str = "msg") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
    )


@pytest.mark.parametrize(
    ("exc", "kind", "transient"),
    [
        (client_error("NoSuchKey", 404), ObjectNotFound, False),
        (client_error("404", 404, ""), ObjectNotFound, False),
        (client_error("NoSuchBucket", 404), StorageError, False),
        (client_error("AccessDenied", 403), AccessDeniedError, False),
        (client_error("InvalidAccessKeyId", 403), AccessDeniedError, False),
        (client_error("SlowDown", 503), StorageError, True),
        (client_error("InternalError", 500), StorageError, True),
        (client_error("RequestTimeout", 400), StorageError, True),
        (client_error("InvalidArgument", 400), StorageError, False),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), StorageError, True),
        (NoCredentialsError(), CredentialsMissing, False),
    ],
)
def test_error_translation(exc: Exception, kind: type[StorageError], transient: bool) -> None:
    error = s3_errors._translate(exc, "get", "s3://b/k")
    assert type(error) is kind
    assert "s3://b/k" in str(error)
    assert s3_errors._is_transient(exc) is transient
    if kind is StorageError and isinstance(exc, ClientError) and exc.response["Error"]["Code"] == "NoSuchBucket":
        assert "bucket does not exist" in str(error)


def test_credentials_missing_message_says_what_to_set() -> None:
    error = s3_errors._translate(NoCredentialsError(), "put", "s3://b/k")
    for hint in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "Secret", "s3://b/k"):
        assert hint in str(error)
