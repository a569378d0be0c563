"""Proxy training on tiny networks and data: determinism, callbacks, early stop, divergence, recipes, CLI."""

from __future__ import annotations

import hashlib
import json
import math
import pickle

import pytest
import torch

from evaluators import AccuracyEvaluator
from evaluators.data import DataError, load_dataset
from evaluators.training import (OPTIMIZER_DEFAULTS, ProxyTrainingEvaluator, TrainConfig, TrainingDiverged,
                                 TrainingError, evaluate, proxy_budget, proxy_config, train)
from search_space import Architecture, build_model

FAST = dict(batch_size=32, threads=1)


@pytest.fixture(scope="module")
def digits16():
    return load_dataset("digits", input_size=16, subset=400, val_fraction=0.25, seed=0)


def test_same_seed_same_accuracy_and_weights(tiny_arch, digits16, tmp_path):
    cfg = TrainConfig(epochs=2, **FAST)
    a = train(tiny_arch, digits16, cfg, checkpoint=tmp_path / "a.pt")
    b = train(tiny_arch, digits16, cfg, checkpoint=tmp_path / "b.pt")
    train(tiny_arch, digits16, TrainConfig(epochs=2, seed=1, **FAST), checkpoint=tmp_path / "c.pt")
    assert a.accuracy == b.accuracy and a.loss == b.loss and a.extra["history"][0]["train_loss"] == \
        b.extra["history"][0]["train_loss"]
    wa, wb, wc = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in "abc")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    model = build_model(tiny_arch)
    model.load_state_dict(wa)
    acc, loss = evaluate(model, digits16.val, digits16.mean, digits16.std)
    assert acc == a.accuracy and math.isclose(loss, a.loss, rel_tol=1e-6)
    assert a.epochs == 2 and not a.stopped_early and a.seconds > 0 and a.checkpoint.endswith("a.pt")
    assert a.extra["steps"] == 2 * math.ceil(len(digits16.train) / 32)


def test_short_training_beats_chance(tiny_arch, digits16):
    r = train(tiny_arch, digits16, TrainConfig(epochs=5, augment=False, **FAST))
    assert r.accuracy > 0.5  # chance is 0.1 (0.78 here; 4 epochs gave 0.48 on this AVX-512 CPU)
    sgd = train(tiny_arch, digits16, TrainConfig(epochs=5, augment=False, optimizer="sgd", lr=0.2, warmup=0,
                                                 weight_decay=5e-4, **FAST))
    assert sgd.accuracy > 0.5 and sgd.extra["config"]["optimizer"] == "sgd"
    untrained = evaluate(build_model(tiny_arch), digits16.val, digits16.mean, digits16.std)
    assert untrained[1] > r.loss


def test_callback_once_per_epoch_and_early_stop(tiny_arch, digits16):
    seen = []
    r = train(tiny_arch, digits16, TrainConfig(epochs=3, steps=12, **FAST),
              callback=lambda e, acc: seen.append((e, acc)))
    per_epoch = math.ceil(len(digits16.train) / 32)
    assert [e for e, _ in seen] == [1, 2] and r.extra["steps"] == 12 and 12 < 2 * per_epoch
    assert seen[-1][1] == r.accuracy and all(0 <= acc <= 1 for _, acc in seen)

    calls = []
    stop = train(tiny_arch, digits16, TrainConfig(epochs=3, **FAST),
                 callback=lambda e, acc: calls.append(e) or e == 1)
    assert calls == [1] and stop.epochs == 1 and stop.stopped_early
    assert stop.extra["steps"] == per_epoch
    last = train(tiny_arch, digits16, TrainConfig(epochs=1, batch_size=len(digits16.train) - 1, threads=1),
                 callback=lambda e, acc: True)
    assert last.extra["steps"] == 1  # the left-over batch of one image is skipped (BatchNorm needs 2)
    assert not last.stopped_early  # asking to stop after the final epoch is not an early stop


def test_nan_loss_raises_training_diverged(tiny_arch, digits16, tmp_path):
    model = build_model(tiny_arch)
    with torch.no_grad():
        model.fc.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 1, step 1.*lower the learning rate"):
        train(tiny_arch, digits16, TrainConfig(epochs=1, **FAST), model=model, checkpoint=tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_mismatches_and_bad_settings_are_one_line_errors(tiny_arch, digits16):
    with pytest.raises(TrainingError, match="num_classes=5 .* 10 classes"):
        train(tiny_arch.replace(num_classes=5), digits16, TrainConfig(epochs=1))
    with pytest.raises(TrainingError, match="loaded at 16px .* expects 32px"):
        train(tiny_arch.replace(input_size=32), digits16, TrainConfig(epochs=1))
    for bad in ({"epochs": 0}, {"lr": 0.0}, {"warmup": 1.0}, {"threads": 0}, {"label_smoothing": -0.1},
                {"optimizer": "lion"}, {"weight_decay": -1e-4}, {"momentum": 1.0}, {"device": "gpu"},
                {"amp": "fp8"}, {"channels_last": "maybe"}, {"loader_workers": -1}):
        with pytest.raises(TrainingError, match=f"invalid training setting {next(iter(bad))}="):
            TrainConfig(**bad)


def test_proxy_budgets_per_dataset():
    assert proxy_budget("cifar10:/x")["subset"] == 10_000 and proxy_budget("digits")["subset"] is None
    cfg = proxy_config("digits", lr=0.5, batch_size=None)
    assert cfg.lr == 0.5 and cfg.batch_size == TrainConfig().batch_size and cfg.augment is False
    assert proxy_config("cifar10").augment is True
    with pytest.raises(DataError):
        proxy_budget("svhn")
    ev = ProxyTrainingEvaluator.default("cifar10:/nowhere", epochs=1, threads=1)
    assert ev.subset == 10_000 and ev.config.epochs == 1 and ev.config.optimizer == TrainConfig.optimizer


def test_proxy_evaluator_loads_once_per_input_size(tiny_arch, tmp_path, monkeypatch):
    import evaluators.training as training

    loads = []
    real = training.load_dataset
    monkeypatch.setattr(training, "load_dataset", lambda *a, **k: loads.append(k["input_size"]) or real(*a, **k))
    ev = ProxyTrainingEvaluator("digits", TrainConfig(epochs=1, **FAST), subset=200, checkpoint_dir=tmp_path,
                                adapt_classes=True)
    assert isinstance(ev, AccuracyEvaluator) and ev.name == "proxy_training"
    r1 = ev.evaluate(tiny_arch)
    r2 = ev.evaluate(tiny_arch.replace(num_classes=3), callback=lambda e, a: None)
    r3 = ev.evaluate(tiny_arch.replace(input_size=12))
    assert loads == [16, 12] and r1.accuracy == r2.accuracy  # classifier adapted back to 10 classes
    assert r3.extra["train_images"] == 180 and torch.load(r1.checkpoint, weights_only=True)
    shipped = pickle.loads(pickle.dumps(ev))  # Ray sends evaluators (with their loaded data) to workers
    assert shipped.evaluate(tiny_arch).accuracy == r1.accuracy and len(shipped.splits(16).test) == 359
    with pytest.raises(TrainingError, match="num_classes=3"):
        ProxyTrainingEvaluator("digits", TrainConfig(epochs=1, **FAST), subset=200).evaluate(
            tiny_arch.replace(num_classes=3))


@pytest.mark.slow  # a fresh interpreter training a full-size preset (the in-process CLI test is fast)
def test_cli_train_on_digits_prints_json(cli):
    r = cli("train", "--preset", "shufflenet_v2_x0_5_cifar", "--data", "digits", "--subset", "200",
            "--epochs", "1", "--threads", "1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["arch"] == "shufflenet_v2_x0_5_cifar" and out["epochs"] == 1 and 0 <= out["accuracy"] <= 1
    assert out["seconds"] > 0 and out["train_images"] == 180 and out["val_images"] == 20
    assert r.stderr == ""  # no progress bar with --json


def test_cli_train_classes_test_split_and_outputs(tmp_path, tiny_arch, capsys):
    from shufflenas.cli import main

    arch_file = tmp_path / "five.yaml"
    tiny_arch.replace(num_classes=5, name="five").to_yaml(arch_file)
    assert main(["train", str(arch_file), "--data", "digits", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "num_classes=5 but digits has 10 classes; pass --adapt-classes" in err
    assert main(["train", "--preset", "shufflenet_v2_x0_5_cifar", "--data", "imagenet"]) == 2
    assert "unknown dataset 'imagenet'" in capsys.readouterr().err

    run = tmp_path / "run"
    assert main(["train", str(arch_file), "--data", "digits", "--subset", "100", "--epochs", "1",
                 "--adapt-classes", "--test", "--out", str(run)]) == 0
    cap = capsys.readouterr()
    assert "num_classes 5 -> 10" in cap.err and "8x8x1 -> 16x16x3" in cap.err
    assert "step" in cap.err  # tqdm bar on stderr
    rep = json.loads(cap.out)
    assert rep["test_images"] == 359 and 0 <= rep["test_accuracy"] <= 1 and rep["num_classes"] == 10
    model = build_model(Architecture.from_yaml(run / "arch.yaml"))
    model.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    assert json.loads((run / "result.json").read_text())["accuracy"] == rep["accuracy"]


def test_interrupted_training_resumes_to_the_same_weights(tiny_arch, digits16, tmp_path):
    """A training stopped after epoch 2 of 3 (a kill) continues from its state file and ends
    with exactly the weights and history of an uninterrupted run."""
    cfg = TrainConfig(epochs=3, **FAST)
    whole = train(tiny_arch, digits16, cfg, checkpoint=tmp_path / "whole.pt")

    class Killed(Exception):
        pass

    def kill_after_two(epoch, acc):
        if epoch == 2:
            raise Killed

    state = tmp_path / "run.state.pt"
    with pytest.raises(Killed):
        train(tiny_arch, digits16, cfg, state=state, callback=kill_after_two)
    seen = []
    resumed = train(tiny_arch, digits16, cfg, checkpoint=tmp_path / "resumed.pt", state=state,
                    callback=lambda e, acc: seen.append(e))
    assert seen == [3]  # epochs 1-2 were not trained again
    assert [h["val_acc"] for h in resumed.extra["history"]] == [h["val_acc"] for h in whole.extra["history"]]
    wa, wb = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("whole", "resumed"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(TrainingError, match="another training"):
        train(tiny_arch, digits16, TrainConfig(epochs=3, seed=5, **FAST), state=state)


# Recorded with the code before devices existed (commit 4001194), torch 2.13.0+cpu on
# an AVX-512 CPU, 1 thread: the CPU path must give these very bits after any change.
CPU_REFERENCE = {"accuracy": 0.48, "loss": 1.7522073364257813, "weights_sha256": "12aa19962c1ac989"}


@pytest.mark.skipif(not (torch.__version__.startswith("2.13.0") and
                         torch.backends.cpu.get_cpu_capability() == "AVX512"),
                    reason="reference bits recorded with torch 2.13.0 on an AVX-512 CPU; other kernels round "
                           "differently")
def test_cpu_training_is_bitwise_what_it_was_before_devices(tiny_arch, digits16, tmp_path):
    r = train(tiny_arch, digits16, TrainConfig(epochs=4, augment=False, **FAST), checkpoint=tmp_path / "w.pt")
    weights = torch.load(tmp_path / "w.pt", weights_only=True)
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in weights.values())).hexdigest()[:16]
    assert {"accuracy": r.accuracy, "loss": r.loss, "weights_sha256": digest} == CPU_REFERENCE
    assert r.extra["placement"] == {"device": "cpu", "device_name": "cpu", "amp": "off", "channels_last": False}


def test_defaults_follow_the_optimiser_unless_set():
    sgd, adamw = TrainConfig(optimizer="sgd"), TrainConfig()
    assert (sgd.lr, sgd.weight_decay, sgd.momentum) == (0.1, 5e-4, 0.9)
    assert (adamw.lr, adamw.weight_decay, adamw.momentum) == (0.01, 0.05, 0.9)
    assert OPTIMIZER_DEFAULTS["sgd"]["weight_decay"] * 100 == OPTIMIZER_DEFAULTS["adamw"]["weight_decay"]
    mine = TrainConfig(optimizer="sgd", lr=0.05, weight_decay=0.0, momentum=0.8)
    assert (mine.lr, mine.weight_decay, mine.momentum) == (0.05, 0.0, 0.8)  # set values are kept, 0 included
    assert TrainConfig(optimizer="adamw", lr=0.01) == TrainConfig()  # the same recipe, however it is written
    # the recipe lists every field, resolved; placement settings only where set (old records still match)
    assert TrainConfig().to_dict() == {"epochs": 3, "steps": None, "batch_size": 32, "lr": 0.01, "momentum": 0.9,
                                       "weight_decay": 0.05, "label_smoothing": 0.1, "warmup": 0.1, "seed": 0,
                                       "threads": 1, "augment": True, "optimizer": "adamw"}
    on_gpu = TrainConfig(device="CUDA:1", amp="bf16", channels_last=True, loader_workers=4)
    assert {k: on_gpu.to_dict()[k] for k in ("device", "amp", "channels_last", "loader_workers")} == \
        {"device": "cuda:1", "amp": "bf16", "channels_last": "true", "loader_workers": 4}
    assert TrainConfig().to_dict(full=True)["device"] == "auto"
    # an experiment file's accuracy.train mapping reaches every field
    assert proxy_config("cifar10", optimizer="sgd", label_smoothing=0.0, warmup=0.05, device="cpu").to_dict() == \
        {**TrainConfig(optimizer="sgd").to_dict(), "label_smoothing": 0.0, "warmup": 0.05, "device": "cpu"}


def test_cli_recipe_options_reach_the_training_and_are_printed(cli):
    r = cli("train", "--preset", "shufflenet_v2_x0_5_cifar", "--data", "digits", "--subset", "100", "--steps", "2",
            "--optimizer", "sgd", "--momentum", "0.8", "--warmup", "0", "--label-smoothing", "0",
            "--batch-size", "16", "--augment", "--device", "cpu", "--amp", "off", "--channels-last", "false")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert {k: rep["config"][k] for k in ("optimizer", "lr", "weight_decay", "momentum", "warmup", "label_smoothing",
                                          "batch_size", "augment", "device", "amp", "channels_last")} == \
        {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "momentum": 0.8, "warmup": 0.0, "label_smoothing": 0.0,
         "batch_size": 16, "augment": True, "device": "cpu", "amp": "off", "channels_last": "false"}
    assert rep["placement"]["device"] == "cpu" and rep["train_seconds"] > 0
    assert "sgd lr 0.1 weight decay 0.0005 momentum 0.8, warm-up 0, label smoothing 0, batch 16" in r.stderr
    assert "device cpu, amp off, channels_last off" in r.stderr


def test_experiment_file_recipes_follow_the_optimiser_and_take_a_device(tmp_path):
    from nas.experiment import load_experiment
    from nas.objective import build_accuracy_evaluator

    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text("space: cifar\ndata: digits\naccuracy:\n  method: proxy_training\n"
                        "  train: {optimizer: sgd, epochs: 1, momentum: 0.8, device: cpu, amp: 'off'}\n")
    ev = build_accuracy_evaluator(load_experiment(exp_file), tmp_path / "run")
    assert (ev.config.lr, ev.config.weight_decay, ev.config.momentum, ev.config.device) == (0.1, 5e-4, 0.8, "cpu")
    exp_file.write_text("space: cifar\ndata: digits\naccuracy:\n  method: proxy_training\n  train: {device: gpu}\n")
    with pytest.raises(TrainingError, match="invalid training setting device='gpu'"):
        build_accuracy_evaluator(load_experiment(exp_file), tmp_path / "run")
