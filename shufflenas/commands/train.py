"""``train``: proxy-train one architecture on a dataset and report validation (optionally test) accuracy."""

from __future__ import annotations

from pathlib import Path

import click
import torch
from tqdm import tqdm

from evaluators.data import DatasetSpec, load_dataset
from evaluators.device import AMP_CHOICES, CHANNELS_LAST_CHOICES, DEVICE_FORMS
from evaluators.training import (OPTIMIZER_DEFAULTS, OPTIMIZERS, TrainConfig, TrainingError, evaluate, proxy_budget,
                                 proxy_config, train as run_training)
from search_space import build_model
from search_space.io import atomic_write_json

from ..output import arch_options, emit, resolve_arch


def _defaults(field: str) -> str:
    return ", ".join(f"{v[field]:g} for {name}" for name, v in OPTIMIZER_DEFAULTS.items())


@click.command()
@arch_options
@click.option("--data", "data_spec", required=True, metavar="SPEC",
              help="digits | cifar10[:PATH] | fashion-mnist[:PATH] | mnist[:PATH] | folder:PATH")
@click.option("--epochs", type=click.IntRange(1), help="epochs (default: the dataset's proxy budget)")
@click.option("--steps", type=click.IntRange(1), help="stop after this many optimiser steps instead")
@click.option("--subset", type=click.IntRange(0), help="images drawn from the training set, 0 = all "
              "(default: the dataset's proxy budget)")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True, min_open=True), default=0.1,
              show_default=True, help="share of those images held out for validation")
@click.option("--batch-size", type=click.IntRange(1), help=f"default {TrainConfig.batch_size}")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), help=f"default {TrainConfig.optimizer}; "
              "lr, weight decay and momentum default to the optimiser's own values")
@click.option("--lr", type=click.FloatRange(0, min_open=True),
              help=f"peak learning rate (default {_defaults('lr')})")
@click.option("--weight-decay", type=click.FloatRange(0),
              help=f"on weights, not on BatchNorm or biases; decoupled for AdamW (default {_defaults('weight_decay')})")
@click.option("--momentum", type=click.FloatRange(0, 1, max_open=True),
              help=f"SGD's Nesterov momentum, or AdamW's beta1 (default {_defaults('momentum')})")
@click.option("--warmup", type=click.FloatRange(0, 1, max_open=True),
              help=f"share of the steps with a linear warm-up before the cosine decay (default {TrainConfig.warmup})")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True),
              help=f"default {TrainConfig.label_smoothing}")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="torch threads; more threads than idle cores is many times slower on a busy machine")
@click.option("--augment/--no-augment", default=None, help="random crop (+ flip for natural images); "
              "default: the dataset's proxy budget")
@click.option("--device", default="auto", show_default=True, metavar="DEVICE",
              help=f"{DEVICE_FORMS}; auto = the GPU Ray assigned (in a Ray worker), else the first CUDA GPU, "
              "else MPS, else the CPU")
@click.option("--amp", type=click.Choice(AMP_CHOICES), default="auto", show_default=True,
              help="mixed precision; auto = bf16 (fp16 where the GPU lacks it) on CUDA, off elsewhere")
@click.option("--channels-last", type=click.Choice(CHANNELS_LAST_CHOICES), default="auto", show_default=True,
              help="channels_last memory format; auto = on for CUDA only")
@click.option("--loader-workers", type=click.IntRange(0),
              help="loader processes for folder: data (default: one per spare core, at most 8)")
@click.option("--adapt-classes", is_flag=True, help="resize the classifier to the dataset's class count")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="write model.pt (state_dict), arch.yaml and result.json here")
@click.option("--test", "on_test", is_flag=True, help="also report accuracy on the official test split")
@click.option("--json", "as_json", is_flag=True, help="one JSON line on stdout, no progress bar")
def train(preset, arch_file, data_spec, epochs, steps, subset, val_fraction, batch_size, optimizer, lr,
          weight_decay, momentum, warmup, label_smoothing, seed, threads, augment, device, amp, channels_last,
          loader_workers, adapt_classes, out, on_test, as_json):
    """Train an architecture from scratch for a short proxy budget (validation accuracy per epoch).

    The recipe used (every setting, defaults resolved) and the device it ran on are
    printed before training and stored in the result ("config", "placement").
    """
    arch = resolve_arch(preset, arch_file)
    spec = DatasetSpec.parse(data_spec)
    budget = proxy_budget(spec)
    subset = budget["subset"] if subset is None else (subset or None)
    config = proxy_config(spec, epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, optimizer=optimizer,
                          weight_decay=weight_decay, momentum=momentum, warmup=warmup,
                          label_smoothing=label_smoothing, seed=seed, threads=threads, augment=augment,
                          device=device, amp=amp, channels_last=channels_last, loader_workers=loader_workers)
    where = config.placement()  # an unavailable device stops here, before any data is read
    say = (lambda msg: None) if as_json else (lambda msg: click.echo(msg, err=True))

    data = load_dataset(spec, input_size=arch.input_size, in_channels=arch.in_channels, subset=subset,
                        val_fraction=val_fraction, seed=seed)
    if arch.num_classes != data.num_classes:
        if not adapt_classes:
            raise TrainingError(f"{arch.name or arch_file} has num_classes={arch.num_classes} but {spec} has "
                                f"{data.num_classes} classes; pass --adapt-classes to resize the classifier")
        say(f"adapted the classifier: num_classes {arch.num_classes} -> {data.num_classes}")
        arch = arch.replace(num_classes=data.num_classes)
    source = "x".join(map(str, data.source_shape[1:] + data.source_shape[:1])) if data.source_shape else \
        "streamed from files"
    say(f"{data.name}: {len(data.train)} train / {len(data.val)} val images, {source} -> {arch.input_size}x"
        f"{arch.input_size}x{arch.in_channels}; {arch.name or 'architecture'}: {recipe_line(config, steps)}; "
        f"{placement_line(where.describe())}")

    torch.manual_seed(seed)  # train() reseeds the same way; building here keeps the model for --test
    model = build_model(arch)
    bars = []  # made at the first step, when the total is known; tqdm writes to stderr

    def progress(step, total, loss):
        if not bars:
            bars.append(tqdm(total=total, unit="step", disable=as_json, dynamic_ncols=True, desc="epoch 1"))
        bars[0].update(1)
        bars[0].set_postfix(loss=f"{loss:.3f}", refresh=False)

    def per_epoch(epoch, acc):
        if bars:
            bars[0].set_description(f"val {acc:.3f} after epoch {epoch}")

    ckpt = out / "model.pt" if out else None
    try:
        result = run_training(arch, data, config, callback=per_epoch, checkpoint=ckpt, model=model,
                              progress=progress)
    finally:
        for bar in bars:
            bar.close()
    report = {"arch": arch.name, "dataset": data.name, "accuracy": result.accuracy, "loss": result.loss,
              "seconds": round(result.seconds, 3), "epochs": result.epochs,
              "stopped_early": result.stopped_early, "checkpoint": result.checkpoint,
              "num_classes": arch.num_classes, "input_size": arch.input_size,
              "train_images": len(data.train), "val_images": len(data.val), "subset": subset,
              "config": config.to_dict(full=True), "placement": result.extra["placement"],
              "train_seconds": result.extra["train_seconds"], "history": result.extra["history"]}
    for k in ("loader_workers", "skipped_images", "skipped"):
        if k in result.extra:
            report[k] = result.extra[k]
    if on_test:
        threads_before = torch.get_num_threads()
        torch.set_num_threads(config.threads)
        try:
            report["test_accuracy"], report["test_loss"] = evaluate(model, data.test, data.mean, data.std,
                                                                    device=where, workers=config.loader_workers)
        finally:
            torch.set_num_threads(threads_before)
        report["test_images"] = len(data.test)
        if getattr(data.test, "skipped", None):
            report["test_skipped_images"] = len(data.test.skipped)
    if out:
        arch.to_yaml(out / "arch.yaml")
        atomic_write_json(out / "result.json", report)
    emit(report, as_json)


def recipe_line(config: TrainConfig, steps=None) -> str:
    """The recipe in one line, e.g. for the console before a training starts."""
    return (f"{config.epochs} epochs{f' (max {steps} steps)' if steps else ''}, {config.optimizer} lr {config.lr:g}"
            f" weight decay {config.weight_decay:g} momentum {config.momentum:g}, warm-up {config.warmup:g}, "
            f"label smoothing {config.label_smoothing:g}, batch {config.batch_size}, augment {config.augment}, "
            f"seed {config.seed}, {config.threads} thread(s)")


def placement_line(p: dict) -> str:
    name = f" ({p['device_name']})" if p["device"] != "cpu" else ""
    return f"device {p['device']}{name}, amp {p['amp']}, channels_last {'on' if p['channels_last'] else 'off'}"


COMMANDS = [train]
