"""scikit-learn's bundled 8x8 ``digits`` (1,797 images): offline, the embedded default.

The CSV that ``sklearn.datasets.load_digits`` parses is read directly from the
installed wheel: importing ``sklearn.datasets`` costs ~1.5 s of CPU (scipy and
more) for a 1,797-row file.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .tensors import RawDataset, TensorData

#: digits has no official test split: this fixed share is held out with a fixed seed,
#: independent of the user's seed, so the test set never changes.
TEST_FRACTION = 0.2
TEST_SEED = 20180101


def digits_file() -> Path:
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.is_file():
        raise DataError(f"digits: {path or 'scikit-learn'} not found; install scikit-learn (it ships the data)")
    return path


@lru_cache(maxsize=1)  # parsed once per process; callers index copies out of it
def load_digits() -> RawDataset:
    table = np.loadtxt(digits_file(), delimiter=",", dtype=np.float32)  # 64 pixels in 0..16, then the label
    x = torch.from_numpy(table[:, :64]).mul_(255.0 / 16.0).round_().to(torch.uint8).view(-1, 1, 8, 8)
    y = torch.from_numpy(table[:, 64]).long()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(TEST_SEED))
    n_test = round(len(y) * TEST_FRACTION)
    test, train = order[:n_test], order[n_test:]
    return RawDataset("digits", TensorData(x[train], y[train]), TensorData(x[test], y[test]),
                      [str(i) for i in range(10)])
