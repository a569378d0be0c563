"""Scoring candidates with a trained supernet: inherit weights, re-estimate BN, measure val accuracy.

The BatchNorm recalibration images are read once and reused for every candidate. The validation
split is kept in memory too when it is held there; a streamed one (``folder:PATH``) is read
again for every candidate, by ``loader_workers`` processes, and never held.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from search_space import Architecture, SearchSpace

from ..base import AccuracyResult, EpochCallback
from ..device import Placement, placement
from .bn import recalibrate_bn
from .checkpoint import load_supernet, space_outside
from .config import SupernetConfig
from .data import check_same_dataset, fixed_batches, load_data, stream_split
from .network import Supernet, SupernetError, extract_subnet

#: Default BatchNorm recalibration set: 20 batches of 64, what the evaluator used before it was counted in images.
BN_IMAGES = 1280
#: Validation batch size (no gradients: as large as memory allows at no cost to the result)
VAL_BATCH = 256


@torch.no_grad()
def _accuracy(model, val_batches, place: Placement) -> tuple[float, float, int]:
    """(accuracy, mean loss, images seen) of ``model`` over ``val_batches``."""
    model.eval()
    correct = seen = 0
    loss = 0.0
    for x, y in val_batches:
        x, y = place.inputs(x), y.to(place.device)
        with place.autocast():
            logits = model(x)
        loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    return correct / max(1, seen), loss / max(1, seen), seen


def _recalibrated(model, bn_batches, place: Placement):
    """``model`` on the device with BN statistics re-estimated on ``bn_batches`` (kept as trained if empty)."""
    model = place.module(model)
    if not bn_batches:  # 0 images: the running statistics the supernet kept while training (all paths mixed)
        return model.eval()
    with place.autocast():
        return recalibrate_bn(model, [place.inputs(x) for x, _ in bn_batches])


def score_model(supernet: Supernet, arch: Architecture, data, *, bn_images: int, batch_size: int,
                seed: int = 0, place: Placement | None = None, workers: int | None = None) -> tuple[float, float]:
    """(val accuracy, val loss) of ``arch`` with inherited weights after BN recalibration on ``bn_images``."""
    place = place or placement("cpu")
    model = extract_subnet(supernet, arch)
    bn = fixed_batches(data.train, bn_images, batch_size, shuffle=True, seed=seed, mean=data.mean, std=data.std,
                       workers=workers)
    val = stream_split(data.val, VAL_BATCH, mean=data.mean, std=data.std, device=place.device, workers=workers)
    return _accuracy(_recalibrated(model, bn, place), val, place)[:2]


class SupernetEvaluator:
    """AccuracyEvaluator backed by a trained supernet: no training per candidate.

    The same ``bn_images`` training images (seeded, not augmented, in batches of
    ``batch_size``) re-estimate every candidate's BatchNorm statistics (0: keep
    the statistics the supernet tracked while training), then accuracy is
    measured on the validation split (its first ``val_subset`` images if given).
    ``bn_batches`` is the older way to say ``bn_images = bn_batches * batch_size``.
    ``space``, if given, must lie within the space the supernet was trained on, and
    ``data`` the dataset (else a one-line SupernetError naming the difference).
    ``device``/``amp``/``channels_last``: see :mod:`evaluators.device`. ``loader_workers``: processes
    that decode a streamed (``folder:``) dataset (None: one per spare core); such a validation split
    is read again for every candidate, not held in memory, and unreadable images are left out and
    counted (``skipped_images`` in the result).
    ``callback`` is accepted for the protocol but never called: there are no epochs.
    """

    name = "supernet"

    def __init__(self, checkpoint: str | Path | Supernet, data, *, bn_images: int | None = None,
                 bn_batches: int | None = None, batch_size: int = 64, val_subset: int | None = None,
                 seed: int = 0, threads: int | None = None, device: str = "auto", amp: str = "auto",
                 channels_last: str = "auto", space: SearchSpace | None = None,
                 loader_workers: int | None = None):
        if bn_images is not None and bn_batches is not None:
            raise SupernetError("give bn_images or bn_batches, not both")
        if min(bn_images or 0, bn_batches or 0) < 0:
            raise SupernetError("bn_images / bn_batches must be >= 0")
        if loader_workers is not None and loader_workers < 0:
            raise SupernetError(f"loader_workers must be >= 0 (got {loader_workers})")
        self.checkpoint = str(checkpoint) if not isinstance(checkpoint, Supernet) else None
        self.supernet = checkpoint if isinstance(checkpoint, Supernet) else load_supernet(checkpoint)
        self.supernet.eval()
        where = self.checkpoint or "the supernet"
        if space is not None:
            diff = space_outside(space, self.supernet.space)
            if diff:
                raise SupernetError(f"{where} was trained for a space that does not contain {space.name!r}: "
                                    f"{'; '.join(diff[:3])}; train a supernet for this space")
        check_same_dataset(getattr(self.supernet, "data", ""), data, where)
        self.bn_images = bn_images if bn_images is not None else (
            bn_batches * batch_size if bn_batches is not None else BN_IMAGES)
        self._data, self.batch_size = data, batch_size
        self.val_subset, self.seed, self.threads = val_subset, seed, threads
        self.loader_workers = loader_workers
        self.place = placement(device, amp, channels_last)
        self._bn = self._val = self._splits = self._val_split = None

    def _prepare(self) -> None:
        if self._bn is not None:
            return
        cfg = getattr(self.supernet, "config", SupernetConfig())
        data = self._splits = load_data(self._data, self.supernet.space, cfg)
        val = data.val if self.val_subset is None else data.val.subset(torch.arange(min(self.val_subset, len(data.val))))
        self._val_split = val
        on = lambda bs: [(self.place.inputs(x), y.to(self.place.device)) for x, y in bs]  # moved once, reused
        self._bn = on(fixed_batches(data.train, self.bn_images, self.batch_size, shuffle=True, seed=self.seed,
                                    mean=data.mean, std=data.std, workers=self.loader_workers))
        if data.streamed:
            self._val = lambda: stream_split(val, VAL_BATCH, mean=data.mean, std=data.std, device=self.place.device,
                                             workers=self.loader_workers)
        else:
            batches = on(fixed_batches(val, None, VAL_BATCH, shuffle=False, seed=self.seed, mean=data.mean,
                                       std=data.std))
            self._val = lambda: batches

    def evaluate(self, arch: Architecture, callback: EpochCallback | None = None) -> AccuracyResult:
        if self.threads:
            torch.set_num_threads(self.threads)
        self.supernet.check(arch)
        self._prepare()
        t0 = time.perf_counter()
        model = _recalibrated(extract_subnet(self.supernet, arch), self._bn, self.place)
        acc, loss, seen = _accuracy(model, self._val(), self.place)
        extra = {"evaluator": "supernet", "checkpoint": self.checkpoint, "bn_images": sum(len(y) for _, y in self._bn),
                 "val_images": seen, **self.place.describe()}
        data = self._splits
        if data.streamed:
            skipped = {**data.train.skipped, **self._val_split.skipped}
            extra["skipped_images"] = len(skipped)
            extra["skipped"] = [f"{p}: {why}" for p, why in list(skipped.items())[:10]]
        return AccuracyResult(accuracy=acc, loss=loss, seconds=time.perf_counter() - t0, epochs=0, extra=extra)
