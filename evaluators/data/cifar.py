"""CIFAR-10 in its official python-pickle layout (``cifar-10-batches-py``).

Accepted paths: the official ``.tar.gz`` (read without extracting), the
extracted ``cifar-10-batches-py`` directory, or a directory containing either.
:func:`load_cifar10` decodes every batch; :func:`check_cifar10` checks the same files
(found by the same code) without decoding the data batches.
The pickles are read with an unpickler that allows only plain containers and
numpy arrays, so a doctored file cannot run code.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Container, Optional

import numpy as np
import torch

from .download import cache_dir, fetch
from .errors import DataError
from .spec import DatasetSummary
from .tensors import RawDataset, TensorData

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = ["test_batch"]
BATCHES = TRAIN + TEST
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
EXPECTED = f"the CIFAR-10 python version ({ARCHIVE} or a {FOLDER}/ directory with {', '.join(BATCHES)})"

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


def _source(path: Optional[Path], root: Optional[str]) -> Path:
    """The archive or the batch folder that ``path`` names (no path: the official archive, downloaded
    into the cache and md5-checked if it is not there yet)."""
    if path is None:
        return fetch(URL, cache_dir(root) / ARCHIVE, MD5)
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found; expected {EXPECTED}")
    if path.is_file():
        return path
    for cand in (path, path / FOLDER):
        if cand.is_dir() and (cand / TRAIN[0]).is_file():
            return cand
    if (path / ARCHIVE).is_file():
        return path / ARCHIVE
    raise DataError(f"{path}: no CIFAR-10 files in this directory; expected {EXPECTED}")


def _batches(source: Path, read: Container[str]) -> dict[str, Optional[bytes]]:
    """Every batch at ``source`` (an archive or a batch folder): name -> its bytes for the names in
    ``read``, None for the others (present, not read). A missing batch is a DataError.

    An archive is read through once, as a stream, to its end: for a gzip archive (the official
    one) that includes the checksum at the end of the stream, so a truncated or corrupted archive
    fails here and not in the middle of a decode.
    """
    if source.is_dir():
        found = {n: ((source / n).read_bytes() if n in read else None) for n in BATCHES if (source / n).is_file()}
    else:
        found = _archive_batches(source, read)
    missing = [n for n in BATCHES if n not in found]
    if missing:
        raise DataError(f"{source}: missing {', '.join(missing)}; expected {EXPECTED}")
    return found


def _archive_batches(path: Path, read: Container[str]) -> dict[str, Optional[bytes]]:
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    found: dict[str, Optional[bytes]] = {}
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as stream:
            with tarfile.open(fileobj=stream, mode="r|" if gz else "r|*") as tar:
                for m in tar:
                    name = Path(m.name).name
                    if m.isfile() and name in BATCHES:
                        found[name] = tar.extractfile(m).read() if name in read else None
            while stream.read(1 << 20):  # the rest of the gzip stream: its checksum is checked at its end
                pass
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:  # (gzip.BadGzipFile is an OSError)
        raise DataError(f"{path}: corrupt or truncated archive ({exc}); expected {EXPECTED}") from None
    return found


def load_cifar10(path: Optional[Path], root: Optional[str] = None) -> RawDataset:
    """Train (the five data batches) and test splits, decoded whole into uint8 tensors."""
    source = _source(path, root)
    files = _batches(source, BATCHES)

    def split(names):
        parts = [_read_batch(files[n], f"{source}:{n}") for n in names]
        x = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
        return TensorData(torch.from_numpy(x), torch.from_numpy(np.concatenate([p[1] for p in parts])),
                          flip=True)

    return RawDataset("cifar10", split(TRAIN), split(TEST), CLASSES)


def check_cifar10(path: Optional[Path], root: Optional[str] = None) -> DatasetSummary:
    """What :func:`load_cifar10` would find, without holding the dataset: the archive read through once
    (gzip checksum), every batch present, the test batch decoded (the data batches are not)."""
    source = _source(path, root)
    test = _batches(source, TEST)[TEST[0]]
    _, labels = _read_batch(test, f"{source}:{TEST[0]}")
    return DatasetSummary("cifar10", str(source), tuple(CLASSES), {"test": len(labels)})
