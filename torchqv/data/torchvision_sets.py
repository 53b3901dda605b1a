"""MNIST, Fashion-MNIST, EMNIST (balanced split) and CIFAR-10 read by torchvision's dataset classes.

Files are looked for in torchvision's own layout under a data root (``<root>/MNIST/raw/...``,
``<root>/cifar-10-batches-py/...``).  torchvision reads unpacked files only; when the root holds
the distributed archives instead (``*.gz`` for the MNIST family, ``cifar-10-python.tar.gz``),
they are unpacked into a cache folder, never into the root, which may be read-only (a shared
data folder).  Nothing is downloaded unless the caller allows it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ..errors import DataError
from ..extras import require
from .idx import check_idx

if TYPE_CHECKING:
    from torchvision import datasets
else:
    datasets = require("torchvision.datasets", "torchqv.data's torchvision sets")


def _idx_files(prefix: str, train: str, test: str) -> tuple[str, ...]:
    kinds = ("images-idx3-ubyte", "labels-idx1-ubyte")
    return tuple(f"{prefix}{split}-{kind}" for split in (train, test) for kind in kinds)


@dataclass(frozen=True)
class VisionSet:
    """Where torchvision expects one data set and what it holds.

    ``folder``: the folder (relative to the root) holding ``files``, the files torchvision
    reads; ``archive``: ``"gzip"`` (each file as ``<file>.gz`` in ``folder`` or
    ``folder/gzip``) or the name of a tar.gz in the root that unpacks to ``folder``.
    """

    title: str
    tv_class: type[Any]
    folder: str
    files: tuple[str, ...]
    archive: str
    shape: tuple[int, int, int]
    classes: int
    tv_kwargs: dict[str, Any] = field(default_factory=dict)
    transpose: bool = False  # EMNIST stores images transposed

    def archive_md5(self) -> dict[str, str]:
        """torchvision's published MD5 of each archive (none for EMNIST's single zip)."""
        if self.tv_class is datasets.CIFAR10:
            return {self.archive: datasets.CIFAR10.tgz_md5}
        if self.tv_class is datasets.EMNIST:
            return {}
        return dict(self.tv_class.resources)

    def file_md5(self) -> dict[str, str]:
        """torchvision's MD5 of the unpacked files (CIFAR-10 only; it checks them itself)."""
        if self.tv_class is not datasets.CIFAR10:
            return {}
        cls = datasets.CIFAR10
        return {name: md5 for name, md5 in cls.train_list + cls.test_list} | {
            cls.meta["filename"]: cls.meta["md5"]
        }


VISION_SETS: dict[str, VisionSet] = {
    "mnist": VisionSet(
        "MNIST", datasets.MNIST, "MNIST/raw", _idx_files("", "train", "t10k"), "gzip", (1, 28, 28), 10
    ),
    "fashion_mnist": VisionSet(
        "Fashion-MNIST",
        datasets.FashionMNIST,
        "FashionMNIST/raw",
        _idx_files("", "train", "t10k"),
        "gzip",
        (1, 28, 28),
        10,
    ),
    "emnist": VisionSet(
        "EMNIST (balanced)",
        datasets.EMNIST,
        "EMNIST/raw",
        _idx_files("emnist-balanced-", "train", "test"),
        "gzip",
        (1, 28, 28),
        47,
        {"split": "balanced"},
        transpose=True,
    ),
    "cifar10": VisionSet(
        "CIFAR-10",
        datasets.CIFAR10,
        "cifar-10-batches-py",
        (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
        "cifar-10-python.tar.gz",
        (3, 32, 32),
        10,
    ),
}


class _CIFAR10Unverified(datasets.CIFAR10):
    """torchvision's CIFAR-10 reader without its MD5 checks (done before, or waived by the user)."""

    train_list: ClassVar[list] = [[name, None] for name, _ in datasets.CIFAR10.train_list]
    test_list: ClassVar[list] = [[name, None] for name, _ in datasets.CIFAR10.test_list]
    meta: ClassVar[dict] = {**datasets.CIFAR10.meta, "md5": None}


def vision_set(name: str) -> VisionSet:
    if name not in VISION_SETS:
        raise DataError(f"unknown image data set {name!r}; choose one of {sorted(VISION_SETS)}")
    return VISION_SETS[name]


def default_root() -> Path:
    """``$TORCHQV_DATA``, else ``./data``."""
    return Path(os.environ.get("TORCHQV_DATA") or "data")


def default_cache() -> Path:
    """``$TORCHQV_CACHE``, else ``~/.cache/torchqv``."""
    return Path(os.environ.get("TORCHQV_CACHE") or Path.home() / ".cache" / "torchqv")


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _check_md5(path: Path, expected: str | None) -> None:
    if expected is not None and _md5(path) != expected:
        raise DataError(
            f"{path}: MD5 differs from torchvision's published checksum {expected} (corrupt or not the "
            "official file); replace it, or pass verify_md5=False for a copy you trust"
        )


def _fresh(target: Path, archive: Path) -> bool:
    """Was ``target`` unpacked from this very archive (it carries the archive's time stamp)?"""
    return target.is_file() and target.stat().st_mtime_ns == archive.stat().st_mtime_ns


def _write_atomic(src: Any, target: Path, archive: Path) -> None:
    """Copy the stream ``src`` (from ``archive``) to ``target`` atomically: a concurrent reader sees
    the old file or the whole new one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared
        stamp = archive.stat().st_mtime_ns
        os.utime(tmp, ns=(stamp, stamp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _unpacking(archive: Path) -> Iterator[None]:
    """A truncated or corrupt archive is an error that names it (gzip and tarfile do not)."""
    try:
        yield
    except (EOFError, zlib.error, tarfile.ReadError, gzip.BadGzipFile) as exc:
        raise DataError(
            f"{archive}: truncated or corrupt archive ({type(exc).__name__}: {exc}); replace it with the "
            "original (verify_md5=True checks it against torchvision's checksum)"
        ) from exc


def _untar(archive: Path, folder: str, files: tuple[str, ...], dest: Path) -> None:
    """Unpack only the expected members (no path from the archive is trusted)."""
    with _unpacking(archive), tarfile.open(archive, "r:gz") as tar:
        for name in files:
            try:
                member = tar.extractfile(f"{folder}/{name}")
            except KeyError:
                member = None
            if member is None:
                raise FileNotFoundError(f"{archive} does not contain the file {folder}/{name}")
            with member:
                _write_atomic(member, dest / folder / name, archive)


def _missing_message(spec: VisionSet, root: Path) -> str:
    where = root / spec.folder
    if spec.archive == "gzip":
        archives = f"or their .gz archives in {where} (or {where / 'gzip'})"
    else:
        archives = f"or the archive {root / spec.archive}"
    return (
        f"{spec.title} not found: expected {', '.join(spec.files)} in {where} (torchvision's layout) "
        f"{archives}. Set the data root (config `root`, or the TORCHQV_DATA environment variable), "
        "or allow downloading with download=True."
    )


def locate(
    name: str,
    root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    download: bool = False,
    verify_md5: bool = True,
) -> Path:
    """The root torchvision should read ``name`` from, unpacking archives into the cache if needed.

    Order: unpacked files under ``root``; archives under ``root`` (unpacked into
    ``cache_dir/<hash of the root>``, checked against torchvision's MD5s when ``verify_md5``);
    torchvision's download into ``root`` when ``download``; otherwise ``FileNotFoundError``.
    """
    spec = vision_set(name)
    root = Path(root) if root is not None else default_root()
    folder = root / spec.folder
    if all((folder / f).is_file() for f in spec.files):
        return root
    cache = Path(cache_dir) if cache_dir is not None else default_cache()
    cache = cache / hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    md5 = spec.archive_md5() if verify_md5 else {}
    if spec.archive == "gzip":
        sources = []
        for f in spec.files:
            found = [d / f"{f}.gz" for d in (folder, folder / "gzip") if (d / f"{f}.gz").is_file()]
            sources.append(found[0] if found else None)
        if all(sources):
            for f, src in zip(spec.files, sources, strict=True):
                assert src is not None  # all(sources)
                target = cache / spec.folder / f
                if not _fresh(target, src):
                    _check_md5(src, md5.get(src.name))
                    with _unpacking(src), gzip.open(src, "rb") as stream:
                        _write_atomic(stream, target, src)
            return cache
    elif (root / spec.archive).is_file():
        tgz = root / spec.archive
        if not all(_fresh(cache / spec.folder / f, tgz) for f in spec.files):
            _check_md5(tgz, md5.get(spec.archive))
            _untar(tgz, spec.folder, spec.files, cache)
        return cache
    if download:
        for train in (True, False):
            spec.tv_class(str(root), train=train, download=True, **spec.tv_kwargs)
        return root
    raise FileNotFoundError(_missing_message(spec, root))


def load_split(
    name: str, tv_root: str | Path, train: bool, verify_md5: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)``: uint8 ``N x C x H x W`` and int64 tensors read by torchvision's class
    from a root found by :func:`locate`.  EMNIST images are transposed to MNIST's orientation."""
    spec = vision_set(name)
    folder = Path(tv_root) / spec.folder
    if spec.tv_class is datasets.CIFAR10:
        if verify_md5:
            for f, md5 in spec.file_md5().items():
                _check_md5(folder / f, md5)
        try:
            ds = _CIFAR10Unverified(str(tv_root), train=train)
        except (pickle.UnpicklingError, EOFError, ValueError, KeyError) as exc:
            raise DataError(
                f"{folder}: a CIFAR-10 file is truncated or corrupt ({type(exc).__name__}: {exc}); replace "
                "it with the original (verify_md5=True names the file)"
            ) from exc
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)
        return images.contiguous(), torch.tensor(ds.targets, dtype=torch.int64)
    for f in spec.files:
        check_idx(folder / f)  # torchvision's reader fails on a short file without naming it
    ds = spec.tv_class(str(tv_root), train=train, download=False, **spec.tv_kwargs)
    images = ds.data.transpose(1, 2) if spec.transpose else ds.data
    return images.unsqueeze(1).contiguous(), ds.targets.to(torch.int64)
