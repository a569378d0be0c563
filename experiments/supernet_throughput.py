"""How many candidates per hour a trained supernet scores, BN recalibration included.

Scores N architectures sampled from the supernet's space with
``SupernetEvaluator`` (inherit weights, re-estimate BatchNorm on
``--bn-images`` training images, accuracy on the validation split)
and prints candidates/hour beside the 500/hour target of issue #4::

    python experiments/supernet_throughput.py experiments/results/fidelity_3epoch/fidelity_supernet.pt \\
        --data cifar10:../shared/data/cifar10/cifar-10-python.tar.gz --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

TARGET_PER_HOUR = 500


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", required=True, help="dataset spec the supernet was trained on")
    ap.add_argument("--n", type=int, default=30, help="candidates to score")
    ap.add_argument("--bn-images", type=int, default=1280)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 2 threads on 2 shared cores measured slower than 1 (see results)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from evaluators.supernet import SupernetEvaluator, load_supernet

    net = load_supernet(args.checkpoint)
    ev = SupernetEvaluator(net, args.data, bn_images=args.bn_images, threads=args.threads, device=args.device)
    archs = net.space.sample(args.n + 1, seed=args.seed)
    first = ev.evaluate(archs[0])  # loads the data and warms up; not timed
    times, accs = [], []
    t0, c0 = time.perf_counter(), time.process_time()
    for arch in archs[1:]:
        t = time.perf_counter()
        accs.append(ev.evaluate(arch).accuracy)
        times.append(time.perf_counter() - t)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    per_hour = 3600 * args.n / wall
    load = os.getloadavg()[0]
    print(f"supernet {args.checkpoint} (space {net.space.name}, {net.epoch} epochs), {args.threads} threads, "
          f"load average {load:.2f}")
    print(f"scored {args.n} candidates in {wall:.1f} s: median {statistics.median(times):.2f} s/candidate "
          f"(min {min(times):.2f}, max {max(times):.2f}), BN recalibrated on {first.extra['bn_images']} train images, "
          f"{first.extra['val_images']} val images, on {first.extra['device']}")
    print(f"val accuracy of the candidates: {min(accs):.3f}..{max(accs):.3f}")
    print(f"throughput (wall clock, at this load): {per_hour:.0f} candidates/hour; target {TARGET_PER_HOUR}/hour; "
          f"ratio {per_hour / TARGET_PER_HOUR:.2f}x")
    # CPU time does not depend on how many other processes share the cores: it is what the
    # candidates cost on cores of their own (2 cores = 2 evaluator processes, as the search runs trials).
    cpu_per = cpu / args.n
    cores = os.cpu_count() or 1
    print(f"CPU time: {cpu_per:.2f} s/candidate ({args.threads} thread(s)) -> {3600 / cpu_per:.0f} candidates/hour "
          f"per core, {cores * 3600 / cpu_per:.0f}/hour on {cores} cores with one evaluator per core; "
          f"ratio to target {cores * 3600 / cpu_per / TARGET_PER_HOUR:.2f}x")


if __name__ == "__main__":
    main()
