"""Trials per hour on a Ray cluster of 1 node vs 2 nodes, and overhead per trial of each backend.

The same search (quickstart space, 2 epochs of proxy training on a 1500-image
digits subset per trial, LUT latency) runs
  * with the Optuna backend, one worker                      (overhead baseline),
  * with the Ray backend on a 1-node cluster, 1 trial at a time,
  * with the Ray backend on a 2-node cluster, 2 trials at a time.
Each Ray node is pinned to its own CPU core (``taskset``) and offers 1 CPU;
the clusters run in a network namespace that has only loopback, with token
authentication (as in tests/loopback_cluster.py).

trials/hour = trials / (last trial finished - first trial started);
overhead/trial = that span / trials - mean evaluation time (serial runs only).

    python experiments/bench_ray_scaling.py [--trials 16]
Output: experiments/results/search/bench_ray_scaling.txt
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from nas.run_folder import RunFolder  # noqa: E402
from search_space.io import atomic_write_text, dump_yaml, load_yaml, read_jsonl  # noqa: E402

LUT = HERE / "results" / "search" / "bench_lut_quickstart.json"
PY = sys.executable
RAY = str(Path(sys.executable).with_name("ray"))


def write_experiment(tmp: Path, name: str, backend: str, trials: int, concurrency: int) -> Path:
    q = load_yaml(HERE / "quickstart.yaml")
    d = {"name": name, "space": q["space"], "data": "digits",
         "accuracy": {"method": "proxy_training", "subset": 1500,
                      "train": {"epochs": 2, "batch_size": 64, "threads": 1, "augment": False}},
         "latency": {"mode": "lut", "lut": str(LUT), "target": q["latency"]["target"], "remeasure_front": False},
         "search": {"backend": backend, "sampler": "random", "trials": trials, "seed": 0,
                    "concurrency": concurrency, "ray": {"resources": {"cpu": 1}}},
         "output": str(tmp / name)}
    p = tmp / f"{name}.yaml"
    p.write_text(dump_yaml(d))
    return p


def stats(run_dir: Path) -> dict:
    recs = read_jsonl(RunFolder(run_dir).trials_jsonl)
    recs = [r for r in recs if r["number"] >= 0]
    span = max(r["finished"] for r in recs) - min(r["started"] for r in recs)
    evals = [r["accuracy_seconds"] + r["latency_seconds"] for r in recs]
    return {"trials": len(recs), "complete": sum(r["state"] == "COMPLETE" for r in recs), "span_s": span,
            "trials_per_hour": 3600 * len(recs) / span, "mean_eval_s": sum(evals) / len(evals),
            "overhead_per_trial_s": span / len(recs) - sum(evals) / len(evals),
            "nodes": len({r["node"] for r in recs})}


def run_on_cluster(tmp: Path, exp: Path, nodes: int) -> None:
    temp = f"/tmp/rsb_{secrets.token_hex(4)}"
    worker = (f"taskset -c 1 {RAY} start --address=127.0.0.1:6391 $common >{tmp}/w.log 2>&1 || exit 91"
              if nodes == 2 else "")
    script = textwrap.dedent(f"""
        set -u
        ip link set lo up
        export RAY_AUTH_MODE=token RAY_AUTH_TOKEN={secrets.token_hex(32)} RAY_USAGE_STATS_ENABLED=0
        common="--num-cpus=1 --object-store-memory=150000000 --disable-usage-stats"
        taskset -c 0 {RAY} start --head --port=6391 --include-dashboard=false --temp-dir={temp} \\
            --resources='{{"latency_device": 1}}' $common >{tmp}/h.log 2>&1 || exit 90
        {worker}
        {PY} -m shufflenas search {exp} --address 127.0.0.1:6391 --json --no-onnx >{tmp}/s.json 2>{tmp}/s.log
        rc=$?
        {RAY} stop --force >/dev/null 2>&1
        exit $rc
    """)
    try:
        r = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "bash", "-c", script],
                           cwd=tmp, capture_output=True, text=True)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    if r.returncode:
        raise SystemExit(f"cluster run failed ({r.returncode}): {(tmp / 's.log').read_text()[-1500:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "search" / "bench_ray_scaling.txt")
    args = ap.parse_args()
    from nas.experiment import load_experiment
    from nas.objective import load_or_build_lut

    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    load_before = os.getloadavg()[0]
    results = {}
    exp = write_experiment(tmp, "optuna1", "optuna", args.trials, 1)
    e = load_experiment(exp)
    load_or_build_lut(e, e.load_space(), progress=True)
    r = subprocess.run([PY, "-m", "shufflenas", "search", exp, "--json", "--no-onnx"], capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    results["optuna, 1 worker"] = stats(tmp / "optuna1")
    for nodes in (1, 2):
        name = f"ray{nodes}"
        run_on_cluster(tmp, write_experiment(tmp, name, "ray", args.trials, nodes), nodes)
        results[f"ray, {nodes} node(s) x 1 CPU"] = stats(tmp / name)
    ratio = results["ray, 2 node(s) x 1 CPU"]["trials_per_hour"] / results["ray, 1 node(s) x 1 CPU"]["trials_per_hour"]
    lines = [f"Same search, {args.trials} trials each (2 epochs proxy training on 1500 digits images + LUT latency)",
             f"load average (1 min) before {load_before:.2f}, after {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
             "", f"{'run':26s} {'trials/h':>9s} {'span s':>8s} {'eval s/trial':>13s} {'overhead s/trial':>17s} nodes"]
    for k, v in results.items():
        lines.append(f"{k:26s} {v['trials_per_hour']:9.0f} {v['span_s']:8.1f} {v['mean_eval_s']:13.2f} "
                     f"{v['overhead_per_trial_s'] if 'ray, 2' not in k else float('nan'):17.2f} {v['nodes']}")
    lines += ["", f"2 nodes / 1 node trials per hour: {ratio:.2f}x (target >= 1.8x)",
              "overhead per trial = wall time not spent evaluating (serial runs); ray includes Tune scheduling"]
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(args.out, text)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
