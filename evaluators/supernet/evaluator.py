"""Scoring candidates with a trained supernet: inherit weights, re-estimate BN, measure val accuracy."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from search_space import Architecture

from ..base import AccuracyResult, EpochCallback
from .bn import recalibrate_bn
from .network import Supernet, extract_subnet


def _fixed_batches(data, n_batches: int | None, batch_size: int, *, shuffle: bool, seed: int, mean, std):
    """The first ``n_batches`` (all if None) normalised batches of ``data``, kept in memory for reuse."""
    from evaluators.data import batches

    gen = torch.Generator().manual_seed(seed)
    out = []
    for b in batches(data, batch_size, shuffle=shuffle, augment=False, generator=gen, mean=mean, std=std):
        if n_batches is not None and len(out) >= n_batches:
            break
        out.append(b)
    return out


@torch.no_grad()
def _accuracy(model, val_batches) -> tuple[float, float]:
    model.eval()
    correct = seen = 0
    loss = 0.0
    for x, y in val_batches:
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    return correct / max(1, seen), loss / max(1, seen)


def score_model(supernet: Supernet, arch: Architecture, data, *, bn_batches: int, batch_size: int,
                seed: int = 0) -> tuple[float, float]:
    """(val accuracy, val loss) of ``arch`` with inherited weights after BN recalibration."""
    model = extract_subnet(supernet, arch)
    recalibrate_bn(model, _fixed_batches(data.train, bn_batches, batch_size, shuffle=True, seed=seed,
                                         mean=data.mean, std=data.std))
    return _accuracy(model, _fixed_batches(data.val, None, 256, shuffle=False, seed=seed,
                                           mean=data.mean, std=data.std))


class SupernetEvaluator:
    """AccuracyEvaluator backed by a trained supernet: no training per candidate.

    The same ``bn_batches`` training batches (seeded, not augmented) re-estimate
    every candidate's BatchNorm statistics, then accuracy is measured on the
    validation split (its first ``val_subset`` images if given). ``callback`` is
    accepted for the protocol but never called: there are no epochs.
    """

    name = "supernet"

    def __init__(self, checkpoint: str | Path | Supernet, data, *, bn_batches: int = 20, batch_size: int = 64,
                 val_subset: int | None = None, seed: int = 0, threads: int | None = None):
        from .checkpoint import load_supernet

        self.checkpoint = str(checkpoint) if not isinstance(checkpoint, Supernet) else None
        self.supernet = checkpoint if isinstance(checkpoint, Supernet) else load_supernet(checkpoint)
        self.supernet.eval()
        self._data, self.bn_batches, self.batch_size = data, bn_batches, batch_size
        self.val_subset, self.seed, self.threads = val_subset, seed, threads
        self._bn = self._val = None

    def _prepare(self) -> None:
        if self._bn is not None:
            return
        from .config import SupernetConfig
        from .train import load_data

        cfg = getattr(self.supernet, "config", SupernetConfig())
        data = load_data(self._data, self.supernet.space, cfg)
        val = data.val if self.val_subset is None else data.val.subset(torch.arange(min(self.val_subset, len(data.val))))
        self._bn = _fixed_batches(data.train, self.bn_batches, self.batch_size, shuffle=True, seed=self.seed,
                                  mean=data.mean, std=data.std)
        self._val = _fixed_batches(val, None, 256, shuffle=False, seed=self.seed, mean=data.mean, std=data.std)

    def evaluate(self, arch: Architecture, callback: EpochCallback | None = None) -> AccuracyResult:
        if self.threads:
            torch.set_num_threads(self.threads)
        self.supernet.check(arch)
        self._prepare()
        t0 = time.perf_counter()
        model = recalibrate_bn(extract_subnet(self.supernet, arch), self._bn)
        acc, loss = _accuracy(model, self._val)
        return AccuracyResult(accuracy=acc, loss=loss, seconds=time.perf_counter() - t0, epochs=0,
                              extra={"evaluator": "supernet", "checkpoint": self.checkpoint,
                                     "bn_batches": len(self._bn), "val_images": sum(len(y) for _, y in self._val)})
