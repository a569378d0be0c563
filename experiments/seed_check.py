"""Retrain chosen models of a finished ``shufflenas run`` with other training seeds.

    python experiments/seed_check.py experiments/cifar10_cpu_v1g3.yaml trial26 shufflenet_v1_g3_cifar --seeds 1 2 3 4

One test accuracy per model (seed 0) cannot tell a 1-point win from the spread
of training itself. This trains each named model again with the run's exact
retraining recipe (same data, subset, train/validation split, epochs,
optimiser) except ``TrainConfig.seed`` (weights and batch order), tests it
once on the test split, and prints every seed beside the run's own seed-0
row, with the mean and standard deviation over seeds and the mean
difference of each model against the last one named (over 3+ shared seeds
with its 95% confidence interval and a paired t-test). Models are searched
trials (``trialN``, taken from the run's ``retrain/candidates.json``) or
preset names. Writes ``OUT/seed_check_<run>.json`` (every trained (model, seed), shared by all
comparisons of that run) and ``OUT/seed_check_<run>[_<tag>].txt`` (``--out``, default
``experiments/results/cifar10_3epoch``);
already trained (model, seed) pairs in that JSON are reused, so a killed
run resumes (a training cut short resumes from its last finished epoch). The
trainings run ``retrain.workers`` at a time, as the run's own retraining does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "cifar10_3epoch"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment")
    ap.add_argument("models", nargs="+", help="trialN of the run, or preset names; the last one is the reference")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder of the result files")
    ap.add_argument("--tag", default="", help="suffix of the text file, one per comparison")
    args = ap.parse_args(argv)

    from evaluators.training import TrainConfig
    from nas.experiment import load_experiment
    from nas.retrain import cached_recipe_data, state_path, train_jobs
    from nas.run_folder import RunFolder
    from search_space import Architecture, presets
    from search_space.io import atomic_write_json, atomic_write_text, read_jsonl

    exp = load_experiment(args.experiment)
    run_dir = Path(exp.output)
    spec = exp.retrain
    picked = {m["name"]: m["arch"] for m in json.loads((RunFolder(run_dir).retrain / "candidates.json").read_text())["searched"]}
    seed0 = {r["name"]: r for r in read_jsonl(RunFolder(run_dir).retrain / "results.jsonl")}
    archs = {}
    for name in args.models:
        if name in picked:
            archs[name] = Architecture.from_dict(picked[name])
        elif name in presets.PRESETS:
            archs[name] = presets.get(name)
        else:
            raise SystemExit(f"seed_check: {name!r} is neither a retrained trial of {run_dir} nor a preset")
    out_dir = args.out
    out_json = out_dir / f"seed_check_{exp.name}.json"
    done = json.loads(out_json.read_text())["rows"] if out_json.is_file() else []
    have = {(r["name"], r["seed"]) for r in done}
    # every (model, seed) not yet trained, retrain.workers at a time like the run's own retraining;
    # each resumes from its last finished epoch (RUN_DIR/retrain/seeds/MODEL_seedN/)
    jobs = {f"{name}_seed{seed}": (name, seed) for seed in args.seeds for name in archs if (name, seed) not in have}
    todo = [(job, "seed", archs[name], TrainConfig(**{**spec.train, "seed": seed}))
            for job, (name, seed) in jobs.items()]
    started: dict[str, float] = {}

    def on_start(job: str, kind: str, train_images: int) -> None:
        started[job] = time.perf_counter()

    def on_done(job, kind, arch, res, test_acc, test_loss, train_images) -> None:
        name, seed = jobs[job]
        done.append({"name": name, "seed": seed, "val_acc": res.accuracy, "test_acc": test_acc,
                     "train_seconds": round(time.perf_counter() - started[job], 1)})
        print(f"{name} seed {seed}: test {test_acc:.4f}, val {res.accuracy:.4f}", flush=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_json, {"experiment": exp.name, "rows": done})
        state_path(seeds_dir / job / "weights.pt").unlink(missing_ok=True)  # recorded: no resume needed

    seeds_dir = RunFolder(run_dir).retrain / "seeds"
    seeds_dir.mkdir(parents=True, exist_ok=True)
    train_jobs(todo, exp, spec, seeds_dir, spec.workers, cached_recipe_data(exp, spec), on_start, on_done)

    def by_seed(name) -> dict[int, dict]:
        rows = {0: seed0[name]} if name in seed0 else {}
        return rows | {r["seed"]: r for r in done if r["name"] == name}

    def accs(name):
        rows = [r for _, r in sorted(by_seed(name).items())]
        return [r["test_acc"] for r in rows], [r["val_acc"] for r in rows]

    ref = args.models[-1]
    seeds = [0] + sorted({r["seed"] for r in done})
    lines = [f"seed check: run {run_dir.name}, recipe {dict(spec.train)}, subset {spec.subset}, "
             f"split seed {exp.search.seed}; seed 0 is the run's own retraining",
             "", f"{'model':<26}" + "".join(f"{'seed ' + str(s):>10}" for s in seeds)
             + f"{'mean':>9}{'std':>8}{'val mean':>10}  test acc vs {ref}"]
    ref_rows = by_seed(ref)
    for name in args.models:
        test, val = accs(name)
        mine = by_seed(name)
        both = [k for k in mine if k in ref_rows]
        diffs = [mine[k]["test_acc"] - ref_rows[k]["test_acc"] for k in both]
        diff = "" if name == ref else (f"{np.mean(diffs):+.2%} same seeds, "
                                       f"{sum(d > 0 for d in diffs)}/{len(diffs)} ahead" + _paired_test(diffs))
        lines.append(f"{name:<26}" + "".join(f"{mine[k]['test_acc']:>10.2%}" if k in mine else f"{'-':>10}"
                                             for k in seeds) + f"{np.mean(test):>9.2%}"
                     f"{np.std(test, ddof=1) if len(test) > 1 else float('nan'):>8.2%}{np.mean(val):>10.2%}  {diff}")
    text = "\n".join(lines)
    print(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / f"seed_check_{exp.name}{'_' + args.tag if args.tag else ''}.txt", text + "\n")
    return 0


def _paired_test(diffs: list[float]) -> str:
    """Paired t-test over the seeds both models were trained with: the same seed means the same
    batch order and a comparable initialisation draw, so the per-seed differences are the sample."""
    if len(diffs) < 3:
        return ""
    from scipy import stats

    d = np.asarray(diffs)
    lo, hi = stats.t.interval(0.95, d.size - 1, loc=d.mean(), scale=d.std(ddof=1) / np.sqrt(d.size))
    return f", 95% CI [{lo:+.2%}, {hi:+.2%}], paired t-test p={stats.ttest_1samp(d, 0.0).pvalue:.2g}"


if __name__ == "__main__":
    sys.exit(main())
