"""In-memory image data: uint8 NCHW tensors, converted to normalised float per batch.

Keeping images as uint8 and converting one batch at a time is 4x less memory
than float storage and cheap on 2 cores (CIFAR-10's 50k training images are
150 MB). Augmentation (random crop with zero padding, horizontal flip) runs on
whole batches with an explicit ``torch.Generator`` so a seed fixes it.

On a GPU the uint8 tensors can live on the device (:meth:`TensorData.to`):
batches are then gathered, augmented and normalised there and nothing is
copied from the host per batch. The random draws (order, crops, flips) still
come from the CPU generator, so a seed gives the same batches on every device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from .errors import DataError


@dataclass
class TensorData:
    """Images ``x`` (uint8, N x C x H x W) and int64 labels ``y``."""

    x: torch.Tensor
    y: torch.Tensor
    flip: bool = False  # horizontal flips are label-preserving (natural images, not digits)

    def __post_init__(self):
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise DataError(f"images must be uint8 N x C x H x W (got {self.x.dtype}, {tuple(self.x.shape)})")
        if self.y.dim() != 1 or len(self.y) != len(self.x):
            raise DataError(f"{len(self.x)} images but labels of shape {tuple(self.y.shape)}")
        self.y = self.y.to(torch.int64)

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index: torch.Tensor) -> "TensorData":
        index = index.to(self.x.device)
        return TensorData(self.x[index], self.y[index], self.flip)

    @property
    def input_size(self) -> int:
        return self.x.shape[-1]

    @property
    def in_channels(self) -> int:
        return self.x.shape[1]

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def nbytes(self) -> int:
        return self.x.numel() * self.x.element_size() + self.y.numel() * self.y.element_size()

    def to(self, device: torch.device | str) -> "TensorData":
        """The same images on ``device`` (self if already there)."""
        if self.x.device == torch.device(device):
            return self
        return TensorData(self.x.to(device), self.y.to(device), self.flip)


@dataclass
class RawDataset:
    """What a source loader returns: the official splits before any adaptation.

    A streamed source (``folder:``) gives ``ImageFiles`` splits and its channel ``stats``
    (mean, std), measured once when its index was built.
    """

    name: str
    train: TensorData
    test: TensorData
    classes: Sequence[str]
    stats: Optional[tuple[tuple[float, ...], tuple[float, ...]]] = None


@dataclass
class DataSplits:
    """Train / validation (held out of the training set) / test, adapted to one input size."""

    name: str
    train: TensorData
    val: TensorData
    num_classes: int
    mean: tuple[float, ...]  # per channel, on the [0, 1] scale, from the train split
    std: tuple[float, ...]
    classes: Sequence[str] = ()
    source_shape: tuple[int, ...] = ()  # C, H, W of the images as stored, before adaptation
    _test: Optional[Callable[[], TensorData]] = field(default=None, repr=False)  # picklable (Ray)

    @cached_property
    def test(self) -> TensorData:
        """The official test split; adapted on first use (the search never touches it)."""
        if self._test is None:
            raise DataError(f"dataset {self.name} was built without a test split")
        return self._test()

    @property
    def input_size(self) -> int:
        return self.train.input_size

    @property
    def in_channels(self) -> int:
        return self.train.in_channels

    @property
    def streamed(self) -> bool:
        """Whether images are read from files per batch (``folder:``) rather than held in memory."""
        return not isinstance(self.train, TensorData)

    def to(self, device: torch.device | str) -> "DataSplits":
        """Train and validation images on ``device`` (the test split stays where it is loaded)."""
        if self.streamed:
            return self
        train, val = self.train.to(device), self.val.to(device)
        if train is self.train and val is self.val:
            return self
        return DataSplits(self.name, train, val, self.num_classes, self.mean, self.std, self.classes,
                          self.source_shape, self._test)

    def summary(self) -> dict:
        return {"name": self.name, "train": len(self.train), "val": len(self.val),
                "num_classes": self.num_classes, "input_size": self.input_size,
                "in_channels": self.in_channels, "source_shape": list(self.source_shape)}


def adapt(data: TensorData, input_size: int, in_channels: int, chunk: int = 4096) -> TensorData:
    """Resize (bilinear) to ``input_size`` and convert channels (grey<->RGB); stays uint8."""
    c = data.x.shape[1]
    if c != in_channels and {c, in_channels} != {1, 3}:
        raise DataError(f"cannot convert {c}-channel images to {in_channels} channels "
                        f"(only grayscale <-> RGB); set the architecture's in_channels to {c}")
    out = []
    for part in data.x.split(chunk):
        x = part
        if x.shape[-2:] != (input_size, input_size):
            x = F.interpolate(x.float(), size=(input_size, input_size), mode="bilinear",
                              align_corners=False, antialias=x.shape[-1] > input_size)
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        if c == 1 and in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif c == 3 and in_channels == 1:
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = (x.float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
        out.append(x.contiguous())
    x = torch.cat(out) if out else data.x.new_zeros((0, in_channels, input_size, input_size))
    return TensorData(x, data.y, data.flip)


def channel_stats(data: TensorData) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the [0, 1] scale."""
    if len(data) == 0:
        raise DataError("the training split is empty; use a larger subset or a smaller val_fraction")
    total = torch.zeros(data.x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for part in data.x.split(2048):  # chunked: a float copy of CIFAR-10 would be 1 GB
        v = part.transpose(0, 1).reshape(part.shape[1], -1).double()
        total += v.sum(1)
        squares += v.square().sum(1)
    count = data.x[:, 0].numel()
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(0.255)
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())


def augment_batch(x: torch.Tensor, flip: bool, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Random crop after zero padding of size/8 (4 px at 32x32), and a random horizontal flip."""
    n, c, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dev = x.device  # the draws come from the CPU generator on every device (same seed, same crops)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].to(dev)  # n,1,h,1
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].to(dev)  # n,1,1,w
    out = padded[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                 rows, cols]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(dev)
        out = torch.where(mask[:, None, None, None], out.flip(-1), out)  # no boolean indexing: no GPU sync
    return out


def tensor_batches(data: TensorData, batch_size: int, *, shuffle: bool, augment: bool,
                   generator: Optional[torch.Generator], mean: Sequence[float], std: Sequence[float],
                   drop_last: bool = False, device: torch.device | str | None = None
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(float images normalised per channel, int64 labels)`` batches of in-memory images.

    Order (``shuffle``) and augmentation draw from ``generator`` only, so the
    same seeded generator gives the same batches. Batches are gathered and
    augmented where ``data`` lives, then sent to ``device`` as uint8 (4x less
    to copy than float) and normalised there; ``device=None`` keeps them where
    ``data`` is.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1 (got {batch_size})")
    n = len(data)
    here = data.x.device
    dev = here if device is None else torch.device(device)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order.to(here)
    m = (torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0).to(dev)
    s = (torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0).to(dev)
    pin = dev.type == "cuda" and here.type == "cpu"
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        x, y = data.x[idx], data.y[idx]
        if augment:
            x = augment_batch(x, data.flip, generator)
        if dev != here:
            if pin:
                x, y = x.pin_memory(), y.pin_memory()
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        yield (x.float() - m) / s, y
