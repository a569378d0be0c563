"""Bad input across every layer: one line naming the problem, exit status 2, no traceback,
and nothing an earlier run wrote is touched.

Complements the per-module tables (tests/test_architecture.py, test_space.py,
test_cli_space.py, test_search_experiment.py, ...) with the command line as a
user meets it: experiment files, space and architecture files, lookup tables,
checkpoints, dataset paths and flags.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import pytest
import yaml

from conftest import TINY_SPACE
from test_preflight import elsewhere, fake_cifar, fake_idx, fake_lut, fake_supernet, truncated
from shufflenas.cli import main


def w(tmp: Path, name: str, text: str | bytes) -> Path:
    p = tmp / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def experiment(tmp: Path, name: str = "exp.yaml", **changes) -> Path:
    exp = {"name": "bad", "space": yaml.safe_load(TINY_SPACE), "data": "digits",
           "search": {"trials": 2}, "output": str(tmp / "existing_run")}
    for key, value in changes.items():
        exp[key] = value
    return w(tmp, name, yaml.safe_dump(exp))


def corrupt_cifar(tmp: Path) -> Path:
    p = tmp / "cifar-10-python.tar.gz"
    with tarfile.open(p, "w:gz") as tar:
        data = b"not a pickle"
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return p


def not_a_lut(tmp: Path) -> Path:
    """Valid JSON, but not a lookup table (the wrong-target case is in tests/test_latency_lut.py)."""
    return w(tmp, "lut.json", json.dumps({"format": "shufflenas-lut", "target": {"threads": 2}}))


CASES = [
    # --- experiment files -------------------------------------------------------------------------
    ("experiment file missing", lambda t: ["search", t / "nope.yaml"], "nope.yaml"),
    ("experiment malformed YAML", lambda t: ["search", w(t, "m.yaml", "space: [cifar\n")], "malformed YAML"),
    ("experiment unknown key", lambda t: ["search", experiment(t, serach={"trials": 2})], "serach"),
    ("experiment unknown objective", lambda t: ["search", experiment(t, objectives=["accuracy", "flops"])],
     "flops"),
    ("experiment unknown accuracy method", lambda t: ["search", experiment(t, accuracy={"method": "oracle"})],
     "accuracy.method"),
    ("experiment unknown sampler", lambda t: ["search", experiment(t, search={"sampler": "cma", "trials": 2})],
     "search.sampler"),
    ("experiment zero trials", lambda t: ["search", experiment(t, search={"trials": 0})], "search.trials"),
    ("experiment negative budget", lambda t: ["search", experiment(t, latency={"budget_ms": -3})],
     "latency.budget_ms"),
    ("experiment negative trial time limit", lambda t: ["search", experiment(t, search={"trials": 2, "trial_timeout_s": -1})], "search.trial_timeout_s"),
    ("experiment unknown seed preset", lambda t: ["search", experiment(t, seeds=["resnet50"])], "resnet50"),
    ("experiment space file missing", lambda t: ["search", experiment(t, space="missing_space.yaml")],
     "missing_space.yaml"),
    ("experiment impossible space", lambda t: ["search", experiment(
        t, space={"stages": [{"channels": [48, 50], "depth": 2, "groups": [1, 4]}]})], "impossible"),
    ("experiment unknown dataset", lambda t: ["search", experiment(t, data="imagenet21k")], "imagenet21k"),
    ("experiment unknown retrain baseline", lambda t: ["run", experiment(t, retrain={"baselines": ["vgg16"]})],
     "vgg16"),
    ("existing run without --resume", lambda t: ["search", experiment(t)], "--resume"),
    ("existing run resumed with another experiment", lambda t: [
        "search", experiment(t, search={"trials": 2, "sampler": "random"}), "--resume"], "experiment changed"),
    ("--trials 0", lambda t: ["search", experiment(t), "--trials", "0"], "--trials"),
    ("--backend unknown", lambda t: ["search", experiment(t), "--backend", "hyperopt"], "--backend"),
    # --- run directories --------------------------------------------------------------------------
    ("export of a folder that is no run", lambda t: ["export", t], "not a search run directory"),
    ("report of a folder that is no run", lambda t: ["report", t], "not a search run directory"),
    ("retrain of a folder that is no run", lambda t: ["retrain", t], "not a search run directory"),
    # --- architecture and space files -------------------------------------------------------------
    ("architecture with unknown unit", lambda t: ["profile", w(t, "a.yaml", "stages: [{unit: v3, channels: 48, depth: 2}]\n")],
     "stages[0].unit"),
    ("architecture with groups not dividing", lambda t: ["latency", w(
        t, "g.yaml", "stages: [{channels: 48, depth: 2, groups: 7}]\n")], "groups 7"),
    ("space with an unknown key", lambda t: ["space", w(t, "s.yaml", "stages: [{channels: 48, depth: 2, widht: 3}]\n")],
     "widht"),
    ("lut build of a missing space", lambda t: ["lut", "build", t / "nospace.yaml", "--out", t / "l.json"],
     "nospace.yaml"),
    ("supernet train on an empty space", lambda t: ["supernet", "train", w(t, "e.yaml", "stages: []\n"),
                                                    "--data", "digits", "--out", t / "c.pt"], "stages"),
    # --- latency targets and lookup tables --------------------------------------------------------
    ("latency on CUDA without CUDA", lambda t: ["latency", "--preset", "shufflenet_v2_x0_5", "--device", "cuda"],
     "CUDA"),
    ("latency unknown runtime", lambda t: ["latency", "--preset", "shufflenet_v2_x0_5", "--runtime", "tflite"],
     "--runtime"),
    ("latency zero threads", lambda t: ["latency", "--preset", "shufflenet_v2_x0_5", "--threads", "0"],
     "--threads"),
    ("latency with a missing LUT", lambda t: ["latency", "--preset", "shufflenet_v2_x0_5", "--lut",
                                             t / "no_lut.json"], "no_lut.json"),
    ("latency with a LUT that is not JSON", lambda t: ["latency", "--preset", "shufflenet_v2_x0_5", "--lut",
                                                      w(t, "bad_lut.json", "{not json")], "bad_lut.json"),
    ("lut validate of a missing table", lambda t: ["lut", "validate", t / "gone.json"], "gone.json"),
    ("lut validate of JSON that is no table", lambda t: ["lut", "validate", not_a_lut(t)],
     "lut.json"),
    # --- checkpoints ------------------------------------------------------------------------------
    ("supernet eval of a missing checkpoint", lambda t: ["supernet", "eval", t / "none.pt", "--preset",
                                                         "shufflenet_v2_x0_5_cifar", "--data", "digits"], "none.pt"),
    ("supernet eval of a corrupt checkpoint", lambda t: ["supernet", "eval", w(t, "junk.pt", b"\x00junk" * 50),
                                                         "--preset", "shufflenet_v2_x0_5_cifar", "--data", "digits"],
     "junk.pt"),
    ("supernet eval of a pickle that runs code", lambda t: ["supernet", "eval", w(
        t, "evil.pt", pickle.dumps(eval)), "--preset", "shufflenet_v2_x0_5_cifar", "--data", "digits"], "evil.pt"),
    ("supernet train with a garbled FLOPs band", lambda t: ["supernet", "train", "all_open", "--data", "digits",
                                                            "--out", t / "c.pt", "--flops-band", "lots"], "--flops-band"),
    # --- datasets ---------------------------------------------------------------------------------
    ("train on a missing CIFAR-10 path", lambda t: ["train", "--preset", "shufflenet_v2_x0_5_cifar", "--data",
                                                   f"cifar10:{t / 'nowhere'}"], "nowhere"),
    ("train on a corrupt CIFAR-10 archive", lambda t: ["train", "--preset", "shufflenet_v2_x0_5_cifar",
                                                      "--data", f"cifar10:{corrupt_cifar(t)}"], "cifar-10-python.tar.gz"),
    ("train on a missing image folder", lambda t: ["train", "--preset", "shufflenet_v2_x0_5_cifar", "--data",
                                                  f"folder:{t / 'imgs'}"], "imgs"),
    ("train on an empty image folder", lambda t: ["train", "--preset", "shufflenet_v2_x0_5_cifar", "--data",
                                                 f"folder:{(t / 'empty').mkdir() or t / 'empty'}"], "empty"),
    ("train on a missing Fashion-MNIST path", lambda t: ["train", "--preset", "shufflenet_v2_x0_5_cifar",
                                                        "--data", f"fashion-mnist:{t / 'fm'}"], "fm"),
    ("train with an unknown dataset", lambda t: ["train", "--preset", "shufflenet_v2_x0_5_cifar", "--data",
                                                "svhn"], "svhn"),
    ("train a 1000-class network on 10 classes", lambda t: ["train", "--preset", "shufflenet_v2_x0_5",
                                                           "--data", "digits"], "--adapt-classes"),
    ("train with zero epochs", lambda t: ["train", "--preset", "shufflenet_v2_x0_5_cifar", "--data", "digits",
                                         "--epochs", "0"], "--epochs"),
    ("train with a negative learning rate", lambda t: ["train", "--preset", "shufflenet_v2_x0_5_cifar",
                                                      "--data", "digits", "--lr", "-1"], "--lr"),
    # --- flags ------------------------------------------------------------------------------------
    ("non-numeric input size", lambda t: ["profile", "--preset", "shufflenet_v2_x0_5", "--input-size", "big"],
     "--input-size"),
    ("non-numeric seed", lambda t: ["space", "cifar", "--sample", "2", "--seed", "x"], "--seed"),
    ("missing required --data", lambda t: ["train", "--preset", "shufflenet_v2_x0_5_cifar"], "--data"),
    ("unknown sub-command of lut", lambda t: ["lut", "destroy"], "destroy"),
]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding an earlier run (experiment.json + trials) that no bad input may modify."""
    from nas.experiment import load_experiment
    from nas.run_folder import RunFolder

    tmp = tmp_path_factory.mktemp("bad_inputs")
    exp = load_experiment(experiment(tmp))
    RunFolder(exp.output).prepare(exp, resume=False)
    RunFolder(exp.output).trials_jsonl.write_text('{"number": 0, "state": "COMPLETE"}\n')
    return tmp


@pytest.mark.parametrize("desc,argv,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input(desc, argv, words, workdir, tmp_path, capsys):
    run = workdir / "existing_run"
    before = snapshot(run)
    args = [str(a) for a in argv(tmp_path if "existing run" not in desc else workdir)]
    rc = main(args)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, f"{desc}: exit {rc}, stderr {err[-500:]!r}"
    assert len(lines) == 1 and lines[0].startswith("shufflenas: error:"), f"{desc}: {err[-800:]!r}"
    assert "Traceback" not in err
    assert words in lines[0], f"{desc}: {lines[0]!r} does not name {words!r}"
    assert snapshot(run) == before, f"{desc} modified the existing run"


def test_there_are_at_least_40_kinds():
    assert len(CASES) >= 40


# --- valid schema, cannot run: refused by the preflight before the first trial (issue 14) ---------------
# Each experiment is a valid file whose every trial would fail (or whose run could not start) on this
# machine. Before the preflight, the first three searched all 25 trials, each FAIL, and exited 0.


def fresh(tmp: Path, name: str = "exp.yaml", **changes) -> Path:
    """An experiment whose run folder (tmp/new_run) does not exist yet."""
    return experiment(tmp, name, output=str(tmp / "new_run"), **changes)


def no_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")


def proxy(**train) -> dict:
    return {"method": "proxy_training", "train": {"epochs": 1, **train}}


CANNOT_RUN = [
    # the three of the issue
    ("dataset archive that does not exist", lambda t: ["search", fresh(t, data="cifar10:/nonexistent/x.tar.gz")],
     "data: /nonexistent/x.tar.gz: not found"),
    ("latency on CUDA without CUDA", lambda t: no_cuda() or ["search", fresh(
        t, latency={"target": {"device": "cuda"}})], "latency.target: device cuda"),
    ("zero training epochs", lambda t: ["search", fresh(t, accuracy=proxy(epochs=0))], "accuracy.train"),
    # ten and more of our own
    ("truncated dataset archive", lambda t: ["search", fresh(
        t, data=f"cifar10:{truncated(fake_cifar(t))}")], "data: "),
    ("dataset archive without a training batch", lambda t: ["search", fresh(
        t, data=f"cifar10:{fake_cifar(t, skip='data_batch_2')}")], "missing data_batch_2"),
    ("idx dataset folder missing a file", lambda t: ["search", fresh(t, data=f"fashion-mnist:{fm_without_labels(t)}")],
     "missing train-labels"),
    ("misspelt training setting", lambda t: ["search", fresh(t, accuracy=proxy(epoch=2))], "accuracy.train.epoch"),
    ("negative learning rate", lambda t: ["search", fresh(t, accuracy=proxy(lr=-0.01))], "accuracy.train"),
    ("unknown zero-cost proxy", lambda t: ["search", fresh(t, accuracy={"method": "zero_cost", "proxy": "snipp"})],
     "accuracy.proxy"),
    ("unknown evaluator option", lambda t: ["search", fresh(
        t, accuracy={"method": "zero_cost", "options": {"batchsize": 8}})], "accuracy.options.batchsize"),
    ("space with 100 classes on a 10-class dataset", lambda t: ["search", fresh(
        t, space={**yaml.safe_load(TINY_SPACE), "num_classes": 100}, accuracy=proxy())], "space.num_classes"),
    ("seed with 1000 classes on a 10-class dataset", lambda t: ["search", fresh(
        t, seeds=["shufflenet_v2_x0_5"], accuracy=proxy())], "seeds: shufflenet_v2_x0_5"),
    ("lookup table of another target", lambda t: ["search", fresh(
        t, latency={"mode": "lut", "lut": str(fake_lut(t, threads=2))})], "latency.lut"),
    ("lookup table of part of the space", lambda t: ["search", fresh(
        t, latency={"mode": "lut", "lut": str(fake_lut(t, drop=5))})], "latency.lut"),
    ("lookup table measured on another host", lambda t: ["search", fresh(
        t, latency={"mode": "lut", "lut": str(fake_lut(t, host=elsewhere()))})],
     ("error: latency.lut: ", "built on elsewhere-7", "latency.lut_host_check: false")),
    ("supernet checkpoint of another space", lambda t: ["search", fresh(t, accuracy={
        "method": "supernet", "checkpoint": str(fake_supernet(t, TINY_SPACE.replace("[32, 48]", "[32]")))})],
     "accuracy.checkpoint"),
    ("supernet trained for zero epochs", lambda t: ["search", fresh(t, accuracy={
        "method": "supernet", "checkpoint": str(t / "new.pt"), "supernet_train": {"epochs": 0}})],
     "accuracy.supernet_train"),
    ("unreachable database", lambda t: ["search", fresh(
        t, search={"trials": 2, "optuna": {"storage": "postgresql+psycopg2://u:pw@127.0.0.1:1/db"}})], "search.optuna.storage"),
    ("SQLite file in a folder that does not exist", lambda t: ["search", fresh(
        t, search={"trials": 2, "optuna": {"storage": f"sqlite:///{t}/nowhere/s.db"}})], "search.optuna.storage"),
    ("trials asking for a GPU the machine lacks", lambda t: no_cuda() or ["search", fresh(
        t, search={"trials": 2, "backend": "ray", "ray": {"resources": {"gpu": 1}}})], "search.ray.resources.gpu"),
    ("--address with the optuna backend", lambda t: ["search", fresh(t), "--address", "127.0.0.1:6379"],
     "--address"),
    ("Ray cluster address nobody listens on", lambda t: ["search", fresh(
        t, search={"trials": 2, "backend": "ray"}), "--address", "127.0.0.1:1"], "--address"),
    ("run folder path through a file", lambda t: ["search", experiment(
        t, output=str(w(t, "afile", "x") / "run"))], "output"),
    ("run with retraining for zero epochs", lambda t: ["run", fresh(t, retrain={"train": {"epochs": 0}})],
     "retrain.train"),
    ("retrain baseline with 1000 classes", lambda t: ["run", fresh(t, retrain={"baselines": ["shufflenet_v2_x1_0"]})],
     "retrain.baselines: shufflenet_v2_x1_0"),
]


def fm_without_labels(tmp: Path) -> Path:
    folder = fake_idx(tmp / "fm")
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    return folder


@pytest.mark.parametrize("desc,argv,words", CANNOT_RUN, ids=[c[0] for c in CANNOT_RUN])
def test_cannot_run_is_refused_before_the_first_trial(desc, argv, words, workdir, tmp_path, capsys):
    run = workdir / "existing_run"
    before = snapshot(run)
    rc = main([str(a) for a in argv(tmp_path)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, f"{desc}: exit {rc}, stderr {err[-500:]!r}"
    assert len(lines) == 1 and lines[0].startswith("shufflenas: error:"), f"{desc}: {err[-800:]!r}"
    for word in (words,) if isinstance(words, str) else words:
        assert word in lines[0], f"{desc}: {lines[0]!r} does not name {word!r}"
    assert not (tmp_path / "new_run").exists() and not (tmp_path / "afile").is_dir(), f"{desc}: run folder created"
    assert snapshot(run) == before


def test_there_are_ten_more_than_the_issues_three():
    assert len(CANNOT_RUN) >= 13


def test_resume_that_cannot_run_leaves_the_run_byte_identical(tmp_path, capsys):
    """A run whose dataset lost a file since it started: --resume is refused and the run is untouched."""
    from nas.experiment import load_experiment
    from nas.run_folder import RunFolder

    folder = fake_idx(tmp_path / "fm")
    path = fresh(tmp_path, data=f"fashion-mnist:{folder}")
    RunFolder(tmp_path / "new_run").prepare(load_experiment(path), resume=False)
    RunFolder(tmp_path / "new_run").trials_jsonl.write_text('{"number": 0, "state": "COMPLETE"}\n')
    before = snapshot(tmp_path / "new_run")
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    assert main(["search", str(path), "--resume"]) == 2
    assert "data: " in capsys.readouterr().err
    assert snapshot(tmp_path / "new_run") == before
