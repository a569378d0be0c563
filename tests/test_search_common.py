"""Helpers shared by the search tests (no tests here): tiny experiment files, front recomputation."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from conftest import ROOT, TINY_SPACE

#: A short but real measurement protocol (ONNX Runtime, 1 thread) for tests.
QUICK_PROTOCOL = {"warmup_runs": 2, "warmup_seconds": 0.0, "min_runs": 5, "min_seconds": 0.01,
                  "max_attempts": 1, "reference_every": 0,
                  # tests do not wait behind other measurements on a shared machine
                  "lock": False}


def tiny_experiment(tmp: Path, *, name="t", trials=6, backend="optuna", seeds=(), accuracy=None,
                    budget_ms=None, output="run", **search) -> Path:
    exp = {
        "name": name, "space": yaml.safe_load(TINY_SPACE), "data": "digits",
        "accuracy": accuracy or {"method": "zero_cost", "proxy": "synflow"},
        "latency": {"mode": "measured", "protocol": QUICK_PROTOCOL,
                    **({"budget_ms": budget_ms} if budget_ms else {})},
        "search": {"backend": backend, "sampler": "tpe", "trials": trials, "seed": 0, **search},
        "seeds": list(seeds), "output": output,
    }
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(exp, sort_keys=False))
    return p


def front_from_csv(csv_path: Path) -> set[str]:
    """Non-dominated feasible COMPLETE rows of trials.csv, one per architecture (first kept), by brute force."""
    from nas.records import read_csv

    rows = sorted(read_csv(csv_path), key=lambda r: r["number"])
    seen, cand = set(), []
    for r in rows:
        if r["state"] == "COMPLETE" and r["feasible"] and math.isfinite(r["accuracy"]) \
                and r["arch_key"] not in seen:
            seen.add(r["arch_key"])
            cand.append(r)

    def dominates(a, b):
        ge = a["accuracy"] >= b["accuracy"] and a["latency_ms"] <= b["latency_ms"]
        return ge and (a["accuracy"] > b["accuracy"] or a["latency_ms"] < b["latency_ms"])

    return {a["arch_key"] for a in cand if not any(dominates(b, a) for b in cand if b is not a)}


def start_cli(*args, cwd: Path, log: Path) -> subprocess.Popen:
    """``python -m shufflenas ARGS`` in its own process group (killable with all its children)."""
    fh = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "shufflenas", *map(str, args)], cwd=cwd, stdout=fh,
                            stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_for_records(run_dir: Path, n: int, proc: subprocess.Popen, timeout: float = 240) -> list[dict]:
    t0 = time.time()
    while time.time() - t0 < timeout:
        p = run_dir / "trials.jsonl"
        if p.exists():
            recs = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
            if sum(r["number"] >= 0 for r in recs) >= n:
                return recs
        if proc.poll() is not None:
            raise AssertionError(f"search exited early with {proc.returncode}")
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} records after {timeout} s")


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "trials.jsonl").read_text().splitlines() if x.strip()]


def kill_then_resume(exp: Path, run_dir: Path, tmp: Path, *, kill_after: int
                     ) -> tuple[list[dict], list[dict], subprocess.CompletedProcess]:
    """Start a search, SIGKILL it once ``kill_after`` trials are recorded, rerun with ``--resume``.

    Checks what every backend owes a killed run: no trial id twice, and every
    trial finished before the kill still there, unchanged. Returns the records
    before the kill, after the resume, and the resumed command's result.
    """
    from conftest import run_cli

    proc = start_cli("search", exp, "--json", "--no-onnx", cwd=tmp, log=tmp / "first.log")
    wait_for_records(run_dir, kill_after, proc)
    assert proc.poll() is None, "the search finished before the kill; the test proves nothing"
    kill_group(proc)  # the driver and everything it started (a private Ray cluster too)
    before = records(run_dir)
    r = run_cli("search", exp, "--resume", "--json", "--no-onnx", cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    after = records(run_dir)
    ids = [x["trial_id"] for x in after]
    assert len(ids) == len(set(ids))
    by_id = {x["trial_id"]: x for x in after}
    for b in before:
        assert by_id[b["trial_id"]]["started"] == b["started"]
        assert by_id[b["trial_id"]]["arch_key"] == b["arch_key"]
    return before, after, r
