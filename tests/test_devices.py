"""Devices: resolving auto/cpu/cuda/cuda:N/mps (also inside Ray), precision and memory format, batches and
training on a device. Tests that need CUDA or MPS run where torch sees one and skip with a reason elsewhere."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

from evaluators.data import DataSplits, batches, load_dataset
from evaluators.device import DeviceError, Placement, placement, ray_assigned_gpus, resolve_device
from evaluators.training import ProxyTrainingEvaluator, TrainConfig, on_device, train
from evaluators.zero_cost import ZeroCostEvaluator, score
from search_space import build_model

CUDA = torch.cuda.is_available() and torch.cuda.device_count() > 0
MPS = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="torch sees no CUDA device here")
no_cuda = pytest.mark.skipif(CUDA, reason="this machine has CUDA: the error for a missing one cannot be seen")
FAST = dict(batch_size=32, threads=1)


@pytest.fixture(scope="module")
def digits16():
    return load_dataset("digits", input_size=16, subset=300, val_fraction=0.2, seed=0)


# ---- resolving a setting ----------------------------------------------------------------------------
def test_cpu_and_malformed_settings():
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(" CPU ") == torch.device("cpu")
    for bad in ("gpu", "cuda:", "cuda:x", "tpu", ""):
        with pytest.raises(DeviceError, match="is not one of auto, cpu, cuda, cuda:N, mps"):
            resolve_device(bad)
    with pytest.raises(DeviceError, match="amp 'fp8'"):
        placement("cpu", amp="fp8")
    with pytest.raises(DeviceError, match="channels_last 'sometimes'"):
        placement("cpu", channels_last="sometimes")


@no_cuda
def test_auto_is_the_cpu_without_a_gpu_and_cuda_is_a_one_line_error():
    assert resolve_device("auto") == torch.device("mps" if MPS else "cpu")
    for d in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(DeviceError, match=f"device {d} requested but CUDA is not available") as err:
            resolve_device(d)
        assert "\n" not in str(err.value)


@pytest.mark.skipif(MPS, reason="this machine has MPS")
def test_mps_where_there_is_none():
    with pytest.raises(DeviceError, match="device mps requested but MPS"):
        resolve_device("mps")


@no_cuda
def test_cli_device_errors_exit_2_before_any_data_is_read(capsys, tmp_path):
    from shufflenas.cli import main

    for device in ("cuda", "cuda:1"):  # a dataset that does not exist: the device is checked first
        assert main(["train", "--preset", "shufflenet_v2_x0_5_cifar", "--data", f"cifar10:{tmp_path / 'no'}",
                     "--device", device]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"device {device} requested but CUDA is not available" in err


def _fake_ray(monkeypatch, *, worker: bool, gpus: list, cpus: float = 1.0):
    ray = types.ModuleType("ray")
    ray.WORKER_MODE, ray.SCRIPT_MODE = 1, 0
    ray.is_initialized = lambda: True
    ray.get_runtime_context = lambda: types.SimpleNamespace(worker=types.SimpleNamespace(mode=int(worker)),
                                                            get_assigned_resources=lambda: {"CPU": cpus})
    ray.get_gpu_ids = lambda: gpus
    monkeypatch.setitem(sys.modules, "ray", ray)


def test_auto_inside_a_ray_worker_uses_only_the_gpu_ray_assigned(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with two GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    assert ray_assigned_gpus() is None and resolve_device("auto") == torch.device("cuda:0")  # not in Ray
    _fake_ray(monkeypatch, worker=True, gpus=[1])  # Ray gave this trial GPU 1: CUDA_VISIBLE_DEVICES=1
    assert ray_assigned_gpus() == [1] and resolve_device("auto") == torch.device("cuda:0")
    _fake_ray(monkeypatch, worker=True, gpus=[])  # a CPU-only trial never takes a GPU another one holds
    assert resolve_device("auto") == torch.device("cpu")
    _fake_ray(monkeypatch, worker=False, gpus=[])  # the driver is not limited to an assignment
    assert ray_assigned_gpus() is None and resolve_device("auto") == torch.device("cuda:0")


def test_loader_workers_follow_the_cpus_ray_assigned(monkeypatch):
    from evaluators.data.folder import default_workers

    for cpus, workers in ((1, 0), (4, 3), (32, 8)):  # the trial's own process decodes when it has one CPU
        _fake_ray(monkeypatch, worker=True, gpus=[], cpus=cpus)
        assert default_workers() == workers


@pytest.mark.slow
def test_auto_in_real_ray_tasks_follows_their_gpu_assignment():
    """Ray 2.60's own API, in real worker processes: a task given no GPU resolves auto to the CPU; one
    given the cluster's (declared) GPU sees it assigned, and uses it when CUDA is there."""
    import ray

    from evaluators.ray_cluster import start_private_cluster

    start_private_cluster(num_cpus=1, num_gpus=1)
    try:
        @ray.remote
        def where():
            from evaluators.data.folder import default_workers
            from evaluators.device import ray_assigned_gpus, resolve_device
            return ray_assigned_gpus(), str(resolve_device("auto")), default_workers()

        cpu_only = ray.get(where.options(num_cpus=1, num_gpus=0).remote())
        with_gpu = ray.get(where.options(num_cpus=1, num_gpus=1).remote())
    finally:
        ray.shutdown()
    assert cpu_only == ([], "cpu", 0)
    assert with_gpu[0] and with_gpu[1] == ("cuda:0" if CUDA else "cpu")


# ---- precision and memory format ------------------------------------------------------------------
def test_auto_settings_on_the_cpu_change_nothing():
    p = placement("cpu")
    assert p == Placement(torch.device("cpu"), None, False) and p.scaler() is None
    x = torch.randn(2, 3, 4, 4)
    assert p.inputs(x) is x
    model = torch.nn.Conv2d(3, 4, 3)
    assert p.module(model) is model and model.weight.is_contiguous()
    with p.autocast():
        assert model(x).dtype == torch.float32
    assert p.describe() == {"device": "cpu", "device_name": "cpu", "amp": "off", "channels_last": False}


def test_explicit_bf16_fp16_and_channels_last_on_the_cpu(tiny_arch, digits16, tmp_path):
    p = placement("cpu", amp="bf16", channels_last=True)
    model = p.module(torch.nn.Conv2d(3, 4, 3))
    assert model.weight.is_contiguous(memory_format=torch.channels_last)
    x = p.inputs(torch.randn(2, 3, 8, 8))
    assert x.is_contiguous(memory_format=torch.channels_last)
    with p.autocast():
        assert model(x).dtype == torch.bfloat16
    assert placement("cpu", amp="fp16").scaler() is not None and p.scaler() is None  # fp16 needs the scaler
    r = train(tiny_arch, digits16, TrainConfig(epochs=1, amp="bf16", channels_last="true", **FAST))
    assert math.isfinite(r.loss) and r.extra["placement"]["amp"] == "bf16" and r.extra["placement"]["channels_last"]
    half = train(tiny_arch, digits16, TrainConfig(steps=3, amp="fp16", channels_last="true", **FAST),
                 checkpoint=tmp_path / "w.pt", state=tmp_path / "s.pt")
    assert math.isfinite(half.loss) and "scaler" in torch.load(tmp_path / "s.pt", weights_only=True)
    plain = build_model(tiny_arch)  # channels_last weights are saved contiguous: they load anywhere
    plain.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))


def test_data_stays_put_on_the_cpu(digits16):
    assert digits16.to("cpu") is digits16 and on_device(digits16, placement("cpu")) is digits16
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = list(batches(digits16.train, 64, shuffle=True, augment=True, generator=g1, mean=digits16.mean,
                     std=digits16.std))
    b = list(batches(digits16.train, 64, shuffle=True, augment=True, generator=g2, mean=digits16.mean,
                     std=digits16.std, device="cpu"))
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_zero_cost_device_setting(tiny_arch):
    assert score(tiny_arch, "grad_norm", batch_size=8, device="cpu") == score(tiny_arch, "grad_norm", batch_size=8)
    with pytest.raises(DeviceError, match="device 'gpu'"):
        ZeroCostEvaluator("synflow", device="gpu")
    if not CUDA:
        with pytest.raises(DeviceError, match="CUDA is not available"):
            ZeroCostEvaluator("synflow", device="cuda").evaluate(tiny_arch)


# ---- CUDA (run where there is one) ------------------------------------------------------------------
@needs_cuda
def test_cuda_index_beyond_the_devices_is_a_one_line_error():
    n = torch.cuda.device_count()
    with pytest.raises(DeviceError, match=f"cuda:{n} requested but this machine has {n} CUDA device"):
        resolve_device(f"cuda:{n}")


@needs_cuda
def test_batches_on_the_gpu_are_the_cpu_batches(digits16):
    gpu = digits16.to("cuda")
    assert gpu.train.x.is_cuda and gpu.train is not digits16.train
    for src in (gpu, digits16):  # resident on the GPU, or copied there batch by batch
        g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
        a = list(batches(digits16.train, 64, shuffle=True, augment=True, generator=g1, mean=digits16.mean,
                         std=digits16.std))
        b = list(batches(src.train, 64, shuffle=True, augment=True, generator=g2, mean=digits16.mean,
                         std=digits16.std, device="cuda"))
        assert all(x2.is_cuda and torch.equal(x1, x2.cpu()) and torch.equal(y1, y2.cpu())
                   for (x1, y1), (x2, y2) in zip(a, b))


@needs_cuda
@pytest.mark.parametrize("amp", ["auto", "fp16", "off"])
def test_training_on_cuda(tiny_arch, digits16, tmp_path, amp):
    cfg = TrainConfig(epochs=2, device="cuda", amp=amp, **FAST)
    r = train(tiny_arch, digits16, cfg, checkpoint=tmp_path / "w.pt", state=tmp_path / "s.pt")
    p = r.extra["placement"]
    assert p["device"] == "cuda:0" and p["channels_last"] is True
    assert p["amp"] == {"auto": "bf16" if torch.cuda.is_bf16_supported() else "fp16", "fp16": "fp16", "off": "off"}[amp]
    assert math.isfinite(r.loss) and 0 <= r.accuracy <= 1 and r.extra["steps"] == 2 * math.ceil(240 / 32)
    weights = torch.load(tmp_path / "w.pt", weights_only=True)  # CPU tensors: loads on a machine without CUDA
    assert all(v.device.type == "cpu" for v in weights.values())
    if amp == "fp16":
        assert "scaler" in torch.load(tmp_path / "s.pt", weights_only=True)


@needs_cuda
def test_proxy_evaluator_moves_a_small_dataset_to_the_gpu_once(tiny_arch, monkeypatch):
    ev = ProxyTrainingEvaluator("digits", TrainConfig(steps=2, device="cuda", **FAST), subset=200)
    moves = []
    real = DataSplits.to
    monkeypatch.setattr(DataSplits, "to", lambda self, d: moves.append(str(d)) or real(self, d))
    ev.evaluate(tiny_arch)
    ev.evaluate(tiny_arch)
    assert moves == ["cuda:0"] and next(iter(ev._on_device.values())).train.x.is_cuda
    import pickle

    assert pickle.loads(pickle.dumps(ev))._on_device == {}  # device copies are not shipped to Ray workers


@needs_cuda
def test_zero_cost_on_cuda_scores_the_same_network(tiny_arch):
    for proxy in ("synflow", "grad_norm", "naswot"):
        cpu, gpu = score(tiny_arch, proxy, batch_size=16, device="cpu"), score(tiny_arch, proxy, batch_size=16,
                                                                                device="cuda")
        assert gpu == pytest.approx(cpu, rel=1e-2), proxy


@needs_cuda
def test_streamed_folder_batches_land_on_the_gpu(tmp_path):
    from test_folder_stream import jpeg_tree

    tree = jpeg_tree(tmp_path / "imgs")
    d = load_dataset(f"folder:{tree}", input_size=16, val_fraction=0.25)
    x, y = next(batches(d.train, 4, shuffle=True, augment=True, generator=torch.Generator().manual_seed(0),
                        mean=d.mean, std=d.std, device="cuda", workers=1))
    assert x.is_cuda and y.is_cuda and x.shape == (4, 3, 16, 16)
