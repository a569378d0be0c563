"""Training throughput of the proxy trainer against a plain PyTorch loop (issue 16, "Measure").

Both train the same network from the same initial weights, on the same in-memory images
(random uint8, no augmentation), at the same batch size, device, precision and memory
format; images/s counts optimiser steps x batch:

* proxy trainer: ``evaluators.training.train`` with ``TrainConfig(steps=N)``, its own time in
  the training loop (``extra["train_seconds"]``: batching, normalisation, the loss read-back,
  the schedule; validation excluded);
* plain loop: batches made and normalised up front on the device, then only
  ``loss = cross_entropy(model(x), y); zero_grad; backward; step`` (AdamW, autocast as the
  trainer's), synchronised at the end.

Each process first runs both once for ``--warmup`` steps (allocator, kernels, first calls);
every timed run then starts from a fresh model (same seed) and counts from its first step.

Each thread count runs in a fresh process (changing torch's thread count inside a process has
produced outliers here), the two loops alternate ``--repeats`` times and medians are printed side
by side with their ratio, with the load average before and after. Nothing is asserted: the
numbers depend on the machine and on what else runs on it; run it on a quiet machine::

    python experiments/bench_training_throughput.py --threads 1 2 --device auto \\
        --out experiments/results/bench_training_throughput.txt
    python experiments/bench_training_throughput.py --steps 5 --warmup 2 --repeats 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _data(arch, n: int, seed: int = 0):
    import torch

    from evaluators.data import DataSplits, TensorData

    g = torch.Generator().manual_seed(seed)
    shape = (arch.in_channels, arch.input_size, arch.input_size)
    split = lambda k: TensorData(torch.randint(0, 256, (k, *shape), generator=g, dtype=torch.uint8),  # noqa: E731
                                 torch.randint(0, arch.num_classes, (k,), generator=g))
    return DataSplits(name="random", train=split(n), val=split(64), num_classes=arch.num_classes,
                      mean=(0.5,) * arch.in_channels, std=(0.25,) * arch.in_channels)


def _trainer(arch, data, args, steps: int) -> float:
    from evaluators.training import TrainConfig, train

    cfg = TrainConfig(steps=steps, batch_size=args.batch, threads=args.threads, augment=False, device=args.device,
                      amp=args.amp, channels_last=args.channels_last, seed=0)
    r = train(arch, data, cfg)
    return steps * args.batch / r.extra["train_seconds"], r.extra["placement"]


def _plain(arch, data, args, steps: int) -> float:
    import torch
    import torch.nn.functional as F

    from evaluators.data import batches
    from evaluators.device import placement
    from search_space import build_model

    torch.set_num_threads(args.threads)
    where = placement(args.device, args.amp, args.channels_last)
    torch.manual_seed(0)
    model = where.module(build_model(arch))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    data = data.to(where.device) if not where.is_cpu else data
    made = [(where.inputs(x), y) for x, y in batches(data.train, args.batch, shuffle=True, augment=False,
                                                     generator=torch.Generator().manual_seed(0), mean=data.mean,
                                                     std=data.std, device=where.device, drop_last=True)]
    scaler = where.scaler()

    def step(x, y):
        with where.autocast():
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    model.train()
    where.synchronize()
    t = time.perf_counter()
    for i in range(steps):
        step(*made[i % len(made)])
    where.synchronize()
    return steps * args.batch / (time.perf_counter() - t)


def worker(args) -> dict:
    """One thread count, in this (fresh) process: alternating trainer / plain runs."""
    import torch

    from search_space import presets

    torch.set_num_threads(args.threads)
    arch = presets.get(args.preset)
    data = _data(arch, max(args.images, args.batch * 2))
    _trainer(arch, data, args, args.warmup)  # warm-up of the process: allocator, kernels, first calls
    _plain(arch, data, args, args.warmup)
    trainer, plain, where = [], [], None
    for _ in range(args.repeats):  # each run: a fresh model from the same seed, timed from its first step
        ips, where = _trainer(arch, data, args, args.steps)
        trainer.append(ips)
        plain.append(_plain(arch, data, args, args.steps))
    return {"threads": args.threads, "trainer": trainer, "plain": plain, "placement": where}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="shufflenet_v2_x0_5_cifar")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    ap.add_argument("--amp", default="auto")
    ap.add_argument("--channels-last", default="auto")
    ap.add_argument("--steps", type=int, default=60, help="timed optimiser steps per run")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    ap.add_argument("--repeats", type=int, default=3, help="alternating trainer / plain runs per thread count")
    ap.add_argument("--images", type=int, default=2048, help="in-memory training images (random)")
    ap.add_argument("--out", type=Path, help="also write the table here (e.g. experiments/results/NAME.txt)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        args.threads = args.threads[0]
        print(json.dumps(worker(args)))
        return

    import torch

    lines = [f"# {' '.join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:]))}",
             f"# {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{args.preset}, batch {args.batch}, {args.steps} timed steps after {args.warmup}, "
             f"{args.repeats} repeats (median), in-memory random images, no augmentation",
             f"{'threads':>7}  {'device':<22} {'trainer img/s':>14} {'plain img/s':>12} {'ratio':>6}  "
             f"{'load before':>11} {'load after':>10}"]
    print("\n".join(lines), flush=True)
    for t in args.threads:
        load0 = os.getloadavg()[0]
        cmd = [sys.executable, __file__, "--worker", "--threads", str(t), "--preset", args.preset,
               "--batch", str(args.batch), "--device", args.device, "--amp", args.amp,
               "--channels-last", args.channels_last, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--repeats", str(args.repeats), "--images", str(args.images)]
        env = {**os.environ, "OMP_NUM_THREADS": str(t)}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if out.returncode != 0:
            sys.exit(f"worker for {t} thread(s) failed:\n{out.stderr.strip()}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        tr, pl = statistics.median(r["trainer"]), statistics.median(r["plain"])
        p = r["placement"]
        where = f"{p['device']} amp {p['amp']}{' cl' if p['channels_last'] else ''}"
        line = (f"{t:>7}  {where:<22} {tr:>14.1f} {pl:>12.1f} {tr / pl:>6.2f}  {load0:>11.2f} "
                f"{os.getloadavg()[0]:>10.2f}")
        lines.append(line)
        print(line, flush=True)
        lines.append(f"#   runs: trainer {', '.join(f'{v:.0f}' for v in r['trainer'])}; "
                     f"plain {', '.join(f'{v:.0f}' for v in r['plain'])}")
        print(lines[-1], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
        print(f"# written to {args.out}")


if __name__ == "__main__":
    main()
