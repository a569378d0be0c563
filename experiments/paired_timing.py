"""Paired timing vs plain timing on this machine: which gives the steadier latency?

    python experiments/paired_timing.py [--seconds 150] [--space experiments/spaces/lut_cifar.yaml]

A shared host's speed moves by 10-50% within seconds (issue #3), so two
measurements of one network minutes apart disagree although nothing about the
network changed. Paired timing (``MeasurementProtocol.paired``) runs the
network in turns with a reference network and keeps the per-turn ratio; a
slowdown longer than a turn scales both and cancels.

This script times four random networks of the space and the reference in
turns, in one process pinned to one core, for ``--seconds``, and cuts the
record into sessions of 20 turns (about one measurement each). For each
network it prints the coefficient of variation across sessions of

* plain: the session's median run time (what an unpaired measurement reports),
* paired: the session's median per-turn ratio times the reference's overall
  median (what a paired measurement reports, in ms),
* plain min / paired min: the same with each turn summarised by its fastest
  run instead of its median run (interference only ever slows a run down, so
  the fastest of a turn is the one least disturbed),

and the plain/paired ratio. Writes ``experiments/results/latency/paired_timing_<space>.{txt,json}``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "latency"
SPACES = Path(__file__).resolve().parent / "spaces"
TURN = 5        # runs of each model per turn (MeasurementProtocol.pair_turn)
SESSION = 20    # turns per simulated measurement


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=150.0)
    ap.add_argument("--space", default=str(SPACES / "lut_cifar.yaml"))
    ap.add_argument("--networks", type=int, default=4)
    args = ap.parse_args(argv)

    from evaluators.latency.worker_process import pin_to_cpus

    cpus = pin_to_cpus(1)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    import torch

    torch.set_num_threads(1)
    from evaluators.latency import LatencyTarget
    from evaluators.latency.runners import arch_module, make_timed_run
    from search_space import load_space, presets
    from search_space.io import atomic_write_json, atomic_write_text

    space = load_space(args.space)
    size = space.spec.input_size
    target = LatencyTarget(threads=1)
    ref = presets.get("shufflenet_v2_x0_5")
    ref = (presets.cifar(ref) if size < 64 else ref).replace(input_size=size)
    timed_ref = make_timed_run(*arch_module(ref), target, "reference")
    archs = [space.sample(seed=s) for s in range(args.networks)]
    runs = [make_timed_run(*arch_module(a), target, f"network {i}") for i, a in enumerate(archs)]

    def turn(f):
        f()  # discarded: it pays for the other model having taken the caches
        runs_ms = [f() for _ in range(TURN)]
        return float(np.median(runs_ms)), float(np.min(runs_ms))

    load0, t0 = os.getloadavg()[0], time.time()
    turns: list[list[tuple[float, float, float, float]]] = [[] for _ in runs]
    while time.time() - t0 < args.seconds:
        for i, f in enumerate(runs):
            turns[i].append((*turn(f), *turn(timed_ref)))

    def cv(x):
        return float(np.std(x) / np.mean(x))

    def sessions(x, n):
        return np.array([np.median(x[j * SESSION:(j + 1) * SESSION]) for j in range(n)])

    rows = []
    for i, rec in enumerate(turns):
        a, a_min, r, r_min = np.array(rec).T
        n = len(a) // SESSION
        plain, plain_min = sessions(a, n), sessions(a_min, n)
        paired = sessions(a / r, n) * np.median(r)
        paired_min = sessions(a_min / r_min, n) * np.median(r_min)
        rows.append({"network": i, "sessions": n, "median_ms": float(np.median(a)), "plain_cv": cv(plain),
                     "paired_cv": cv(paired), "plain_min_cv": cv(plain_min), "paired_min_cv": cv(paired_min),
                     "plain_range": float(plain.max() / plain.min()),
                     "paired_range": float(paired.max() / paired.min()),
                     "reference_range": float(np.max(r) / np.min(r))})
    lines = [f"paired vs plain timing: space {space.name} ({size}x{size}), ONNX Runtime, 1 thread, core {cpus}, "
             f"{args.seconds:.0f} s, sessions of {SESSION} turns x {TURN} runs",
             f"load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end; reference "
             f"shufflenet_v2_x0_5{'_cifar' if size < 64 else ''} at {size}x{size}",
             "",
             f"{'network':<9}{'ms':>7}{'sessions':>10}{'plain CV':>10}{'paired CV':>11}{'plain/paired':>14}"
             f"{'plain min CV':>14}{'paired min CV':>15}{'plain max/min':>15}{'paired max/min':>16}"]
    for row in rows:
        lines.append(f"{row['network']:<9}{row['median_ms']:>7.3f}{row['sessions']:>10}{row['plain_cv']:>10.2%}"
                     f"{row['paired_cv']:>11.2%}{row['plain_cv'] / row['paired_cv']:>13.1f}x"
                     f"{row['plain_min_cv']:>14.2%}{row['paired_min_cv']:>15.2%}"
                     f"{row['plain_range']:>15.3f}{row['paired_range']:>16.3f}")
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"paired_timing_{space.name}.txt", text + "\n")
    atomic_write_json(RESULTS / f"paired_timing_{space.name}.json",
                      {"space": space.name, "seconds": args.seconds, "turn": TURN, "session": SESSION,
                       "loadavg_start": load0, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
