"""Supernet training on Ray Train workers: one worker equals the single-process trainer bit for bit,
two workers train, a killed run resumes to the weights of an uninterrupted one, and requests beyond
the cluster are refused in one line before anything starts. Ray runs on loopback only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from test_supernet import tiny_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def private_ray():
    import ray

    from evaluators.ray_cluster import start_private_cluster

    if ray.is_initialized():
        ray.shutdown()
    start_private_cluster(num_cpus=2)
    yield
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_one_worker_gives_the_single_process_weights_and_two_workers_train(tmp_path, tiny_space, private_ray):
    from evaluators.supernet import SupernetConfig, load_supernet, train_supernet
    from evaluators.supernet.distributed import default_storage, train_supernet_distributed

    data = tiny_data(n_train=128)
    cfg = SupernetConfig(epochs=2, batch_size=32, lr=0.2, warmup_steps=2)
    single = train_supernet(tiny_space, data, cfg, out=tmp_path / "single.pt", progress=False)
    one = train_supernet_distributed(tiny_space, data, cfg, out=tmp_path / "one.pt", workers=1)
    a, b = load_supernet(single), load_supernet(one)
    same_weights(a, b)  # bitwise: same paths, batches and kernels; no all-reduce with one worker
    assert [h["workers"] for h in b.history] == [1, 1] and not default_storage(one).exists()
    two = load_supernet(train_supernet_distributed(tiny_space, data, cfg, out=tmp_path / "two.pt", workers=2))
    assert two.epoch == 2 and [h["workers"] for h in two.history] == [2, 2]
    assert [h["images"] for h in two.history] == [h["images"] for h in a.history] == [128, 128]
    # same global batches, each worker a half with its own BN statistics: close to, not equal to, one worker
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), two.state_dict().values()))
    assert abs(two.history[-1]["train_loss"] - a.history[-1]["train_loss"]) < 0.5


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_workers_bad_input_error_reaches_the_driver_as_one_line(tmp_path, tiny_space, private_ray):
    from evaluators.supernet import SupernetConfig, SupernetError
    from evaluators.supernet.distributed import train_supernet_distributed

    missing = tmp_path / "no-such-mnist"
    with pytest.raises(SupernetError) as err:  # the workers load the data: the error is raised there
        train_supernet_distributed(tiny_space, f"mnist:{missing}", SupernetConfig(epochs=1, batch_size=32),
                                   out=tmp_path / "s.pt", workers=2)
    assert "\n" not in str(err.value) and str(missing) in str(err.value), str(err.value)
    assert not (tmp_path / "s.pt").exists()


def _cli(*args):
    return [sys.executable, "-m", "shufflenas", "supernet", "train", *map(str, args)]


@pytest.mark.slow
@pytest.mark.timeout(900)  # three Ray Train runs; Ray's start-up dominates, minutes on a loaded 2-core host
def test_killed_distributed_run_resumes_to_the_uninterrupted_weights(tmp_path, tiny_space_file):
    from evaluators.supernet import load_supernet
    from evaluators.supernet.distributed import default_storage

    common = [tiny_space_file, "--data", "digits", "--subset", "300", "--epochs", "3", "--batch-size", "32",
              "--workers", "2", "--json"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    full = tmp_path / "full.pt"
    r = subprocess.run(_cli(*common, "--out", full), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    killed = tmp_path / "killed.pt"
    proc = subprocess.Popen(_cli(*common, "--out", killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    storage = default_storage(killed)
    deadline = time.time() + 400
    try:  # kill the driver (and the private cluster with it) once epoch 1's checkpoint is stored
        while not list(storage.glob("supernet/checkpoint_*/supernet.pt")):
            assert proc.poll() is None and time.time() < deadline, "no checkpoint reported"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not killed.exists()  # the run did not finish
    r = subprocess.run(_cli(*common, "--out", killed), cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = load_supernet(full), load_supernet(killed)
    assert a.epoch == b.epoch == 3 and len(b.history) == 3
    same_weights(a, b)  # two workers are deterministic too (gloo sums two numbers the same way each time)
    assert not storage.exists()


def test_more_workers_or_gpus_than_offered_is_one_line_before_work(tmp_path, cli, tiny_space_file):
    n = (os.cpu_count() or 1) + 1
    r = cli("supernet", "train", tiny_space_file, "--data", "digits", "--out", tmp_path / "s.pt",
            "--workers", n, "--batch-size", 64 * n)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"--workers {n} with 1 CPU(s) each needs {n} CPU(s); this machine offers {n - 1}" in r.stderr
    if not torch.cuda.is_available():
        r = cli("supernet", "train", tiny_space_file, "--data", "digits", "--out", tmp_path / "s.pt",
                "--workers", 1, "--gpus-per-worker", 1)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "needs 1 GPU(s); this machine offers 0" in r.stderr
    r = cli("supernet", "train", tiny_space_file, "--data", "digits", "--out", tmp_path / "s.pt",
            "--workers", 2, "--batch-size", 33)
    assert r.returncode == 2 and "batch size 33 does not split evenly over 2 workers" in r.stderr
    assert not (tmp_path / "s.pt").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_workers_train_on_a_streamed_folder_and_the_driver_prints_each_epoch(tmp_path, private_ray, capsys):
    from imagenet_folder import make_imagenet_folder

    from evaluators.supernet import SupernetConfig, load_supernet
    from evaluators.supernet.data import load_data
    from evaluators.supernet.distributed import train_supernet_distributed
    from search_space import SearchSpace
    from test_supernet import FOLDER_SPACE

    spec = f"folder:{make_imagenet_folder(tmp_path / 'imagenet', classes=3, train_per_class=12, val_per_class=4)}"
    space = SearchSpace.from_yaml(FOLDER_SPACE)
    cfg = SupernetConfig(epochs=2, batch_size=8, lr=0.2, warmup_steps=1, val_fraction=0.25, loader_workers=0)
    load_data(spec, space, cfg)  # the folder's index, built once here rather than by both workers at once
    net = load_supernet(train_supernet_distributed(space, spec, cfg, out=tmp_path / "s.pt", workers=2))
    # 27 training images: 3 global batches of 8 per epoch, 4 images per worker and step
    assert [(h["epoch"], h["workers"], h["images"], h["skipped_images"]) for h in net.history] == \
        [(1, 2, 24, 0), (2, 2, 24, 0)]
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3, lines
    for line, h in zip(lines, net.history):
        assert line == (f"supernet epoch {h['epoch']}/2: loss {h['train_loss']:.3f}, train acc {h['train_acc']:.3f}, "
                        f"{h['images_per_s']:.0f} images/s on 2 workers"), line
    assert lines[2].startswith("supernet: 2 epochs, ") and "on 2 workers; final loss" in lines[2], lines[2]
    assert "\r" not in capsys.readouterr().err  # no progress bar
