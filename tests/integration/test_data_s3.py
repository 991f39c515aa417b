"""Image datasets from s3:// (a prefix = folder, an object with an archive suffix = archive) on a moto server."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from ganops import storage
from ganops.api.spec import DatasetSpec, GanTrainingJobSpec, ModelSpec
from ganops.trainer.data import DataError, TensorDataset, ingest, load_dataset, load_dataset_uri

RED, BLUE = (255, 0, 0), (0, 0, 255)


def image(color: Any, size: tuple[int, int] = (12, 10), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


FILES = {
    "cat/a.png": image(RED),
    "cat/b.jpg": image(RED, (20, 16), "JPEG"),
    "dog/a.png": image(BLUE, (16, 16)),
}


def check(ds: Any) -> None:
    assert isinstance(ds, TensorDataset)
    assert ds.data.shape == (3, 3, 8, 8)
    assert ds.classes == ("cat", "dog")
    assert ds.labels is not None and ds.labels.tolist() == [0, 0, 1]
    assert torch.allclose(ds.data[2].mean(dim=(1, 2)), torch.tensor([-1.0, -1.0, 1.0]), atol=0.05)


def no_decoding(*args: Any) -> Any:
    raise AssertionError("decoded although cached")


def test_s3_folder_with_labels_and_cache(s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = storage.open_store(s3_bucket)
    for rel, blob in FILES.items():
        store.put_bytes(f"{s3_bucket}/pets/{rel}", blob)
    store.put_bytes(f"{s3_bucket}/pets/readme.txt", b"ignored")
    store.put_bytes(f"{s3_bucket}/pets-other/cat/x.png", image(BLUE))  # shares the string prefix: not included
    spec = GanTrainingJobSpec(
        dataset=DatasetSpec(uri=f"{s3_bucket}/pets"), model=ModelSpec(image_size=8, channels=3, num_classes=2)
    )
    check(load_dataset(spec, cache_dir=tmp_path))

    with monkeypatch.context() as m:  # a resumed pod: same objects, no decoding
        m.setattr(ingest, "_decode_image", no_decoding)
        check(load_dataset(spec, cache_dir=tmp_path))
        store.put_bytes(f"{s3_bucket}/pets/dog/a.png", image(BLUE, (17, 17)))  # new ETag: decoded again
        with pytest.raises(DataError, match="decoded although cached"):
            load_dataset(spec, cache_dir=tmp_path)


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_s3_archive(suffix: str, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.BytesIO()
    if suffix == ".zip":
        with zipfile.ZipFile(buf, "w") as zf:
            for rel, blob in FILES.items():
                zf.writestr(f"pets/{rel}", blob)
    else:
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            for rel, blob in FILES.items():
                info = tarfile.TarInfo(f"pets/{rel}")
                info.size = len(blob)
                tf.addfile(info, io.BytesIO(blob))
    uri = f"{s3_bucket}/archives/pets{suffix}"
    storage.open_store(uri).put_bytes(uri, buf.getvalue())
    check(load_dataset_uri(uri, image_size=8, channels=3, num_classes=2, cache_dir=tmp_path))
    assert not list((tmp_path / "downloads").iterdir())  # the download is removed once decoded
    monkeypatch.setattr(ingest, "_decode_image", no_decoding)
    check(load_dataset_uri(uri, image_size=8, channels=3, num_classes=2, cache_dir=tmp_path))


def test_s3_traversal_archive_is_refused(s3_bucket: str, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../evil.png", image(RED))
    uri = f"{s3_bucket}/evil.zip"
    storage.open_store(uri).put_bytes(uri, buf.getvalue())
    with pytest.raises(DataError, match="refusing the archive"):
        load_dataset_uri(uri, image_size=8, channels=3, cache_dir=tmp_path)


def test_s3_bad_inputs(s3_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset_uri(f"{s3_bucket}/nothing/", image_size=8, channels=3, cache_dir=tmp_path)
    assert f"spec.dataset.uri '{s3_bucket}/nothing/'" in str(info.value) and "no objects" in str(info.value)
    with pytest.raises(DataError, match=r"no object at .*missing\.zip"):
        load_dataset_uri(f"{s3_bucket}/missing.zip", image_size=8, channels=3, cache_dir=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset_uri("s3://no-such-bucket-ganops/x.zip", image_size=8, channels=3, cache_dir=tmp_path)
    store = storage.open_store(s3_bucket)
    store.put_bytes(f"{s3_bucket}/broken/a.png", b"not a png")
    with pytest.raises(DataError, match=r"1 unreadable image\(s\): a\.png"):
        load_dataset_uri(f"{s3_bucket}/broken", image_size=8, channels=3, cache_dir=tmp_path)


def test_s3_without_credentials(s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(DataError) as info:
        load_dataset_uri(f"{s3_bucket}/pets/", image_size=8, channels=3, cache_dir=tmp_path)
    message = str(info.value)
    assert f"spec.dataset.uri '{s3_bucket}/pets/'" in message
    assert "no S3 credentials" in message and "AWS_ACCESS_KEY_ID" in message and "Secret" in message
