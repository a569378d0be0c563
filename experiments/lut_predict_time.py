"""How long a lookup table takes to predict one network's latency (the README's claim).

    python experiments/lut_predict_time.py [--lut experiments/results/lut/lut_lut_cifar.json] \
        [--space experiments/spaces/lut_cifar.yaml] [--n 1000]

Samples ``--n`` networks of the table's space (seeds 0..n-1), predicts each once, and prints
the mean and median time per prediction with the load average. A measurement of one network
takes seconds (warm-up, repeats, a fresh worker), so this is what the table saves per candidate.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from evaluators.latency import LatencyLUT
from search_space import load_space

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lut", default=str(ROOT / "experiments/results/lut/lut_lut_cifar.json"))
    ap.add_argument("--space", default=str(ROOT / "experiments/spaces/lut_cifar.yaml"))
    ap.add_argument("--n", type=int, default=1000)
    a = ap.parse_args()
    lut = LatencyLUT.load(a.lut)
    space = load_space(a.space)
    archs = [space.sample(seed=i) for i in range(a.n)]
    lut.predict(archs[0])  # first call: caches
    per = []
    for arch in archs:
        t = time.perf_counter()
        lut.predict(arch)
        per.append(time.perf_counter() - t)
    print(f"{a.n} networks of {Path(a.space).name} predicted by {Path(a.lut).name}: "
          f"mean {statistics.mean(per) * 1e6:.0f} us, median {statistics.median(per) * 1e6:.0f} us per network "
          f"(load average {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
