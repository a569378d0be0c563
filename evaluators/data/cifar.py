"""CIFAR-10 in its official python-pickle layout (``cifar-10-batches-py``).

Accepted paths: the official ``.tar.gz`` (read without extracting), the
extracted ``cifar-10-batches-py`` directory, or a directory containing either.
The pickles are read with an unpickler that allows only plain containers and
numpy arrays, so a doctored file cannot run code.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .download import cache_dir, fetch
from .errors import DataError
from .tensors import RawDataset, TensorData

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = ["test_batch"]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
EXPECTED = f"the CIFAR-10 python version ({ARCHIVE} or a {FOLDER}/ directory with {', '.join(TRAIN + TEST)})"

_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
        d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
        data = np.asarray(d["data"], dtype=np.uint8)
        labels = np.asarray(d["labels"], dtype=np.int64)
    except Exception as exc:  # any decoding failure means the same thing to the user
        raise DataError(f"{where}: not a CIFAR-10 batch ({exc.__class__.__name__}: {exc}); "
                        f"expected {EXPECTED}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{where}: CIFAR-10 batch has data {data.shape} and {len(labels)} labels; "
                        f"expected N x 3072 uint8 and N labels")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{where}: CIFAR-10 labels outside 0..9")
    return data, labels


def _read_tar(path: Path) -> dict[str, bytes]:
    try:
        with tarfile.open(path, "r:*") as tar:
            out = {}
            for m in tar.getmembers():
                name = Path(m.name).name
                if m.isfile() and name in TRAIN + TEST:
                    out[name] = tar.extractfile(m).read()
            return out
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path}: corrupt or unreadable archive ({exc}); expected {EXPECTED}") from None


def _read_dir(path: Path) -> dict[str, bytes]:
    return {n: (path / n).read_bytes() for n in TRAIN + TEST if (path / n).is_file()}


def _locate(path: Path) -> dict[str, bytes]:
    if not path.exists():
        raise DataError(f"{path}: not found; expected {EXPECTED}")
    if path.is_file():
        return _read_tar(path)
    for cand in (path, path / FOLDER):
        if cand.is_dir() and (cand / TRAIN[0]).is_file():
            return _read_dir(cand)
    if (path / ARCHIVE).is_file():
        return _read_tar(path / ARCHIVE)
    raise DataError(f"{path}: no CIFAR-10 files in this directory; expected {EXPECTED}")


def load_cifar10(path: Optional[Path], root: Optional[str] = None) -> RawDataset:
    if path is None:
        path = fetch(URL, cache_dir(root) / ARCHIVE, MD5)
    files = _locate(Path(path))
    missing = [n for n in TRAIN + TEST if n not in files]
    if missing:
        raise DataError(f"{path}: missing {', '.join(missing)}; expected {EXPECTED}")

    def split(names):
        parts = [_read_batch(files[n], f"{path}:{n}") for n in names]
        x = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
        return TensorData(torch.from_numpy(x), torch.from_numpy(np.concatenate([p[1] for p in parts])),
                          flip=True)

    return RawDataset("cifar10", split(TRAIN), split(TEST), CLASSES)
