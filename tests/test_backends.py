"""Both search backends against one behaviour, end to end (real Optuna; a real private Ray on loopback).

One search per backend on a space of exactly two networks, both given as seeds, plus a preset
outside the space and over the latency budget: seeds, score reuse, the constraint, the
re-measured front and the hypervolume are checked on it. Then the breaker (a failure every
trial meets, stopped, fixed, resumed) and a SIGKILL followed by ``--resume``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from nas.run_folder import RunFolder
from test_search_common import front_from_csv, kill_then_resume, records, tiny_experiment

BACKENDS = [pytest.param("optuna", marks=pytest.mark.slow), pytest.param("ray", marks=pytest.mark.slow)]
#: the preset measured 0.47-0.8 ms at 32x32 here, the two tiny networks 0.045-0.1 ms at 16x16
BUDGET_MS = 0.2
PRESET = "shufflenet_v2_x0_5_cifar"


def _search(exp: Path, *args: str):
    from conftest import run_cli

    return run_cli("search", exp, "--json", "--no-onnx", *args, cwd=exp.parent)


def _on(backend: str) -> dict:
    """Search settings of ``backend`` for a test: Ray's private cluster kept to this machine's two cores."""
    return {"ray": {"num_cpus": 2}} if backend == "ray" else {}


@pytest.fixture(scope="module", params=BACKENDS)
def two_point_run(request, tmp_path_factory):
    from conftest import TINY_SPACE
    from search_space import SearchSpace

    backend = request.param
    tmp = tmp_path_factory.mktemp(f"two_points_{backend}")
    space = yaml.safe_load(TINY_SPACE)
    space["stages"] = [{"unit": "v2", "channels": 16, "depth": 1, "kernel": [3, 5]},
                       {"unit": "v2", "channels": 32, "depth": 1}]
    space["head_channels"] = 64
    points = SearchSpace.from_dict(space)
    assert points.size() == 2
    seeds = [PRESET]
    for name, kernel in (("k3", 3), ("k5", 5)):
        arch = points.decode({"stages.0.kernel": kernel}).replace(name=name)
        arch.to_yaml(tmp / f"{name}.yaml")
        seeds.append(str(tmp / f"{name}.yaml"))
    exp = tiny_experiment(tmp, name=f"two_{backend}", backend=backend, trials=6, budget_ms=BUDGET_MS, seeds=seeds,
                          **_on(backend))
    d = yaml.safe_load(exp.read_text())
    d["space"] = space
    exp.write_text(yaml.safe_dump(d, sort_keys=False))
    r = _search(exp)
    assert r.returncode == 0, r.stderr[-3000:]
    return backend, tmp / "run", json.loads(r.stdout)


def test_seeds_are_scored_first_and_marked(two_point_run):
    _, run_dir, summary = two_point_run
    recs = {r["number"]: r for r in records(run_dir)}
    assert sorted(recs) == [-1, 0, 1, 2, 3, 4, 5] and summary["trials"] == 7
    outside = recs[-1]
    assert (outside["seed"], outside["in_space"], outside["trial_id"]) == (PRESET, False, "seed-0")
    assert [(recs[n]["seed"], recs[n]["in_space"]) for n in (0, 1)] == [("k3", True), ("k5", True)]
    assert [recs[n]["arch"]["stages"][0]["kernel"] for n in (0, 1)] == [3, 5]
    assert all(recs[n]["seed"] is None for n in range(2, 6))


def test_an_architecture_scored_before_is_copied_not_scored_again(two_point_run):
    """Both networks are scored by the seeds; the sampler can only propose them again."""
    _, run_dir, _ = two_point_run
    recs = {r["number"]: r for r in records(run_dir)}
    scored = {recs[n]["arch_key"]: recs[n] for n in (0, 1)}
    assert len(scored) == 2 and all(r["copy_of"] is None and r["latency_seconds"] > 0 for r in scored.values())
    for n in range(2, 6):
        copy, orig = recs[n], scored[recs[n]["arch_key"]]
        assert copy["copy_of"] == orig["number"] and copy["accuracy_seconds"] == copy["latency_seconds"] == 0.0
        assert (copy["state"], copy["accuracy"], copy["latency_ms"]) == ("COMPLETE", orig["accuracy"],
                                                                         orig["latency_ms"])


def test_the_latency_budget_is_a_constraint(two_point_run):
    _, run_dir, summary = two_point_run
    recs = records(run_dir)
    for r in recs:
        assert r["state"] == "COMPLETE" and r["latency_source"] == "measured"
        assert r["constraint"] == pytest.approx(r["latency_ms"] - BUDGET_MS)
        assert r["feasible"] == (r["latency_ms"] <= BUDGET_MS)
    assert [r["feasible"] for r in recs if r["number"] == -1] == [False] and summary["states"]["infeasible"] == 1
    front = json.loads(RunFolder(run_dir).front_json.read_text())
    members = {m["arch_key"] for m in front["members"]}
    assert members and members == front_from_csv(RunFolder(run_dir).trials_csv)
    assert PRESET not in {m["seed"] for m in front["members"]}


def test_front_members_and_only_they_are_remeasured_on_the_device(two_point_run):
    _, run_dir, _ = two_point_run
    remeasured = json.loads(RunFolder(run_dir).remeasured_json.read_text())
    front = json.loads(RunFolder(run_dir).front_json.read_text())["members"]
    assert set(remeasured) == {m["arch_key"] for m in front}
    for r in records(run_dir):
        if r["arch_key"] in remeasured:
            assert r["latency_measured_ms"] == remeasured[r["arch_key"]] > 0
        else:
            assert r["latency_measured_ms"] is None


def test_one_hypervolume_on_the_console_in_front_json_and_in_the_report(two_point_run):
    from nas.records import fixed_reference_point, hypervolume
    from nas.run_folder import RunFolder

    _, run_dir, summary = two_point_run
    run = RunFolder(run_dir)
    exp, recs = run.read_experiment(), run.read_records()
    ref = fixed_reference_point(exp, recs)
    front = json.loads(run.front_json.read_text())
    assert summary["reference_point"] == front["reference_point"] == ref and ref["latency_ms"] == BUDGET_MS
    assert summary["hypervolume"] == front["hypervolume"] == hypervolume(recs, exp.objectives, ref) > 0
    assert f"{front['hypervolume']:.6g}" in run.report_html.read_text()


@pytest.mark.parametrize("backend", BACKENDS)
def test_breaker_stops_a_search_whose_trials_all_fail_alike_and_resume_continues_after_the_fix(tmp_path, backend):
    """Every trial fails the same way (its checkpoint folder is a file): the search stops after three
    with exit 2 and that reason; the three are kept; once fixed, --resume finishes the budget."""
    exp = tiny_experiment(tmp_path, name=f"broken_{backend}", backend=backend, trials=5, **_on(backend),
                          accuracy={"method": "proxy_training", "subset": 100,
                                    "train": {"epochs": 1, "batch_size": 50, "threads": 1}})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    RunFolder(run_dir).checkpoints.write_text("not a folder")
    r = _search(exp)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-3000:]
    assert "search stopped: the first 3 trials all failed with the same reason" in r.stderr
    assert "--resume" in r.stderr and r.stdout == ""
    failed = records(run_dir)
    assert len(failed) == 3 and {x["state"] for x in failed} == {"FAIL"}
    assert len({x["reason"] for x in failed}) == 1 and str(RunFolder(run_dir).checkpoints) in failed[0]["reason"]
    assert failed[0]["reason"] in r.stderr
    assert not RunFolder(run_dir).pareto.exists()  # nothing exported from a stopped search

    RunFolder(run_dir).checkpoints.unlink()  # the fix
    r = _search(exp, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    after = {x["trial_id"]: x for x in records(run_dir)}
    assert len(after) == 5 and all(after[x["trial_id"]] == x for x in failed)  # kept, unchanged
    new = [x for x in after.values() if x["trial_id"] not in {f["trial_id"] for f in failed}]
    assert len(new) == 2 and all(x["state"] == "COMPLETE" and x["epochs"] == 1 for x in new)
    assert json.loads(r.stdout)["states"] == {"COMPLETE": 2, "PRUNED": 0, "FAIL": 3, "infeasible": 0}


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_then_resume_loses_and_repeats_nothing(tmp_path, backend):
    exp = tiny_experiment(tmp_path, name=f"kill_{backend}", backend=backend, trials=6, **_on(backend))
    run_dir = tmp_path / "run"
    before, after, r = kill_then_resume(exp, run_dir, tmp_path, kill_after=2)
    assert len(after) == 6  # the budget, exactly: nothing lost, nothing evaluated twice
    assert json.loads(r.stdout)["trials"] == 6
    assert all(x["state"] == "COMPLETE" and math.isfinite(x["accuracy"]) for x in after)
