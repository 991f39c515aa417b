"""Loading a dataset from its URI: the builtins by name, and folders or archives of images on ``file://`` or ``s3://``.

``file://…`` or ``s3://…`` name a folder (an S3 prefix) or an archive (``.tar``, ``.tar.gz``, ``.tgz``, ``.zip``) of
PNG/JPEG images, decoded once, converted to ``model.channels``, center-cropped and resized to ``model.imageSize``,
then cached as a uint8 ``.pt`` keyed by URI, size, channels and the source's mtimes/ETags, so a resumed pod does
not decode again. Conditional models take labels from the first-level sub-folder names (sorted → 0..K-1) after
any folders common to every image (e.g. an archive's single top folder) are stripped.

Bad input is a `DataError` raised before training, naming ``spec.dataset.uri`` and the fix. A corrupt or unreadable
image fails the load (naming the files) rather than being skipped: silently training on less data than the user
provided hides problems. Archives are read in memory, never extracted; entries that would escape the archive
(``../``, absolute paths, links pointing outside) make the whole archive refused.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import difflib
import hashlib
import io
import json
import logging
import os
import re
import stat
import tarfile
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from ganops import storage
from ganops.api.spec import GanTrainingJobSpec
from ganops.contracts import BUILTIN_DATASETS, DATASET_DIGITS, DATASET_RING8, MIXTURE_DATASETS
from ganops.trainer.data.datasets import DataError, Dataset, TensorDataset, _error, digits, grid25, ring8

logger = logging.getLogger(__name__)

__all__ = [
    "ARCHIVE_SUFFIXES",
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "load_dataset",
    "load_dataset_uri",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
MAX_IMAGE_PIXELS = 64_000_000  # larger images are refused (decompression bombs)
MAX_MEMBER_BYTES = 256 * 1024 * 1024  # one archive member or S3 object; larger ones are refused
CACHE_FORMAT = 1  # bump when decoding changes, so stale caches are not reused
_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def load_dataset(spec: GanTrainingJobSpec, *, cache_dir: Path) -> Dataset:
    """The job's dataset (``spec.dataset.uri``) shaped for ``spec.model``. Raises `DataError` with the fix."""
    return load_dataset_uri(
        spec.dataset.uri,
        image_size=spec.model.image_size,
        channels=spec.model.channels,
        num_classes=spec.model.num_classes,
        cache_dir=cache_dir,
    )


def load_dataset_uri(
    uri: str,
    *,
    image_size: int = 32,
    channels: int = 3,
    num_classes: int | None = None,
    cache_dir: Path,
) -> Dataset:
    """As `load_dataset`, from the URI and model shape directly."""
    if channels not in _MODES:
        raise _error(uri, f"spec.model.channels must be 1..4, got {channels}")
    if uri.startswith("builtin:"):
        return _builtin(uri, image_size=image_size, channels=channels, num_classes=num_classes)
    if uri.startswith("file://") or uri.startswith("s3://"):
        return _ImageLoader(uri, image_size, channels, num_classes, Path(cache_dir)).load()
    raise _error(uri, f"unsupported dataset URI: use one of {', '.join(BUILTIN_DATASETS)}, or a file:// or s3:// "
                      f"folder or archive ({', '.join(ARCHIVE_SUFFIXES)}) of PNG/JPEG images")


def _builtin(uri: str, *, image_size: int, channels: int, num_classes: int | None) -> Dataset:
    if uri in MIXTURE_DATASETS:
        if num_classes is not None:
            raise _error(uri, "the 2-D datasets have no labels: unset spec.model.numClasses")
        return ring8(uri) if uri == DATASET_RING8 else grid25(uri)
    if uri == DATASET_DIGITS:
        if num_classes is not None and num_classes != 10:
            raise _error(uri, f"{DATASET_DIGITS} has 10 classes but spec.model.numClasses is {num_classes}: "
                              "set it to 10 or unset it")
        return digits(image_size, channels, uri)
    close = difflib.get_close_matches(uri, BUILTIN_DATASETS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise _error(uri, f"unknown builtin dataset: use one of {', '.join(BUILTIN_DATASETS)}{hint}")


def _archive_suffix(name: str) -> str | None:
    lower = name.lower()
    return next((s for s in ARCHIVE_SUFFIXES if lower.endswith(s)), None)


def _wanted(relative: str) -> bool:
    """An image file that is not hidden (skips ``.DS_Store``, ``__MACOSX/._x.png`` and the like)."""
    parts = PurePosixPath(relative).parts
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return False
    return parts[-1].lower().endswith(IMAGE_SUFFIXES)


def _unsafe_member(name: str) -> bool:
    """True for archive paths that would escape the extraction folder: absolute, drive-relative or with ``..``."""
    n = name.replace("\\", "/")
    return n.startswith("/") or bool(re.match(r"^[A-Za-z]:", n)) or ".." in n.split("/")


class _TooLarge(Exception):
    pass


def _decode_image(source: bytes | Path, image_size: int, channels: int) -> np.ndarray:
    """One PNG/JPEG → (C, S, S) uint8: EXIF-rotated, converted to the channels, center-cropped and resized."""
    mode = _MODES[channels]
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except Image.DecompressionBombError as exc:
            raise _TooLarge(str(exc)) from exc
        with im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise _TooLarge(f"{w}x{h} is {w * h / 1e6:.0f} megapixels, above the "
                                f"{MAX_IMAGE_PIXELS / 1e6:.0f}-megapixel limit (possible decompression bomb)")
            if im.format == "JPEG":
                im.draft(None, (image_size, image_size))  # let libjpeg downscale by 1/2..1/8 while decoding
            im.load()
            out = ImageOps.exif_transpose(im)
    if out.mode.startswith("I"):  # 16/32-bit grey (e.g. 16-bit PNG): scale to 8 bits instead of clipping
        wide = np.asarray(out, dtype=np.float64)
        out = Image.fromarray(np.clip(wide / 257.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif out.mode in ("P", "PA"):
        out = out.convert("RGBA")
    if out.mode != mode:
        out = out.convert(mode)
    w, h = out.size
    side = min(w, h)
    if (w, h) != (side, side):
        left, top = (w - side) // 2, (h - side) // 2
        out = out.crop((left, top, left + side, top + side))
    if side != image_size:
        out = out.resize((image_size, image_size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    arr = np.asarray(out, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


Source = bytes | Path | Callable[[], bytes]


@dataclass
class _Decoded:
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class _Decoder:
    """Decodes images on a thread pool (Pillow and S3 reads release the GIL); bounded in-flight work."""

    def __init__(self, image_size: int, channels: int, workers: int = 0) -> None:
        self.image_size = image_size
        self.channels = channels
        self.pool = cf.ThreadPoolExecutor(max_workers=workers or min(8, 2 * (os.cpu_count() or 1)))
        self.slots = threading.BoundedSemaphore(64)
        self.futures: dict[str, cf.Future[np.ndarray]] = {}

    def _run(self, source: Source) -> np.ndarray:
        data = source() if callable(source) else source
        return _decode_image(data, self.image_size, self.channels)

    def submit(self, name: str, source: Source) -> None:
        self.slots.acquire()
        future = self.pool.submit(self._run, source)
        future.add_done_callback(lambda _: self.slots.release())
        self.futures[name] = future

    def finish(self) -> _Decoded:
        out = _Decoded()
        try:
            for name, future in self.futures.items():
                try:
                    out.arrays[name] = future.result()
                except _TooLarge as exc:
                    out.errors[name] = str(exc)
                except storage.StorageError:
                    raise
                except Exception as exc:  # corrupt input can make Pillow raise almost anything
                    out.errors[name] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
        return out


def _class_labels(uri: str, names: Sequence[str], num_classes: int) -> tuple[list[int], tuple[str, ...]]:
    """Labels from the first sub-folder below the folders shared by every image (sorted names → 0..K-1)."""
    dirs = [PurePosixPath(n).parts[:-1] for n in names]
    k = 0
    while all(len(d) > k for d in dirs) and len({d[k] for d in dirs}) == 1:
        k += 1
    loose = [n for n, d in zip(names, dirs, strict=True) if len(d) == k]
    if loose and len(loose) < len(names):
        raise _error(uri, f"{len(loose)} image(s) are not in a class sub-folder (e.g. {loose[0]!r}); a conditional "
                          f"model (spec.model.numClasses={num_classes}) takes its labels from the first-level "
                          "sub-folder names: put every image under <class-name>/")
    classes = sorted({d[k] for d in dirs if len(d) > k}) if not loose else ([dirs[0][k - 1]] if k else [])
    if len(classes) != num_classes:
        shown = ", ".join(repr(c) for c in classes[:10]) + (", …" if len(classes) > 10 else "")
        raise _error(uri, f"found {len(classes)} class sub-folder(s) ({shown or 'none'}) but "
                          f"spec.model.numClasses is {num_classes}: make them agree (one sub-folder per class)")
    index = {c: i for i, c in enumerate(classes)}
    return [index[d[k]] for d in dirs], tuple(classes)


class _ImageLoader:
    """Image folders and archives from file:// or s3://, through the decoded-tensor cache."""

    def __init__(self, uri: str, image_size: int, channels: int, num_classes: int | None, cache_dir: Path) -> None:
        self.uri = uri
        self.image_size = image_size
        self.channels = channels
        self.num_classes = num_classes
        self.cache_dir = cache_dir

    def err(self, problem: str) -> DataError:
        return _error(self.uri, problem)

    # ------------------------------------------------------------------ entry

    def load(self) -> TensorDataset:
        if self.uri.startswith("s3://"):
            return self._load_s3()
        path = Path(storage.split_uri(self.uri).key)
        shown = path.resolve()
        if not path.exists():
            raise self.err(f"{shown} does not exist: check the path (file:///absolute/path or file://relative); "
                           "in a cluster the trainer pod sees only the volumes the job declares in spec.volumes (a "
                           "PersistentVolumeClaim or an NFS export mounted under /data or /mnt)")
        if path.is_dir():
            files = self._local_files(path)
            fingerprint = [[rel, st.st_size, st.st_mtime_ns] for rel, st in files]
            return self._cached(fingerprint, lambda: self._decode_entries((rel, path / rel) for rel, _ in files))
        suffix = _archive_suffix(path.name)
        if suffix is None:
            raise self.err(f"{shown} is a file but not an archive: point to a folder of images or a "
                           f"{', '.join(ARCHIVE_SUFFIXES)} archive")
        st = path.stat()
        return self._cached([path.name, st.st_size, st.st_mtime_ns], lambda: self._decode_archive(path, suffix))

    def _local_files(self, root: Path) -> list[tuple[str, os.stat_result]]:
        files: list[tuple[str, os.stat_result]] = []
        visited: set[str] = set()  # real paths: symlinked folders are followed, symlink loops are not
        for directory, subdirs, names in os.walk(root, followlinks=True):
            real = os.path.realpath(directory)
            if real in visited:
                subdirs[:] = []
                continue
            visited.add(real)
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            for name in names:
                full = Path(directory, name)
                rel = full.relative_to(root).as_posix()
                if _wanted(rel):
                    try:
                        files.append((rel, full.stat()))
                    except OSError as exc:
                        raise self.err(f"cannot read {full}: {exc.strerror}") from exc
        if not files:
            raise self.err(f"no PNG/JPEG images found in the folder {root.resolve()} (looked recursively for "
                           f"{', '.join('*' + s for s in IMAGE_SUFFIXES)}): add images or fix the path")
        files.sort()
        return files

    # ------------------------------------------------------------------ s3

    def _load_s3(self) -> TensorDataset:
        store = storage.open_store(self.uri)
        try:
            if _archive_suffix(self.uri) is not None:
                return self._load_s3_archive(store)
            return self._load_s3_folder(store)
        except storage.CredentialsMissing as exc:
            raise self.err(f"no S3 credentials: {storage.CREDENTIALS_HELP}") from exc
        except storage.AccessDeniedError as exc:
            raise self.err(f"access denied ({exc}): give the credentials read access to the bucket "
                           "(s3:GetObject and s3:ListBucket)") from exc
        except storage.ObjectNotFound as exc:
            raise self.err(f"{exc}: check the bucket and key") from exc
        except storage.StorageError as exc:
            raise self.err(f"cannot read from S3: {exc}: check the bucket, the endpoint and the network") from exc

    def _s3_etags(self, store: storage.ObjectStore, bucket: str, prefix: str) -> dict[str, str]:
        """Key → ETag + size under ``prefix`` (for the cache key); empty when the listing is unavailable."""
        if not isinstance(store, storage.S3Store):
            return {}
        try:
            pages = store.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            return {o["Key"]: f"{o.get('ETag', '')}:{o.get('Size', '')}"
                    for page in pages for o in page.get("Contents", [])}
        except Exception as exc:  # the official listing worked; without ETags the key holds names only
            logger.warning("could not list ETags under s3://%s/%s (%s): cache keyed by names only", bucket,
                           prefix, exc)
            return {}

    def _load_s3_folder(self, store: storage.ObjectStore) -> TensorDataset:
        prefix_uri = self.uri if self.uri.endswith("/") else self.uri + "/"
        parts = storage.split_uri(prefix_uri)
        objects = store.list(prefix_uri)
        names = {u[len(prefix_uri):]: u for u in objects if _wanted(u[len(prefix_uri):])}
        if not names:
            found = f"{len(objects)} object(s) but no PNG/JPEG image" if objects else "no objects"
            raise self.err(f"found {found} under {prefix_uri} (looked recursively for "
                           f"{', '.join('*' + s for s in IMAGE_SUFFIXES)}): upload images or fix the prefix")
        etags = self._s3_etags(store, parts.bucket, parts.key)
        fingerprint = sorted([rel, etags.get(parts.key + rel, "")] for rel in names)

        def fetch(uri: str) -> Callable[[], bytes]:
            return lambda: store.get_bytes(uri)

        return self._cached(fingerprint, lambda: self._decode_entries(
            (rel, fetch(uri)) for rel, uri in sorted(names.items())))

    def _load_s3_archive(self, store: storage.ObjectStore) -> TensorDataset:
        parts = storage.split_uri(self.uri)
        size = store.size(self.uri)
        if size == 0:
            raise self.err("the archive is empty (0 bytes): upload it again")
        etag = self._s3_etags(store, parts.bucket, parts.key).get(parts.key, "")
        suffix = _archive_suffix(self.uri)
        assert suffix is not None

        def build() -> tuple[np.ndarray, list[int] | None, tuple[str, ...] | None]:
            downloads = self.cache_dir / "downloads"
            local = downloads / (hashlib.sha256(self.uri.encode()).hexdigest()[:24] + suffix)
            store.get_file(self.uri, local)
            try:
                return self._decode_archive(local, suffix)
            finally:
                local.unlink(missing_ok=True)

        return self._cached([size, etag], build)

    # ------------------------------------------------------------------ archives

    def _decode_archive(self, path: Path, suffix: str) -> tuple[np.ndarray, list[int] | None,
                                                                  tuple[str, ...] | None]:
        decoder = _Decoder(self.image_size, self.channels)
        try:
            if suffix == ".zip":
                self._read_zip(path, decoder)
            else:
                self._read_tar(path, decoder)
        except BaseException:
            decoder.finish()
            raise
        if not decoder.futures:
            decoder.finish()
            raise self.err(f"the archive holds no PNG/JPEG images ({', '.join('*' + s for s in IMAGE_SUFFIXES)}, "
                           "hidden files and __MACOSX/ ignored): add images to it")
        return self._assemble(decoder.finish())

    def _refuse(self, member: str, why: str = "") -> DataError:
        why = why or "points outside the archive (../ or an absolute path), a path-traversal risk"
        return self.err(f"refusing the archive: entry {member!r} {why}: rebuild the archive with relative paths")

    def _read_zip(self, path: Path, decoder: _Decoder) -> None:
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise self.err(f"not a readable zip archive ({exc}): upload a valid .zip") from exc
        with zf:
            infos = zf.infolist()
            for info in infos:
                if _unsafe_member(info.filename):
                    raise self._refuse(info.filename)
            for info in infos:
                if info.is_dir() or stat.S_ISLNK(info.external_attr >> 16) or not _wanted(info.filename):
                    continue
                if info.file_size > MAX_MEMBER_BYTES:
                    raise self._refuse(info.filename, f"is {info.file_size} bytes uncompressed, above the "
                                                      f"{MAX_MEMBER_BYTES >> 20} MiB limit per image")
                try:
                    with zf.open(info) as f:
                        data = f.read(MAX_MEMBER_BYTES + 1)
                except (zipfile.BadZipFile, RuntimeError, OSError, EOFError, ValueError) as exc:
                    decoder.futures[info.filename] = _failed(exc)
                    continue
                decoder.submit(info.filename, data)

    def _read_tar(self, path: Path, decoder: _Decoder) -> None:
        try:
            tf = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by the `with tf` below
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise self.err(f"not a readable tar archive ({exc}): upload a valid .tar / .tar.gz") from exc
        with tf:
            try:
                for member in tf:
                    if _unsafe_member(member.name):
                        raise self._refuse(member.name)
                    if member.issym() or member.islnk():
                        target = member.linkname if member.islnk() else str(
                            PurePosixPath(member.name).parent / member.linkname)
                        if _unsafe_member(member.linkname) or _unsafe_member(os.path.normpath(target)):
                            raise self._refuse(member.name, f"is a link to {member.linkname!r} outside the "
                                                            "archive")
                        continue  # links are not followed
                    if not member.isfile() or not _wanted(member.name):
                        continue
                    if member.size > MAX_MEMBER_BYTES:
                        raise self._refuse(member.name, f"is {member.size} bytes, above the "
                                                        f"{MAX_MEMBER_BYTES >> 20} MiB limit per image")
                    f = tf.extractfile(member)
                    if f is None:
                        continue
                    decoder.submit(member.name, f.read())
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise self.err(f"the tar archive is damaged ({type(exc).__name__}: {exc}): upload it "
                               "again") from exc

    # ------------------------------------------------------------------ decoding and the cache

    def _decode_entries(self, entries: Iterable[tuple[str, Source]]) -> tuple[np.ndarray, list[int] | None,
                                                                            tuple[str, ...] | None]:
        decoder = _Decoder(self.image_size, self.channels)
        try:
            for name, source in entries:
                decoder.submit(name, source)
        except BaseException:
            decoder.finish()
            raise
        return self._assemble(decoder.finish())

    def _assemble(self, decoded: _Decoded) -> tuple[np.ndarray, list[int] | None, tuple[str, ...] | None]:
        if decoded.errors:
            names = sorted(decoded.errors)
            shown = "; ".join(f"{n} ({decoded.errors[n]})" for n in names[:5])
            more = f" and {len(names) - 5} more" if len(names) > 5 else ""
            raise self.err(f"{len(names)} unreadable image(s): {shown}{more}. Fix or remove them: a dataset with "
                           "unreadable images is refused rather than silently trained on fewer images")
        names = sorted(decoded.arrays)
        labels: list[int] | None = None
        classes: tuple[str, ...] | None = None
        if self.num_classes is not None:
            labels, classes = _class_labels(self.uri, names, self.num_classes)
        return np.stack([decoded.arrays[n] for n in names]), labels, classes

    def _cache_path(self, fingerprint: Any) -> Path:
        material = json.dumps({
            "format": CACHE_FORMAT, "uri": self.uri, "size": self.image_size, "channels": self.channels,
            "labelled": self.num_classes is not None, "source": fingerprint,
        }, sort_keys=True)
        return self.cache_dir / f"dataset-{hashlib.sha256(material.encode()).hexdigest()[:32]}.pt"

    def _cached(
        self,
        fingerprint: Any,
        build: Callable[[], tuple[np.ndarray, list[int] | None, tuple[str, ...] | None]],
    ) -> TensorDataset:
        path = self._cache_path(fingerprint)
        with _file_lock(path.with_suffix(".lock")):  # local ranks of one pod decode once, then share the cache
            return self._cached_locked(path, build)

    def _cached_locked(
        self,
        path: Path,
        build: Callable[[], tuple[np.ndarray, list[int] | None, tuple[str, ...] | None]],
    ) -> TensorDataset:
        pixels: torch.Tensor | None = None
        labels: torch.Tensor | None = None
        classes: tuple[str, ...] | None = None
        if path.exists():
            try:
                blob = torch.load(path, map_location="cpu", weights_only=True)
                pixels, labels = blob["images"], blob["labels"]
                classes = None if blob["classes"] is None else tuple(blob["classes"])
                logger.info("dataset %s: %d images from the cache %s", self.uri, pixels.shape[0], path)
            except Exception as exc:  # a damaged cache is rebuilt, never trusted
                logger.warning("ignoring the unreadable dataset cache %s (%s): decoding again", path, exc)
                pixels = None
        if pixels is None:
            start = time.perf_counter()
            array, label_list, classes = build()
            pixels = torch.from_numpy(array)
            labels = None if label_list is None else torch.tensor(label_list, dtype=torch.int64)
            logger.info("dataset %s: decoded %d images in %.1fs", self.uri, pixels.shape[0],
                        time.perf_counter() - start)
            self._write_cache(path, {"images": pixels, "labels": labels,
                                     "classes": None if classes is None else list(classes), "uri": self.uri})
        return TensorDataset(None, labels, classes, self.uri, pixels=pixels.contiguous())

    def _write_cache(self, path: Path, blob: dict[str, Any]) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(blob, tmp)
            os.replace(tmp, path)
        except OSError as exc:  # the cache is an optimisation: training goes on without it
            logger.warning("could not write the dataset cache %s: %s", path, exc)
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (POSIX ``flock``); without one, just go on unlocked."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+b")  # noqa: SIM115 - closed in the finally below
    except (ImportError, OSError) as exc:
        logger.warning("no lock on %s (%s): concurrent loaders may decode the dataset twice", path, exc)
        yield
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # releases the lock


def _failed(exc: BaseException) -> cf.Future[np.ndarray]:
    future: cf.Future[np.ndarray] = cf.Future()
    future.set_exception(exc)
    return future
