"""MNIST and Fashion-MNIST in the idx format (``.gz`` or uncompressed)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .download import cache_dir, fetch
from .errors import DataError
from .spec import DatasetSummary
from .tensors import RawDataset, TensorData

#: name -> (base URL, {file stem: md5 of the official .gz}, class names)
SOURCES = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c"},
        [str(i) for i in range(10)]),
    "fashion-mnist": ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/", {
        "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310"},
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
         "Ankle boot"]),
}
IMAGES, LABELS = 2051, 2049  # idx magic numbers: uint8 3-d / 1-d arrays


def read_idx(path: Path, magic: int) -> np.ndarray:
    """One idx file as a uint8 array; raises :class:`DataError` naming the file when it is not one."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: unreadable ({exc}); expected an idx file (magic {magic})") from None
    ndim = magic - 2048
    if len(raw) < 4 + 4 * ndim or struct.unpack(">I", raw[:4])[0] != magic:
        got = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
        raise DataError(f"{path}: not an idx file of this kind (magic {got}, expected {magic})")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: truncated idx file ({body.size} bytes of data, header says {shape})")
    return body.reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: missing {stem}.gz (expected the four idx files "
                    f"train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                    f"t10k-labels-idx1-ubyte, optionally .gz)")


def _folder(name: str, path: Optional[Path], root: Optional[str]) -> Path:
    """The folder holding the four idx files (no path: the official files, downloaded into the cache
    and md5-checked if they are not there yet)."""
    base, files, _ = SOURCES[name]
    if path is None:
        folder = cache_dir(root) / name
        for stem, md5 in files.items():
            fetch(base + stem + ".gz", folder / (stem + ".gz"), md5)
        return folder
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a directory; expected a folder with the {name} idx files")
    return folder


def _split(name: str, folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x 28 x 28 uint8) and labels of split ``prefix`` (``train`` or ``t10k``), checked."""
    classes = SOURCES[name][2]
    x = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"), IMAGES)
    y = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"), LABELS)
    if len(x) != len(y):
        raise DataError(f"{folder}: {prefix} has {len(x)} images but {len(y)} labels")
    if len(y) and int(y.max()) >= len(classes):
        raise DataError(f"{folder}: {prefix} labels go up to {int(y.max())}, expected 0..{len(classes) - 1}")
    return x, y


def load_idx_dataset(name: str, path: Optional[Path], root: Optional[str] = None) -> RawDataset:
    folder = _folder(name, path, root)

    def split(prefix: str) -> TensorData:
        x, y = _split(name, folder, prefix)
        return TensorData(torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))

    return RawDataset(name, split("train"), split("t10k"), SOURCES[name][2])


def check_idx_dataset(name: str, path: Optional[Path], root: Optional[str] = None) -> DatasetSummary:
    """What :func:`load_idx_dataset` would find: the four files read whole and checked as it does
    (small: 55 MB uncompressed), without making tensors of them."""
    folder = _folder(name, path, root)
    counts = {split: len(_split(name, folder, prefix)[1]) for split, prefix in (("train", "train"), ("test", "t10k"))}
    return DatasetSummary(name, str(folder), tuple(SOURCES[name][2]), counts)
