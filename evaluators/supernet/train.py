"""Training the supernet: one uniformly sampled path per step (SPOS), resumable per epoch."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from search_space import Architecture, SearchSpace, profile

from .checkpoint import read_checkpoint, save_checkpoint
from .config import SupernetConfig
from .network import Supernet, SupernetError


class PathSampler:
    """Uniform choice per dimension from a torch.Generator, optionally kept inside a MACs band."""

    def __init__(self, space: SearchSpace, flops_band: Optional[tuple[float, float]] = None,
                 max_tries: int = 2000):
        self.space, self.band, self.max_tries = space, flops_band, max_tries

    def sample(self, gen: torch.Generator) -> Architecture:
        for _ in range(self.max_tries):
            arch = self.space.decode({d.name: d.choices[int(torch.randint(len(d.choices), (1,), generator=gen))]
                                      for d in self.space.open_dimensions})
            if self.band is None or self.band[0] <= profile(arch).macs <= self.band[1]:
                return arch
        lo, hi = self.band
        raise SupernetError(f"no architecture with MACs in [{lo:.4g}, {hi:.4g}] found in {self.max_tries} "
                            f"samples of space {self.space.name!r}; widen --flops-band")


def load_data(data, space: SearchSpace, config: SupernetConfig):
    """``data`` as DataSplits at the space's input size (a spec string is loaded here)."""
    from evaluators.data import load_dataset

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


def _lr(config: SupernetConfig, step: int, total: int) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    t = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train_supernet(space: SearchSpace, data, config: SupernetConfig = SupernetConfig(), *,
                   out: str | Path, progress: bool = True, callback=None) -> Path:
    """Train a :class:`Supernet` of ``space`` and save it to ``out`` after every epoch.

    If ``out`` already holds a checkpoint of the same space and config, training
    resumes after its last finished epoch (each epoch's batches and paths are
    drawn from generators seeded by (seed, epoch), so a resumed run equals an
    uninterrupted one). ``callback(epoch, val_acc)`` gets the validation
    accuracy of one fixed reference path (BN recalibrated); returning True stops.
    """
    from evaluators.data import batches

    from .evaluator import score_model

    torch.set_num_threads(config.threads)
    out = Path(out)
    data = load_data(data, space, config)
    torch.manual_seed(config.seed)
    net = Supernet(space, affine_bn=config.affine_bn)
    decay = [p for n, p in net.weights.items() if p.dim() > 1]
    no_decay = [p for n, p in net.weights.items() if p.dim() <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=config.lr, momentum=config.momentum, nesterov=True)
    start, history = 0, []
    if out.exists():
        state = read_checkpoint(out)
        if state["space"] != space.to_dict():
            raise SupernetError(f"{out} holds a supernet of another space; choose another --out or delete it")
        if not SupernetConfig.from_dict(state["config"]).same_run(config):
            raise SupernetError(f"{out} was trained with other settings ({state['config']}); "
                                f"choose another --out or delete it")
        net.load_state_dict(state["state_dict"])
        if state["optimizer"] is not None:
            opt.load_state_dict(state["optimizer"])
        start, history = state["epoch"], list(state["history"])
    sampler = PathSampler(space, config.flops_band)
    steps_per_epoch = len(data.train) // config.batch_size
    if steps_per_epoch < 1:
        raise SupernetError(f"training split has {len(data.train)} images, fewer than one batch of "
                            f"{config.batch_size}; lower --batch-size or raise --subset")
    total = steps_per_epoch * config.epochs
    reference = space.sample(seed=config.seed)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=start * steps_per_epoch, desc="supernet", unit="step",
                   file=sys.stderr, dynamic_ncols=True)
    try:
        for epoch in range(start, config.epochs):
            t0 = time.perf_counter()
            net.train()
            data_gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
            path_gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch + 500_000)
            seen = correct = 0
            loss_sum = 0.0
            for i, (x, y) in enumerate(batches(data.train, config.batch_size, shuffle=True,
                                               augment=config.augment, generator=data_gen,
                                               mean=data.mean, std=data.std, drop_last=True)):
                step = epoch * steps_per_epoch + i
                for g in opt.param_groups:
                    g["lr"] = _lr(config, step, total)
                arch = sampler.sample(path_gen)
                logits = net(x, arch)
                loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                if not torch.isfinite(loss):
                    raise SupernetError(f"supernet loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; "
                                        f"lower the learning rate (--lr)")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_([p for p in net.weights.values() if p.grad is not None],
                                                   config.grad_clip)
                opt.step()
                seen += len(y)
                correct += int((logits.argmax(1) == y).sum())
                loss_sum += loss.item() * len(y)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
            record = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                      "seconds": time.perf_counter() - t0}
            stop = False
            if callback is not None:
                acc, _ = score_model(net, reference, data, bn_batches=10, batch_size=config.batch_size,
                                     seed=config.seed)
                record["reference_val_acc"] = acc
                stop = bool(callback(epoch + 1, acc))
            history.append(record)
            save_checkpoint(out, net, config, epoch=epoch + 1, optimizer=opt.state_dict(), history=history,
                            data=data.name)
            if stop:
                break
    finally:
        if bar is not None:
            bar.close()
    return out
