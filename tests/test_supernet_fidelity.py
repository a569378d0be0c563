"""A search that scores with a supernet prints the fidelity measured for that very checkpoint, or that none was."""

from __future__ import annotations

from conftest import TINY_SPACE as TINY


def test_a_search_scoring_with_the_supernet_prints_its_measured_fidelity(tmp_path, tiny_space, capsys):
    import yaml

    from evaluators.supernet import Supernet, SupernetConfig, record_fidelity, save_checkpoint
    from nas.experiment import experiment_from_dict
    from nas.objective import prepare

    ckpt = save_checkpoint(tmp_path / "s.pt", Supernet(tiny_space), SupernetConfig(), epoch=1, data="digits")
    exp = experiment_from_dict({"name": "fid", "space": yaml.safe_load(TINY), "data": "digits",
                                "search": {"trials": 2}, "output": str(tmp_path / "run"),
                                "accuracy": {"method": "supernet", "checkpoint": str(ckpt)}}, base_dir=tmp_path)
    prepare(exp, progress=False)
    assert "supernet fidelity: none measured" in capsys.readouterr().err
    record_fidelity(ckpt, {"bn_images": 1280, "n": 20, "kendall_tau": 0.55, "kendall_p": 0.0007,
                           "spearman_rho": 0.71, "spearman_p": 0.0004, "top5_overlap": "4/5"})
    prepare(exp, progress=False)
    assert "Kendall tau 0.55 (p 0.0007), Spearman rho 0.71, top-5 overlap 4/5" in capsys.readouterr().err



# ---- experiments/fidelity.py --truth-from: ground truth another run trained with the same recipe ----------


def _fidelity_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "fidelity.py"
    spec = importlib.util.spec_from_file_location("fidelity_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_run(tmp_path, space):
    """A `shufflenas run` folder whose retrain/results.jsonl holds two networks of ``space`` trained with
    the recipe below (with 2 threads: a runtime setting), one network outside the space, one of another recipe."""
    import json

    from evaluators.training import TrainConfig
    from search_space import presets

    def recipe(**train):
        return {"data": "digits", "subset": 200, "val_fraction": 0.1, "seed": 0,
                "train": TrainConfig(**{"epochs": 1, "batch_size": 32, "seed": 0, "threads": 2, **train}).to_dict()}

    rows = [("trial3", "searched", space.sample(seed=11), 0.61, recipe()),
            ("base", "baseline", space.sample(seed=12), 0.55, recipe()),
            ("shufflenet_v2_x0_5_cifar", "baseline", presets.get("shufflenet_v2_x0_5_cifar"), 0.5, recipe()),
            ("trial9", "searched", space.sample(seed=13), 0.7, recipe(epochs=5))]
    run = tmp_path / "run"
    (run / "retrain").mkdir(parents=True)
    with open(run / "retrain" / "results.jsonl", "w") as f:
        for name, kind, arch, acc, rec in rows:
            f.write(json.dumps({"name": name, "kind": kind, "arch": arch.replace(name=name).to_dict(), "val_acc": acc,
                                "test_acc": acc - 0.01, "train_seconds": 12.5, "epochs": rec["train"]["epochs"],
                                "recipe": rec}) + "\n")
    return run, [a for _, _, a, _, _ in rows]


def _args(space_file, out, run, *extra):
    return ["--space", str(space_file), "--data", "digits", "--n", "3", "--pool", "30", "--subset", "200",
            "--truth-epochs", "1", "--recipe", "batch_size=32", "--out", str(out), "--truth-from", str(run), *extra]


def test_truth_from_imports_the_networks_a_run_retrained_with_the_same_recipe(tmp_path, tiny_space, tiny_space_file,
                                                                             capsys):
    from search_space import Architecture
    from search_space.io import read_jsonl

    fid = _fidelity_script()
    run, archs = _fake_run(tmp_path, tiny_space)
    out = tmp_path / "fid"
    fid.main(["truth", *_args(tiny_space_file, out, run)])  # trains only the one network not imported
    printed = capsys.readouterr().out
    assert f"2 ground-truth networks imported from {run} (trial3, base); left out: 1 outside space 'tiny' " \
           f"(shufflenet_v2_x0_5_cifar); 1 of another recipe (trial9)" in printed, printed
    truth = {r["i"]: r for r in read_jsonl(out / "truth.jsonl")}
    assert sorted(truth) == [0, 1, 2]
    assert [(truth[i]["accuracy"], truth[i]["seconds"], truth[i]["acc_1ep"], truth[i]["imported_from"])
            for i in (0, 1)] == [(0.61, 12.5, None, f"{run}: trial3"), (0.55, 12.5, None, f"{run}: base")]
    assert [Architecture.from_dict(truth[i]["arch"]) for i in (0, 1)] == [archs[0].replace(name="trial3"),
                                                                       archs[1].replace(name="base")]
    assert truth[0]["val_images"] == truth[2]["val_images"] == 20  # the same split: 200 images, 10% held out
    assert "imported_from" not in truth[2] and truth[2]["acc_1ep"] is not None  # trained here
    assert fid.arch_key(Architecture.from_dict(truth[2]["arch"])) not in {fid.arch_key(a) for a in archs[:2]}
    (run / "retrain" / "results.jsonl").unlink()  # pinned: later phases rank the same networks without the run
    fid.main(["report", "--out", str(out)])
    report = capsys.readouterr().out
    assert f"2 of them trained with the same recipe by {run} and imported (trial3, base), not retrained" in report
    assert "| params | 3 |" in report and "early epoch" not in report  # one network has an early-epoch score


def test_truth_from_a_run_of_another_recipe_is_refused_in_one_line_before_anything_is_written(
        tmp_path, tiny_space, tiny_space_file):
    import pytest

    fid = _fidelity_script()
    run, _ = _fake_run(tmp_path, tiny_space)
    for change, words in ((["--truth-epochs", "2"], "train.epochs 2 (run: 1)"),
                          (["--data", "fashion-mnist"], "data fashion-mnist (run: digits)"),
                          (["--subset", "all"], "subset None (run: 200)"),
                          (["--recipe", "lr=0.05"], "train.lr 0.05 (run: 0.01)")):
        out = tmp_path / "fid"
        with pytest.raises(SystemExit) as err:
            fid.main(["truth", *_args(tiny_space_file, out, run, *change)])
        msg = str(err.value.code)
        assert "\n" not in msg and msg.startswith(f"fidelity: --truth-from {run}: its networks were trained with "
                                                  f"another recipe") and words in msg, msg
        assert not out.exists()
    with pytest.raises(SystemExit) as err:
        fid.main(["truth", *_args(tiny_space_file, tmp_path / "fid", tmp_path / "nothing")])
    assert "no retrain/results.jsonl" in str(err.value.code)


def test_space_may_be_given_as_the_experiment_file_whose_run_is_imported(tmp_path, tiny_space):
    """The CIFAR-10 comparison writes its space inside its experiment file: --space takes that file."""
    import yaml

    fid = _fidelity_script()
    exp = tmp_path / "experiment.yaml"
    exp.write_text(yaml.safe_dump({"name": "e", "space": tiny_space.to_dict(), "data": "digits",
                                   "accuracy": {"method": "zero_cost"},
                                   "latency": {"mode": "measured"}}))
    assert fid.space_of(exp).to_dict() == tiny_space.to_dict()
    assert fid.space_of("cifar").name == "cifar"  # a built-in space still works
