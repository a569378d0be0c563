"""The Ray Tune backend against a real local Ray (no mocks): search with ASHA on proxy training,
SIGKILL + resume, the extended searcher."""

from __future__ import annotations

import json
import math

import pytest

from test_search_common import front_from_csv, kill_then_resume, tiny_experiment


@pytest.fixture(scope="module")
def lut_path(tmp_path_factory):
    """A real lookup table of the tiny space, measured once with a short protocol."""
    from evaluators.latency import LatencyLUT, LatencyTarget, MeasurementProtocol
    from search_space import SearchSpace
    from conftest import TINY_SPACE
    from test_search_common import QUICK_PROTOCOL

    path = tmp_path_factory.mktemp("lut") / "lut.json"
    LatencyLUT.build(SearchSpace.from_yaml(TINY_SPACE), LatencyTarget(), MeasurementProtocol(**QUICK_PROTOCOL),
                     progress=False, path=path, calibration=3)
    return path


def ray_experiment(tmp, lut_path, **kw):
    import yaml

    p = tiny_experiment(tmp, backend="ray", **kw)
    d = yaml.safe_load(p.read_text())
    d["latency"].update(mode="lut", lut=str(lut_path))
    p.write_text(yaml.safe_dump(d))
    return p


def test_ray_search_sigkill_then_resume(tmp_path, lut_path):
    # 2 trials at a time, each 2 epochs of proxy training on 300 digits images; ASHA stops weak ones
    exp = ray_experiment(tmp_path, lut_path, name="rk", trials=10, budget_ms=1.0, concurrency=2,
                         ray={"scheduler": "asha"}, seeds=["shufflenet_v2_x0_5_cifar"],
                         accuracy={"method": "proxy_training", "subset": 300,
                                   "train": {"epochs": 2, "batch_size": 64, "threads": 1}})
    run_dir = tmp_path / "run"
    before, after, r = kill_then_resume(exp, run_dir, tmp_path, kill_after=3)
    by_id = {x["trial_id"]: x for x in after}
    assert 3 <= sum(r["number"] >= 0 for r in before) < 10
    sampled = [x for x in after if x["number"] >= 0]
    assert sorted(x["number"] for x in sampled) == list(range(10)), \
        sorted((x["number"], x["trial_id"], x["state"], x["trial_id"] in {b["trial_id"] for b in before})
               for x in after)
    # the preset lies outside the tiny space: evaluated as a seed trial, marked, numbered -1;
    # the tiny LUT has no entry for its blocks, so it fails with that reason and stays off the front
    seed = by_id["seed-0"]
    assert seed["seed"] == "shufflenet_v2_x0_5_cifar" and seed["in_space"] is False
    assert seed["state"] == "FAIL" and "LUT" in seed["reason"].upper()
    complete = [x for x in sampled if x["state"] == "COMPLETE"]
    assert complete and all(x["latency_source"] == "lut" for x in complete)
    assert all(x["feasible"] == (x["latency_ms"] <= 1.0) for x in complete)
    pruned = [x for x in sampled if x["state"] == "PRUNED"]
    assert pruned and all(x["stopped_early"] for x in pruned), [(x["state"], x["epochs"]) for x in sampled]
    assert all(x["state"] == "COMPLETE" and x["epochs"] == 2 for x in sampled if x not in pruned)
    summary = json.loads(r.stdout)
    front = json.loads((run_dir / "pareto" / "front.json").read_text())
    assert {m["arch_key"] for m in front["members"]} == front_from_csv(run_dir / "trials.csv")
    assert summary["front_size"] == len(front["members"]) > 0
    assert all(m["latency_measured_ms"] > 0 for m in front["members"])  # LUT front re-measured
    import yaml

    for m in front["members"]:  # the export's per-block breakdown carries the LUT's latency per block
        cand = yaml.safe_load((run_dir / "pareto" / m["folder"] / "candidate.yaml").read_text())
        assert all(b["lut_ms"] is not None and b["lut_ms"] > 0 for b in cand["blocks"])


def test_searcher_tells_constraint_pruned_and_fail():
    """The extended OptunaSearch: constraint reaches Optuna; early stops are PRUNED; failures FAIL."""
    from optuna.trial import TrialState

    from nas.ray_backend import NUMBER_KEY, ConstrainedOptunaSearch, DefineByRun
    from search_space import SearchSpace
    from conftest import TINY_SPACE

    space = SearchSpace.from_yaml(TINY_SPACE)
    s = ConstrainedOptunaSearch(space=DefineByRun(space.to_dict()), metric=["accuracy", "latency_ms"],
                          mode=["max", "min"], constraint_key="latency_ms")
    cfgs = [s.suggest(f"t{i}") for i in range(4)]
    assert [c[NUMBER_KEY] for c in cfgs] == [0, 1, 2, 3]
    s.on_trial_complete("t0", {"final": True, "state": "COMPLETE", "accuracy": 0.9, "latency_ms": 3.0,
                               "constraint": 1.0})
    s.on_trial_complete("t1", {"accuracy_epoch": 0.5, "epoch": 1, "final": False})  # stopped by ASHA
    s.on_trial_complete("t2", {"final": True, "state": "FAIL"})
    s.on_trial_complete("t3", None, error=True)
    trials = s._ot_study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.FAIL]
    assert trials[0].constraints == {"latency_ms": 1.0} and trials[0].values == [0.9, 3.0]
    assert s._ot_study.best_trials == []  # infeasible: never on the front
    import pickle

    pickle.loads(pickle.dumps(s))  # Tune checkpoints the searcher: no lambdas
    assert math.isfinite(trials[0].values[0])
