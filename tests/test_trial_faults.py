"""Trial faults (issue #7): a trial that raises, diverges, runs out of memory or out of time is
recorded FAIL with its reason, the search goes on, and failed trials never reach the front.

Time and memory limits run accuracy in a watched child process (nas/trial_worker.py); these
tests hit the limits for real: proxy trainings far longer than the time limit, and a wide
preset (shufflenet_v2_x2_0_cifar, ~1.4 GB resident while training at batch 64) beside tiny
networks (~350 MB) under a 800 MB limit.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
import yaml

from nas.run_folder import RunFolder
from test_search_common import front_from_csv, records, tiny_experiment

OOM_REASON = re.compile(r"^accuracy: out of memory: RSS \d+ MB > search\.trial_memory_mb=800$")
#: one short epoch on 300 digits images: tiny networks peak at ~350 MB, the x2_0 preset at ~1.4 GB
SHORT_TRAINING = {"method": "proxy_training", "subset": 300,
                  "train": {"epochs": 1, "batch_size": 64, "threads": 1}}
#: 100 epochs over all of digits (~2,500 steps) cannot end within 1 s: each trial is killed at the limit
SLOW_TRAINING = {"method": "proxy_training", "train": {"epochs": 100, "batch_size": 64, "threads": 1}}


def _run(exp_path):
    from nas.experiment import load_experiment
    from nas.search import run_search

    exp = load_experiment(exp_path)
    run_search(exp, progress=False, onnx=False)
    run_dir = Path(exp.output)
    return run_dir, records(run_dir), json.loads(RunFolder(run_dir).front_json.read_text())


def _tiny_arch():
    from conftest import TINY_SPACE
    from search_space import SearchSpace

    return SearchSpace.from_dict(yaml.safe_load(TINY_SPACE)).sample(1, seed=0)[0]


# ---- whole searches ---------------------------------------------------------------------------

@pytest.mark.slow
def test_every_trial_over_the_time_limit_fails_and_the_search_finishes(tmp_path):
    # (every trial failing alike would trip the breaker, which is tested in test_backends.py)
    exp = tiny_experiment(tmp_path, name="slow", trials=3, trial_timeout_s=1, accuracy=SLOW_TRAINING,
                          stop_after_failures=0)
    run_dir, recs, front = _run(exp)
    assert sorted(r["number"] for r in recs) == [0, 1, 2]
    assert all(r["state"] == "FAIL" for r in recs), [(r["state"], r["reason"]) for r in recs]
    assert {r["reason"] for r in recs} == {"accuracy: timeout: exceeded search.trial_timeout_s=1 s"}
    assert all(r["latency_ms"] > 0 for r in recs)  # latency was measured, in the search process
    assert front["members"] == []
    assert not [p for p in RunFolder(run_dir).pareto.iterdir() if p.is_dir()]  # nothing exported


@pytest.mark.slow
def test_trial_over_the_memory_limit_fails_others_pass_and_only_they_reach_the_front(tmp_path):
    # the out-of-space preset is scored first (seed trial -1) and is killed over 800 MB;
    # the tiny networks sampled after it run in a fresh worker and pass
    exp = tiny_experiment(tmp_path, name="mem", trials=2, trial_memory_mb=800,
                          seeds=["shufflenet_v2_x2_0_cifar"], accuracy=SHORT_TRAINING)
    run_dir, recs, front = _run(exp)
    by_number = {r["number"]: r for r in recs}
    assert sorted(by_number) == [-1, 0, 1]
    wide = by_number[-1]
    assert wide["state"] == "FAIL" and OOM_REASON.match(wide["reason"]), wide["reason"]
    sampled = [by_number[0], by_number[1]]
    assert all(r["state"] == "COMPLETE" for r in sampled), [(r["state"], r["reason"]) for r in sampled]
    workers = [r["accuracy_extra"]["trial_worker"] for r in sampled]
    assert all(w["peak_rss_mb"] <= 800 for w in workers)
    members = {m["arch_key"] for m in front["members"]}
    assert members and members == front_from_csv(RunFolder(run_dir).trials_csv)
    assert wide["arch_key"] not in members


@pytest.mark.slow
def test_ray_backend_records_timeouts_and_finishes(tmp_path):
    """Through a real local Ray: the trainable, in a Ray worker process, starts the trial worker."""
    from conftest import run_cli

    exp = tiny_experiment(tmp_path, name="rslow", backend="ray", trials=2, trial_timeout_s=1, accuracy=SLOW_TRAINING)
    r = run_cli("search", exp, "--json", "--no-onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = records(tmp_path / "run")
    assert sorted(x["number"] for x in recs) == [0, 1]
    assert [x["state"] for x in recs] == ["FAIL", "FAIL"], [(x["state"], x["reason"]) for x in recs]
    assert {x["reason"] for x in recs} == {"accuracy: timeout: exceeded search.trial_timeout_s=1 s"}
    summary = json.loads(r.stdout)
    assert summary["front_size"] == 0 and summary["states"]["FAIL"] == 2
    assert json.loads(RunFolder(tmp_path / "run").front_json.read_text())["members"] == []


# ---- one candidate --------------------------------------------------------------------------

@pytest.mark.parametrize("limits", [pytest.param({}, id="in-process"),
                                    pytest.param({"trial_timeout_s": 600}, id="trial-worker", marks=pytest.mark.slow)])
def test_raising_and_diverging_trials_are_fail_with_their_reason(tmp_path, limits):
    """The evaluator's own exceptions keep their name and message, in process and across the child."""
    from nas.experiment import load_experiment
    from nas.objective import SearchContext, evaluate_candidate

    diverging = {**SHORT_TRAINING, "train": {**SHORT_TRAINING["train"], "lr": 1e30, "optimizer": "sgd",
                                              "warmup": 0}}
    exp = load_experiment(tiny_experiment(tmp_path, trials=1, accuracy=diverging, **limits))
    arch = _tiny_arch()
    with SearchContext(exp, tmp_path / "run") as ctx:
        nan = evaluate_candidate(arch, ctx, number=0)
        wrong = evaluate_candidate(arch.replace(num_classes=5), ctx, number=1)
        starts = ctx.trial_worker().starts if limits else None
    assert nan.state == "FAIL" and nan.reason.startswith("accuracy: TrainingDiverged: ")
    assert "loss became nan" in nan.reason
    assert wrong.state == "FAIL" and wrong.reason.startswith("accuracy: TrainingError: ")
    assert "num_classes=5" in wrong.reason
    if limits:  # an exception is an answer, not a crash: one child served both, its traceback kept
        assert starts == 1 and "loss became nan" in nan.accuracy_extra["traceback"]


@pytest.mark.slow
def test_epoch_callback_crosses_into_the_trial_worker_and_can_stop_training(tmp_path):
    from nas.experiment import load_experiment
    from nas.objective import SearchContext

    three = {**SHORT_TRAINING, "train": {**SHORT_TRAINING["train"], "epochs": 3}}
    exp = load_experiment(tiny_experiment(tmp_path, trials=1, accuracy=three, trial_timeout_s=600))
    calls = []

    def stop_after_first(epoch, acc):
        calls.append((epoch, acc))
        return True

    with SearchContext(exp, tmp_path / "run") as ctx:
        res = ctx.evaluate_accuracy(_tiny_arch(), callback=stop_after_first)
        full = ctx.evaluate_accuracy(_tiny_arch())
    assert calls == [(1, res.accuracy)]
    assert res.stopped_early and res.epochs == 1
    assert not full.stopped_early and full.epochs == 3
    assert res.extra["trial_worker"]["pid"] == full.extra["trial_worker"]["pid"]  # one child for both


# A child's faults that no tiny search produces on demand: a MemoryError raised inside it (a real
# allocation Python cannot satisfy) and a death by signal (as the kernel's OOM killer does it).

class _Greedy:
    name = "greedy"

    def evaluate(self, arch, callback=None):
        bytearray(1 << 60)  # an exbibyte: malloc fails, Python raises MemoryError


class _Killed:
    name = "killed"

    def evaluate(self, arch, callback=None):
        os.kill(os.getpid(), signal.SIGKILL)


def test_memory_error_in_the_child_is_an_out_of_memory_failure():
    from nas.trial_worker import TrialWorker, describe_failure

    with TrialWorker(_Greedy, memory_mb=4000) as w:
        pid = w.pid
        for _ in range(2):  # the child answers and stays up
            with pytest.raises(MemoryError) as info:
                w.evaluate(_tiny_arch())
            assert describe_failure(info.value).startswith("out of memory: MemoryError")
            assert w.pid == pid


def test_child_killed_by_a_signal_fails_naming_it_and_the_next_trial_gets_a_fresh_child():
    from nas.trial_worker import TrialFault, TrialWorker

    with TrialWorker(_Killed, timeout_s=600) as w:
        with pytest.raises(TrialFault, match="trial worker killed by SIGKILL"):
            w.evaluate(_tiny_arch())
        with pytest.raises(TrialFault, match="SIGKILL"):
            w.evaluate(_tiny_arch())
        assert w.starts == 2  # a fresh child for the second trial
