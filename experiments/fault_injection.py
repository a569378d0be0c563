"""Fault injection: SIGKILL the search driver at random moments, resume each time, prove nothing is lost.

    python experiments/fault_injection.py --backend optuna --kills 10
    python experiments/fault_injection.py --backend ray --kills 10

One run per backend on a tiny space (digits, 1 epoch of proxy training per
trial, latency from a lookup table so every score is deterministic):

1. ``shufflenas search EXP`` is started and SIGKILLed (its whole process
   group, a private Ray cluster included), then started again with
   ``--resume``; ``--kills`` times, then it runs to the end. A third of the
   kills hit a random moment of the (re)start, the rest a random moment after
   that start has recorded a trial (so the run makes progress between kills).
2. After every kill: every file in the run folder parses (no half-written
   JSON/YAML/CSV), and every trial recorded before the kill is still there,
   unchanged (same start time, architecture and scores).
3. At the end: exactly N sampled trials, each number once (none lost, none
   duplicated; a trial cut by a kill is re-run under a new number), and the exported Pareto set equals that of an
   uninterrupted run over the same architectures (a second search that is
   seeded with every architecture of the killed run, in order, and never killed).

Prints the counts beside what they must be and writes
``experiments/results/reliability/fault_injection_<backend>.{txt,json}``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from nas.run_folder import RAY_DIR, TUNE_NAME, RunFolder
from search_space.io import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results" / "reliability"
SPACE = {
    "name": "faults", "input_size": 16, "num_classes": 10,
    "stem": {"channels": [8, 16], "stride": 1, "maxpool": False},
    "stages": [{"unit": "v2", "channels": [16, 24, 32], "depth": [1, 2], "kernel": [3, 5]},
               {"unit": "v2", "channels": [32, 48, 64], "depth": [1, 2, 3], "kernel": [3, 5]}],
    "head_channels": [None, 64],
}
# short but real measurements for the table; the scores of the search come from the table only
PROTOCOL = {"warmup_runs": 3, "warmup_seconds": 0.0, "min_runs": 10, "min_seconds": 0.02,
            "max_attempts": 1, "reference_every": 0}


def build_lut(path: Path) -> None:
    from evaluators.latency import LatencyLUT, LatencyTarget, MeasurementProtocol
    from search_space import SearchSpace

    if not path.is_file():
        lut = LatencyLUT.build(SearchSpace.from_dict(SPACE), LatencyTarget(), MeasurementProtocol(**PROTOCOL),
                               progress=False, path=path, calibration=3)
        lut.save(path)


def write_experiment(path: Path, *, backend: str, trials: int, lut: Path, output: Path,
                     seeds: list[str] = ()) -> Path:
    exp = {
        "name": path.stem, "space": SPACE, "data": "digits",
        "accuracy": {"method": "proxy_training", "subset": 400,
                     "train": {"epochs": 1, "batch_size": 64, "threads": 1}},
        "latency": {"mode": "lut", "lut": str(lut), "budget_ms": 1.0},
        "search": {"backend": backend, "sampler": "tpe", "trials": trials, "seed": 0,
                   **({"concurrency": 2, "ray": {"num_cpus": 2}} if backend == "ray" else {})},
        "seeds": list(seeds), "output": str(output),
    }
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


def start(exp: Path, log: Path, resume: bool) -> subprocess.Popen:
    args = [sys.executable, "-m", "shufflenas", "search", str(exp), "--json", "--no-onnx"]
    if resume:
        args.append("--resume")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen(args, cwd=ROOT, stdout=open(log, "a"), stderr=subprocess.STDOUT,
                            start_new_session=True, env=env)


def records(run_dir: Path) -> dict[str, dict]:
    # a half-written line is skipped here and counted by unreadable_files()
    return {r["trial_id"]: r for r in read_jsonl(RunFolder(run_dir).trials_jsonl)}


def ray_owned(rel: Path) -> bool:
    """Ray Tune's own state files (written non-atomically by Ray; shufflenas restores them from
    its ``ray/tune/.snapshot`` copy on resume, which *is* checked)."""
    return rel.parts[:2] == (RAY_DIR, TUNE_NAME) and ".snapshot" not in rel.parts


def unreadable_files(run_dir: Path) -> list[str]:
    """Files in the run folder that do not parse (what a non-atomic write leaves after a kill)."""
    bad = []
    for p in run_dir.rglob("*"):
        if not p.is_file() or p.name.startswith("."):
            continue
        try:
            head = p.read_bytes()[:1]
            if head == b"\x80":  # a pickle (Ray Tune names its searcher state *.json): complete iff it ends in STOP
                if not p.read_bytes().endswith(b"."):
                    raise ValueError("truncated pickle")
            elif p.suffix == ".json":
                json.loads(p.read_text())
            elif p.suffix in (".yaml", ".yml"):
                yaml.safe_load(p.read_text())
            elif p.suffix == ".jsonl":
                [json.loads(x) for x in p.read_text().splitlines()]
            elif p.suffix == ".csv":
                rows = list(csv.reader(p.open()))
                if rows and any(len(r) != len(rows[0]) for r in rows):
                    raise ValueError("ragged rows")
        except Exception as exc:  # noqa: BLE001 -- any parse error is the finding
            bad.append(f"{p.relative_to(run_dir)}: {type(exc).__name__}")
    return bad


def same(a: dict, b: dict) -> bool:
    keys = ("started", "arch_key", "state", "accuracy", "latency_ms")
    return all(a.get(k) == b.get(k) or (a.get(k) != a.get(k) and b.get(k) != b.get(k)) for k in keys)


def front_of(run_dir: Path) -> dict[str, tuple]:
    front = json.loads(RunFolder(run_dir).front_json.read_text())
    return {m["arch_key"]: (round(m["accuracy"], 6), round(m["latency_ms"], 6)) for m in front["members"]}


def run(backend: str, kills: int, trials: int, lo: float, hi: float, seed: int) -> dict:
    work = ROOT / "runs" / f"fault_injection_{backend}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lut = ROOT / "runs" / "fault_injection_lut.json"
    build_lut(lut)
    exp = write_experiment(work / "killed.yaml", backend=backend, trials=trials, lut=lut, output=work / "killed")
    run_dir = work / "killed"
    rng = random.Random(seed)
    log = work / "killed.log"
    seen: dict[str, dict] = {}
    lost, changed, broken, ray_broken, landed, delays = [], [], [], [], 0, []
    t0 = time.time()
    for k in range(kills):
        proc = start(exp, log, resume=k > 0)
        # a third of the kills at a random moment of the (re)start; the rest once this start has
        # recorded a new trial, a random fraction of a trial later: mid-trial, mid-write, mid-export
        early = rng.random() < 1 / 3
        t_start, base = time.time(), len(records(run_dir)) if run_dir.exists() else 0
        if early:
            delay = rng.uniform(lo, hi)
        else:
            while proc.poll() is None and len(records(run_dir)) <= base and time.time() - t_start < 600:
                time.sleep(0.2)
            delay = time.time() - t_start + rng.uniform(0.2, 3.0)
        delays.append(round(delay, 2))
        try:
            proc.wait(timeout=max(0.0, delay - (time.time() - t_start)))
            print(f"kill {k + 1}: the search finished before the kill (exit {proc.returncode})", flush=True)
            break
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            landed += 1
        time.sleep(0.5)  # let the killed group's children go
        for f in unreadable_files(run_dir) if run_dir.exists() else []:
            (ray_broken if ray_owned(Path(f.split(":")[0])) else broken).append(f)
        now = records(run_dir) if run_dir.exists() else {}
        lost += [tid for tid in seen if tid not in now]
        changed += [tid for tid, r in seen.items() if tid in now and not same(r, now[tid])]
        seen.update(now)
        print(f"kill {k + 1} ({'during start' if early else 'after progress'}) at {delay:.1f} s: {sum(r['number'] >= 0 for r in now.values())} trials recorded, "
              f"lost {len(lost)}, changed {len(changed)}, unreadable files {len(broken)}", flush=True)
    proc = start(exp, log, resume=True)
    rc = proc.wait()
    killed_s = time.time() - t0
    final = records(run_dir)
    lost += [tid for tid in seen if tid not in final]
    changed += [tid for tid, r in seen.items() if tid in final and not same(r, final[tid])]
    numbers = sorted(r["number"] for r in final.values() if r["number"] >= 0)
    duplicates = len(numbers) - len(set(numbers))

    # the uninterrupted run over the same architectures, in the same order
    arch_dir = work / "architectures"
    arch_dir.mkdir()
    seeds, keys = [], set()
    for r in sorted(final.values(), key=lambda r: r["number"]):
        if r["arch_key"] in keys:  # the sampler proposed it twice; the front keeps the first
            continue
        keys.add(r["arch_key"])
        p = arch_dir / f"trial{r['number']}.yaml"
        p.write_text(yaml.safe_dump({**r["arch"], "name": f"trial{r['number']}"}, sort_keys=False))
        seeds.append(str(p))
    replay = write_experiment(work / "replay.yaml", backend=backend, trials=len(seeds), lut=lut,
                              output=work / "replay", seeds=seeds)
    t1 = time.time()
    rc_replay = start(replay, work / "replay.log", resume=False).wait()
    replay_s = time.time() - t1
    front_killed, front_replay = front_of(run_dir), front_of(work / "replay")
    result = {
        "backend": backend, "kills_requested": kills, "kills_landed": landed, "kill_delays_s": delays,
        "trials_requested": trials, "trials_finished": len(numbers),
        "numbers_ok": len(numbers) == trials and not duplicates,
        "states": {s: sum(r["state"] == s for r in final.values()) for s in ("COMPLETE", "PRUNED", "FAIL")},
        "lost": len(set(lost)), "changed": len(set(changed)), "duplicates": duplicates,
        "unreadable_files": sorted(set(broken)), "ray_own_state_unreadable": sorted(set(ray_broken)),
        "final_exit": rc, "replay_exit": rc_replay,
        "front_size": len(front_killed), "front_equal_to_uninterrupted": front_killed == front_replay,
        "front_only_killed": sorted(set(front_killed) - set(front_replay)),
        "front_only_replay": sorted(set(front_replay) - set(front_killed)),
        "seconds_killed_run": round(killed_s, 1), "seconds_uninterrupted_replay": round(replay_s, 1),
    }
    return result


def report(r: dict) -> str:
    rows = [
        ("SIGKILLs of the driver that landed mid-run", r["kills_landed"], f">= {r['kills_requested']}"),
        ("sampled trials finished / requested", f"{r['trials_finished']} / {r['trials_requested']}",
         "equal, each trial number once" + (" (yes)" if r["numbers_ok"] else " (NO)")),
        ("finished trials lost", r["lost"], "0"),
        ("finished trials changed by a resume", r["changed"], "0"),
        ("duplicated trials", r["duplicates"], "0"),
        ("unreadable (half-written) files of ours after a kill", len(r["unreadable_files"]), "0"),
        ("  (Ray Tune's own state files found half-written; restored from our snapshot)",
         len(r["ray_own_state_unreadable"]), "any"),
        ("Pareto export equals the uninterrupted run's", "yes" if r["front_equal_to_uninterrupted"] else "NO",
         f"yes ({r['front_size']} members)"),
        ("exit status of the last resume / of the replay", f"{r['final_exit']} / {r['replay_exit']}", "0 / 0"),
        ("wall clock: killed run incl. restarts / uninterrupted replay",
         f"{r['seconds_killed_run']:.0f} s / {r['seconds_uninterrupted_replay']:.0f} s", ""),
    ]
    w = max(len(a) for a, _, _ in rows)
    lines = [f"fault injection, backend {r['backend']}: trial states {r['states']}"]
    lines += [f"  {a:<{w}}  {str(b):>12}   must be: {c}" for a, b, c in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=("optuna", "ray"), required=True)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--trials", type=int, default=None, help="default: 60 (optuna), 60 (ray)")
    ap.add_argument("--delay", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="random delay of the kills that hit a (re)start, seconds (default 1 8 for "
                         "optuna, 3 20 for ray: a Ray start takes longer)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    trials = a.trials or 60
    lo, hi = a.delay or ((1.0, 8.0) if a.backend == "optuna" else (3.0, 20.0))
    r = run(a.backend, a.kills, trials, lo, hi, a.seed)
    text = report(r)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"fault_injection_{a.backend}.txt").write_text(text + "\n")
    (RESULTS / f"fault_injection_{a.backend}.json").write_text(json.dumps(r, indent=1) + "\n")
    ok = (r["kills_landed"] >= a.kills and r["lost"] == r["changed"] == r["duplicates"] == 0
          and not r["unreadable_files"] and r["numbers_ok"] and r["front_equal_to_uninterrupted"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
