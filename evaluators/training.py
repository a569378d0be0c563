"""Proxy training: train an Architecture from scratch for a short budget and score it.

The default recipe is AdamW (decoupled weight decay 0.05, none on BatchNorm
and biases), a linear warm-up then cosine decay to zero (stepped per batch),
label smoothing and light augmentation; SGD with Nesterov momentum is the
other optimiser, with its own defaults (``OPTIMIZER_DEFAULTS``). See
``PROXY_BUDGETS`` for the per-dataset budgets and how they were chosen.

Everything random draws from ``seed`` (weights via ``torch.manual_seed``,
batch order and augmentation via a CPU ``torch.Generator``, on every device)
and the thread count is set explicitly. On the CPU one seed and one thread
count give one accuracy, bit for bit. On a GPU the same seed gives the same
initial weights and batches, but cuDNN/cuBLAS kernels and atomics make the
trained weights differ in the last bits from run to run (see
``evaluators.device`` for what a seed guarantees where).

The device (``TrainConfig.device``: auto, cpu, cuda, cuda:N, mps), mixed
precision (``amp``) and memory format (``channels_last``) are resolved by
:func:`evaluators.device.placement`; an in-memory dataset that fits is moved
to the GPU once, so no batch is copied from the host.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from search_space import Architecture, build_model
from search_space.errors import ShuffleNASError
from search_space.io import atomic_write_bytes

from .base import AccuracyResult, EpochCallback
from .data import DatasetSpec, DataSplits, TensorData, batches, load_dataset
from .data.folder import ImageFiles, default_workers
from .device import (AMP_CHOICES, CHANNELS_LAST_CHOICES, DEVICE_FORMS, DeviceError, Placement, check_amp_setting,
                     check_channels_last_setting, check_device_setting, placement)


class TrainingError(ShuffleNASError):
    """A training request that cannot run as given (mismatched data, bad budget)."""


class TrainingDiverged(TrainingError):
    """The loss became NaN or infinite; the search records the trial as failed."""


OPTIMIZERS = ("sgd", "adamw")

#: Per optimiser, the value of each of these fields when the recipe does not set it.
#: AdamW: lr 0.01 and decoupled weight decay 0.05 (measured, see TrainConfig); momentum is beta1.
#: SGD (Nesterov): the usual lr 0.1, momentum 0.9 and weight decay 5e-4 -- 100x less than AdamW's,
#: because SGD's decay is not decoupled from the learning rate (issue 14: SGD at wd 0.05 reached
#: 48.7% on CIFAR-10 where AdamW reached 74.9%).
OPTIMIZER_DEFAULTS: dict[str, dict[str, float]] = {
    "adamw": {"lr": 0.01, "weight_decay": 0.05, "momentum": 0.9},
    "sgd": {"lr": 0.1, "weight_decay": 5e-4, "momentum": 0.9},
}

#: Where and how a training runs rather than what it learns: listed by to_dict() only when set,
#: so a recipe recorded before these settings existed still matches (resume, baselines_from).
PLACEMENT_DEFAULTS = {"device": "auto", "amp": "auto", "channels_last": "auto", "loader_workers": None}

#: On an accelerator the loss is read back (a device-to-host sync) once per this many steps
#: instead of every step; a NaN is still reported with the step it first appeared at.
SYNC_EVERY = 50


@dataclass(frozen=True)
class TrainConfig:
    """One proxy-training recipe; the defaults are AdamW + warm-up/cosine + label smoothing.

    ``lr``, ``weight_decay`` and ``momentum`` left at None take the chosen optimiser's
    defaults (``OPTIMIZER_DEFAULTS``); the resolved values are what the config holds and
    reports. Measured at 3 epochs, shufflenet_v2_x0_5_cifar, same seed, batch 32: digits
    98.6% val (AdamW lr 0.01) vs 95.8% (SGD+Nesterov lr 0.1); CIFAR-10 10k subset 44.0% vs
    45.8% on 1k val images, a tie. AdamW is kept because one learning rate must suit every
    candidate of a search, and SGD at lr 0.2 without warm-up collapsed to 12-33% on digits
    where AdamW never did."""

    epochs: int = 3
    steps: Optional[int] = None  # if set, stop after this many optimiser steps (overrides epochs)
    batch_size: int = 32
    lr: Optional[float] = None  # None: the optimiser's default
    momentum: Optional[float] = None  # SGD momentum, or AdamW's beta1; None: the optimiser's default
    weight_decay: Optional[float] = None  # decoupled for AdamW; None: the optimiser's default
    label_smoothing: float = 0.1
    warmup: float = 0.1  # share of all steps spent warming the learning rate up linearly from ~0
    seed: int = 0
    threads: int = 1
    augment: bool = True
    optimizer: str = "adamw"  # "adamw" or "sgd" (Nesterov)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (evaluators.device)
    amp: str = "auto"  # auto | off | bf16 | fp16: mixed precision (auto: on for CUDA only)
    channels_last: str = "auto"  # auto | true | false (auto: on for CUDA only)
    loader_workers: Optional[int] = None  # streamed (folder) data: loader processes; None = one per spare core

    def __post_init__(self):
        if self.optimizer in OPTIMIZERS:
            for k, v in OPTIMIZER_DEFAULTS[self.optimizer].items():
                if getattr(self, k) is None:
                    object.__setattr__(self, k, v)
        for name, canon, forms in (("device", check_device_setting, DEVICE_FORMS),
                                   ("amp", check_amp_setting, ", ".join(AMP_CHOICES)),
                                   ("channels_last", check_channels_last_setting, ", ".join(CHANNELS_LAST_CHOICES))):
            try:
                object.__setattr__(self, name, canon(getattr(self, name)))
            except DeviceError:
                raise TrainingError(f"invalid training setting {name}={getattr(self, name)!r} "
                                    f"(one of {forms})") from None
        num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
        checks = {"optimizer": self.optimizer in OPTIMIZERS, "epochs": self.epochs >= 1,
                  "batch_size": self.batch_size >= 1,
                  "lr": num(self.lr) and self.lr > 0,
                  "threads": self.threads >= 1, "steps": self.steps is None or self.steps >= 1,
                  "warmup": 0 <= self.warmup < 1, "label_smoothing": 0 <= self.label_smoothing < 1,
                  "momentum": num(self.momentum) and 0 <= self.momentum < 1,
                  "weight_decay": num(self.weight_decay) and self.weight_decay >= 0,
                  "loader_workers": self.loader_workers is None or self.loader_workers >= 0}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise TrainingError(f"invalid training setting {bad[0]}={getattr(self, bad[0])!r}")

    def to_dict(self, full: bool = False) -> dict:
        """The recipe as plain data; placement settings (device, amp, ...) only where not at
        their defaults, unless ``full``."""
        d = asdict(self)
        for k, default in PLACEMENT_DEFAULTS.items():
            if d[k] == default and not full:
                del d[k]
        return d

    def placement(self) -> Placement:
        """The resolved device, precision and memory format; DeviceError if the device is not here."""
        return placement(self.device, self.amp, self.channels_last)


#: Default proxy budget per dataset: ``subset`` (training images drawn, None = all) and
#: TrainConfig fields that differ from its defaults. Measured with shufflenet_v2_x0_5_cifar,
#: 1 thread, on 2 cores shared with other jobs (load average 7-9):
#: digits 3 epochs -> 98.6% val in 44 s (95.1% with augmentation, hence off);
#: fashion-mnist 2 epochs x 9k -> 79.8% val / 79.5% test in 149 s;
#: cifar10 3 epochs x 9k -> 44.0% val / 43.9% test in 321 s
#: (experiments/results/proxy_training_cifar10.txt).
#: mnist and folder are not measured here (no copy on this machine): set by analogy.
PROXY_BUDGETS: dict[str, dict] = {
    "digits": {"subset": None, "epochs": 3, "augment": False},
    "mnist": {"subset": 10_000, "epochs": 2, "augment": False},
    "fashion-mnist": {"subset": 10_000, "epochs": 2},
    "cifar10": {"subset": 10_000, "epochs": 3},
    "folder": {"subset": None, "epochs": 5},
}


def proxy_budget(spec: str | DatasetSpec) -> dict:
    """The default ``{"subset": ..., <TrainConfig field>: ...}`` for a dataset spec."""
    return dict(PROXY_BUDGETS[DatasetSpec.parse(spec).name])


def proxy_config(spec: str | DatasetSpec, **overrides) -> TrainConfig:
    """TrainConfig defaults + the dataset's budget + ``overrides`` (None values are ignored)."""
    fields = {k: v for k, v in proxy_budget(spec).items() if k != "subset"}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**fields)


def _check_fit(arch: Architecture, data: DataSplits) -> None:
    if arch.num_classes != data.num_classes:
        raise TrainingError(f"architecture {arch.name or ''} has num_classes={arch.num_classes} but "
                            f"dataset {data.name} has {data.num_classes} classes; set num_classes "
                            f"(or use --adapt-classes)")
    if (data.input_size, data.in_channels) != (arch.input_size, arch.in_channels):
        raise TrainingError(f"dataset {data.name} was loaded at {data.input_size}px x {data.in_channels} "
                            f"channels but the architecture expects {arch.input_size}px x "
                            f"{arch.in_channels}; load it with input_size={arch.input_size}, "
                            f"in_channels={arch.in_channels}")
    if len(data.val) == 0 or len(data.train) < 2:
        raise TrainingError(f"dataset {data.name} has {len(data.train)} train and {len(data.val)} "
                            f"validation images; both must be non-empty (raise subset or val_fraction)")


def _lr_factor(total: int, warmup: float) -> Callable[[int], float]:
    w = int(round(total * warmup))

    def factor(step: int) -> float:
        if step < w:
            return (step + 1) / (w + 1)
        return 0.5 * (1.0 + math.cos(math.pi * (step - w) / max(1, total - w)))

    return factor


def _model_placement(model: nn.Module) -> Placement:
    p = next(model.parameters(), None)
    return Placement(p.device if p is not None else torch.device("cpu"))


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorData | ImageFiles, mean, std, batch_size: int = 256, *,
             device: str | Placement | None = None, workers: Optional[int] = None) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on ``data`` in eval mode, no augmentation.

    ``device``: a setting (``cuda``, ...) or a Placement (its autocast is used): the model is
    moved there first (in place); None evaluates where the model is. Streamed images that
    cannot be read are left out of both numbers (and recorded in ``data.skipped``).
    """
    if len(data) == 0:
        raise TrainingError("cannot evaluate on an empty split")
    where = device if isinstance(device, Placement) else \
        placement(device, amp="off", channels_last="false") if device is not None else _model_placement(model)
    if device is not None:
        where.module(model)
    was_training = model.training
    model.eval()
    losses, hits, seen = [], [], 0
    for x, y in batches(data, batch_size, shuffle=False, augment=False, generator=None, mean=mean, std=std,
                        device=where.device, workers=workers):
        with where.autocast():
            out = model(where.inputs(x))
        losses.append(F.cross_entropy(out.float(), y, reduction="sum"))
        hits.append((out.argmax(1) == y).sum())
        seen += len(y)
    model.train(was_training)
    if seen == 0:
        raise TrainingError(f"no image of the {len(data)} to evaluate could be read")
    loss = 0.0
    for v in torch.stack(losses).tolist():  # one read-back; summed in order, as per-batch .item() was
        loss += v
    return int(torch.stack(hits).sum()) / seen, loss / seen


def _host_state(model: nn.Module) -> dict:
    """``model.state_dict()`` with every tensor on the CPU, contiguous (loads anywhere)."""
    sd = model.state_dict()
    for k, v in sd.items():
        if v.device.type != "cpu" or not v.is_contiguous():
            sd[k] = v.detach().cpu().contiguous()
    return sd


def save_checkpoint(model: nn.Module, path: str | Path) -> str:
    """Write the state_dict (CPU tensors) atomically; load with ``torch.load(path, weights_only=True)``."""
    buf = io.BytesIO()
    torch.save(_host_state(model), buf)
    return str(atomic_write_bytes(path, buf.getvalue()))


def _state_key(arch: Architecture, config: TrainConfig) -> str:
    recipe = {k: v for k, v in config.to_dict().items() if k not in ("device", "loader_workers")}
    return hashlib.sha1((arch.to_json() + repr(sorted(recipe.items()))).encode()).hexdigest()


def _save_state(path, arch, config, model, opt, sched, gen, history, step, seconds, scaler=None) -> None:
    buf = io.BytesIO()
    saved = {"key": _state_key(arch, config), "model": _host_state(model), "optimizer": opt.state_dict(),
             "schedule": sched.state_dict(), "generator": gen.get_state(), "history": history,
             "step": step, "seconds": seconds}
    if scaler is not None:
        saved["scaler"] = scaler.state_dict()
    torch.save(saved, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_state(path, arch: Architecture, config: TrainConfig) -> Optional[dict]:
    """The saved state of this very training (same architecture and recipe), else None."""
    if path is None or not Path(path).is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("key") != _state_key(arch, config):
        raise TrainingError(f"{path} holds the state of another training (architecture or recipe "
                            f"differ); delete it or use another output folder")
    return saved


def train(arch: Architecture, data: DataSplits, config: TrainConfig,
          callback: EpochCallback | None = None, checkpoint: str | Path | None = None,
          model: nn.Module | None = None, progress: Callable[[int, int, float], None] | None = None,
          state: str | Path | None = None) -> AccuracyResult:
    """Train ``arch`` (or the given ``model``) from its initial weights; validation accuracy after each epoch.

    ``callback(epoch, val_acc)`` returning True stops training after that epoch.
    ``progress(step, total_steps, loss)`` is called after every optimiser step
    (for a progress bar; on an accelerator in bursts, every ``SYNC_EVERY`` steps).
    Raises :class:`TrainingDiverged` on a NaN/inf loss, and
    :class:`~evaluators.device.DeviceError` before any work if ``config.device`` is not here.
    The model is trained on ``config.device`` and left there; the checkpoint holds CPU tensors.
    With ``state``, everything a resume needs (weights, optimiser, schedule, the data
    generator, history) is written there atomically after every epoch, and a later call
    with the same arguments continues after the last finished epoch: a long training
    killed mid-way loses at most one epoch and ends with the same weights as an
    uninterrupted run (on the CPU, same threads).
    """
    _check_fit(arch, data)
    where = config.placement()
    start = time.perf_counter()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        torch.manual_seed(config.seed)
        if model is None:
            model = build_model(arch)
        where.module(model)
        data = on_device(data, where)
        gen = torch.Generator().manual_seed(config.seed)
        full, rest = divmod(len(data.train), config.batch_size)
        per_epoch = full + (rest >= 2)  # a last batch of 1 is skipped: BatchNorm cannot train on it
        total = config.steps if config.steps is not None else per_epoch * config.epochs
        epochs = math.ceil(total / per_epoch)
        decay, no_decay = [], []
        for p in model.parameters():  # no weight decay on BN and biases
            (no_decay if p.dim() <= 1 else decay).append(p)
        groups = [{"params": decay, "weight_decay": config.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        if config.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
        else:
            opt = torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999))
        factor = _lr_factor(total, config.warmup)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        scaler = where.scaler()
        history, step, stopped, train_loss = [], 0, False, float("nan")
        val_acc, val_loss = 0.0, float("nan")
        first_epoch, spent = 1, 0.0
        saved = _load_state(state, arch, config)
        if saved is not None:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["schedule"])
            gen.set_state(saved["generator"])
            if scaler is not None and "scaler" in saved:
                scaler.load_state_dict(saved["scaler"])
            history, step, spent = saved["history"], saved["step"], saved["seconds"]
            first_epoch = history[-1]["epoch"] + 1
            val_acc, val_loss = history[-1]["val_acc"], history[-1]["val_loss"]
            train_loss = history[-1]["train_loss"]
        start -= spent  # a resumed training reports its whole time
        # The CPU reads every loss back at once (free there); an accelerator keeps them on the
        # device and reads SYNC_EVERY at a time, so the host can queue the next steps meanwhile.
        sync_every = 1 if where.is_cpu else SYNC_EVERY
        pending: list[tuple[int, torch.Tensor, int]] = []  # (step, loss on the device, images)
        totals = {"loss": 0.0, "seen": 0}

        def drain(epoch: int) -> None:
            values = torch.stack([loss for _, loss, _ in pending]).tolist() if pending else []
            for (s, _, n), v in zip(pending, values):
                if not math.isfinite(v):
                    raise TrainingDiverged(
                        f"{arch.name or 'architecture'}: training loss became {v} at epoch {epoch}, step {s} "
                        f"(lr {config.lr * factor(s - 1):.3g}); lower the learning rate")
                totals["loss"] += v * n
                totals["seen"] += n
                if progress is not None:
                    progress(s, total, v)
            pending.clear()

        model.train()
        train_seconds = 0.0
        for epoch in range(first_epoch, epochs + 1):
            totals["loss"], totals["seen"] = 0.0, 0
            t_epoch = time.perf_counter()
            for x, y in batches(data.train, config.batch_size, shuffle=True, augment=config.augment,
                                generator=gen, mean=data.mean, std=data.std, device=where.device,
                                workers=config.loader_workers):
                if len(y) < 2:
                    continue
                with where.autocast():
                    loss = F.cross_entropy(model(where.inputs(x)), y, label_smoothing=config.label_smoothing)
                if sync_every == 1 and not torch.isfinite(loss):  # before the step, as it always was
                    raise TrainingDiverged(
                        f"{arch.name or 'architecture'}: training loss became {loss.item()} at epoch "
                        f"{epoch}, step {step + 1} (lr {sched.get_last_lr()[0]:.3g}); lower the learning rate")
                opt.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    opt.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                sched.step()
                step += 1
                pending.append((step, loss.detach(), len(y)))
                if len(pending) >= sync_every:
                    drain(epoch)
                if step >= total:
                    break
            drain(epoch)
            train_seconds += time.perf_counter() - t_epoch
            train_loss = totals["loss"] / max(1, totals["seen"])
            val_acc, val_loss = evaluate(model, data.val, data.mean, data.std, device=where,
                                         workers=config.loader_workers)
            if not math.isfinite(val_loss):
                raise TrainingDiverged(f"{arch.name or 'architecture'}: validation loss is {val_loss} "
                                       f"after epoch {epoch}; lower the learning rate")
            history.append({"epoch": epoch, "train_loss": round(train_loss, 5), "val_acc": val_acc,
                            "val_loss": round(val_loss, 5), "seconds": round(time.perf_counter() - start, 3)})
            if state is not None:
                _save_state(state, arch, config, model, opt, sched, gen, history, step,
                            time.perf_counter() - start, scaler)
            if callback is not None and callback(epoch, val_acc) and step < total:
                stopped = True
                break
        ckpt = save_checkpoint(model, checkpoint) if checkpoint is not None else None
    finally:
        torch.set_num_threads(threads_before)
    extra = {"steps": step, "train_images": len(data.train), "val_images": len(data.val),
             "train_loss": train_loss, "history": history, "dataset": data.name, "config": config.to_dict(),
             "placement": where.describe(), "train_seconds": round(train_seconds, 3)}
    if data.streamed:
        skipped = {**data.train.skipped, **data.val.skipped}
        extra["loader_workers"] = config.loader_workers if config.loader_workers is not None else default_workers()
        extra["skipped_images"] = len(skipped)
        extra["skipped"] = [f"{p}: {why}" for p, why in list(skipped.items())[:10]]
    return AccuracyResult(
        accuracy=val_acc, loss=val_loss, seconds=time.perf_counter() - start, epochs=len(history),
        stopped_early=stopped, checkpoint=ckpt, extra=extra)


def on_device(data: DataSplits, where: Placement) -> DataSplits:
    """``data`` with its train/validation images on ``where.device`` when they fit there (see
    ``Placement.holds``); else as it is, and each batch is copied to the device on its way.
    Streamed data is never moved (it is read from disk per batch)."""
    if where.is_cpu or data.streamed:
        return data
    if where.holds(data.train.nbytes + data.val.nbytes):
        return data.to(where.device)
    return data


def arch_key(arch: Architecture) -> str:
    """A short stable name for an architecture's checkpoint file."""
    return hashlib.sha1(arch.to_json().encode()).hexdigest()[:12]


class ProxyTrainingEvaluator:
    """:class:`~evaluators.base.AccuracyEvaluator` that trains each candidate for a short budget.

    The dataset is loaded lazily, once per (input size, channels), at the
    architecture's input; with ``adapt_classes`` a candidate's classifier is
    resized to the dataset's class count instead of raising. On a GPU an
    in-memory dataset that fits is moved there once and kept for every later
    candidate (that copy is not pickled: a Ray worker makes its own).
    """

    name = "proxy_training"

    def __init__(self, data: str | DataSplits, config: TrainConfig, *, subset: Optional[int] = None,
                 val_fraction: float = 0.1, seed: int = 0, checkpoint_dir: str | Path | None = None,
                 adapt_classes: bool = False, root: Optional[str] = None):
        if isinstance(data, str):
            DatasetSpec.parse(data)  # fail now, not at the first trial
        self.data, self.config = data, config
        self.subset, self.val_fraction, self.seed, self.root = subset, val_fraction, seed, root
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.adapt_classes = adapt_classes
        self._cache: dict[tuple[int, int], DataSplits] = {}
        self._on_device: dict[tuple[int, int, str], DataSplits] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_on_device"] = {}  # device tensors stay in this process
        return state

    @classmethod
    def default(cls, spec: str, *, checkpoint_dir: str | Path | None = None, adapt_classes: bool = False,
                **config_overrides) -> "ProxyTrainingEvaluator":
        """The dataset's default proxy budget (``PROXY_BUDGETS``), with TrainConfig fields overridden."""
        subset = config_overrides.pop("subset", proxy_budget(spec)["subset"])
        return cls(spec, proxy_config(spec, **config_overrides), subset=subset, checkpoint_dir=checkpoint_dir,
                   adapt_classes=adapt_classes)

    def splits(self, input_size: int, in_channels: int = 3) -> DataSplits:
        if isinstance(self.data, DataSplits):
            return self.data
        key = (input_size, in_channels)
        if key not in self._cache:
            self._cache[key] = load_dataset(self.data, input_size=input_size, in_channels=in_channels,
                                            subset=self.subset, val_fraction=self.val_fraction,
                                            seed=self.seed, root=self.root)
        return self._cache[key]

    def evaluate(self, arch: Architecture, callback: EpochCallback | None = None) -> AccuracyResult:
        where = self.config.placement()  # an unavailable device fails before any data is loaded
        data = self.splits(arch.input_size, arch.in_channels)
        key = (arch.input_size, arch.in_channels, str(where.device))
        if not where.is_cpu:
            if key not in self._on_device:
                self._on_device[key] = on_device(data, where)
            data = self._on_device[key]
        if self.adapt_classes and arch.num_classes != data.num_classes:
            arch = arch.replace(num_classes=data.num_classes)
        ckpt = self.checkpoint_dir / f"{arch_key(arch)}.pt" if self.checkpoint_dir is not None else None
        return train(arch, data, self.config, callback=callback, checkpoint=ckpt)


__all__ = ["TrainConfig", "train", "evaluate", "save_checkpoint", "ProxyTrainingEvaluator", "TrainingDiverged",
           "TrainingError", "PROXY_BUDGETS", "proxy_budget", "proxy_config", "arch_key", "on_device",
           "OPTIMIZERS", "OPTIMIZER_DEFAULTS"]
