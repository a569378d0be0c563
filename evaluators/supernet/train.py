"""Training the supernet, in one process or as one of several distributed workers, resumable per epoch.

A step trains the paths :meth:`PathSampler.step_paths` names: one uniformly
sampled path (SPOS), or the sandwich (largest on the labels, then smallest and
random paths on the largest's soft labels, BigNAS's in-place distillation;
the loss is AttentiveNAS's soft cross-entropy), gradients summed over the
paths before one SGD step. The learning rate warms up linearly and is annealed
to 0 at the last step of the whole planned budget (``config.epochs``), so a
run that is stopped and resumed follows the same schedule (SPOS decays
linearly over its total iterations; cosine is the default here).

The same :class:`SupernetRun` serves every worker of a distributed run (see
:mod:`evaluators.supernet.distributed`): paths are drawn from generators seeded
by the step, batches are shards of one seeded global batch, and gradients are
averaged with one all-reduce per step, so one worker computes exactly what
the single-process trainer does.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from search_space import SearchSpace

from .checkpoint import read_checkpoint, save_checkpoint, space_differences
from .config import SupernetConfig
from .data import check_same_dataset, load_data, train_batches
from ..device import placement
from .evaluator import score_model
from .network import Supernet, SupernetError
from .sampling import PathSampler


def lr_at(config: SupernetConfig, step: int, total: int) -> float:
    """Learning rate at ``step`` of ``total``: linear warm-up, then cosine or linear to 0 at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    t = min(1.0, (step - config.warmup_steps + 1) / max(1, total - config.warmup_steps))
    return config.lr * (0.5 * (1 + math.cos(math.pi * t)) if config.schedule == "cosine" else 1.0 - t)


def soft_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a distribution (AttentiveNAS's KLLossSoft, up to the teacher's entropy)."""
    return -(soft_targets * F.log_softmax(logits, dim=1)).sum(1).mean()


def flat_all_reduce_mean(grads: list[torch.Tensor], world: int) -> None:
    """Average ``grads`` over the process group in one collective (flattened, then copied back)."""
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def check_resumable(state: dict, space: SearchSpace, config: SupernetConfig, data, where: str) -> None:
    """One-line SupernetError unless checkpoint dict ``state`` is a run of ``space``, ``config`` and ``data``."""
    diff = space_differences(space.to_dict(), state["space"])
    if diff:
        raise SupernetError(f"{where} holds a supernet of another space ({'; '.join(diff[:3])}); "
                            f"choose another --out or delete it")
    stored = SupernetConfig.from_dict(state["config"])
    if not stored.same_run(config):
        raise SupernetError(f"{where} was trained with other settings ({'; '.join(config.differences(stored))}); "
                            f"choose another --out or delete it")
    check_same_dataset(state.get("data", ""), data, where)


class SupernetRun:
    """One training run's weights, optimizer, sampler and schedule, for one worker of ``world``.

    Why not DistributedDataParallel: each step trains a different path (and the
    sandwich runs several backward passes per step), so DDP would need
    ``find_unused_parameters=True`` (a graph traversal every backward) and
    ``no_sync`` around all but the last path. Every worker draws the same paths,
    so the same parameters have gradients everywhere, and one flattened
    all-reduce after the last backward gives the averaged gradient DDP would.
    """

    def __init__(self, space: SearchSpace, data, config: SupernetConfig, *, rank: int = 0, world: int = 1,
                 device: torch.device | str | None = None):
        self.space, self.data, self.config = space, data, config
        self.rank, self.world = rank, world
        self.place = placement(config.device if device is None else str(device), config.amp, config.channels_last)
        self.device = self.place.device
        if self.device.type != "cpu" and not data.streamed and data.train.device.type == "cpu" and \
                self.place.holds(data.train.nbytes + data.val.nbytes):
            data = self.data = data.to(self.device)  # a dataset that fits lives on the GPU: no copy per batch
        if config.batch_size % world:
            raise SupernetError(f"batch size {config.batch_size} does not split evenly over {world} workers; "
                                f"use a multiple of {world}")
        torch.manual_seed(config.seed)  # same initial weights in every worker
        self.net = self.place.module(Supernet(space, affine_bn=config.affine_bn))
        self.scaler = self.place.scaler()  # fp16 only
        params = list(self.net.weights.values())
        self.opt = torch.optim.SGD([{"params": [p for p in params if p.dim() > 1], "weight_decay": config.weight_decay},
                                    {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}],
                                   lr=config.lr, momentum=config.momentum, nesterov=True)
        self.sampler = PathSampler.from_config(space, config)
        self.steps_per_epoch = len(data.train) // config.batch_size
        if self.steps_per_epoch < 1:
            raise SupernetError(f"training split has {len(data.train)} images, fewer than one batch of "
                                f"{config.batch_size}; lower --batch-size or raise --subset")
        self.total = self.steps_per_epoch * config.epochs
        self.epoch, self.history = 0, []

    # ---- state --------------------------------------------------------------
    def load_state(self, state: dict, where: str) -> None:
        """Continue from checkpoint dict ``state`` (refused if another space, config or dataset)."""
        check_resumable(state, self.space, self.config, self.data, where)
        self.net.load_state_dict(state["state_dict"])
        if state["optimizer"] is not None:
            self.opt.load_state_dict(state["optimizer"])
        self.epoch, self.history = state["epoch"], list(state["history"])

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, self.net, self.config, epoch=self.epoch, optimizer=self.opt.state_dict(),
                               history=self.history, data=self.data.name)

    # ---- training -------------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor, step: int) -> dict:
        cfg = self.config
        for g in self.opt.param_groups:
            g["lr"] = lr_at(cfg, step, self.total)
        self.opt.zero_grad(set_to_none=True)
        soft, out = None, {"loss": 0.0, "paths": 0}
        for role, arch in self.sampler.step_paths(cfg, step, self.total):
            with self.place.autocast():
                logits = self.net(x, arch).float()
            if soft is not None and role != "largest":
                loss = soft_cross_entropy(logits, soft)
            else:
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise SupernetError(f"supernet loss became {loss.item()} at step {step + 1} ({role} path); "
                                    f"lower the learning rate (--lr)")
            (loss if self.scaler is None else self.scaler.scale(loss)).backward()
            if role == "largest" and cfg.strategy == "sandwich" and cfg.distill:
                soft = logits.detach().softmax(1)
            out["loss"] += loss.item()
            out["paths"] += 1
            out[f"{role}_correct"] = out.get(f"{role}_correct", 0) + int((logits.argmax(1) == y).sum())
            out[f"{role}_seen"] = out.get(f"{role}_seen", 0) + len(y)
        grads = [p.grad for p in self.net.weights.values() if p.grad is not None]
        if self.world > 1:  # before unscaling: every worker then sees the same infs and skips the same steps
            flat_all_reduce_mean(grads, self.world)
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(grads, cfg.grad_clip)
        if self.scaler is None:
            self.opt.step()
        else:
            self.scaler.step(self.opt)
            self.scaler.update()
        return out

    def train_epoch(self, progress: Optional[Callable[[dict], None]] = None) -> dict:
        """Train epoch ``self.epoch + 1``; returns (and appends to history) its record, summed over workers."""
        self.net.train()
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        for i, x, y, skipped in train_batches(self.data, self.config, self.epoch, rank=self.rank, world=self.world,
                                              device=self.device):
            out = self.step(self.place.inputs(x), y.to(self.device, non_blocking=True),
                            self.epoch * self.steps_per_epoch + i)
            out["loss"] *= len(y) / out["paths"]
            out["images"] = len(y)
            out["skipped"] = skipped
            for k, v in out.items():
                if k != "paths":
                    sums[k] = sums.get(k, 0.0) + v
            if progress is not None:
                progress(sums)
        if self.world > 1:
            keys = sorted(sums)
            t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            sums = dict(zip(keys, t.tolist()))
        seconds = time.perf_counter() - t0
        role = "random" if "random_seen" in sums else "largest"
        self.epoch += 1
        record = {"epoch": self.epoch, "train_loss": sums["loss"] / sums["images"],
                  "train_acc": sums[f"{role}_correct"] / sums[f"{role}_seen"],
                  "seconds": seconds, "images": int(sums["images"]), "images_per_s": sums["images"] / seconds,
                  "workers": self.world, "lr_end": lr_at(self.config, self.epoch * self.steps_per_epoch - 1,
                                                         self.total)}
        if "largest_seen" in sums and role != "largest":
            record["largest_train_acc"] = sums["largest_correct"] / sums["largest_seen"]
        if self.data.streamed:
            record["skipped_images"] = int(sums["skipped"])  # unreadable files left out of their batches
        self.history.append(record)
        return record


def train_supernet(space: SearchSpace, data, config: SupernetConfig = SupernetConfig(), *,
                   out: str | Path, progress: bool = True, callback=None) -> Path:
    """Train a :class:`Supernet` of ``space`` in this process and save it to ``out`` after every epoch.

    If ``out`` already holds a checkpoint of the same space, dataset and config,
    training resumes after its last finished epoch (batches, augmentation and
    paths are drawn from generators seeded by the step, so a resumed run equals
    an uninterrupted one bit for bit). ``callback(epoch, val_acc)`` gets the
    validation accuracy of one fixed reference path (BN recalibrated); returning
    True stops (the schedule stays the one planned for ``config.epochs``).
    """
    placement(config.device, config.amp, config.channels_last)  # a device that is not here: one line, first
    torch.set_num_threads(config.threads)
    out = Path(out)
    data = load_data(data, space, config)
    run = SupernetRun(space, data, config)
    if out.exists():
        run.load_state(read_checkpoint(out), str(out))
    reference = space.sample(seed=config.seed)
    bar = None
    if progress:
        bar = tqdm(total=run.total, initial=run.epoch * run.steps_per_epoch, desc="supernet", unit="step",
                   file=sys.stderr, dynamic_ncols=True)
    try:
        while run.epoch < config.epochs:
            def show(s, epoch=run.epoch + 1):
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{s['loss'] / s['images']:.3f}")

            record = run.train_epoch(show if bar is not None else None)
            stop = False
            if callback is not None:
                acc, _ = score_model(run.net, reference, data, bn_images=10 * config.batch_size,
                                     batch_size=config.batch_size, seed=config.seed, place=run.place,
                                     workers=config.loader_workers)
                record["reference_val_acc"] = acc
                stop = bool(callback(run.epoch, acc))
            run.save(out)
            if stop:
                break
    finally:
        if bar is not None:
            bar.close()
    return out
