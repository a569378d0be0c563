"""Datasets for proxy training: held in memory as uint8 tensors, or streamed from an image folder.

>>> from evaluators.data import load_dataset, batches
>>> d = load_dataset("digits", input_size=32)          # 8x8 grey -> 32x32 RGB
>>> x, y = next(batches(d.train, 64, shuffle=True, augment=True,
...                     generator=None, mean=d.mean, std=d.std))

A dataset is named by one spec string (see :class:`DatasetSpec`). The
validation split is held out of the official training set; the test split
is only for a final check after a search. ``digits``, ``mnist``,
``fashion-mnist`` and ``cifar10`` are small and held in memory
(:class:`TensorData`); ``folder:PATH`` (ImageNet layout) is read from disk
per batch (:class:`~.folder.ImageFiles`, see :mod:`.folder`). :func:`batches`
serves both. :func:`check_dataset` checks the files a spec names, through the
loaders' own code, without loading them (what a search checks before its first trial).
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch

from .cifar import check_cifar10, load_cifar10
from .digits import digits_file, load_digits
from .errors import DataError
from .folder import ImageFiles, folder_summary, load_folder, stream_batches
from .idx import check_idx_dataset, load_idx_dataset
from .spec import DatasetSpec, DatasetSummary
from .tensors import DataSplits, RawDataset, TensorData, adapt, channel_stats, tensor_batches

__all__ = ["DatasetSpec", "DatasetSummary", "DataSplits", "TensorData", "ImageFiles", "DataError", "load_dataset",
           "load_raw", "check_dataset", "batches"]


def batches(data: TensorData | ImageFiles, batch_size: int, *, shuffle: bool, augment: bool,
            generator: Optional[torch.Generator], mean, std, drop_last: bool = False,
            device: torch.device | str | None = None, workers: Optional[int] = None):
    """Yield ``(normalised float images, int64 labels)`` batches of a split, on ``device``.

    Order and augmentation draw from ``generator`` only (same seeded generator, same
    batches). In-memory splits are batched where they live (``device=None``: there);
    streamed ones are decoded by ``workers`` loader processes (None = one per spare core)
    and land on ``device`` (default CPU), through pinned memory for CUDA.
    """
    if isinstance(data, ImageFiles):
        return stream_batches(data, batch_size, shuffle=shuffle, augment=augment, generator=generator,
                              mean=mean, std=std, drop_last=drop_last, device=device, workers=workers)
    return tensor_batches(data, batch_size, shuffle=shuffle, augment=augment, generator=generator, mean=mean,
                          std=std, drop_last=drop_last, device=device)


def load_raw(spec: str | DatasetSpec, *, input_size: int = 32, in_channels: int = 3,
             root: Optional[str] = None) -> RawDataset:
    """The official splits of one source, before subsetting and resizing.

    ``input_size``/``in_channels`` matter only for ``folder:`` trees, whose
    images are decoded at that size (they may all differ).
    """
    s = DatasetSpec.parse(spec)
    if s.name == "digits":
        return load_digits()
    if s.name == "cifar10":
        return load_cifar10(s.path, root)
    if s.name in ("mnist", "fashion-mnist"):
        return load_idx_dataset(s.name, s.path, root)
    return load_folder(s.path, input_size, in_channels)


def check_dataset(spec: str | DatasetSpec, root: Optional[str] = None) -> DatasetSummary:
    """Check, in seconds, that ``spec`` names files :func:`load_raw` can load, without loading them.

    The same code as the loaders finds and reads each format's files: a CIFAR-10 archive is read
    through once (the gzip checksum at its end included), every batch must be there and the test
    batch decodes; the MNIST / Fashion-MNIST idx files are read whole and checked; a ``folder:``
    tree is checked from its file index (built here if absent, as the first load would).
    An official archive missing from the cache (``root``) is downloaded and md5-checked, once,
    as the first load would have done. Raises :class:`DataError` (one line) on any problem.
    """
    s = DatasetSpec.parse(spec)
    if s.name == "digits":
        raw = load_digits()
        return DatasetSummary("digits", str(digits_file()), tuple(raw.classes),
                              {"train": len(raw.train), "test": len(raw.test)})
    if s.name == "cifar10":
        return check_cifar10(s.path, root)
    if s.name in ("mnist", "fashion-mnist"):
        return check_idx_dataset(s.name, s.path, root)
    f = folder_summary(s.path)
    return DatasetSummary("folder", str(s.path), tuple(f["classes"]),
                          {"train": f["train_images"], "test": f["test_images"]})


def load_dataset(spec: str | DatasetSpec, *, input_size: int, in_channels: int = 3,
                 subset: Optional[int] = None, val_fraction: float = 0.1, seed: int = 0,
                 root: Optional[str] = None) -> DataSplits:
    """Load ``spec`` and adapt it to an ``input_size`` x ``input_size`` x ``in_channels`` input.

    ``subset`` draws that many images (seeded) from the official training set;
    ``val_fraction`` of them become the validation split, the rest train.
    Mean/std are per channel over the train split. ``root`` overrides the
    download cache directory.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1) (got {val_fraction})")
    if subset is not None and subset < 2:
        raise DataError(f"subset must be at least 2 images (got {subset})")
    if input_size < 1 or in_channels < 1:
        raise DataError(f"input_size and in_channels must be positive (got {input_size}, {in_channels})")
    raw = load_raw(spec, input_size=input_size, in_channels=in_channels, root=root)
    n = len(raw.train) if subset is None else min(subset, len(raw.train))
    order = torch.randperm(len(raw.train), generator=torch.Generator().manual_seed(seed))[:n]
    n_val = round(n * val_fraction)
    if isinstance(raw.train, ImageFiles):  # streamed: decoded at input_size per batch, stats from the index
        mean, std = raw.stats
        return DataSplits(name=str(DatasetSpec.parse(spec)), train=raw.train.subset(order[n_val:]),
                          val=raw.train.subset(order[:n_val]), num_classes=len(raw.classes), mean=mean, std=std,
                          classes=list(raw.classes), source_shape=(), _test=partial(_as_is, raw.test))
    train = adapt(raw.train.subset(order[n_val:]), input_size, in_channels)
    val = adapt(raw.train.subset(order[:n_val]), input_size, in_channels)
    mean, std = channel_stats(train)
    splits = DataSplits(name=str(DatasetSpec.parse(spec)), train=train, val=val,
                        num_classes=len(raw.classes), mean=mean, std=std, classes=list(raw.classes),
                        source_shape=tuple(raw.train.x.shape[1:]),
                        _test=partial(adapt, raw.test, input_size, in_channels))
    return splits


def _as_is(split):
    return split
