"""``supernet train`` and ``supernet eval``: one-shot weight sharing over a search space."""

from __future__ import annotations

from pathlib import Path

import click

from search_space import load_space, profile

from ..output import arch_options, emit, resolve_arch, table

_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9}


def parse_band(text: str | None) -> tuple[float, float] | None:
    """``"20M,60M"`` -> (2e7, 6e7) multiply-adds; plain numbers are taken as they are."""
    if text is None:
        return None

    def num(s: str) -> float:
        s = s.strip().lower()
        try:
            return float(s[:-1]) * _SUFFIX[s[-1]] if s and s[-1] in _SUFFIX else float(s)
        except ValueError:
            raise click.BadParameter(f"{text!r}: expected LO,HI multiply-adds, e.g. 20M,60M", param_hint="--flops-band") from None

    parts = text.split(",")
    if len(parts) != 2:
        raise click.BadParameter(f"{text!r}: expected LO,HI multiply-adds, e.g. 20M,60M", param_hint="--flops-band")
    lo, hi = map(num, parts)
    if not 0 <= lo < hi:
        raise click.BadParameter(f"{text!r}: need 0 <= LO < HI", param_hint="--flops-band")
    return lo, hi


@click.group()
def supernet():
    """One-shot supernet: train once over a space, then score candidates in seconds."""


@supernet.command()
@click.argument("space_file", metavar="SPACE.yaml|NAME")
@click.option("--data", "data_spec", required=True, metavar="SPEC",
              help="digits | cifar10[:PATH] | fashion-mnist[:PATH] | mnist[:PATH] | folder:PATH")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="checkpoint file (resumed if it already holds this run)")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True)
@click.option("--subset", type=click.IntRange(2), help="images drawn from the training set")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True)
@click.option("--flops-band", metavar="LO,HI", help="sample only paths with multiply-adds in [LO, HI], e.g. 5M,8M")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object (no progress bar)")
def train(space_file, data_spec, out, epochs, subset, batch_size, lr, seed, threads, flops_band, as_json):
    """Train a supernet over SPACE, one sampled path per step (SPOS)."""
    from evaluators.supernet import SupernetConfig, load_supernet, train_supernet

    space = load_space(space_file)
    config = SupernetConfig(epochs=epochs, subset=subset, batch_size=batch_size, lr=lr, seed=seed,
                            threads=threads, flops_band=parse_band(flops_band))
    path = train_supernet(space, data_spec, config, out=out, progress=not as_json)
    net = load_supernet(path)
    last = net.history[-1] if net.history else {}
    result = {"checkpoint": str(path), "space": space.name, "epochs": net.epoch,
              "seconds": round(sum(h["seconds"] for h in net.history), 2), **{k: last.get(k) for k in
                                                                             ("train_loss", "train_acc")}}
    emit(result, as_json, table([result]))


@supernet.command(name="eval")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@arch_options
@click.option("--data", "data_spec", required=True, metavar="SPEC", help="the dataset the supernet was trained on")
@click.option("--bn-batches", type=click.IntRange(1), default=20, show_default=True,
              help="training batches to re-estimate BatchNorm statistics")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--val-subset", type=click.IntRange(1), help="score on the first N validation images")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def eval_cmd(checkpoint, preset, arch_file, data_spec, bn_batches, batch_size, val_subset, threads, as_json):
    """Validation accuracy of an architecture with weights inherited from a supernet."""
    from evaluators.supernet import SupernetEvaluator

    arch = resolve_arch(preset, arch_file)
    ev = SupernetEvaluator(checkpoint, data_spec, bn_batches=bn_batches, batch_size=batch_size,
                           val_subset=val_subset, threads=threads)
    r = ev.evaluate(arch)
    out = {"name": arch.name, "accuracy": r.accuracy, "loss": r.loss, "seconds": round(r.seconds, 3),
           "macs": profile(arch).macs, **r.extra}
    emit(out, as_json, table([{k: out[k] for k in ("name", "accuracy", "loss", "seconds", "macs")}]))


COMMANDS = [supernet]
