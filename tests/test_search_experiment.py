"""Experiment files: validation with one-line errors naming the field, path resolution, run-folder rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import TINY_SPACE
from test_search_common import tiny_experiment


def write(tmp: Path, text: str, name="exp.yaml") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def test_relative_paths_resolve_against_the_experiment_folder(tmp_path, tiny_arch):
    from nas.experiment import load_experiment

    sub = tmp_path / "cfg"
    sub.mkdir()
    (sub / "space.yaml").write_text(TINY_SPACE)
    tiny_arch.to_yaml(sub / "seed.yaml")
    p = write(sub, "space: space.yaml\ndata: cifar10:data/c10.tar.gz\n"
                   "latency: {mode: lut, lut: lut.json}\nseeds: [seed.yaml, shufflenet_v2_x0_5]\noutput: ../runs/x\n")
    exp = load_experiment(p)
    assert exp.space == str(sub / "space.yaml") and exp.latency.lut == str(sub / "lut.json")
    assert exp.data == f"cifar10:{sub / 'data' / 'c10.tar.gz'}" and exp.output == str(tmp_path / "runs" / "x")
    names = [n for n, _ in exp.seed_architectures()]
    assert names == ["tiny", "shufflenet_v2_x0_5"]
    assert exp.directions == ["maximize", "minimize"]


@pytest.mark.parametrize("text,message", [
    ("space: cifar\nsearch: {samplr: tpe}\n", "search.samplr: unknown key"),
    ("space: cifar\nobjectives: [latency_ms, accuracy]\n", "objectives"),
    ("space: cifar\nobjectives: [accuracy, flops]\n", "unknown objective(s) ['flops']"),
    ("space: cifar\nsearch: {scheduler: asha}\n", "asha needs accuracy.method proxy_training"),
    ("space: cifar\nlatency: {mode: lut}\n", "mode lut needs 'lut: PATH'"),
    ("space: cifar\naccuracy: {method: supernet}\n", "needs 'checkpoint: PATH'"),
    ("space: cifar\nlatency: {budget_ms: -1}\n", "latency.budget_ms"),
    ("space: cifar\nsearch: {trials: null}\n", "give 'trials' or 'timeout_s'"),
    ("space: nowhere.yaml\n", "no such space file"),
    ("space: cifar\nseeds: [not_a_preset]\n", "neither a preset nor an architecture YAML"),
    ("space: cifar\nreference_point: {params: 1}\n", "not objectives"),
    ("- just a list\n", "expected a mapping"),
])
def test_bad_experiments_fail_in_one_line(tmp_path, text, message):
    from nas.experiment import ExperimentError, load_experiment
    from search_space.errors import ShuffleNASError

    with pytest.raises(ShuffleNASError) as exc:
        load_experiment(write(tmp_path, text))
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert isinstance(exc.value, (ExperimentError, ShuffleNASError))


def test_run_folder_needs_resume_and_the_same_experiment(tmp_path):
    from nas.experiment import ExperimentError, experiment_from_dict
    from nas.search import prepare_run_dir, run_experiment_file

    d = {"space": yaml.safe_load(TINY_SPACE), "output": str(tmp_path / "run")}
    exp = experiment_from_dict(d, base_dir=tmp_path)
    prepare_run_dir(exp, Path(exp.output), resume=False)
    assert run_experiment_file(exp.output) == exp
    with pytest.raises(ExperimentError, match="pass --resume"):
        prepare_run_dir(exp, Path(exp.output), resume=False)
    prepare_run_dir(exp, Path(exp.output), resume=True)
    more = experiment_from_dict({**d, "search": {"trials": 99}}, base_dir=tmp_path)
    prepare_run_dir(more, Path(exp.output), resume=True)  # a larger budget extends the run
    changed = experiment_from_dict({**d, "search": {"sampler": "random"}}, base_dir=tmp_path)
    with pytest.raises(ExperimentError, match="experiment changed"):
        prepare_run_dir(changed, Path(exp.output), resume=True)
    with pytest.raises(ExperimentError, match="not a search run directory"):
        run_experiment_file(tmp_path)


def test_experiment_files_in_the_repo_load():
    from nas.experiment import load_experiment

    root = Path(__file__).resolve().parents[1] / "experiments"
    for name in ("quickstart", "cifar10_cpu", "ray_cluster"):
        exp = load_experiment(root / f"{name}.yaml")
        assert exp.load_space().size() > 1000
    assert load_experiment(root / "ray_cluster.yaml").search.address == "auto"


def test_prepare_resumes_a_supernet_killed_mid_training(tmp_path):
    """A checkpoint exists after every epoch; the search must not start on an unfinished one."""
    from evaluators.supernet import SupernetConfig, load_supernet, train_supernet
    from nas.experiment import load_experiment
    from nas.objective import prepare, supernet_unfinished

    train = {"epochs": 2, "batch_size": 32, "subset": 200, "warmup_steps": 2}
    path = tiny_experiment(tmp_path, accuracy={"method": "supernet", "checkpoint": str(tmp_path / "sn.pt"),
                                               "supernet_train": train})
    exp = load_experiment(path)
    assert supernet_unfinished(exp)  # no checkpoint yet
    train_supernet(exp.load_space(), exp.data, SupernetConfig(**train), out=tmp_path / "sn.pt", progress=False,
                   callback=lambda epoch, acc: True)  # "killed" after epoch 1 of 2
    assert load_supernet(tmp_path / "sn.pt").epoch == 1 and supernet_unfinished(exp)
    prepare(exp, progress=False)
    assert load_supernet(tmp_path / "sn.pt").epoch == 2 and not supernet_unfinished(exp)
