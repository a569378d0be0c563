"""The data a supernet trains and scores on: loading, checks, and seeded (sharded) batches."""

from __future__ import annotations

from typing import Iterator

import torch

from evaluators.data import DataError, DataSplits, DatasetSpec, TensorData, batches, load_dataset
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


def train_batches(data: DataSplits, config: SupernetConfig, epoch: int, *, rank: int = 0,
                  world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This worker's share of every global batch of ``epoch``, normalised and augmented.

    The global order is a permutation seeded by (seed, epoch), the same in every
    worker; worker ``rank`` of ``world`` takes rows ``rank::world`` of each global
    batch of ``config.batch_size`` (the last incomplete batch is dropped), and
    augments only those, with a generator seeded by (seed, step, rank). With one
    worker this is the single-process trainer's batch stream exactly.
    """
    if not isinstance(data.train, TensorData):
        raise SupernetError(f"dataset {data.name} is streamed from files; supernet training needs an in-memory "
                            f"dataset (digits, mnist, fashion-mnist, cifar10)")
    n, bs = len(data.train), config.batch_size
    here = data.train.x.device  # the images may live on the GPU: gather and augment there
    order = torch.randperm(n, generator=step_generator(config.seed, "order", epoch)).to(here)
    m = (torch.tensor(data.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0).to(here)
    s = (torch.tensor(data.std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0).to(here)
    steps = n // bs
    for i in range(steps):
        idx = order[i * bs:(i + 1) * bs][rank::world]
        x = data.train.x[idx]
        if config.augment:
            x = augment_batch(x, data.train.flip, step_generator(config.seed, "augment", epoch * steps + i, rank))
        yield (x.float() - m) / s, data.train.y[idx]


def fixed_batches(data, n_images: int | None, batch_size: int, *, shuffle: bool, seed: int, mean, std):
    """The first ``n_images`` (all if None) of ``data`` as normalised batches, kept in memory for reuse."""
    gen = torch.Generator().manual_seed(seed)
    out, seen = [], 0
    for x, y in batches(data, batch_size, shuffle=shuffle, augment=False, generator=gen, mean=mean, std=std):
        if n_images is not None:
            if seen >= n_images:
                break
            x, y = x[:n_images - seen], y[:n_images - seen]
        out.append((x, y))
        seen += len(y)
    return out
