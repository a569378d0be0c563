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
    ("space: cifar\nsearch: {backend: ray, ray: {scheduler: asha}}\n", "asha needs accuracy.method proxy_training"),
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
    from nas.run_folder import RunFolder

    d = {"space": yaml.safe_load(TINY_SPACE), "output": str(tmp_path / "run")}
    exp = experiment_from_dict(d, base_dir=tmp_path)
    run = RunFolder(exp.output)
    run.prepare(exp, resume=False)
    assert run.read_experiment() == exp
    with pytest.raises(ExperimentError, match="pass --resume"):
        run.prepare(exp, resume=False)
    run.prepare(exp, resume=True)
    more = experiment_from_dict({**d, "search": {"trials": 99}}, base_dir=tmp_path)
    run.prepare(more, resume=True)  # a larger budget extends the run
    changed = experiment_from_dict({**d, "search": {"sampler": "random"}}, base_dir=tmp_path)
    with pytest.raises(ExperimentError, match="experiment changed"):
        run.prepare(changed, resume=True)
    with pytest.raises(ExperimentError, match="not a search run directory"):
        RunFolder(tmp_path).read_experiment()


def test_experiment_files_in_the_repo_load():
    from nas.experiment import load_experiment

    root = Path(__file__).resolve().parents[1] / "experiments"
    for name in ("quickstart", "cifar10_cpu", "ray_cluster"):
        exp = load_experiment(root / f"{name}.yaml")
        assert exp.load_space().size() > 1000
    assert load_experiment(root / "ray_cluster.yaml").search.ray.address == "auto"


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


@pytest.mark.parametrize("key,section", [("storage", "optuna"), ("address", "ray"), ("num_cpus", "ray"),
                                         ("max_failures", "ray"), ("scheduler", "ray"), ("resources", "ray")])
def test_flat_backend_option_is_refused_naming_its_new_place(tmp_path, key, section):
    from nas.experiment import ExperimentError, load_experiment

    with pytest.raises(ExperimentError) as exc:
        load_experiment(write(tmp_path, f"space: cifar\nsearch: {{{key}: null}}\n"))
    assert str(exc.value) == (f"{tmp_path / 'exp.yaml'}: search.{key}: moved to search.{section}.{key} "
                              f"(each backend's options are nested under its name)")


@pytest.mark.parametrize("text,message", [
    ("search: {ray: {address: auto}}", "search.ray: options of the ray backend, but search.backend is optuna "
                                       "(the default); remove search.ray or set search.backend: ray"),
    ("search: {backend: ray, optuna: {storage: null}}", "search.optuna: options of the optuna backend, but "
                                                        "search.backend is ray; remove search.optuna"),
    ("search: {backend: ray, ray: {resources: {gpu: 1.5}}}", "search.ray.resources.gpu: Ray accepts a fraction "
                                                             "only below 1"),
    ("search: {backend: ray, ray: {resources: {tpu: 1}}}", "search.ray.resources.tpu: unknown key"),
    ("search: {backend: ray, ray: {max_failures: -1}}", "search.ray.max_failures"),
    ("search: {stop_after_failures: -1}", "search.stop_after_failures"),
])
def test_backend_sections_are_checked(tmp_path, text, message):
    from nas.experiment import ExperimentError, load_experiment

    with pytest.raises(ExperimentError) as exc:
        load_experiment(write(tmp_path, f"space: cifar\n{text}\n"))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_nested_backend_options_load_with_their_defaults(tmp_path):
    from nas.experiment import load_experiment

    ray = load_experiment(write(tmp_path, "space: cifar\nsearch: {backend: ray, ray: {address: auto, "
                                          "resources: {gpu: 0.25}, scheduler: asha}}\n"
                                          "accuracy: {method: proxy_training}\n"))
    assert (ray.search.ray.address, ray.search.ray.max_failures, ray.search.ray.num_cpus) == ("auto", 1, None)
    assert (ray.search.ray.resources.cpu, ray.search.ray.resources.gpu) == (1, 0.25)
    optuna = load_experiment(write(tmp_path, "space: cifar\nsearch: {optuna: {storage: 'sqlite:///x.db'}}\n"))
    assert optuna.search.optuna.storage == "sqlite:///x.db" and optuna.search.stop_after_failures == 3


def test_the_cluster_and_the_breaker_may_change_on_resume_the_storage_not(tmp_path):
    from nas.experiment import experiment_from_dict

    base = {"space": yaml.safe_load(TINY_SPACE), "search": {"backend": "ray"}}
    fp = experiment_from_dict(base, base_dir=tmp_path).fingerprint()
    same = {**base, "search": {"backend": "ray", "stop_after_failures": 0,
                               "ray": {"address": "auto", "max_failures": 3}}}
    assert experiment_from_dict(same, base_dir=tmp_path).fingerprint() == fp
    other = {**base, "search": {"backend": "ray", "ray": {"scheduler": "asha"}},
             "accuracy": {"method": "proxy_training"}}
    assert experiment_from_dict(other, base_dir=tmp_path).fingerprint() != experiment_from_dict(
        {**base, "accuracy": {"method": "proxy_training"}}, base_dir=tmp_path).fingerprint()


def test_command_line_backend_override_refuses_the_other_backends_section(tmp_path):
    from nas.experiment import ExperimentError, load_experiment, override_search

    exp = load_experiment(write(tmp_path, "space: cifar\nsearch: {backend: ray, ray: {address: auto}}\n"))
    assert override_search(exp.search, trials=5).trials == 5
    with pytest.raises(ExperimentError, match=r"search.ray: options of the ray backend, but --backend is optuna"):
        override_search(exp.search, backend="optuna")
    plain = load_experiment(write(tmp_path, "space: cifar\n", "plain.yaml"))
    assert override_search(plain.search, backend="ray").backend == "ray"


def test_a_run_folder_written_before_the_options_were_nested_still_reads_and_resumes(tmp_path):
    """experiment.json of an earlier version holds every option flat; it must not lock the run out."""
    import json

    from nas.experiment import experiment_from_dict
    from nas.run_folder import RunFolder

    exp = experiment_from_dict({"space": yaml.safe_load(TINY_SPACE), "output": str(tmp_path / "run"),
                                "search": {"optuna": {"storage": "sqlite:///x.db"}}}, base_dir=tmp_path)
    old = exp.to_dict()
    old["search"] = {k: v for k, v in old["search"].items() if k not in ("optuna", "ray", "stop_after_failures")}
    old["search"].update(storage="sqlite:///x.db", scheduler=None, resources={"cpu": 1}, address=None,
                         num_cpus=None, max_failures=1)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "experiment.json").write_text(json.dumps({"fingerprint": "0123", "experiment": old}))
    assert RunFolder(tmp_path / "run").read_experiment() == exp
    RunFolder(tmp_path / "run").prepare(exp, resume=True)  # the same search: resumes
