"""``shufflenas run``: search, then the front and a baseline retrained at equal budget, tested once; resumable."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from shufflenas.cli import main
from test_search_common import tiny_experiment


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny ``shufflenas run`` (search + retrain), shared by the tests that read or copy it."""
    tmp_path = tmp_path_factory.mktemp("pipeline")
    path = tiny_experiment(tmp_path, trials=4)
    exp = yaml.safe_load(path.read_text())
    exp["retrain"] = {"baselines": ["shufflenet_v2_x0_5_cifar"], "candidates": 2, "subset": 300,
                      "train": {"epochs": 1, "batch_size": 32}, "rival_band": 0.9}
    path.write_text(yaml.safe_dump(exp))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["run", str(path), "--json"]) == 0
    return tmp_path, path, exp, json.loads(buf.getvalue())


@pytest.mark.slow  # a whole `shufflenas run`: search, retraining, export
def test_run_searches_retrains_and_resumes(finished_run, capsys):
    tmp_path, path, _, summary = finished_run
    out = tmp_path / "run" / "retrain"
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    kinds = sorted(r["kind"] for r in rows)
    assert kinds.count("baseline") == 1 and 1 <= kinds.count("searched") <= 3  # 2 + at most 1 in the band
    test_images = 359  # digits' fixed test split (20% of 1,797), whatever the training subset
    for r in rows:
        assert r["train_images"] == 270  # same split for every model
        assert r["test_acc"] * test_images == pytest.approx(round(r["test_acc"] * test_images))  # a count of images
    assert {m["name"] for m in summary["retrain"]["models"]} == {r["name"] for r in rows}
    # the verdict, recomputed: the searched model with the best validation accuracy at or under the baseline's
    # re-measured latency (within the tolerance) against the baseline, by test accuracy
    latency = json.loads((out / "latency.json").read_text())
    base = next(r for r in rows if r["kind"] == "baseline")
    limit = latency[base["name"]]["median_ms"] * (1 + summary["retrain"]["latency_tolerance"])
    models = summary["retrain"]["models"]  # in the order the comparison reads them (ties: the first)
    rivals = [r for r in models if r["kind"] == "searched" and latency[r["name"]]["median_ms"] <= limit]
    best = max(rivals, key=lambda r: r["val_acc"], default=None)
    verdict = summary["retrain"]["comparison"][0]
    assert verdict["baseline"] == base["name"] == "shufflenet_v2_x0_5_cifar"
    assert verdict["best_searched"] == (best["name"] if best else None)
    assert verdict["wins"] is bool(best and best["test_acc"] > base["test_acc"])
    assert (out / "table.md").read_text().startswith("| model |") and (out / "front.png").stat().st_size > 0
    picked = json.loads((out / "candidates.json").read_text())
    assert {m["name"] for m in picked["searched"]} == {r["name"] for r in rows if r["kind"] == "searched"}
    assert set(picked["baselines_ms"]) == {"shufflenet_v2_x0_5_cifar"}

    # rerun: the search is complete and every model is trained, so nothing is repeated
    before = (out / "results.jsonl").read_text()
    assert main(["run", str(path), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (out / "results.jsonl").read_text() == before
    assert again["search"]["trials"] == summary["search"]["trials"]


def _rec(number, acc, ms):
    from nas.records import TrialRecord

    return TrialRecord(number=number, arch={}, arch_key=str(number), accuracy=acc, latency_ms=ms)


def test_a_searched_network_equal_to_a_baseline_is_trained_once_as_the_baseline():
    from nas.objective import arch_key
    from nas.records import TrialRecord, fronts
    from nas.retrain import without_baselines
    from search_space import presets

    seed = presets.get("shufflenet_v2_x0_5_cifar")
    assert arch_key(seed) == arch_key(seed.replace(name=None))  # a seed trial's network, whatever its name
    recs = [_rec(0, 0.5, 1.0), TrialRecord(number=1, arch=seed.to_dict(), arch_key=arch_key(seed.replace(name=None)),
                                           accuracy=0.6, latency_ms=2.0),
            _rec(2, 0.45, 1.5), _rec(3, 0.55, 2.5), _rec(4, 0.4, 3.0)]
    layers = fronts(recs, ["accuracy", "latency_ms"], 5)
    assert [[r.number for r in layer] for layer in layers] == [[0, 1], [2, 3], [4]]
    base = [("shufflenet_v2_x0_5_cifar", "baseline", seed)]
    kept, records, twins = without_baselines(layers, recs, base, 3)
    assert [[r.number for r in layer] for layer in kept] == [[0], [2, 3]]  # cut again at 3 networks
    assert [r.number for r in records] == [0, 2, 3, 4] and twins == [(1, "shufflenet_v2_x0_5_cifar")]
    assert without_baselines(layers, recs, [], 3) == (layers[:2], recs, [])  # no baseline: unchanged


def test_pick_matches_each_baseline_then_spreads():
    from nas.retrain import pick_candidates

    front = [_rec(i, 0.5 + 0.05 * i, 1.0 + i) for i in range(8)]  # latency 1..8 ms, accuracy rising
    measured = {r.number: r.latency_ms * 1.1 for r in front}  # the device is 10% slower than the search said
    picks = pick_candidates(front, 4, measured, targets=(3.0, 6.0))
    nums = [r.number for r in picks]
    # the best member at or under 3.0 / 6.0 ms *measured*: 1.1*(1+1)=2.2, 1.1*(1+4)=5.5
    assert 1 in nums and 4 in nums and len(nums) == 4 and nums == sorted(nums)
    assert len({r.number for r in pick_candidates(front, 2, measured, targets=(0.5,))}) == 2  # none under 0.5
    assert [r.number for r in pick_candidates(front, 3)] == [0, 4, 7]  # no targets: spread evenly


@pytest.mark.slow  # a whole `shufflenas run`: search, retraining, export
def test_baselines_reused_only_with_the_same_recipe(finished_run, tmp_path):
    """retrain.baselines_from copies another run's baselines when dataset, split, seed and
    training settings are identical, and trains them again when anything differs."""
    import shutil

    from nas.experiment import load_experiment
    from nas.retrain import retrain

    run_root, _, raw, _ = finished_run
    first = run_root / "run"
    base_row = next(r for r in map(json.loads, (first / "retrain" / "results.jsonl").read_text().splitlines())
                    if r["kind"] == "baseline")

    def second_run(name, **train):
        run2 = tmp_path / name
        shutil.copytree(first, run2, ignore=shutil.ignore_patterns("retrain"))
        retrain_spec = {**raw["retrain"], "candidates": 1, "rival_band": None, "baselines_from": str(first),
                        "train": {**raw["retrain"]["train"], **train}}
        p2 = tmp_path / f"{name}.yaml"
        p2.write_text(yaml.safe_dump({**raw, "output": str(run2), "retrain": retrain_spec}))
        logs = []
        summary = retrain(run2, load_experiment(p2), load_experiment(p2).retrain, log=logs.append)
        return {m["name"]: m for m in summary["models"]}, logs

    same, logs = second_run("same")
    reused = same["shufflenet_v2_x0_5_cifar"]
    assert reused["reused_from"] == str(first) and reused["test_acc"] == base_row["test_acc"]
    assert reused["train_seconds"] == base_row["train_seconds"]
    assert any("reused from" in m for m in logs)
    assert all(m["kind"] == "baseline" or "reused_from" not in m for m in same.values())

    other, logs = second_run("other", epochs=2)
    assert "reused_from" not in other["shufflenet_v2_x0_5_cifar"]
    assert other["shufflenet_v2_x0_5_cifar"]["epochs"] == 2
    assert any("differs in train" in m for m in logs)


def test_pick_fills_from_the_next_layers_when_the_front_is_short():
    from nas.records import fronts
    from nas.retrain import pick_candidates

    # front: 0 (1 ms, 0.5) and 1 (2 ms, 0.6); layer 2: 2 and 3, each dominated by one of them; layer 3: 4
    recs = [_rec(0, 0.5, 1.0), _rec(1, 0.6, 2.0), _rec(2, 0.45, 1.5), _rec(3, 0.55, 2.5), _rec(4, 0.4, 3.0)]
    layers = fronts(recs, ["accuracy", "latency_ms"], 5)
    assert [[r.number for r in layer] for layer in layers] == [[0, 1], [2, 3], [4]]
    picks = pick_candidates(layers[0], 4, targets=(2.2,), more=layers[1:])
    assert [r.number for r in picks] == [0, 2, 1, 3]  # the rival (1), the rest of the front, then layer 2
    assert [r.number for r in pick_candidates(layers[0], 2, more=layers[1:])] == [0, 1]  # front enough


def test_the_rival_is_chosen_by_validation_not_test_accuracy(tmp_path):
    from nas.experiment import RetrainSpec
    from nas.retrain import summarise

    def row(name, kind, val, test):
        return {"name": name, "kind": kind, "val_acc": val, "test_acc": test, "params": 1, "mflops": 1.0,
                "train_seconds": 1.0}

    rows = [row("a", "searched", 0.60, 0.55), row("b", "searched", 0.58, 0.57), row("base", "baseline", 0.5, 0.5)]
    latency = {"a": {"median_ms": 1.0, "iqr_rel": 0.01}, "b": {"median_ms": 1.0, "iqr_rel": 0.01},
               "base": {"median_ms": 2.0, "iqr_rel": 0.01}}
    verdict = summarise(tmp_path, rows, latency, RetrainSpec())["comparison"][0]
    assert verdict["best_searched"] == "a" and verdict["searched_test_acc"] == 0.55


def test_missing_baselines_from_trains_them_here(tmp_path):
    from nas.experiment import RetrainSpec
    from nas.retrain import _reuse_baselines

    logs = []
    spec = RetrainSpec(baselines_from=str(tmp_path / "gone"))
    assert _reuse_baselines(spec, {}, {"shufflenet_v2_x0_5_cifar"}, logs.append) == []
    assert "holds no run; the baselines are trained here" in logs[0]


def test_rival_band_adds_the_best_scored_network_just_under_each_baseline():
    from nas.retrain import near_baselines

    recs = [_rec(0, 0.60, 0.5), _rec(1, 0.40, 1.6), _rec(2, 0.45, 1.8), _rec(3, 0.30, 2.9), _rec(4, 0.50, 5.0)]
    front = [recs[0]]
    # baselines at 2.0 and 3.0 ms (device); the search's latencies read 1/2 of the device's
    extra = near_baselines(recs, front, {"b1": 4.0, "b2": 6.0}, band=0.3, scale=2.0)
    # b1: band [2.8, 4.0] device = [1.4, 2.0] search -> 1 and 2, best scored 2; b2: [4.2, 6.0] -> [2.1, 3.0] -> 3
    assert [r.number for r in extra] == [2, 3]
    assert near_baselines(recs, front + [recs[2]], {"b1": 4.0}, band=0.3, scale=2.0) == []  # one is there
    # k=2: the two best in b1's band; one already chosen there counts towards the two
    assert [r.number for r in near_baselines(recs, front, {"b1": 4.0}, band=0.3, scale=2.0, k=2)] == [2, 1]
    assert [r.number for r in near_baselines(recs, front + [recs[2]], {"b1": 4.0}, band=0.3, scale=2.0, k=2)] == [1]


def _shell(line: str, cwd: Path) -> subprocess.CompletedProcess:
    """``line`` run by bash in ``cwd``, with this interpreter first on PATH as ``python``."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(["bash", "-c", line], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.slow  # a whole `shufflenas run`: search, retraining, export
def test_deploy_folder_holds_the_trained_networks(finished_run):
    """Every retrained model: architecture, trained weights (weights_only), ONNX from those weights checked
    against PyTorch, test accuracy, re-measured latency, a load line; and the index."""
    import torch

    from search_space import Architecture, build_model

    tmp_path, _, _, summary = finished_run
    run_dir = tmp_path / "run"
    deploy = run_dir / "deploy"
    assert Path(summary["retrain"]["deploy"]) == deploy
    rows = {json.loads(x)["name"]: json.loads(x) for x in (run_dir / "retrain" / "results.jsonl").read_text().splitlines()}
    latency = json.loads((run_dir / "retrain" / "latency.json").read_text())
    index = json.loads((deploy / "deploy.json").read_text())
    assert [m["name"] for m in index["models"]] == sorted(rows, key=lambda n: latency[n]["median_ms"])
    assert index["not_deployed"] == []
    for m in index["models"]:
        folder = deploy / m["folder"]
        doc = yaml.safe_load((folder / "model.yaml").read_text())
        row = rows[m["name"]]
        assert doc["weights"].startswith("trained (1 epoch(s), ") and doc["recipe"] == row["recipe"]
        assert doc["test_accuracy"] == row["test_acc"] and doc["latency_ms"]["median_ms"] == latency[m["name"]]["median_ms"]
        arch = Architecture.from_yaml(folder / "architecture.yaml")
        assert arch.to_dict() == row["arch"]
        state = torch.load(folder / "weights.pt", weights_only=True)
        assert state.keys() == torch.load(run_dir / "retrain" / m["name"] / "weights.pt", weights_only=True).keys()
        build_model(arch).load_state_dict(state)  # strict
        chk = doc["onnx_check"]
        assert chk["max_abs_diff_vs_torch"] < 1e-4 and chk["inputs"] == 256
        assert chk["same_prediction"] >= chk["inputs"] - 1
        assert f"| [{m['name']}]({m['folder']}/model.yaml) |" in (deploy / "deploy.md").read_text()


@pytest.mark.slow  # a whole `shufflenas run`: search, retraining, export
def test_exported_onnx_gives_the_reported_test_accuracy(finished_run):
    """The deployed ONNX file, run in ONNX Runtime on the test split with the preprocessing its model.yaml
    states, gets exactly the test accuracy retraining reported (same count of correct images)."""
    import onnxruntime as ort

    from nas.experiment import load_experiment
    from nas.retrain import recipe_data
    from search_space import Architecture

    tmp_path, path, _, _ = finished_run
    exp = load_experiment(path)
    deploy = tmp_path / "run" / "deploy"
    for m in json.loads((deploy / "deploy.json").read_text())["models"]:
        doc = yaml.safe_load((deploy / m["folder"] / "model.yaml").read_text())
        pre = doc["preprocessing"]
        test = recipe_data(exp, exp.retrain, Architecture.from_yaml(deploy / m["folder"] / "architecture.yaml")).test
        mean = np.float32(255) * np.asarray(pre["mean"], np.float32).reshape(1, -1, 1, 1)
        std = np.float32(255) * np.asarray(pre["std"], np.float32).reshape(1, -1, 1, 1)
        x = (test.x.numpy().astype(np.float32) - mean) / std
        sess = ort.InferenceSession(str(deploy / m["folder"] / "model.onnx"), providers=["CPUExecutionProvider"])
        correct = int((sess.run(None, {"input": x})[0].argmax(1) == test.y.numpy()).sum())
        assert len(test) == doc["test_images"]
        assert correct == doc["test_correct"] == round(doc["test_accuracy"] * len(test)), m["name"]


@pytest.mark.slow  # a whole `shufflenas run`: search, retraining, export
def test_load_lines_run_verbatim_from_elsewhere_and_in_a_moved_folder(finished_run, tmp_path):
    """The export's rebuild line and the deploy folder's load line, copied as written, run from another
    working directory; after moving the folder, the part after '&&' runs inside it."""
    run_root, _, _, _ = finished_run
    run_dir = run_root / "run"
    front = json.loads((run_dir / "pareto" / "front.json").read_text())
    cand = yaml.safe_load((run_dir / "pareto" / front["members"][0]["folder"] / "candidate.yaml").read_text())
    deployed = json.loads((run_dir / "deploy" / "deploy.json").read_text())["models"][0]
    model = yaml.safe_load((run_dir / "deploy" / deployed["folder"] / "model.yaml").read_text())
    assert model["load"] == deployed["load"]
    for line in (cand["rebuild"], model["load"]):
        assert ".new" not in line and str(run_dir) in line
        r = _shell(line, cwd=tmp_path)
        assert r.returncode == 0, (line, r.stderr[-2000:])
    moved = tmp_path / "moved"
    shutil.copytree(run_dir / "deploy" / deployed["folder"], moved)
    python_part = model["load"].split(" && ", 1)[1]
    r = _shell(python_part, cwd=moved)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow  # a whole `shufflenas run`: search, retraining, export
def test_search_exports_say_their_weights_are_untrained(finished_run):
    run_root, _, _, _ = finished_run
    pareto = run_root / "run" / "pareto"
    front = json.loads((pareto / "front.json").read_text())
    assert front["members"] and all(m["weights"] == "untrained" for m in front["members"])
    for m in front["members"]:
        text = (pareto / m["folder"] / "candidate.yaml").read_text()
        assert text.startswith("# File names in this file are relative to its folder.")
        cand = yaml.safe_load(text)
        assert cand["weights"].startswith("untrained (initial weights, zero-cost scoring trains nothing")
        assert "weights" not in cand["files"] and "load_state_dict" not in cand["rebuild"]
    # and the console says so when the front is exported
    copy = run_root / "copy_for_export"
    shutil.copytree(run_root / "run", copy, ignore=shutil.ignore_patterns("deploy", "retrain"))
    from nas.export import export_front

    logs = []
    export_front(copy, onnx=False, log=logs.append)
    assert len(logs) == 1 and "are untrained" in logs[0] and f"shufflenas retrain {copy}" in logs[0]
    shutil.rmtree(copy)


def test_proxy_trained_weights_are_named_so(tmp_path):
    from nas.experiment import experiment_from_dict
    from nas.export import weights_status
    from nas.records import TrialRecord
    from test_search_common import tiny_experiment as _tiny

    exp = experiment_from_dict(yaml.safe_load(_tiny(tmp_path, accuracy={"method": "proxy_training"}).read_text()),
                               base_dir=tmp_path)
    rec = TrialRecord(number=3, arch={}, arch_key="k", accuracy=0.5, latency_ms=1.0, epochs=2)
    assert weights_status(rec, exp, True).startswith("proxy-trained (2 epoch(s) of the search's proxy training on digits")
    assert weights_status(rec, exp, False).startswith("untrained (initial weights, the trial's checkpoint is not")


def test_latency_is_measured_here_unless_the_search_ran_on_a_cluster(tmp_path):
    """A local run (optuna, or Ray's private local cluster) measures on this machine; a Ray cluster given
    by search.ray.address or --address measures on its latency_device node; --address needs the ray backend."""
    from nas.experiment import ExperimentError, experiment_from_dict
    from nas.retrain import cluster_address
    from test_search_common import tiny_experiment as _tiny

    def exp(backend, **ray):
        raw = yaml.safe_load(_tiny(tmp_path, backend=backend).read_text())
        if ray:
            raw["search"]["ray"] = ray
        return experiment_from_dict(raw, base_dir=tmp_path)

    assert cluster_address(exp("optuna")) is None
    assert cluster_address(exp("ray")) is None  # the private local cluster is this machine
    assert cluster_address(exp("ray", address="10.0.0.5:6379")) == "10.0.0.5:6379"
    assert cluster_address(exp("ray", address="10.0.0.5:6379"), "auto") == "auto"
    assert cluster_address(exp("ray"), "127.0.0.1:6390") == "127.0.0.1:6390"
    with pytest.raises(ExperimentError, match=r"^--address: applies to the ray backend only"):
        cluster_address(exp("optuna"), "auto")


@pytest.mark.slow  # a private Ray cluster, and the whole `shufflenas run` it retrains
@pytest.mark.timeout(600)
def test_retrain_on_a_cluster_measures_through_the_latency_actor(finished_run, tmp_path, monkeypatch):
    """With the search on a Ray cluster, the pick and the final re-measurement run in the latency actor's
    measurement worker on the latency_device node, not in a measurement worker on this machine."""
    ray = pytest.importorskip("ray")
    import nas.retrain
    from evaluators.latency import LatencyTarget, MeasurementProtocol
    from evaluators.latency.ray_actor import LatencyActorHandle
    from evaluators.ray_cluster import start_private_cluster
    from nas.experiment import experiment_from_dict
    from test_search_common import QUICK_PROTOCOL

    run_root, _, raw, _ = finished_run
    run_dir = tmp_path / "run"
    shutil.copytree(run_root / "run", run_dir, ignore=shutil.ignore_patterns("deploy", "candidates.json"))

    def here(*_, **__):
        raise AssertionError("measured on this machine")

    monkeypatch.setattr(nas.retrain, "MeasurementWorker", here)
    start_private_cluster(num_cpus=2, resources={"latency_device": 1})  # loopback only
    try:
        address = ray.get_runtime_context().gcs_address
        exp = experiment_from_dict({**raw, "output": str(run_dir),
                                    "search": {**raw["search"], "backend": "ray", "ray": {"address": address}}},
                                   base_dir=tmp_path)
        # the actor lives while its creator's handle does: created here, so that the test can ask it afterwards
        keep = LatencyActorHandle(LatencyTarget(), protocol=MeasurementProtocol(**QUICK_PROTOCOL))
        actor = keep.call("info")
        logs = []
        summary = nas.retrain.retrain(run_dir, exp, exp.retrain, log=logs.append)
    finally:
        ray.shutdown()
    assert "latency_device" in summary["latency_measured_on"] and address in summary["latency_measured_on"]
    assert sum(f"on {summary['latency_measured_on']}" in m for m in logs) == 2  # the pick, the re-measurement
    latency = json.loads((run_dir / "retrain" / "latency.json").read_text())
    assert latency and {r["extra"]["worker_pid"] for r in latency.values()} == {actor["worker_pid"]}
    picked = json.loads((run_dir / "retrain" / "candidates.json").read_text())
    assert set(picked["baselines_ms"]) == {"shufflenet_v2_x0_5_cifar"}
