"""The pre-registered CIFAR-10 comparison at a real budget, step by step, resumable.

    python experiments/cifar10_budget/protocol.py [--only STEP]

Steps, each resumed where it stopped when the command is run again (``--experiment`` names
another committed file; its results go to a ``results/`` folder beside it):

1. ``register``: the experiment file (``experiment.yaml`` beside this script) must be
   committed and unchanged; its commit, content hash and the time are recorded in
   ``RUN_DIR/protocol.json`` before anything runs. A later run of this script refuses
   an experiment file that differs from the recorded one: a redo needs a new output
   folder and a note in experiments/README.md with both results.
2. ``baselines``: the hand-designed baselines trained with the final recipe and tested
   once, into ``RUN_DIR/retrain/`` (``nas.retrain.train_baselines``). They do not depend
   on the search, so they train first: hours of training that can run in any session on
   any machine, while the search, whose measured latencies should come from one
   machine, then runs in one go.
3. ``run``: ``shufflenas run experiment.yaml`` -- the search, its export, then the
   search's front plus the declared rivals retrained with the same recipe (the
   baselines are found trained and skipped), each tested once on the test split when
   its training ends, latencies re-measured together, the deploy folder of trained
   networks.
4. ``seeds``: every (searched, baseline) verdict pair whose test accuracies lie within
   1.5 points is retrained with seeds 1 and 2 (seed 0 is the run's own), and the paired
   difference gets its 95% CI (``experiments/seed_check.py``).
5. ``fidelity``: how well the search's own accuracy signal ranked the retrained
   networks: Kendall tau, Spearman rho (with p-values) and top-k overlap between the
   search-time score and the final validation accuracy (never the test accuracy).
6. ``report``: the table, plot, verdicts, seed checks, fidelity and the wall time of
   every step, copied into ``results/`` beside this script for committing.

Only validation data steers anything; the test split is read once per network.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED_CHECK = HERE.parent / "seed_check.py"
STEPS = ("register", "baselines", "run", "seeds", "fidelity", "report")
WITHIN = 0.015  # pairs closer than 1.5 points get more training seeds
TOP_K = 3
HEARTBEAT_S = 60.0  # how often a running step's wall time is saved


def git(where: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=where, check=True, capture_output=True, text=True).stdout.strip()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_protocol(run_dir: Path) -> dict:
    p = run_dir / "protocol.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def save_protocol(run_dir: Path, proto: dict) -> None:
    from search_space.io import atomic_write_json

    atomic_write_json(run_dir / "protocol.json", proto)


def register(experiment: Path, run_dir: Path, proto: dict) -> dict:
    repo = Path(git(experiment.parent, "rev-parse", "--show-toplevel"))
    rel = str(experiment.relative_to(repo))
    if git(repo, "status", "--porcelain", "--", rel):
        raise SystemExit(f"protocol: {rel} has uncommitted changes; commit the pre-registered file first")
    commit = git(repo, "log", "-1", "--format=%H", "--", rel)
    if not commit:
        raise SystemExit(f"protocol: {rel} is not committed; commit the pre-registered file first")
    digest = sha256(experiment)
    if proto:
        if proto["experiment_sha256"] != digest:
            raise SystemExit(f"protocol: {rel} changed since the run was registered at commit "
                             f"{proto['experiment_commit'][:10]}; a redo needs a new output folder and a note "
                             f"in experiments/README.md with both results")
        return proto
    run_dir.mkdir(parents=True, exist_ok=True)
    proto = {"experiment": rel, "experiment_sha256": digest, "experiment_commit": commit,
             "experiment_commit_time": git(repo, "log", "-1", "--format=%cI", commit),
             "registered_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "steps": {}}
    save_protocol(run_dir, proto)
    return proto


def timed(run_dir: Path, proto: dict, name: str, fn, code_commit: str) -> None:
    """Run one step and record its wall time in protocol.json: per attempt, and summed over the
    attempts. A session's end kills the step, so the running attempt's time is saved every
    ``HEARTBEAT_S`` seconds (``last_seen``) and a killed attempt still counts up to its last beat."""
    step = proto["steps"].setdefault(name, {"seconds": 0.0, "attempts": []})
    if step.get("done") and name != "report":  # the report is cheap: always rewritten
        print(f"protocol: {name} already done ({step['seconds'] / 3600:.2f} h)", flush=True)
        return
    t0 = time.time()
    attempt = {"start": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "code_commit": code_commit}
    step["attempts"].append(attempt)
    lock, stop = threading.Lock(), threading.Event()

    def save_time(done: bool = False) -> None:
        with lock:  # also keeps the step's dict still while the heartbeat serialises it
            if done:
                step["done"] = True
            attempt["seconds"] = round(time.time() - t0, 1)
            attempt["last_seen"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            step["seconds"] = round(sum(a.get("seconds", 0.0) for a in step["attempts"]), 1)
            save_protocol(run_dir, proto)

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            save_time()

    save_time()
    threading.Thread(target=beat, daemon=True).start()
    finished = False
    try:
        fn()
        finished = True
    finally:
        stop.set()
        save_time(done=finished)


def shufflenas(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).with_name("shufflenas")), *args], check=True)


def baselines_step(experiment: Path, run_dir: Path) -> None:
    from nas.experiment import load_experiment
    from nas.retrain import train_baselines

    exp = load_experiment(experiment)
    train_baselines(run_dir, exp, exp.retrain, log=lambda m: print(m, flush=True))


def close_pairs(summary: dict) -> list[tuple[str, str]]:
    pairs = []
    for v in summary["comparison"]:
        if v["best_searched"] and abs(v["searched_test_acc"] - v["baseline_test_acc"]) <= WITHIN + 1e-12:
            pairs.append((v["best_searched"], v["baseline"]))
    return pairs


def seeds_step(experiment: Path, run_dir: Path) -> None:
    summary = json.loads((run_dir / "retrain" / "summary.json").read_text())
    for searched, baseline in close_pairs(summary):
        subprocess.run([sys.executable, str(SEED_CHECK), str(experiment),
                        searched, baseline, "--seeds", "1", "2", "--out", str(run_dir / "seeds"),
                        "--tag", f"{searched}_vs_{baseline}"], check=True)


def fidelity(run_dir: Path) -> dict:
    """Search-time score against the final validation accuracy, over the retrained networks
    the search scored (its picks, and baselines it scored as seeds)."""
    from scipy import stats

    from nas.run_folder import RunFolder

    picked = json.loads((run_dir / "retrain" / "candidates.json").read_text())["searched"]
    score = {m["name"]: m["search_accuracy"] for m in picked}
    for r in RunFolder(run_dir).read_records():
        if r.seed and r.usable:
            score.setdefault(r.seed, r.accuracy)
    final = {r["name"]: r["val_acc"] for r in
             (json.loads(line) for line in (run_dir / "retrain" / "results.jsonl").read_text().splitlines() if line)}
    names = sorted(n for n in score if n in final)
    s = [score[n] for n in names]
    f = [final[n] for n in names]
    tau, tau_p = stats.kendalltau(s, f)
    rho, rho_p = stats.spearmanr(s, f)
    k = min(TOP_K, len(names))
    top = lambda d: set(sorted(names, key=lambda n: -d[n])[:k])  # noqa: E731
    out = {"networks": len(names), "kendall_tau": tau, "kendall_p": tau_p, "spearman_rho": rho,
           "spearman_p": rho_p, "top_k": k, "top_k_overlap": len(top(score) & top(final)),
           "rows": [{"name": n, "search_score": score[n], "final_val_acc": final[n]} for n in names]}
    from search_space.io import atomic_write_json

    atomic_write_json(run_dir / "fidelity.json", out)
    return out


def report(run_dir: Path, proto: dict, results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    for name in ("table.md", "summary.json", "front.png", "latency.json", "candidates.json"):
        shutil.copy2(run_dir / "retrain" / name, results / name)
    for f in sorted((run_dir / "seeds").glob("*.txt")) if (run_dir / "seeds").is_dir() else []:
        shutil.copy2(f, results / f.name)
    shutil.copy2(run_dir / "fidelity.json", results / "fidelity.json")
    shutil.copy2(run_dir / "protocol.json", results / "protocol.json")
    fid = json.loads((run_dir / "fidelity.json").read_text())
    hours = {k: round(v["seconds"] / 3600, 2) for k, v in proto["steps"].items()}
    lines = [f"reproduce: python experiments/cifar10_budget/protocol.py --experiment {proto['experiment']}  "
             f"(experiment committed at "
             f"{proto['experiment_commit'][:10]}, registered {proto['registered_at']})", "",
             (run_dir / "retrain" / "table.md").read_text(), "",
             f"search signal vs final validation accuracy over {fid['networks']} retrained networks: "
             f"Kendall tau {fid['kendall_tau']:.3f} (p={fid['kendall_p']:.2g}), Spearman rho "
             f"{fid['spearman_rho']:.3f} (p={fid['spearman_p']:.2g}), top-{fid['top_k']} overlap "
             f"{fid['top_k_overlap']}/{fid['top_k']}", "",
             "wall time per step (h): " + ", ".join(f"{k} {v}" for k, v in hours.items())]
    (results / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", type=Path, default=HERE / "experiment.yaml",
                    help="the committed experiment file (results go to a results/ folder beside it)")
    ap.add_argument("--only", choices=STEPS, help="run one step (the earlier ones must be done)")
    args = ap.parse_args(argv)
    from nas.experiment import load_experiment

    experiment = args.experiment.resolve()
    run_dir = Path(load_experiment(experiment).output)
    proto = register(experiment, run_dir, load_protocol(run_dir))
    code = git(HERE, "rev-parse", "HEAD")
    steps = {"baselines": lambda: baselines_step(experiment, run_dir),
             "run": lambda: shufflenas("run", str(experiment)),
             "seeds": lambda: seeds_step(experiment, run_dir),
             "fidelity": lambda: fidelity(run_dir),
             "report": lambda: report(run_dir, proto, experiment.parent / "results")}
    for name in STEPS[1:]:
        if args.only in (None, name):
            timed(run_dir, proto, name, steps[name], code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
