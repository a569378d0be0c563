"""Hypervolume after N trials for TPE, NSGA-II and random search at equal budget, several seeds.

Objective: the quickstart space (experiments/quickstart.yaml), accuracy = the
synflow zero-cost score (cheap but real), latency = a lookup table measured on
this machine (ONNX Runtime, 1 thread), no budget. Every run uses the Optuna
backend exactly as ``shufflenas search`` does; the hypervolume of each run is
computed against one reference point shared by all runs (nadir of every point
seen + 10% of the range), printed with the results.

    python experiments/bench_samplers.py [--trials 60] [--seeds 5]
Output: experiments/results/search/bench_samplers.txt (+ .json with every curve)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from search_space.io import atomic_write_json, atomic_write_text, load_yaml  # noqa: E402

from nas import pareto  # noqa: E402
from nas import records as R  # noqa: E402
from nas.experiment import experiment_from_dict  # noqa: E402

LUT = HERE / "results" / "search" / "bench_lut_quickstart.json"


def experiment(tmp: Path, sampler: str, seed: int, trials: int):
    q = load_yaml(HERE / "quickstart.yaml")
    d = {"name": f"{sampler}_{seed}", "space": q["space"], "data": "digits",
         "accuracy": {"method": "zero_cost", "proxy": "synflow"},
         "latency": {"mode": "lut", "lut": str(LUT), "target": q["latency"]["target"], "remeasure_front": False},
         "search": {"backend": "optuna", "sampler": sampler, "trials": trials, "seed": seed},
         "output": str(tmp / f"{sampler}_{seed}")}
    return experiment_from_dict(d, base_dir=HERE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--samplers", default="tpe,nsga2,random")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "search" / "bench_samplers.txt")
    args = ap.parse_args()
    from nas.backends import Breaker
    from nas.backends.optuna import OptunaBackend
    from nas.objective import load_or_build_lut
    from nas.run_folder import RunFolder

    tmp = Path(tempfile.mkdtemp(prefix="bench_samplers_"))
    t0 = time.time()
    first = experiment(tmp, "tpe", 0, args.trials)
    load_or_build_lut(first, first.load_space(), progress=True)  # measured once, reused by every run
    runs = {}
    for sampler in args.samplers.split(","):
        for seed in range(args.seeds):
            exp = experiment(tmp, sampler, seed, args.trials)
            run = RunFolder(exp.output)
            run.prepare(exp, resume=False)
            t = time.time()
            with OptunaBackend(exp, run, resume=False, breaker=Breaker(0)) as backend:
                backend.seed()
                backend.search()
            recs = run.read_records()
            runs[(sampler, seed)] = (recs, time.time() - t)
            print(f"{sampler:7s} seed {seed}: {len(recs)} trials in {time.time() - t:.0f} s", flush=True)
    objectives = ["accuracy", "latency_ms"]
    allrecs = [r for recs, _ in runs.values() for r in recs]
    # one reference for every run compared: the nadir of all their points, pushed out by 10% of the range
    nadir = pareto.reference_point(pareto.to_minimization([r.values(objectives) for r in allrecs if r.usable],
                                                          ["maximize", "minimize"]))
    ref = {"accuracy": float(-nadir[0]), "latency_ms": float(nadir[1])}
    checkpoints = sorted({max(1, args.trials // 3), 2 * args.trials // 3, args.trials})
    table, curves = {}, {}
    for (sampler, seed), (recs, secs) in runs.items():
        recs = sorted(recs, key=lambda r: r.number)
        hv = [R.hypervolume(recs[:n], objectives, ref) for n in range(1, len(recs) + 1)]
        curves[f"{sampler}/{seed}"] = hv
        table.setdefault(sampler, []).append([hv[n - 1] for n in checkpoints])
    import numpy as np

    lines = [f"Hypervolume (accuracy = synflow log10 score, max; latency = LUT ms, min) after N trials",
             f"quickstart space, {args.seeds} seeds per sampler, reference point {json.dumps(ref)}",
             f"machine load at the end: {os.getloadavg()[0]:.2f} (1-min average); total {time.time() - t0:.0f} s", "",
             f"{'sampler':8s} " + " ".join(f"{'HV@' + str(n):>18s}" for n in checkpoints) + "   best-seed/worst-seed @N"]
    best_mean = max(np.mean(np.array(v)[:, -1]) for v in table.values())
    for sampler, vals in table.items():
        v = np.array(vals)
        cells = " ".join(f"{m:10.4f} ± {s:6.4f}" for m, s in zip(v.mean(axis=0), v.std(axis=0)))
        lines.append(f"{sampler:8s} {cells}   {v[:, -1].max():.4f}/{v[:, -1].min():.4f}"
                     f"   ratio to best mean {v[:, -1].mean() / best_mean:.3f}")
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(args.out, text)
    atomic_write_json(args.out.with_suffix(".json"), {"reference_point": ref, "checkpoints": checkpoints,
                                                      "curves": curves})
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
