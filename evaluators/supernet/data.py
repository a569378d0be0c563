"""The data a supernet trains and scores on: loading, checks, and seeded (sharded) batches.

In-memory datasets (digits, MNIST, Fashion-MNIST, CIFAR-10) and ``folder:PATH`` trees in the
ImageNet layout, streamed from disk, are both served: training takes the same seeded global
order either way, and a streamed split is never held in memory (only the BatchNorm
recalibration images a scorer reuses are).
"""

from __future__ import annotations

from typing import Iterator

import torch

from evaluators.data import DataError, DataSplits, DatasetSpec, ImageFiles, TensorData, batches, load_dataset
from evaluators.data.tensors import augment_batch
from search_space import SearchSpace

from .config import SupernetConfig
from .network import SupernetError
from .sampling import step_generator


def load_data(data, space: SearchSpace, config: SupernetConfig) -> DataSplits:
    """``data`` as DataSplits at the space's input size (a spec string is loaded here, split by the config)."""
    if isinstance(data, str):
        data = load_dataset(data, input_size=space.spec.input_size, in_channels=space.spec.in_channels,
                            subset=config.subset, val_fraction=config.val_fraction, seed=config.seed)
    if data.num_classes != space.spec.num_classes:
        raise SupernetError(f"dataset {data.name} has {data.num_classes} classes but space {space.name!r} "
                            f"has num_classes {space.spec.num_classes}; fix num_classes in the space file")
    if (data.input_size, data.in_channels) != (space.spec.input_size, space.spec.in_channels):
        raise SupernetError(f"dataset {data.name} is {data.in_channels}x{data.input_size}x{data.input_size}, "
                            f"space {space.name!r} expects {space.spec.in_channels}x{space.spec.input_size}"
                            f"x{space.spec.input_size}; load it at the space's input size")
    return data


def dataset_identity(name: str) -> str:
    """What must match between the data a supernet trained on and the data it scores on.

    The family for the built-in datasets (``cifar10`` from any path is CIFAR-10),
    the resolved directory for ``folder:`` trees, the name itself otherwise.
    """
    try:
        spec = DatasetSpec.parse(name)
    except DataError:
        return name
    return f"folder:{spec.path.resolve()}" if spec.name == "folder" else spec.name


def check_same_dataset(trained_on: str, data, checkpoint) -> None:
    """One-line SupernetError unless ``data`` (a spec or DataSplits) is the dataset the checkpoint trained on."""
    if not trained_on:
        return  # a checkpoint written without a dataset record
    given = data if isinstance(data, str) else data.name
    if dataset_identity(given) != dataset_identity(trained_on):
        raise SupernetError(f"{checkpoint} was trained on dataset {dataset_identity(trained_on)!r}, not "
                            f"{dataset_identity(given)!r}; score with the dataset it was trained on "
                            f"(--data) or train a supernet on this one")


def global_order(n: int, config: SupernetConfig, epoch: int) -> torch.Tensor:
    """The order of the training images in ``epoch``: a permutation seeded by (seed, epoch), the same everywhere."""
    return torch.randperm(n, generator=step_generator(config.seed, "order", epoch))


def rank_rows(order: torch.Tensor, batch_size: int, rank: int, world: int) -> torch.Tensor:
    """The rows worker ``rank`` of ``world`` trains on, in its order: rows ``rank::world`` of each
    global batch of ``batch_size`` taken from ``order`` (the last incomplete batch is dropped)."""
    steps = len(order) // batch_size
    return order[:steps * batch_size].view(steps, batch_size)[:, rank::world].reshape(-1)


def train_batches(data: DataSplits, config: SupernetConfig, epoch: int, *, rank: int = 0, world: int = 1,
                  device: torch.device | str | None = None
                  ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, int]]:
    """``(step in the epoch, images, labels, images skipped)`` for this worker's share of every
    global batch of ``epoch``, normalised and augmented.

    The global order is :func:`global_order`; worker ``rank`` of ``world`` takes rows
    ``rank::world`` of each global batch of ``config.batch_size`` (:func:`rank_rows`), and
    augments only those, with generators seeded by (seed, step, rank) for in-memory data and by
    (seed, epoch, rank) for streamed data. With one worker this is the single-process trainer's
    batch stream exactly.

    In-memory data is gathered and augmented where it lives (on the GPU if moved there). A
    ``folder:`` split is streamed: this worker's rows become one :meth:`ImageFiles.subset`, read in
    order by the data loaders (``config.loader_workers`` processes) with the standard training
    transforms, landing on ``device``. An image that cannot be decoded is left out of its batch and
    counted (the fourth item: unreadable images met since the previous batch). A batch whose images
    all fail has no step: one process skips it (the steps keep their numbers, so the schedule and
    the paths are unchanged); with several workers that would leave the others waiting in the
    step's all-reduce, so it is an error naming the first file.
    """
    n, bs = len(data.train), config.batch_size
    steps = n // bs
    if not data.streamed:
        here = data.train.x.device  # the images may live on the GPU: gather and augment there
        order = global_order(n, config, epoch).to(here)
        m = (torch.tensor(data.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0).to(here)
        s = (torch.tensor(data.std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0).to(here)
        for i in range(steps):
            idx = order[i * bs:(i + 1) * bs][rank::world]
            x = data.train.x[idx]
            if config.augment:
                x = augment_batch(x, data.train.flip,
                                  step_generator(config.seed, "augment", epoch * steps + i, rank))
            yield i, (x.float() - m) / s, data.train.y[idx], 0
        return
    share = bs // world
    files = data.train.subset(rank_rows(global_order(n, config, epoch), bs, rank, world))
    stream = batches(files, share, shuffle=False, augment=config.augment,
                     generator=step_generator(config.seed, "augment", epoch, rank), mean=data.mean, std=data.std,
                     device=device, workers=config.loader_workers)
    seen = skipped = taken = 0
    for x, y in stream:
        # the loader has recorded the unreadable images of every batch up to this one, so the
        # batches taken so far (this one included) hold seen + skipped images, `share` each
        new = list(files.skipped.items())[skipped:]
        seen, skipped = seen + len(y), skipped + len(new)
        before, taken = taken, (seen + skipped) // share
        if world > 1 and taken > before + 1:
            path, why = next(iter(files.skipped.items()))
            raise DataError(f"worker {rank}: no image of its share of a batch in epoch {epoch + 1} could be "
                            f"read (first unreadable: {path}: {why}); with several workers every share must "
                            f"keep an image: remove the unreadable files")
        for path, why in new:
            data.train.skipped.setdefault(path, why)  # the split's record, as proxy training keeps it
        yield taken - 1, x, y, len(new)


def fixed_batches(data: TensorData | ImageFiles, n_images: int | None, batch_size: int, *, shuffle: bool,
                  seed: int, mean, std, device: torch.device | str | None = None,
                  workers: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n_images`` (all if None) of ``data`` (in a seeded order if ``shuffle``) as
    normalised batches, kept in memory for reuse (BatchNorm recalibration of every candidate).

    Only those images are read: a streamed split is cut to them first (``workers`` loader
    processes; unreadable ones are left out and recorded in the split's ``skipped``).
    """
    if n_images == 0:
        return []
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)) if shuffle else None
    if n_images is not None or order is not None:
        rows = (order if order is not None else torch.arange(len(data)))[:n_images]
        part = data.subset(rows)
    else:
        part = data
    out = list(batches(part, batch_size, shuffle=False, augment=False, generator=None, mean=mean, std=std,
                       device=device, workers=workers))
    if isinstance(data, ImageFiles):
        for path, why in part.skipped.items():
            data.skipped.setdefault(path, why)
    return out


def stream_split(data: TensorData | ImageFiles, batch_size: int, *, mean, std,
                 device: torch.device | str | None = None, workers: int | None = None):
    """All of ``data`` in order, as normalised batches read as they are consumed (a streamed
    validation split is never held in memory); unreadable images are recorded in ``data.skipped``."""
    return batches(data, batch_size, shuffle=False, augment=False, generator=None, mean=mean, std=std,
                   device=device, workers=workers)
