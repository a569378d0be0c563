"""Supernet training on Ray Train: images/s with 1 and 2 workers on this machine, and their ratio.

Trains the same supernet (same space, data, global batch, epochs) in one
process without Ray, then on 1 and 2 Ray Train workers (one thread each, a
private loopback cluster), and prints images/s per run, the 2-vs-1-worker
ratio, and the load average before and after (these CPUs are shared: a load
above the core count means the workers did not have their cores to
themselves). Images/s is measured inside the workers over the training epochs
(Ray's start-up is reported apart, as wall-clock overhead)::

    python experiments/bench_supernet_ray.py --data cifar10:../shared/data/cifar10/cifar-10-python.tar.gz \\
        --subset 5000 --epochs 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from evaluators.supernet import SupernetConfig, load_supernet, train_supernet  # noqa: E402
from evaluators.supernet.data import load_data  # noqa: E402
from evaluators.supernet.distributed import train_supernet_distributed  # noqa: E402
from search_space import load_space  # noqa: E402


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default=str(ROOT / "experiments" / "spaces" / "fidelity.yaml"))
    ap.add_argument("--data", default="digits")
    ap.add_argument("--subset", type=int, help="images drawn from the training set")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64, help="global batch (split over the workers)")
    ap.add_argument("--variant", default="spos")
    ap.add_argument("--workers", default="1,2", help="Ray Train worker counts to run")
    args = ap.parse_args(argv)

    space = load_space(args.space)
    config = SupernetConfig.variant(args.variant, epochs=args.epochs, batch_size=args.batch_size, subset=args.subset,
                                    threads=1, device="cpu")
    data = load_data(args.data, space, config)
    print(f"space {space.name}, data {args.data} ({len(data.train)} training images), global batch "
          f"{args.batch_size}, {args.epochs} epochs, variant {args.variant}, 1 thread per worker, "
          f"{os.cpu_count()} CPUs; load average (1/5/15 min) {load()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("single process (no Ray)", 0)] + [(f"Ray Train, {n} worker(s)", int(n))
                                                   for n in args.workers.split(",")]
        for name, workers in runs:
            out = Path(tmp) / f"w{workers}.pt"
            before = load()
            t0 = time.perf_counter()
            if workers == 0:
                train_supernet(space, data, config, out=out, progress=False)
            else:
                train_supernet_distributed(space, data, config, out=out, workers=workers)
            wall = time.perf_counter() - t0
            hist = load_supernet(out).history
            images, seconds = sum(h["images"] for h in hist), sum(h["seconds"] for h in hist)
            rows.append((name, workers, images / seconds, seconds, wall))
            print(f"{name}: {images / seconds:.1f} images/s over {seconds:.1f} s of training "
                  f"({wall:.1f} s wall clock, {wall - seconds:.1f} s of it start-up); load average before "
                  f"{before}, after {load()}", flush=True)
    by = {w: r for _, w, r, _, _ in rows}
    if 1 in by and 2 in by:
        print(f"2 workers / 1 worker: {by[2] / by[1]:.2f}x images/s (ideal 2.00x on two free cores)")
    if 0 in by and 1 in by:
        print(f"1 Ray worker / single process: {by[1] / by[0]:.2f}x images/s")


if __name__ == "__main__":
    main()
