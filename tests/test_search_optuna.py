"""The Optuna backend end to end on a tiny space: two worker processes, records, exported front, ONNX.

What both backends must do alike (seeds, score reuse, breaker, kill + resume, ...) is in test_backends.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nas.run_folder import FRONT_JSON, RunFolder
from test_search_common import front_from_csv, records, tiny_experiment


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_arch_yaml):
    from conftest import run_cli

    tmp = tmp_path_factory.mktemp("optuna_run")
    exp = tiny_experiment(tmp, trials=6, budget_ms=50.0, concurrency=2,
                          seeds=["shufflenet_v2_x0_5_cifar", str(tiny_arch_yaml)])
    r = run_cli("search", exp, "--json", cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "run", json.loads(r.stdout)


@pytest.fixture(scope="module")
def tiny_arch_yaml(tmp_path_factory):
    from search_space import Architecture

    p = tmp_path_factory.mktemp("seed") / "tiny_seed.yaml"
    Architecture(name="tiny_seed", input_size=16, num_classes=10,
                 stem={"channels": 8, "stride": 1, "maxpool": False},
                 stages=[{"unit": "v2", "channels": 16, "depth": 1}, {"unit": "v2", "channels": 32, "depth": 1}],
                 head_channels=64).to_yaml(p)
    return p


@pytest.mark.slow  # a whole search in a fresh interpreter (module fixture)
def test_search_prints_where_report_and_export_are(finished_run):
    run_dir, summary = finished_run
    assert Path(summary["report"]).is_file() and Path(summary["png"]).is_file()
    assert (Path(summary["export_dir"]) / FRONT_JSON).is_file()
    assert summary["trials"] == 7  # 6 trials (incl. the in-space seed) + the out-of-space preset
    assert summary["states"]["COMPLETE"] == 7


@pytest.mark.slow  # a whole search in a fresh interpreter (module fixture)
def test_records_mark_seeds_and_have_every_field(finished_run):
    run_dir, _ = finished_run
    recs = records(run_dir)
    by_seed = {r["seed"]: r for r in recs if r["seed"]}
    assert set(by_seed) == {"shufflenet_v2_x0_5_cifar", "tiny_seed"}
    assert by_seed["shufflenet_v2_x0_5_cifar"]["in_space"] is False and by_seed["shufflenet_v2_x0_5_cifar"]["number"] == -1
    assert by_seed["tiny_seed"]["in_space"] is True and by_seed["tiny_seed"]["number"] == 0
    for r in recs:
        assert r["latency_source"] == "measured" and r["latency_ms"] > 0 and r["finished"] >= r["started"] > 0
        assert r["constraint"] == pytest.approx(r["latency_ms"] - 50.0)
    assert RunFolder(run_dir).trials_csv.read_text().count("\n") == len(recs) + 1


@pytest.mark.slow  # a whole search in a fresh interpreter (module fixture)
def test_exported_set_equals_front_recomputed_from_csv(finished_run):
    run_dir, _ = finished_run
    front = json.loads(RunFolder(run_dir).front_json.read_text())
    assert {m["arch_key"] for m in front["members"]} == front_from_csv(RunFolder(run_dir).trials_csv)
    assert front["reference_point"]["latency_ms"] == 50.0 and front["hypervolume"] > 0
    assert sum(m["knee"] for m in front["members"]) == 1


@pytest.mark.slow  # a whole search in a fresh interpreter (module fixture)
def test_exported_yaml_rebuilds_recorded_network_and_onnx_runs(finished_run):
    import numpy as np
    import onnxruntime as ort

    from search_space import Architecture, build_model, profile

    run_dir, _ = finished_run
    front = json.loads(RunFolder(run_dir).front_json.read_text())
    assert front["members"]
    for m in front["members"]:
        folder = RunFolder(run_dir).pareto / m["folder"]
        arch = Architecture.from_yaml(folder / "architecture.yaml")
        model = build_model(arch)
        assert sum(p.numel() for p in model.parameters()) == m["params"] == profile(arch).params
        assert profile(arch).macs == m["macs"]
        cand = yaml.safe_load((folder / "candidate.yaml").read_text())
        assert sum(b["macs"] for b in cand["blocks"]) == m["macs"]
        assert "build_model(Architecture.from_yaml(" in cand["rebuild"]
        sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((2, arch.in_channels, arch.input_size, arch.input_size))
        out = sess.run(None, {"input": x.astype(np.float32)})[0]
        assert out.shape == (2, arch.num_classes) and np.isfinite(out).all()
        assert cand["onnx_check"]["max_abs_diff_vs_torch"] < 1e-3


@pytest.mark.slow  # a whole search in a fresh interpreter (module fixture)
def test_front_members_were_remeasured(finished_run):
    run_dir, _ = finished_run
    front = json.loads(RunFolder(run_dir).front_json.read_text())
    assert all(m["latency_measured_ms"] and m["latency_measured_ms"] > 0 for m in front["members"])


@pytest.mark.slow  # a whole search in a fresh interpreter (module fixture)
def test_export_and_report_commands_rerun(finished_run, cli):
    run_dir, _ = finished_run
    r = cli("export", run_dir, "--no-onnx", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["members"]
    from nas.report import write_report

    page, _ = write_report(run_dir)
    assert page.stat().st_size > 100_000  # plotly.js inlined


@pytest.mark.slow  # a whole search in a fresh interpreter (module fixture)
def test_a_second_search_in_a_run_folder_needs_resume(finished_run, cli):
    run_dir, _ = finished_run
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    r = cli("search", run_dir.parent / "t.yaml", "--json", cwd=run_dir.parent)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stdout == ""
    assert f"{run_dir} already holds a search; pass --resume to continue it" in r.stderr
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_an_unknown_search_key_is_one_line(tmp_path, cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text("space: cifar\nsearch: {trials: 3, samplr: tpe}\n")
    r = cli("search", bad)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "search.samplr: unknown key" in r.stderr


@pytest.mark.slow  # a whole search in a fresh interpreter
def test_seeds_filling_the_whole_budget_all_run(tmp_path, cli):
    """Enqueued seeds waiting to run must not use up the budget (a replay of known networks)."""
    from conftest import TINY_SPACE
    from search_space import SearchSpace

    space = SearchSpace.from_yaml(TINY_SPACE)
    seeds = []
    for i in range(3):
        p = tmp_path / f"a{i}.yaml"
        space.sample(seed=i).replace(name=f"known{i}").to_yaml(p)
        seeds.append(str(p))
    exp = tiny_experiment(tmp_path, trials=3, seeds=seeds)
    r = cli("search", exp, "--json", "--no-onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = records(tmp_path / "run")
    assert sorted(x["seed"] for x in recs) == ["known0", "known1", "known2"]
