"""The IDX format of MNIST and its family (LeCun et al.): a magic number, dimensions, data."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError

DTYPES: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _layout(head: bytes, size: int, path: Path) -> tuple[np.dtype, list[int], int]:
    """The element type, dimensions and data offset of an IDX file of ``size`` bytes whose first
    bytes are ``head``; a bad magic number or a size other than the header's is an error that names
    the file and the fix."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number); replace it with the original")
    ndim = head[3]
    offset = 4 + 4 * ndim
    dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(DTYPES[head[2]])
    expected = offset + int(np.prod(dims)) * dtype.itemsize
    if len(head) < offset or size != expected:
        raise DataError(
            f"{path}: truncated or corrupt IDX file ({size} bytes, its header {dims} needs {expected}); "
            "replace it with the original"
        )
    return dtype, dims, offset


def check_idx(path: str | Path) -> None:
    """Check an uncompressed IDX file's size against its header without reading the data."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4 + 4 * 255)
    _layout(head, path.stat().st_size, path)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed); malformed files raise a clear error."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: unreadable ({exc}); replace it with the original") from exc
    dtype, dims, offset = _layout(data, len(data), path)
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims)


def _find(raw: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (raw / name).exists():
            return raw / name
    raise DataError(f"{stem}[.gz] not found in {raw}")


def load_mnist(
    root: str | Path | None = None, split: str = "train", name: str = "MNIST"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N x 1 x 28 x 28, float32 in [0, 1]) and labels from ``root/<name>/raw`` (torchvision's
    layout; ``root`` defaults to ``$TORCHQV_DATA``)."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {list(SPLITS)}, got {split!r}")
    root = Path(root or os.environ.get("TORCHQV_DATA", "data"))
    raw = root / name / "raw"
    images = read_idx(_find(raw, SPLITS[split][0]))
    labels = read_idx(_find(raw, SPLITS[split][1]))
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))
