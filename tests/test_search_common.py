"""What every search backend shares, tested without a backend (run folder, records, breaker, seeding,
state mapping, score reuse, hypervolume, JSONL records); and the helpers of the search tests: tiny
experiment files, front recomputation, kill-and-resume."""

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
from nas.run_folder import RunFolder
from search_space.io import read_jsonl

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


def _as_from_a_terminal() -> None:
    # a test run started in the background by a non-interactive shell (nohup cmd &) inherits SIGINT
    # ignored, and Python then installs no Ctrl-C handler: give the command a terminal's default
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(*args, cwd: Path, log: Path) -> subprocess.Popen:
    """``python -m shufflenas ARGS`` in its own process group (killable with all its children), with
    Ctrl-C (SIGINT) handled as in a terminal."""
    fh = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "shufflenas", *map(str, args)], cwd=cwd, stdout=fh,
                            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_as_from_a_terminal,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_for_records(run_dir: Path, n: int, proc: subprocess.Popen, timeout: float = 240) -> list[dict]:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if RunFolder(run_dir).trials_jsonl.exists():
            recs = records(run_dir)
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
    return read_jsonl(RunFolder(run_dir).trials_jsonl)


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


# ---- tests of what every backend shares (fast; the backends themselves: test_backends.py) ----------

def _rec(number, *, state="COMPLETE", reason="", acc=0.9, ms=1.0, finished=None, trial_id=None, in_space=True,
         arch_key=None):
    from nas.records import TrialRecord

    return TrialRecord(number=number, arch=_tiny_arch_dict(abs(number)), arch_key=arch_key or f"k{number}", state=state,
                       reason=reason, accuracy=acc, latency_ms=ms, in_space=in_space,
                       trial_id=trial_id or str(number), started=0.0,
                       finished=float(number if finished is None else finished))


def _exp(tmp_path, **kw):
    from nas.experiment import experiment_from_dict

    return experiment_from_dict({"space": yaml.safe_load(TINY_SPACE), "output": str(tmp_path / "run"), **kw},
                                base_dir=tmp_path)


def test_read_jsonl_skips_only_a_cut_final_line(tmp_path):
    import pytest

    from search_space.errors import FileFormatError
    from search_space.io import read_jsonl

    p = tmp_path / "rows.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3, "b"')  # killed in the middle of the third append
    with pytest.warns(UserWarning, match=r"rows.jsonl: line 4 is incomplete"):
        assert read_jsonl(p) == [{"a": 1}, {"a": 2}]
    p.write_text('{"a": 1}\n{"a": 2, oops}\n{"a": 3}\n')
    with pytest.raises(FileFormatError, match=r"rows.jsonl: line 2 is not valid JSON"):
        read_jsonl(p)
    p.write_text('{"a": 1}\n{"a": 3, "b"\n')  # the last line, but whole: damage, not a cut write
    with pytest.raises(FileFormatError, match=r"rows.jsonl: line 2 is not valid JSON"):
        read_jsonl(p)
    p.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(FileFormatError, match=r"rows.jsonl: line 2 is a JSON list, not an object"):
        read_jsonl(p)
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_run_folder_owns_every_name_of_the_layout(tmp_path):
    from nas import run_folder as F

    run = F.RunFolder(tmp_path)
    names = {run.experiment_json: F.EXPERIMENT, run.trials_jsonl: F.TRIALS_JSONL, run.trials_csv: F.TRIALS_CSV,
             run.remeasured_json: F.REMEASURED, run.optuna_journal: F.OPTUNA_JOURNAL, run.checkpoints: F.CHECKPOINTS,
             run.pareto: F.PARETO, run.report_html: F.REPORT_HTML, run.front_png: F.FRONT_PNG,
             run.retrain: F.RETRAIN}
    assert all(path == tmp_path / name for path, name in names.items())
    assert run.tune_dir == tmp_path / F.RAY_DIR / F.TUNE_NAME and run.front_json == tmp_path / F.PARETO / F.FRONT_JSON
    assert len(set(names.values())) == len(names)
    # the names the README and users' scripts rely on
    assert (F.EXPERIMENT, F.TRIALS_JSONL, F.TRIALS_CSV, F.REMEASURED, F.OPTUNA_JOURNAL, F.RAY_DIR, F.PARETO,
            F.FRONT_JSON, F.REPORT_HTML, F.FRONT_PNG) == ("experiment.json", "trials.jsonl", "trials.csv",
                                                           "remeasured.json", "optuna.journal", "ray", "pareto",
                                                           "front.json", "report.html", "front.png")


def test_records_are_added_once_and_remeasurements_merged(tmp_path):
    from nas.records import read_csv
    from nas.run_folder import RunFolder

    run = RunFolder(tmp_path)
    assert run.add_record(_rec(0)) is not None
    assert run.add_record(_rec(0, trial_id="0")) is None  # the same trial id again
    assert run.add_record(_rec(0, trial_id="other")) is None  # the same sampled number under a new id
    assert run.add_record(_rec(-1, trial_id="seed-0", in_space=False)) is not None
    run.remeasured_json.write_text(json.dumps({"k0": 0.5}))
    run.write_records(run.read_records())
    by_number = {r.number: r for r in run.read_records()}
    assert by_number[0].latency_measured_ms == 0.5 and math.isnan(by_number[-1].latency_measured_ms)
    assert [row["number"] for row in read_csv(run.trials_csv)] == [-1, 0]


def test_the_front_is_remeasured_once_per_member_and_resumes(tmp_path):
    from nas.run_folder import RunFolder

    exp = _exp(tmp_path)
    run = RunFolder(tmp_path)
    # 0 and 1 are the front; 2 is dominated; 3 failed
    run.write_records([_rec(0, acc=0.9, ms=2.0), _rec(1, acc=0.8, ms=1.0), _rec(2, acc=0.7, ms=3.0),
                       _rec(3, state="FAIL", reason="x")])
    measured = []

    def measure(arch):
        measured.append(arch)
        if len(measured) == 2:
            raise KeyboardInterrupt  # killed after the first member was measured
        return 0.25

    import pytest

    with pytest.raises(KeyboardInterrupt):
        run.remeasure_front(exp, measure)
    assert len(run.remeasured()) == 1  # the first member's measurement was kept
    done = run.remeasure_front(exp, lambda arch: 0.5)
    assert set(done) == {"k0", "k1"} and len(measured) == 2
    assert {r.number: r.latency_measured_ms for r in run.read_records() if r.number in (0, 1)} \
        == {0: done["k0"], 1: done["k1"]}
    assert math.isnan(next(r for r in run.read_records() if r.number == 2).latency_measured_ms)


def _tiny_arch_dict(i):
    return {"input_size": 16, "num_classes": 10, "stem": {"channels": 8, "stride": 1, "maxpool": False},
            "stages": [{"unit": "v2", "channels": 16 + 8 * i, "depth": 1}], "head_channels": None}


def test_breaker_trips_on_the_first_n_in_space_trials_failing_alike():
    from nas.backends.base import Breaker

    fail = [_rec(i, state="FAIL", reason="accuracy: DataError: x.tar.gz not found") for i in range(3)]
    assert "the first 3 trials all failed with the same reason" in Breaker(3).check(fail)
    assert "accuracy: DataError: x.tar.gz not found" in Breaker(3).check(fail)
    assert "\n" not in Breaker(3).check(fail)
    assert Breaker(3).check(fail[:2]) is None  # not three yet
    assert Breaker(0).check(fail) is None and Breaker(None).check(fail) is None  # turned off
    other = fail[:2] + [_rec(2, state="FAIL", reason="accuracy: timeout")]
    assert Breaker(3).check(other) is None  # failures of different kinds: candidates, not the experiment
    assert Breaker(3).check(fail[:2] + [_rec(2, finished=0.5)]) is None  # one of the first three passed
    later = fail + [_rec(3)]
    assert Breaker(3).check(later) is not None  # a later success does not undo the first three
    seeds = [_rec(-1 - i, state="FAIL", reason="latency: LUT has no entry", in_space=False, trial_id=f"seed-{i}")
             for i in range(3)]
    assert Breaker(3).check(seeds) is None  # out-of-space seeds a LUT cannot score are not counted
    assert Breaker(3, known=["0", "1", "2"]).check(fail + [_rec(3)]) is None  # resumed: a fresh window


def test_state_mapping_and_score_reuse_on_an_optuna_study(tmp_path):
    import optuna
    from optuna.trial import TrialState

    from nas.backends.study import scored_before, tell
    from nas.objective import arch_key
    from search_space import SearchSpace

    exp = _exp(tmp_path, latency={"budget_ms": 1.0})
    space = SearchSpace.from_yaml(TINY_SPACE)
    study = optuna.create_study(directions=exp.directions)
    trials = [study.ask() for _ in range(4)]
    arch = space.suggest(trials[0])
    complete = _rec(0, acc=0.9, ms=1.5, arch_key=arch_key(arch))
    complete.constraint = 0.5
    tell(study, trials[0], complete, exp)
    tell(study, trials[1], _rec(1, state="PRUNED", reason="stopped early by the scheduler"), exp)
    tell(study, trials[2], _rec(2, state="FAIL", reason="accuracy: x"), exp)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING]
    t0 = study.get_trials()[0]
    assert t0.values == [0.9, 1.5] and t0.constraints == {"latency_ms": 0.5} and t0.user_attrs["record"]["number"] == 0
    assert study.best_trials == []  # infeasible: never on the front
    copy = scored_before(study, arch, number=3, trial_id="t3", seed=None, node="here")
    assert (copy.copy_of, copy.number, copy.trial_id, copy.accuracy, copy.accuracy_seconds) == (0, 3, "t3", 0.9, 0.0)
    other = space.decode({**space.params_of(arch), "stages.0.channels": 24 if arch.stages[0].channels == 16 else 16})
    assert scored_before(study, other, number=3, trial_id="t3", seed=None, node="here") is None


def test_seed_plan_splits_by_space_and_names_out_of_space_trials(tmp_path, tiny_arch):
    from nas.backends.base import SeedPlan
    from search_space import SearchSpace

    space = SearchSpace.from_yaml(TINY_SPACE)
    inside = space.sample(seed=3).replace(name="inside")
    p = tmp_path / "inside.yaml"
    inside.to_yaml(p)
    exp = _exp(tmp_path, seeds=["shufflenet_v2_x0_5_cifar", str(p), "shufflenet_v1_g3_cifar"])
    plan = SeedPlan(exp, space)
    assert plan.queued() == [("inside", space.params_of(inside))]
    assert [(i, n) for i, n, _ in plan.out_of_space] == [(0, "shufflenet_v2_x0_5_cifar"), (2, "shufflenet_v1_g3_cifar")]
    assert [i for i, _, _ in plan.todo({"seed-0"})] == [2]


def test_reference_point_is_fixed_by_the_experiment(tmp_path):
    from nas.records import fixed_reference_point

    recs = [_rec(1, acc=0.5, ms=3.0, finished=2.0), _rec(0, acc=0.9, ms=2.0, finished=1.0)]
    budget = _exp(tmp_path, latency={"budget_ms": 4.0}, accuracy={"method": "proxy_training"})
    assert fixed_reference_point(budget, []) == {"accuracy": 0.0, "latency_ms": 4.0}
    given = _exp(tmp_path, latency={"budget_ms": 4.0}, reference_point={"accuracy": 0.3, "latency_ms": 9.0})
    assert fixed_reference_point(given, recs) == {"accuracy": 0.3, "latency_ms": 9.0}
    # a zero-cost score and no budget: the first trial to finish, moved away by its own size
    free = _exp(tmp_path, objectives=["accuracy", "latency_ms", "params"])
    assert fixed_reference_point(free, []) == {}
    assert fixed_reference_point(free, recs) == {"accuracy": 0.0, "latency_ms": 4.0, "params": 1.0}


def test_hypervolume_of_the_trials_so_far_never_falls(tmp_path):
    """The progress bar, the report's curve and front.json share one fixed reference point."""
    import numpy as np

    from nas.records import fixed_reference_point, hypervolume, hypervolume_history

    rng = np.random.default_rng(0)
    for exp in (_exp(tmp_path, latency={"budget_ms": 0.12}, accuracy={"method": "proxy_training"}), _exp(tmp_path)):
        for _ in range(20):
            recs = [_rec(i, acc=float(rng.uniform(0.5, 1.0)), ms=float(rng.uniform(0.03, 0.2)),
                         state="FAIL" if rng.random() < 0.1 else "COMPLETE") for i in range(15)]
            # as the console sees it: the reference of the records so far, after each trial
            so_far = [hypervolume(recs[:n], exp.objectives, fixed_reference_point(exp, recs[:n]))
                      for n in range(1, 16)]
            assert all(b >= a for a, b in zip(so_far, so_far[1:])), so_far
            curve = [hv for _, hv in hypervolume_history(recs, exp.objectives, fixed_reference_point(exp, recs))]
            assert curve == so_far  # the report's curve: the same numbers
