"""scikit-learn's bundled 8x8 ``digits`` (1,797 images): offline, the embedded default."""

from __future__ import annotations

from functools import lru_cache

import torch

from .tensors import RawDataset, TensorData

#: digits has no official test split: this fixed share is held out with a fixed seed,
#: independent of the user's seed, so the test set never changes.
TEST_FRACTION = 0.2
TEST_SEED = 20180101


@lru_cache(maxsize=1)  # parsed once per process; callers index copies out of it
def load_digits() -> RawDataset:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.from_numpy(d.images).float().mul_(255.0 / 16.0).round_().to(torch.uint8).unsqueeze(1)
    y = torch.from_numpy(d.target).long()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(TEST_SEED))
    n_test = round(len(y) * TEST_FRACTION)
    test, train = order[:n_test], order[n_test:]
    return RawDataset("digits", TensorData(x[train], y[train]), TensorData(x[test], y[test]),
                      [str(i) for i in range(10)])
