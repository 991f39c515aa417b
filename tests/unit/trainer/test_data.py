"""The trainer's data sources: builtins, image folders and archives, the resumable sharded stream, bad input."""

from __future__ import annotations

import io
import os
import tarfile
import threading
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ganops.api.spec import DatasetSpec, GanTrainingJobSpec, ModelSpec
from ganops.trainer import data
from ganops.trainer.data import (
    Batch,
    DataError,
    DataStream,
    MixtureDataset,
    TensorDataset,
    ingest,
    load_dataset,
    load_dataset_uri,
    make_stream,
)


def job_spec(uri: str, **model: Any) -> GanTrainingJobSpec:
    return GanTrainingJobSpec(dataset=DatasetSpec(uri=uri), model=ModelSpec(**model))


def png_bytes(color: Any, size: tuple[int, int] = (12, 10), mode: str = "RGB", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt)
    return buf.getvalue()


RED, BLUE = (255, 0, 0), (0, 0, 255)


def make_class_tree(root: Path) -> dict[str, bytes]:
    """cat/ (red, three kinds of file) and dog/ (blue), non-square and of mixed modes; plus files to ignore."""
    files = {
        "cat/a.png": png_bytes(RED),
        "cat/b.jpg": png_bytes(RED, (20, 16), fmt="JPEG"),
        "cat/deeper/c.PNG": png_bytes((255, 0, 0, 255), (9, 9), mode="RGBA"),
        "dog/a.jpeg": png_bytes(BLUE, (16, 16), fmt="JPEG"),
        "dog/b.png": png_bytes(BLUE, (7, 11)),
    }
    for rel, blob in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(blob)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / ".hidden.png").write_bytes(b"junk")  # hidden: ignored, although not a real PNG
    return files


def nearest_modes(points: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dist = torch.cdist(points.double(), centers.double())
    best, idx = dist.min(dim=1)
    return best, idx


# --------------------------------------------------------------------------------------------- builtins


@pytest.mark.parametrize(("uri", "modes", "sigma"), [("builtin:ring8", 8, 0.01), ("builtin:grid25", 25, 0.05)])
def test_mixture_statistics(uri: str, modes: int, sigma: float, tmp_path: Path) -> None:
    ds = load_dataset(job_spec(uri, architecture="mlp", image_size=2), cache_dir=tmp_path)
    assert isinstance(ds, MixtureDataset)
    assert ds.num_samples is None and ds.sample_shape == (2,) and ds.sigma == sigma
    assert ds.mode_centers.shape == (modes, 2)
    if modes == 8:
        assert torch.allclose(ds.mode_centers.norm(dim=1), torch.ones(8))
        assert torch.allclose(ds.mode_centers[2], torch.tensor([0.0, 1.0]), atol=1e-6)
    else:
        assert set(ds.mode_centers.flatten().tolist()) == {-4.0, -2.0, 0.0, 2.0, 4.0}
    stream = make_stream(ds, 5000, seed=3)
    points = torch.cat([next(stream).x for _ in range(4)])  # fresh points every batch
    assert points.dtype == torch.float32 and points.shape == (20000, 2)
    assert len(torch.unique(points, dim=0)) == 20000
    dist, idx = nearest_modes(points, ds.mode_centers)
    assert dist.max() < 6 * sigma  # every point belongs clearly to one mode
    freq = torch.bincount(idx, minlength=modes).double() / len(points)
    assert (freq - 1 / modes).abs().max() < 0.012  # ~8 standard errors for 20000 points
    residual = points.double() - ds.mode_centers.double()[idx]
    assert residual.mean(dim=0).abs().max() < 0.05 * sigma
    assert residual.std(dim=0) == pytest.approx([sigma, sigma], rel=0.03)


def test_digits_shapes_range_and_labels(tmp_path: Path) -> None:
    ds = load_dataset(job_spec("builtin:digits", image_size=8, channels=1, num_classes=10), cache_dir=tmp_path)
    assert isinstance(ds, TensorDataset)
    assert ds.data.shape == (1797, 1, 8, 8) and ds.data.dtype == torch.float32
    assert ds.data.min() == -1.0 and ds.data.max() == 1.0
    assert ds.labels is not None and ds.labels.dtype == torch.int64
    assert torch.bincount(ds.labels).tolist() == pytest.approx([180] * 10, abs=8)
    assert ds.num_classes == 10 and ds.classes == tuple("0123456789")


@pytest.mark.parametrize("size", [16, 32])
def test_digits_resized(size: int, tmp_path: Path) -> None:
    small = data.digits(8)
    ds = load_dataset(job_spec("builtin:digits", image_size=size, channels=1), cache_dir=tmp_path)
    assert isinstance(ds, TensorDataset)
    assert ds.data.shape == (1797, 1, size, size)
    assert ds.data.min() >= -1.0 and ds.data.max() <= 1.0
    # The same pictures, just bigger: the same brightness per image, close to the original pixel by pixel.
    assert (ds.data.mean(dim=(1, 2, 3)) - small.data.mean(dim=(1, 2, 3))).abs().max() < 0.01
    assert (F.avg_pool2d(ds.data, size // 8) - small.data).abs().mean() < 0.2
    assert ds.labels is not None and small.labels is not None and torch.equal(ds.labels, small.labels)


def test_digits_channels_converted() -> None:
    rgb = data.digits(8, channels=3)
    assert rgb.data.shape == (1797, 3, 8, 8) and torch.equal(rgb.data[:, 0], rgb.data[:, 2])


# --------------------------------------------------------------------------------------------- the stream


def take(stream: DataStream, n: int) -> list[Batch]:
    return [next(stream) for _ in range(n)]


def assert_same(a: Sequence[Batch], b: Sequence[Batch]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.x, y.x)
        assert (x.y is None and y.y is None) or (x.y is not None and y.y is not None and torch.equal(x.y, y.y))


def indexed_points(n: int) -> TensorDataset:
    """Point i is (i, -i): a batch tells which samples it holds."""
    i = torch.arange(n, dtype=torch.float32)
    return TensorDataset(torch.stack([i, -i], dim=1), uri="test:indexed")


def ids(batch: Batch) -> list[int]:
    return [int(v) for v in batch.x[:, 0]]


def test_same_seed_same_batches_other_seed_others() -> None:
    ds = data.digits(8)
    a = take(make_stream(ds, 32, seed=7, augmentations=["hflip", "translate"]), 5)
    b = take(make_stream(ds, 32, seed=7, augmentations=["hflip", "translate"]), 5)
    c = take(make_stream(ds, 32, seed=8, augmentations=["hflip", "translate"]), 5)
    assert_same(a, b)
    assert not torch.equal(a[0].x, c[0].x)
    ring = data.ring8()
    assert_same(take(make_stream(ring, 64, seed=1), 3), take(make_stream(ring, 64, seed=1), 3))
    assert not torch.equal(next(make_stream(ring, 64, seed=1)).x, next(make_stream(ring, 64, seed=2)).x)


def test_device_and_evaluation_samples() -> None:
    ds = data.digits(8)
    assert_same(
        take(make_stream(ds, 16, seed=2, device="cpu", augmentations=["translate"]), 2),
        take(make_stream(ds, 16, seed=2, augmentations=["translate"]), 2),
    )
    real = ds.sample(100, torch.Generator().manual_seed(0))
    assert real.x.shape == (100, 1, 8, 8) and real.y is not None and len(set(ids_of(real.x))) == 100
    assert ds.sample(5000, torch.Generator().manual_seed(0)).x.shape[0] == 5000  # with replacement
    ring = data.ring8()
    points, modes = ring.sample_with_modes(64, torch.Generator().manual_seed(0))
    assert torch.equal(nearest_modes(points, ring.mode_centers)[1], modes)


def ids_of(x: torch.Tensor) -> list[bytes]:
    return [row.numpy().tobytes() for row in x]


def test_epochs_are_permutations_and_batches_straddle_them() -> None:
    stream = make_stream(indexed_points(10), 4, seed=0)
    seen = [i for b in take(stream, 5) for i in ids(b)]  # 20 samples = exactly two epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert seen[:10] != seen[10:]  # a new order each epoch
    assert (stream.epoch, stream.index, stream.batches) == (2, 0, 5)


@pytest.mark.parametrize(
    ("name", "augmentations", "world_size"),
    [
        ("ring8", [], 1),
        ("grid25", [], 2),
        ("digits", [], 1),
        ("digits", ["hflip", "translate"], 1),
        ("digits", ["translate", "hflip"], 3),
    ],
)
def test_resume_mid_epoch_is_bitwise(name: str, augmentations: list[str], world_size: int, tmp_path: Path) -> None:
    makers: dict[str, Callable[[], data.Dataset]] = {
        "ring8": data.ring8,
        "grid25": data.grid25,
        "digits": lambda: data.digits(16),
    }
    ds = makers[name]()
    rank = world_size - 1
    reference = make_stream(ds, 250, seed=11, rank=rank, world_size=world_size, augmentations=augmentations)
    before = take(reference, 3)
    state = reference.state_dict()
    if isinstance(ds, TensorDataset):
        assert 0 < state["index"] < reference.shard_size  # genuinely mid-epoch
    after = take(reference, 6)  # crosses epoch boundaries (digits: 1797 / world_size per epoch)
    torch.save(state, tmp_path / "state.pt")
    resumed = make_stream(ds, 250, seed=11, rank=rank, world_size=world_size, augmentations=augmentations)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert_same(take(resumed, 6), after)
    assert not torch.equal(before[0].x, after[0].x)


def test_state_of_rank0_resumes_every_rank() -> None:
    ds = data.digits(8)
    streams = [make_stream(ds, 40, seed=5, rank=r, world_size=2, augmentations=["hflip"]) for r in range(2)]
    for s in streams:
        take(s, 30)
    assert streams[0].state_dict() == streams[1].state_dict()
    state = streams[0].state_dict()  # only rank 0 saves the checkpoint
    resumed = make_stream(ds, 40, seed=5, rank=1, world_size=2, augmentations=["hflip"])
    resumed.load_state_dict(state)
    assert_same(take(resumed, 4), take(streams[1], 4))


def test_changed_world_size_resumes_at_same_epoch() -> None:
    ds = indexed_points(100)
    stream = make_stream(ds, 10, seed=0, rank=0, world_size=2)
    take(stream, 12)  # epoch 2 has started on both ranks (50 per rank per epoch)
    resumed = make_stream(ds, 10, seed=0, rank=0, world_size=4)
    resumed.load_state_dict(stream.state_dict())
    assert stream.index == 20 and resumed.epoch == 2 and resumed.index == 20 * 2 // 4  # same share of the epoch
    next(resumed)


@pytest.mark.parametrize("n", [40, 41])
def test_ddp_shards_are_disjoint_and_cover_the_epoch(n: int) -> None:
    ds = indexed_points(n)
    world = 2
    streams = [make_stream(ds, 5, seed=9, rank=r, world_size=world) for r in range(world)]
    for epoch in range(2):
        per_rank = [[i for b in take(s, 4) for i in ids(b)] for s in streams]  # 4 x 5 = 20 = n // 2
        assert not set(per_rank[0]) & set(per_rank[1])
        assert all(len(set(p)) == 20 for p in per_rank)
        union = set(per_rank[0]) | set(per_rank[1])
        if n == 40:
            assert union == set(range(40))
        else:
            assert len(union) == 40  # one sample left out, a different one each epoch
        assert union <= set(range(n))
        assert all(s.epoch == epoch + 1 and s.index == 0 for s in streams)


def test_hflip_flips_about_half() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4).repeat(50, 1, 1, 1)
    ds = TensorDataset(x, uri="test:arange")
    batch = next(make_stream(ds, 100, seed=0, augmentations=["hflip"])).x
    flipped = 0
    for out in batch:
        originals = [img for img in x[:2]]
        if any(torch.equal(out, o) for o in originals):
            continue
        assert any(torch.equal(out, o.flip(2)) for o in originals)
        flipped += 1
    assert 30 < flipped < 70


def test_translate_is_a_small_reflect_padded_shift() -> None:
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ds = TensorDataset(x, uri="test:random")
    stream = make_stream(ds, 64, seed=0, augmentations=["translate"])
    idx = stream.shard(0)
    out = next(stream).x
    assert out.shape == (64, 3, 8, 8)
    s = 1  # 8 // 8
    padded = F.pad(x[idx], (s, s, s, s), mode="reflect")
    shifts = set()
    for k in range(64):
        matches = [
            (dy, dx)
            for dy in range(-s, s + 1)
            for dx in range(-s, s + 1)
            if torch.equal(out[k], padded[k, :, s - dy : s - dy + 8, s - dx : s - dx + 8])
        ]
        assert matches, f"sample {k} is not a shift of its source"
        shifts.add(matches[0])
    assert len(shifts) >= 5  # the shifts vary


def test_stream_rejects_bad_arguments() -> None:
    with pytest.raises(DataError, match="apply to images only"):
        make_stream(data.ring8(), 8, 0, augmentations=["hflip"])
    with pytest.raises(DataError, match="unknown augmentation"):
        make_stream(data.digits(8), 8, 0, augmentations=["rotate"])
    with pytest.raises(DataError, match="cannot be shared by 4 ranks"):
        make_stream(indexed_points(3), 1, 0, rank=0, world_size=4)
    with pytest.raises(ValueError, match="rank"):
        make_stream(indexed_points(3), 1, 0, rank=2, world_size=2)


# --------------------------------------------------------------------------------------------- images


def check_cats_and_dogs(ds: Any, n: int = 5) -> None:
    assert isinstance(ds, TensorDataset)
    assert ds.data.shape == (n, 3, 8, 8) and ds.data.dtype == torch.float32
    assert ds.data.min() >= -1.0 and ds.data.max() <= 1.0
    assert ds.classes == ("cat", "dog")
    assert ds.labels is not None and ds.labels.tolist() == [0, 0, 0, 1, 1]  # sorted by path
    means = ds.data.mean(dim=(2, 3))
    for label, rgb in ((0, (1, -1, -1)), (1, (-1, -1, 1))):  # red cats, blue dogs (JPEG is close)
        assert torch.allclose(
            means[ds.labels == label],
            torch.tensor(rgb, dtype=torch.float32).expand(int((ds.labels == label).sum()), 3),
            atol=0.1,
        )


def test_folder_with_class_subfolders(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    make_class_tree(root)
    spec = job_spec(f"file://{root}", image_size=8, channels=3, num_classes=2)
    check_cats_and_dogs(load_dataset(spec, cache_dir=tmp_path / "cache"))


def test_folder_symlinks_followed_without_loops(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    make_class_tree(root)
    elsewhere = tmp_path / "elsewhere" / "bird"
    elsewhere.mkdir(parents=True)
    (elsewhere / "x.png").write_bytes(png_bytes(BLUE))
    (root / "bird").symlink_to(elsewhere, target_is_directory=True)
    (root / "cat" / "loop").symlink_to(root, target_is_directory=True)
    ds = load_dataset_uri(f"file://{root}", image_size=8, channels=3, num_classes=3, cache_dir=tmp_path / "c")
    assert isinstance(ds, TensorDataset) and ds.classes == ("bird", "cat", "dog") and len(ds) == 6


def test_folder_unconditional_grey_and_relative_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "pets"
    make_class_tree(root)
    monkeypatch.chdir(tmp_path)
    ds = load_dataset(job_spec("file://pets", image_size=16, channels=1), cache_dir=tmp_path / "cache")
    assert isinstance(ds, TensorDataset)
    assert ds.data.shape == (5, 1, 16, 16) and ds.labels is None and ds.num_classes is None


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_modes_are_converted(channels: int, tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    root.mkdir()
    (root / "grey.png").write_bytes(png_bytes(128, mode="L"))
    (root / "rgba.png").write_bytes(png_bytes((10, 20, 30, 40), mode="RGBA"))
    (root / "palette.png").write_bytes(png_bytes(3, mode="P"))
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(buf, format="PNG")  # 16-bit grey
    (root / "wide.png").write_bytes(buf.getvalue())
    ds = load_dataset_uri(f"file://{root}", image_size=8, channels=channels, cache_dir=tmp_path / "c")
    assert isinstance(ds, TensorDataset)
    assert ds.data.shape == (4, channels, 8, 8)
    wide = ds.data[3]  # sorted: grey, palette, rgba, wide
    assert torch.allclose(wide[: min(channels, 3)], torch.ones_like(wide[: min(channels, 3)]))


def write_archive(path: Path, files: dict[str, bytes]) -> None:
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, blob in files.items():
                zf.writestr(name, blob)
        return
    gz = path.name.endswith((".tar.gz", ".tgz"))
    with tarfile.open(path, "w:gz") if gz else tarfile.open(path, "w") as tf:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz", ".tgz", ".tar"])
def test_archive_with_wrapper_folder_and_class_subfolders(suffix: str, tmp_path: Path) -> None:
    files = make_class_tree(tmp_path / "tree")
    archive = tmp_path / f"pets{suffix}"
    # The usual `tar czf pets.tgz pets/`: one top folder around the class folders; macOS litter ignored.
    write_archive(archive, {**{f"pets/{k}": v for k, v in files.items()}, "__MACOSX/pets/cat/._a.png": b"x"})
    ds = load_dataset_uri(f"file://{archive}", image_size=8, channels=3, num_classes=2, cache_dir=tmp_path / "cache")
    check_cats_and_dogs(ds)


def test_cache_skips_decoding_until_the_source_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "pets"
    make_class_tree(root)
    cache = tmp_path / "cache"
    uri = f"file://{root}"
    first = load_dataset_uri(uri, image_size=8, channels=3, num_classes=2, cache_dir=cache)
    assert len(list(cache.glob("dataset-*.pt"))) == 1

    def no_decoding(*args: Any) -> Any:
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(ingest, "_decode_image", no_decoding)
    again = load_dataset_uri(uri, image_size=8, channels=3, num_classes=2, cache_dir=cache)
    assert isinstance(first, TensorDataset) and isinstance(again, TensorDataset)
    assert torch.equal(first.data, again.data) and again.classes == ("cat", "dog")
    assert again.labels is not None and first.labels is not None and torch.equal(first.labels, again.labels)

    target = root / "dog" / "b.png"
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    with pytest.raises(DataError, match="decoded although cached"):  # the change is noticed
        load_dataset_uri(uri, image_size=8, channels=3, num_classes=2, cache_dir=cache)
    with pytest.raises(DataError):  # another size is another cache entry
        load_dataset_uri(uri, image_size=16, channels=3, num_classes=2, cache_dir=cache)
    monkeypatch.undo()
    (cache / next(p.name for p in cache.glob("dataset-*.pt"))).write_bytes(b"damaged")
    assert isinstance(load_dataset_uri(uri, image_size=8, channels=3, cache_dir=cache), TensorDataset)


def test_concurrent_loaders_decode_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "pets"
    make_class_tree(root)
    calls: list[str] = []
    real = ingest._decode_image

    def counting(source: Any, image_size: int, channels: int) -> Any:
        calls.append(str(source))
        return real(source, image_size, channels)

    monkeypatch.setattr(ingest, "_decode_image", counting)
    results: list[Any] = []

    def load() -> None:
        results.append(load_dataset_uri(f"file://{root}", image_size=8, channels=3, cache_dir=tmp_path / "c"))

    threads = [threading.Thread(target=load) for _ in range(3)]  # like three local ranks of one pod
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(calls) == 5
    assert all(torch.equal(r.data, results[0].data) for r in results)


# --------------------------------------------------------------------------------------------- bad input


def raises(fn: Callable[[], Any], *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        fn()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_unknown_builtin(tmp_path: Path) -> None:
    raises(
        lambda: load_dataset_uri("builtin:ring9", cache_dir=tmp_path),
        "spec.dataset.uri 'builtin:ring9'",
        "unknown builtin",
        "did you mean 'builtin:ring8'",
    )
    spec = GanTrainingJobSpec.model_construct(
        dataset=DatasetSpec.model_construct(uri="builtin:mnist"), model=ModelSpec()
    )
    raises(lambda: load_dataset(spec, cache_dir=tmp_path), "'builtin:mnist'", "builtin:digits")


def test_missing_path_and_non_archive_file(tmp_path: Path) -> None:
    spec = job_spec(f"file://{tmp_path}/nowhere", image_size=8)
    raises(lambda: load_dataset(spec, cache_dir=tmp_path), f"'file://{tmp_path}/nowhere'", "does not exist")
    # In a pod the fix is a volume the spec can declare (spec.volumes), not one nobody can mount.
    raises(lambda: load_dataset(spec, cache_dir=tmp_path), "spec.volumes", "PersistentVolumeClaim or an NFS export")
    (tmp_path / "one.png").write_bytes(png_bytes(RED))
    raises(lambda: load_dataset_uri(f"file://{tmp_path}/one.png", cache_dir=tmp_path), "not an archive", ".zip")


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "README.txt").write_text("no images here")
    raises(
        lambda: load_dataset_uri(f"file://{tmp_path}/empty", cache_dir=tmp_path / "c"),
        "no PNG/JPEG images found",
        "*.png",
    )
    write_archive(tmp_path / "empty.zip", {"README.txt": b"nothing"})
    raises(
        lambda: load_dataset_uri(f"file://{tmp_path}/empty.zip", cache_dir=tmp_path / "c"), "holds no PNG/JPEG images"
    )


def test_corrupt_images_are_named(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "good.png").write_bytes(png_bytes(RED))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "cut.jpg").write_bytes(png_bytes(RED, (64, 64), fmt="JPEG")[:200])
    message = raises(
        lambda: load_dataset_uri(f"file://{root}", cache_dir=tmp_path / "c"),
        "2 unreadable image(s)",
        "broken.png",
        "cut.jpg",
        "Fix or remove them",
    )
    assert "good.png" not in message
    write_archive(tmp_path / "bad.tgz", {"x/good.png": png_bytes(RED), "x/broken.png": b"garbage"})
    raises(
        lambda: load_dataset_uri(f"file://{tmp_path}/bad.tgz", cache_dir=tmp_path / "c"),
        "1 unreadable image(s)",
        "x/broken.png",
    )
    (tmp_path / "notzip.zip").write_bytes(b"PK not a zip")
    raises(lambda: load_dataset_uri(f"file://{tmp_path}/notzip.zip", cache_dir=tmp_path / "c"), "not a readable zip")


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
@pytest.mark.parametrize("evil", ["../escape.png", "/etc/evil.png", "a/../../escape.png"])
def test_path_traversal_archives_are_refused(suffix: str, evil: str, tmp_path: Path) -> None:
    archive = tmp_path / f"evil{suffix}"
    write_archive(archive, {"ok/a.png": png_bytes(RED), evil: png_bytes(BLUE)})
    raises(
        lambda: load_dataset_uri(f"file://{archive}", cache_dir=tmp_path / "c"),
        "refusing the archive",
        repr(evil),
        "path-traversal",
    )
    assert not (tmp_path / "escape.png").exists()


def test_tar_link_out_of_the_archive_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as tf:
        blob = png_bytes(RED)
        info = tarfile.TarInfo("imgs/a.png")
        info.size = len(blob)
        tf.addfile(info, io.BytesIO(blob))
        link = tarfile.TarInfo("imgs/b.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "../../etc/passwd"
        tf.addfile(link)
    raises(
        lambda: load_dataset_uri(f"file://{archive}", cache_dir=tmp_path / "c"),
        "refusing the archive",
        "imgs/b.png",
        "outside the archive",
    )


def test_class_mismatches(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    make_class_tree(root)
    raises(
        lambda: load_dataset_uri(f"file://{root}", num_classes=3, cache_dir=tmp_path / "c"),
        "found 2 class sub-folder(s) ('cat', 'dog')",
        "numClasses is 3",
    )
    raises(
        lambda: load_dataset_uri(f"file://{root}/cat", num_classes=2, cache_dir=tmp_path / "c"),
        "not in a class sub-folder",
        "a.png",
    )
    (root / "stray.png").write_bytes(png_bytes(RED))
    raises(
        lambda: load_dataset_uri(f"file://{root}", num_classes=2, cache_dir=tmp_path / "c"),
        "1 image(s) are not in a class sub-folder",
        "'stray.png'",
    )
    raises(
        lambda: load_dataset_uri("builtin:digits", num_classes=5, channels=1, cache_dir=tmp_path),
        "10 classes",
        "numClasses is 5",
    )


def test_images_above_the_pixel_limit_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "MAX_IMAGE_PIXELS", 30 * 30)
    root = tmp_path / "big"
    root.mkdir()
    (root / "small.png").write_bytes(png_bytes(RED, (30, 30)))
    (root / "huge.png").write_bytes(png_bytes(RED, (31, 30)))
    raises(
        lambda: load_dataset_uri(f"file://{root}", cache_dir=tmp_path / "c"),
        "huge.png",
        "megapixel limit",
        "decompression bomb",
    )


def test_pillow_decompression_bomb_error_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow itself raises above 2x this
    root = tmp_path / "bomb"
    root.mkdir()
    (root / "bomb.png").write_bytes(png_bytes(RED, (20, 20)))
    raises(lambda: load_dataset_uri(f"file://{root}", cache_dir=tmp_path / "c"), "bomb.png", "1 unreadable")


def test_unsupported_scheme(tmp_path: Path) -> None:
    raises(lambda: load_dataset_uri("gs://bucket/x", cache_dir=tmp_path), "unsupported dataset URI", "s3://")
