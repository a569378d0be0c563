"""ShuffleNet V2 guidelines G1 and G2 on this machine's target runtime.

    python experiments/guideline_study.py [--runtime onnxruntime] [--threads 1] [--rounds 3]

G1 (equal channel width minimises memory access): a benchmark network of 10
blocks, each two 1x1 convs c1 -> c2 -> c1, at c1:c2 = 1:1, 1:2, 1:6, 1:12 with
the FLOPs held fixed (the channel pairs of the paper's Table 1), at two widths.
G2 (group convolution costs memory access): 10 blocks of one 1x1 group conv
c -> c with g = 1, 2, 4, 8 and c ~ base * sqrt(g) so FLOPs stay fixed.
Input 56x56, batch 1.

This script is itself the measurement session: it fixes the thread count
in its environment before torch is imported, then times every network with
the tool's protocol (warm-up, timed runs, repeat-and-flag, machine-wide lock).
Configurations are interleaved over ``--rounds`` rounds so that a drift of the
machine hits all of them alike; the median over rounds is reported.

NOTES.md does not hold the paper's absolute numbers (batches/s on a GTX
1080Ti and a Snapdragon 810), so the table prints speed relative to the 1:1
(G1) / g=1 (G2) row beside the paper's qualitative trend: speed falls
monotonically as c1:c2 moves away from 1:1, and as g grows.
Writes ``experiments/results/latency/guideline_study.{txt,json}``.
"""

from __future__ import annotations

import argparse
import os
import sys

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "eager", "torchscript"])
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--resolution", type=int, default=56)
ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                help="cpu: per-run CPU time of the timing thread, a load-robust proxy (not latency)")
ARGS = ap.parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)  # before torch is imported

import math  # noqa: E402
import statistics  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from evaluators.latency import LatencyTarget, MeasurementProtocol, machine_info  # noqa: E402
from evaluators.latency.runners import make_timed_run  # noqa: E402
from evaluators.latency.timing import measure_timed  # noqa: E402
from search_space.io import atomic_write_json, atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "latency"
BLOCKS = 10
# Channel pairs at fixed FLOPs for each c1:c2 ratio (the paper's Table 1 pairs: small = its ARM
# column, medium = its GPU column). Wider pairs (512:512) take ~0.5 s a run on one core at 56x56.
G1 = {"small": [(32, 32), (22, 44), (13, 78), (9, 108)],
      "medium": [(128, 128), (90, 180), (52, 312), (36, 432)]}
RATIOS = ["1:1", "1:2", "1:6", "1:12"]
GROUPS = [1, 2, 4, 8]
G2_BASES = {"small": 64, "medium": 128, "wide": 256}


def g1_net(c1: int, c2: int) -> nn.Module:
    return nn.Sequential(*[m for _ in range(BLOCKS) for m in (nn.Conv2d(c1, c2, 1, bias=False),
                                                             nn.Conv2d(c2, c1, 1, bias=False))])


def g2_channels(base: int, g: int) -> int:
    return max(g, round(base * math.sqrt(g) / g) * g)


def g2_net(c: int, g: int) -> nn.Module:
    return nn.Sequential(*[nn.Conv2d(c, c, 1, groups=g, bias=False) for _ in range(BLOCKS)])


def main() -> int:
    torch.set_num_threads(ARGS.threads)
    target = LatencyTarget(runtime=ARGS.runtime, threads=ARGS.threads)
    protocol = MeasurementProtocol(min_seconds=0.5, reference_every=0, clock=ARGS.clock)
    hw = ARGS.resolution ** 2
    configs = []  # (study, size, label, module, in_channels, mflops)
    for size, pairs in G1.items():
        for ratio, (c1, c2) in zip(RATIOS, pairs):
            configs.append(("G1", size, ratio, (c1, c2), g1_net(c1, c2), c1, BLOCKS * 2 * hw * c1 * c2 / 1e6))
    for size, base in G2_BASES.items():
        for g in GROUPS:
            c = g2_channels(base, g)
            configs.append(("G2", size, f"g={g}", (c,), g2_net(c, g), c, BLOCKS * hw * c * c / g / 1e6))
    load0 = os.getloadavg()[0]
    runners = [make_timed_run(m, (cin, ARGS.resolution), target, f"{s} {size} {lab}", clock=ARGS.clock)
               for s, size, lab, _, m, cin, _ in configs]
    times: list[list[float]] = [[] for _ in configs]
    flags = [0] * len(configs)
    shares: list[float] = []
    for rnd in range(ARGS.rounds):
        for i, run in enumerate(runners):
            r = measure_timed(run, protocol, lock_name=target.device)
            times[i].append(r["median_ms"])
            flags[i] += r["flagged"]
            shares.append(r.get("cpu_share", float("nan")))
        print(f"round {rnd + 1}/{ARGS.rounds} done (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    med = [statistics.median(t) for t in times]

    m = machine_info()
    lines = [f"ShuffleNet V2 guidelines on {m['cpu']} ({m['cores']} cores), {target.describe()}, "
             f"input {ARGS.resolution}x{ARGS.resolution}, {BLOCKS} blocks, median of {ARGS.rounds} interleaved rounds, "
             f"clock {ARGS.clock}" + (" (CPU time per run: load-robust proxy, not latency)" if ARGS.clock == "cpu" else ""),
             f"torch {m['torch']}, onnxruntime {m['onnxruntime']}; load average {load0:.2f} at start, "
             f"{os.getloadavg()[0]:.2f} at end (2 cores shared: >1 means disturbed); median CPU share of the "
             f"timed loops {statistics.median(shares):.2f} (1.0 = a core to itself)",
             "The paper's absolute numbers (GPU/ARM batches per second) are not in NOTES.md; 'rel. speed' is",
             "speed relative to the first row of each group (1.00 = as fast as 1:1 / g=1), printed beside",
             "the paper's qualitative trend.", ""]
    out = {"target": target.to_dict(), "machine": m, "loadavg_start": load0, "cpu_share_median": statistics.median(shares),
           "rows": []}
    for study, title, trend in (
            ("G1", "G1: c1:c2 at fixed FLOPs (two 1x1 convs per block)",
             "paper: speed falls monotonically from 1:1 to 1:12 on GPU and ARM; 1:1 fastest"),
            ("G2", "G2: 1x1 group conv, groups at fixed FLOPs",
             "paper: speed falls as g grows (g=8 clearly slowest on GPU; smaller drop on ARM)")):
        lines += [title, f"  {trend}",
                  f"  {'width':<7}{'config':<7}{'channels':<12}{'MFLOPs':>8}{'median ms':>11}{'rel. speed':>12}"
                  f"{'flagged':>9}"]
        for size in (G1 if study == "G1" else G2_BASES):
            idx = [i for i, c in enumerate(configs) if c[0] == study and c[1] == size]
            base = med[idx[0]]
            for i in idx:
                _, _, label, ch, _, _, mf = configs[i]
                rel = base / med[i]
                lines.append(f"  {size:<7}{label:<7}{str(ch):<12}{mf:>8.1f}{med[i]:>11.3f}{rel:>12.2f}"
                             f"{flags[i]:>9d}")
                out["rows"].append({"study": study, "width": size, "config": label, "channels": list(ch),
                                    "mflops": mf, "median_ms": med[i], "rounds_ms": times[i],
                                    "relative_speed": rel, "flagged": flags[i]})
            mono = all(med[a] <= med[b] * 1.05 for a, b in zip(idx, idx[1:]))
            lines.append(f"  {'':<7}-> first row fastest: {'yes' if min(med[i] for i in idx) >= base * 0.95 else 'no'}"
                         f"; monotonic within 5% ties: {'yes' if mono else 'no'}")
        lines.append("")
    text = "\n".join(lines).rstrip()
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if (ARGS.runtime, ARGS.threads) == ("onnxruntime", 1) else f"_{ARGS.runtime}_t{ARGS.threads}"
    suffix += "_cpuclock" if ARGS.clock == "cpu" else ""
    atomic_write_text(RESULTS / f"guideline_study{suffix}.txt", text + "\n")
    atomic_write_json(RESULTS / f"guideline_study{suffix}.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
