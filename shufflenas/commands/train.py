"""``train``: proxy-train one architecture on a dataset and report validation (optionally test) accuracy."""

from __future__ import annotations

from pathlib import Path

import click
import torch
from tqdm import tqdm

from evaluators.data import DatasetSpec, load_dataset
from evaluators.training import (OPTIMIZERS, TrainConfig, TrainingError, evaluate, proxy_budget, proxy_config,
                                 train as run_training)
from search_space import build_model
from search_space.io import atomic_write_json

from ..output import arch_options, emit, resolve_arch


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
@click.option("--lr", type=click.FloatRange(0, min_open=True), help=f"default {TrainConfig.lr}")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), help=f"default {TrainConfig.optimizer}")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="torch threads; more threads than idle cores is many times slower on a busy machine")
@click.option("--augment/--no-augment", default=None, help="random crop (+ flip for natural images); "
              "default: the dataset's proxy budget")
@click.option("--adapt-classes", is_flag=True, help="resize the classifier to the dataset's class count")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="write model.pt (state_dict), arch.yaml and result.json here")
@click.option("--test", "on_test", is_flag=True, help="also report accuracy on the official test split")
@click.option("--json", "as_json", is_flag=True, help="one JSON line on stdout, no progress bar")
def train(preset, arch_file, data_spec, epochs, steps, subset, val_fraction, batch_size, lr, optimizer, seed,
          threads, augment, adapt_classes, out, on_test, as_json):
    """Train an architecture from scratch for a short proxy budget (validation accuracy per epoch)."""
    arch = resolve_arch(preset, arch_file)
    spec = DatasetSpec.parse(data_spec)
    budget = proxy_budget(spec)
    subset = budget["subset"] if subset is None else (subset or None)
    config = proxy_config(spec, epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, optimizer=optimizer,
                          seed=seed, threads=threads, augment=augment)
    say = (lambda msg: None) if as_json else (lambda msg: click.echo(msg, err=True))

    data = load_dataset(spec, input_size=arch.input_size, in_channels=arch.in_channels, subset=subset,
                        val_fraction=val_fraction, seed=seed)
    if arch.num_classes != data.num_classes:
        if not adapt_classes:
            raise TrainingError(f"{arch.name or arch_file} has num_classes={arch.num_classes} but {spec} has "
                                f"{data.num_classes} classes; pass --adapt-classes to resize the classifier")
        say(f"adapted the classifier: num_classes {arch.num_classes} -> {data.num_classes}")
        arch = arch.replace(num_classes=data.num_classes)
    c, h, w = data.source_shape
    say(f"{data.name}: {len(data.train)} train / {len(data.val)} val images, {h}x{w}x{c} -> {arch.input_size}x"
        f"{arch.input_size}x{arch.in_channels}; {arch.name or 'architecture'}: {config.epochs} epochs"
        f"{f' (max {steps} steps)' if steps else ''}, {config.optimizer} lr {config.lr}, batch {config.batch_size}"
        f", augment {config.augment}, {config.threads} thread(s)")

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
              "config": config.to_dict(), "history": result.extra["history"]}
    if on_test:
        threads_before = torch.get_num_threads()
        torch.set_num_threads(config.threads)
        try:
            report["test_accuracy"], report["test_loss"] = evaluate(model, data.test, data.mean, data.std)
        finally:
            torch.set_num_threads(threads_before)
        report["test_images"] = len(data.test)
    if out:
        arch.to_yaml(out / "arch.yaml")
        atomic_write_json(out / "result.json", report)
    emit(report, as_json)


COMMANDS = [train]
