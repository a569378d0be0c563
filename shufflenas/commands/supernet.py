"""``supernet train`` and ``supernet eval``: one-shot weight sharing over a search space."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from search_space import load_space, profile

from ..output import arch_options, emit, resolve_arch, table

_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9}


def parse_band(text: str | None, option: str = "--flops-band", unit: str = "multiply-adds",
               example: str = "20M,60M") -> tuple[float, float] | None:
    """``"20M,60M"`` -> (2e7, 6e7); plain numbers are taken as they are."""
    if text is None:
        return None
    msg = f"{text!r}: expected LO,HI {unit}, e.g. {example}"

    def num(s: str) -> float:
        s = s.strip().lower()
        try:
            return float(s[:-1]) * _SUFFIX[s[-1]] if s and s[-1] in _SUFFIX else float(s)
        except ValueError:
            raise click.BadParameter(msg, param_hint=option) from None

    parts = text.split(",")
    if len(parts) != 2:
        raise click.BadParameter(msg, param_hint=option)
    lo, hi = map(num, parts)
    if not 0 <= lo < hi:
        raise click.BadParameter(f"{text!r}: need 0 <= LO < HI", param_hint=option)
    return lo, hi


def _loader_workers_option(f):
    return click.option("--loader-workers", type=click.IntRange(0), metavar="N",
                        help="folder: data: processes decoding images (0: in the training process) "
                             "[default: one per spare core]")(f)


def _device_option(f):
    return click.option("--device", metavar="DEVICE",
                        help="auto | cpu | cuda | cuda:N | mps; auto: the GPU Ray assigned, else the first GPU, "
                             "else the CPU [default: auto]")(f)


@click.group()
def supernet():
    """One-shot supernet: train once over a space, then score candidates in seconds."""


@supernet.command()
@click.argument("space_file", metavar="SPACE.yaml|NAME")
@click.option("--data", "data_spec", required=True, metavar="SPEC",
              help="digits | cifar10[:PATH] | fashion-mnist[:PATH] | mnist[:PATH] | folder:PATH (ImageNet layout, "
                   "streamed from disk)")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="checkpoint file (resumed if it already holds this run)")
@click.option("--variant", default="spos", show_default=True, metavar="NAME",
              help="training recipe: spos | spos_balanced | sandwich | ofa_warmup (options below override it)")
@click.option("--epochs", type=click.IntRange(1), help="the whole budget; the learning rate reaches 0 at its end "
                                                       "[default: 10]")
@click.option("--subset", type=click.IntRange(2), help="images drawn from the training set")
@click.option("--batch-size", type=click.IntRange(1), help="global batch (split over --workers) [default: 64]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="peak learning rate [default: 0.1]")
@click.option("--schedule", type=click.Choice(["cosine", "linear"]), help="annealing to 0 [default: cosine]")
@click.option("--depth-sampling", type=click.Choice(["uniform", "balanced"]),
              help="a stage's depth uniform, or with probability proportional to depth")
@click.option("--sandwich-random", type=click.IntRange(0), help="sandwich: random paths per step [default: 2]")
@click.option("--seed", type=int, help="[default: 0]")
@click.option("--threads", type=click.IntRange(1), help="torch threads (per worker) [default: 1]")
@click.option("--flops-band", metavar="LO,HI", help="sample only paths with multiply-adds in [LO, HI], e.g. 5M,8M")
@click.option("--latency-band", metavar="LO,HI", help="sample only paths whose latency (ms, predicted by --lut) "
                                                      "is in [LO, HI]")
@click.option("--lut", type=click.Path(dir_okay=False), help="latency lookup table for --latency-band")
@_device_option
@_loader_workers_option
@click.option("--workers", type=click.IntRange(1), help="train on N Ray Train workers (DDP-style all-reduce; "
                                                        "gloo on CPU, nccl on GPU)")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="with --workers: GPUs per worker (fractions allowed)")
@click.option("--address", metavar="ADDR", help="with --workers: a running Ray cluster (default: a private one "
                                                "on this machine, loopback only)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object (no progress bar)")
def train(space_file, data_spec, out, variant, epochs, subset, batch_size, lr, schedule, depth_sampling,
          sandwich_random, seed, threads, flops_band, latency_band, lut, device, loader_workers, workers,
          gpus_per_worker, address, as_json):
    """Train a supernet over SPACE (SPOS by default: one uniformly sampled path per step)."""
    from evaluators.supernet import SupernetConfig, SupernetError, load_supernet, train_supernet

    if workers is None and (address or gpus_per_worker):
        raise SupernetError("--address and --gpus-per-worker apply to distributed training: add --workers N")
    if lut and not latency_band:
        raise SupernetError("--lut is used by --latency-band only: add --latency-band LO,HI")
    given = dict(epochs=epochs, subset=subset, batch_size=batch_size, lr=lr, schedule=schedule,
                 depth_sampling=depth_sampling, sandwich_random=sandwich_random, seed=seed, threads=threads,
                 flops_band=parse_band(flops_band),
                 latency_band=parse_band(latency_band, "--latency-band", "ms", "0.5,1.5"), lut=lut,
                 device=device or ("cuda" if gpus_per_worker else None), loader_workers=loader_workers)
    config = SupernetConfig.variant(variant, **{k: v for k, v in given.items() if v is not None})
    space = load_space(space_file)
    if workers is not None:
        from evaluators.supernet.distributed import train_supernet_distributed

        path = train_supernet_distributed(space, data_spec, config, out=out, workers=workers,
                                          gpus_per_worker=gpus_per_worker, address=address, progress=not as_json)
    else:
        path = train_supernet(space, data_spec, config, out=out, progress=not as_json)
    net = load_supernet(path)
    last = net.history[-1] if net.history else {}
    result = {"checkpoint": str(path), "space": space.name, "variant": variant, "epochs": net.epoch,
              "workers": workers or 1, "seconds": round(sum(h["seconds"] for h in net.history), 2),
              **{k: last.get(k) for k in ("train_loss", "train_acc", "images_per_s")}}
    emit(result, as_json, table([result]))


@supernet.command(name="eval")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@arch_options
@click.option("--data", "data_spec", required=True, metavar="SPEC", help="the dataset the supernet was trained on")
@click.option("--space", "space_file", metavar="SPACE.yaml|NAME",
              help="refuse a checkpoint trained for another space than this one")
@click.option("--bn-images", type=click.IntRange(0), help="training images to re-estimate BatchNorm statistics "
                                                          "(0: keep the trained ones) [default: 1280]")
@click.option("--bn-batches", type=click.IntRange(0), help="the same, counted in batches of --batch-size")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--val-subset", type=click.IntRange(1), help="score on the first N validation images")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True)
@_device_option
@_loader_workers_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def eval_cmd(checkpoint, preset, arch_file, data_spec, space_file, bn_images, bn_batches, batch_size, val_subset,
             threads, device, loader_workers, as_json):
    """Validation accuracy of an architecture with weights inherited from a supernet."""
    from evaluators.supernet import SupernetEvaluator, describe_fidelity, read_fidelity

    arch = resolve_arch(preset, arch_file)
    space = load_space(space_file) if space_file else None
    ev = SupernetEvaluator(checkpoint, data_spec, bn_images=bn_images, bn_batches=bn_batches,
                           batch_size=batch_size, val_subset=val_subset, threads=threads, device=device or "auto",
                           space=space, loader_workers=loader_workers)
    r = ev.evaluate(arch)
    out = {"name": arch.name, "accuracy": r.accuracy, "loss": r.loss, "seconds": round(r.seconds, 3),
           "macs": profile(arch).macs, **r.extra, "fidelity": read_fidelity(checkpoint) or None}
    if not as_json:
        click.echo(describe_fidelity(checkpoint, ev.bn_images), err=True)
    emit(out, as_json, table([{k: out[k] for k in ("name", "accuracy", "loss", "seconds", "macs")}]))


COMMANDS = [supernet]
