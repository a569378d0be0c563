"""Parallel retraining (``retrain.workers``): the same rows and weights as one at a time, one writer,
errors as in process, no training left behind by a killed run, and a rerun that resumes it.

The run folders here hold no search: ``retrain/candidates.json`` names the searched models (as a
finished pick would), so only the retraining runs (tiny networks, digits, a few hundred images).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from conftest import TINY_SPACE
from test_search_common import start_cli, tiny_experiment

EPOCHS = 3


def _archs(n: int) -> list[dict]:
    """``n`` different architectures of the tiny space."""
    from search_space import SearchSpace

    space, out, seen = SearchSpace.from_yaml(TINY_SPACE), [], set()
    for seed in range(100):
        arch = space.sample(seed=seed)
        if arch.to_json() not in seen:
            seen.add(arch.to_json())
            out.append(arch.to_dict())
        if len(out) == n:
            return out
    raise AssertionError("the tiny space has fewer architectures than asked for")


def make_run(tmp: Path, name: str, archs: list[dict], *, workers: int, epochs: int = EPOCHS,
             subset: int | None = 400, data: str = "digits", **train):
    """A run folder whose pick is ``archs`` (no baselines) and its experiment; returns (run_dir, exp)."""
    from nas.experiment import experiment_from_dict
    from nas.run_folder import RunFolder

    raw = yaml.safe_load(tiny_experiment(tmp, name=name, output=name).read_text())
    raw["data"] = data
    raw["retrain"] = {"baselines": [], "candidates": len(archs), "subset": subset, "workers": workers,
                      "train": {"epochs": epochs, "batch_size": 32, "augment": False, **train}}
    exp = experiment_from_dict(raw, base_dir=tmp)
    run = RunFolder(exp.output)
    run.prepare(exp, resume=False)
    run.retrain.mkdir(parents=True)
    (run.retrain / "candidates.json").write_text(json.dumps({
        "candidates": len(archs), "rival_band": None, "rivals": 1,
        "searched": [{"name": f"trial{i}", "trial": i, "arch": a} for i, a in enumerate(archs)]}))
    return run.path, exp


def rows(run_dir: Path) -> dict[str, dict]:
    """results.jsonl by model name; every line must be one whole row."""
    text = (run_dir / "retrain" / "results.jsonl").read_text()
    assert text.endswith("\n")
    out = {}
    for line in text.splitlines():
        row = json.loads(line)
        assert row["name"] not in out, f"{row['name']} recorded twice"
        out[row["name"]] = row
    return out


def same_results(a: Path, b: Path) -> None:
    """The two runs' rows are equal but for the wall time, and their weights are equal bit for bit."""
    import torch

    ra, rb = rows(a), rows(b)
    assert ra.keys() == rb.keys()
    for name in ra:
        assert {**ra[name], "train_seconds": None} == {**rb[name], "train_seconds": None}, name
        wa = torch.load(a / "retrain" / name / "weights.pt", weights_only=True)
        wb = torch.load(b / "retrain" / name / "weights.pt", weights_only=True)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert wa[k].dtype == wb[k].dtype and wa[k].numpy().tobytes() == wb[k].numpy().tobytes(), (name, k)
        assert not (a / "retrain" / name / "weights.state.pt").exists()


@pytest.mark.slow  # two retrainings of four models
@pytest.mark.timeout(900)  # minutes on a loaded 2-core host: each process imports torch
def test_two_workers_give_the_same_rows_and_weights(tmp_path):
    """Four models, two at a time in spawned processes: every row (but the wall time) and every weight
    as in process, one line per model in results.jsonl."""
    from nas.retrain import retrain

    archs = _archs(4)
    one, exp = make_run(tmp_path, "one", archs, workers=1)
    one_logs = []
    retrain(one, exp, exp.retrain, log=one_logs.append)
    run_dir, exp = make_run(tmp_path, "two", archs, workers=2)
    logs = []
    summary = retrain(run_dir, exp, exp.retrain, log=logs.append)
    same_results(one, run_dir)
    assert {m["name"] for m in summary["models"]} == {f"trial{i}" for i in range(4)}
    # one log line per model start and finish, as in process (the pool adds one line saying how it trains)
    for i in range(4):
        assert sum(m.startswith(f"retrain: trial{i} (searched) for {EPOCHS} epochs on 360 images") for m in logs) == 1
        assert sum(m.startswith(f"retrain: trial{i}: test accuracy") for m in logs) == 1
    assert sum("2 at a time" in m for m in logs) == 1 and not any("at a time" in m for m in one_logs)


def _stop_mid_epoch(run_dir: Path, log: Path, stop) -> tuple[int, str]:
    """Run ``shufflenas retrain RUN_DIR``; once a model has saved an epoch in this run, ``stop(proc)``;
    wait until every process the command had started is gone. Returns its exit status and output."""
    t0 = time.time()
    proc = start_cli("retrain", run_dir, cwd=log.parent, log=log)
    try:
        deadline = time.time() + 300
        while not any(p.stat().st_mtime > t0 for p in (run_dir / "retrain").glob("*/weights.state.pt")):
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.time() < deadline, "no epoch finished within 300 s"
            time.sleep(0.05)
        children = _children(proc.pid)
        assert len(children) >= 2, children  # the training processes (and multiprocessing's resource tracker)
        stop(proc)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    left, deadline = children, time.time() + 120
    while left and time.time() < deadline:  # a killed parent: each notices within about a second
        time.sleep(0.2)
        left = [pid for pid in left if _alive(pid)]
    assert not left, f"processes left running after the command ended: {left}"
    # had they trained on, each would have finished its model (weights.pt) before it found its parent gone
    assert not (run_dir / "retrain" / "results.jsonl").exists()
    assert not list((run_dir / "retrain").glob("*/weights.pt"))
    return code, log.read_text()


@pytest.mark.slow  # a retraining interrupted, killed and run again, in fresh interpreters
@pytest.mark.timeout(1200)
def test_interrupted_or_killed_run_leaves_no_training_and_resumes_to_the_same_results(tmp_path):
    """Ctrl-C, then SIGKILL of the parent, while two models train, each with most of its epochs ahead:
    both times the training processes end without finishing them; the rerun resumes every model from its
    saved epoch to the weights of an uninterrupted run."""
    from nas.retrain import retrain

    archs, epochs, subset = _archs(2), 8, 2000  # all of digits' 1,437 training images: slower epochs
    one, exp = make_run(tmp_path, "one", archs, workers=1, epochs=epochs, subset=subset)
    retrain(one, exp, exp.retrain, log=lambda _: None)
    run_dir, _ = make_run(tmp_path, "killed", archs, workers=2, epochs=epochs, subset=subset)

    code, out = _stop_mid_epoch(run_dir, tmp_path / "first.log", lambda p: os.killpg(p.pid, signal.SIGINT))
    assert code == 130 and out.rstrip().endswith("shufflenas: interrupted") and "Traceback" not in out
    code, _ = _stop_mid_epoch(run_dir, tmp_path / "second.log", lambda p: os.kill(p.pid, signal.SIGKILL))
    assert code == -signal.SIGKILL
    halfway = {p.parent.name for p in (run_dir / "retrain").glob("*/weights.state.pt")}
    assert halfway  # at least the model whose epoch was seen

    again = start_cli("retrain", run_dir, cwd=tmp_path, log=tmp_path / "third.log")
    assert again.wait(timeout=900) == 0, (tmp_path / "third.log").read_text()[-3000:]
    log = (tmp_path / "third.log").read_text()
    for name in halfway:  # not started again from scratch
        assert f"retrain: {name} (searched) for {epochs} epochs on 1294 images, resuming after its last " \
               f"finished epoch ..." in log
    same_results(one, run_dir)


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    """Running (a zombie nobody has reaped yet trains nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.slow  # spawns training processes
@pytest.mark.timeout(600)
def test_a_training_error_in_a_worker_is_the_same_one_line_error(tmp_path, cli):
    """A model that cannot train (10-class data, 5-class network) fails with the same exception and
    message in a worker as in process; the CLI prints it as one line and exits 2."""
    from evaluators.training import TrainingError
    from nas.retrain import retrain

    good = _archs(1)[0]
    bad = {**good, "num_classes": 5}
    messages = []
    for workers in (1, 2):
        run_dir, exp = make_run(tmp_path, f"w{workers}", [bad, good], workers=workers, epochs=1)
        with pytest.raises(TrainingError) as ei:
            retrain(run_dir, exp, exp.retrain, log=lambda _: None)
        messages.append(str(ei.value))
    assert messages[0] == messages[1] and "num_classes=5" in messages[0]
    r = cli("retrain", tmp_path / "w2", "--json")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines()[-1] == f"shufflenas: error: {' '.join(messages[0].split())}"
    assert "Traceback" not in r.stderr


@pytest.mark.slow  # spawns training processes
@pytest.mark.timeout(600)
def test_a_worker_may_stream_a_folder_with_loader_processes(tmp_path):
    """A training process may start processes of its own: a streamed folder's loader workers."""
    from imagenet_folder import make_imagenet_folder
    from nas.retrain import retrain

    folder = make_imagenet_folder(tmp_path / "images", classes=3, train_per_class=12, val_per_class=4)
    archs = [{**a, "num_classes": 3} for a in _archs(2)]
    run_dir, exp = make_run(tmp_path, "folder", archs, workers=2, epochs=1, subset=None, data=f"folder:{folder}",
                            loader_workers=1)
    summary = retrain(run_dir, exp, exp.retrain, log=lambda _: None)
    assert {m["name"] for m in summary["models"]} == {"trial0", "trial1"} == set(rows(run_dir))


def test_append_row_drops_a_line_cut_by_a_kill(tmp_path):
    from nas.retrain import append_row
    from search_space.io import read_jsonl

    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"name": "a"}) + "\n" + '{"name": "b", "test_')  # killed while writing b
    append_row(path, {"name": "c"})
    assert path.read_text() == '{"name": "a"}\n{"name": "c"}\n'
    append_row(path, {"name": "d"})
    assert [r["name"] for r in read_jsonl(path)] == ["a", "c", "d"]
    new = tmp_path / "new.jsonl"
    append_row(new, {"name": "x"})
    assert new.read_text() == '{"name": "x"}\n'


def test_largest_trainings_start_first():
    from nas.retrain import largest_first
    from search_space import Architecture, presets, profile

    todo = [(n, "baseline", presets.get(n)) for n in
            ("shufflenet_v2_x0_5_cifar", "shufflenet_v2_x2_0_cifar", "shufflenet_v1_g3_cifar")]
    todo.append(("tiny", "searched", Architecture.from_dict(_archs(1)[0])))
    order = [name for name, _, _ in largest_first(todo)]
    assert order == ["shufflenet_v2_x2_0_cifar", "shufflenet_v1_g3_cifar", "shufflenet_v2_x0_5_cifar", "tiny"]
    flops = [profile(a).mflops for _, _, a in largest_first(todo)]
    assert flops == sorted(flops, reverse=True)


def test_workers_must_be_at_least_one(tmp_path, cli):
    from nas.experiment import ExperimentError, experiment_from_dict

    raw = yaml.safe_load(tiny_experiment(tmp_path).read_text())
    with pytest.raises(ExperimentError, match=r"retrain\.workers: Input should be greater than or equal to 1"):
        experiment_from_dict({**raw, "retrain": {"workers": 0}}, base_dir=tmp_path)
    assert experiment_from_dict({**raw, "retrain": {"workers": 2}}, base_dir=tmp_path).retrain.workers == 2
    assert experiment_from_dict({**raw, "retrain": {}}, base_dir=tmp_path).retrain.workers == 1
    r = cli("retrain", tmp_path / "nowhere", "--workers", "0")
    assert r.returncode == 2 and "--workers" in r.stderr and "Traceback" not in r.stderr
