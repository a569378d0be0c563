"""One-shot supernet: weight sharing is exact, BN recalibration, checkpoints, tiny training, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from search_space import SearchSpace, build_model, load_space, profile


def tiny_data(n_train=192, n_val=64, size=16, seed=0):
    from evaluators.data import DataSplits, TensorData

    g = torch.Generator().manual_seed(seed)
    mk = lambda n: TensorData(torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
                              torch.randint(0, 10, (n,), generator=g))
    return DataSplits(name="random", train=mk(n_train), val=mk(n_val), num_classes=10,
                      mean=(0.5, 0.5, 0.5), std=(0.29, 0.29, 0.29))


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def open_space():
    return load_space("all_open")  # both unit types, groups 1/2/4, every kernel, SE, stem choices


@pytest.fixture(scope="module")
def open_supernet(open_space):
    from evaluators.supernet import Supernet

    torch.manual_seed(0)
    net = Supernet(open_space)
    for name, buf in net.stats.named_buffers():  # non-trivial statistics, so eval mode is a real check
        if name.endswith("running_mean"):
            buf.normal_()
        elif name.endswith("running_var"):
            buf.uniform_(0.5, 2.0)
    return net


def test_extracted_subnet_has_the_built_networks_keys_and_shapes(open_space, open_supernet, tiny_space):
    from evaluators.supernet import Supernet, extract_subnet

    tiny_net = Supernet(tiny_space)
    for space, net in ((open_space, open_supernet), (tiny_space, tiny_net)):
        for arch in space.sample(12, seed=1):
            assert shapes(extract_subnet(net, arch)) == shapes(build_model(arch)), arch.to_json()


@pytest.mark.parametrize("training", [False, True])
def test_supernet_forward_equals_extracted_subnet(open_space, open_supernet, training):
    from evaluators.supernet import extract_subnet

    archs = open_space.sample(6, seed=2)
    assert {s.unit for a in archs for s in a.stages} == {"v1", "v2"}
    assert {s.groups for a in archs for s in a.stages} > {1}
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    open_supernet.train(training)
    try:
        for arch in archs:
            sub = extract_subnet(open_supernet, arch).train(training)
            with torch.no_grad():
                a, b = open_supernet(x, arch), sub(x)
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    finally:
        open_supernet.eval()


def test_group_choices_share_the_block_diagonal_of_the_dense_weights(open_space, open_supernet):
    from evaluators.supernet import extract_subnet

    arch = open_space.sample(seed=3)
    st = [s.model_dump() for s in arch.stages]
    st[1].update(unit="v2", groups=1, split=0.5, channels=192, depth=2)
    dense = extract_subnet(open_supernet, arch.replace(stages=st))
    st[1]["groups"] = 2
    grouped = extract_subnet(open_supernet, arch.replace(stages=st))
    wd = dense.stage3[1].branch2[0].weight  # 1x1, 96 -> 96, groups 1
    wg = grouped.stage3[1].branch2[0].weight  # groups 2: 96 x 48
    assert wg.shape == (96, 48, 1, 1)
    torch.testing.assert_close(wg[:48], wd[:48, :48])
    torch.testing.assert_close(wg[48:], wd[48:, 48:])
    # kernel choices share the centre of the largest kernel
    st[1].update(groups=1, kernel=3)
    k3 = extract_subnet(open_supernet, arch.replace(stages=st)).stage3[1].branch2[3].weight
    st[1]["kernel"] = 7
    k7 = extract_subnet(open_supernet, arch.replace(stages=st)).stage3[1].branch2[3].weight
    torch.testing.assert_close(k3, k7[:, :, 2:5, 2:5])


def test_only_the_sampled_path_gets_gradients(tiny_space):
    from evaluators.supernet import Supernet

    net = Supernet(tiny_space).train()
    arch = tiny_space.decode({"stages.0.depth": 1, "stages.1.depth": 1})
    net(torch.randn(4, 3, 16, 16), arch).sum().backward()
    with_grad = {k for k, p in net.weights.items() if p.grad is not None}
    assert any(k.startswith("stage2/0/") for k in with_grad)
    assert not any(k.startswith(("stage2/1/", "stage3/1/")) for k in with_grad)  # skipped units


def test_recalibrate_bn_reestimates_statistics(tiny_space):
    from evaluators.supernet import Supernet, extract_subnet, recalibrate_bn

    model = extract_subnet(Supernet(tiny_space), tiny_space.sample(seed=0))
    bn = model.conv1[1]
    before = bn.running_mean.clone()
    x = torch.randn(32, 3, 16, 16) * 3 + 1
    recalibrate_bn(model, [(x, None)])
    assert not model.training and bn.momentum == 0.1
    assert not torch.allclose(bn.running_mean, before)
    expected = torch.nn.functional.conv2d(x, model.conv1[0].weight, padding=1).mean((0, 2, 3))
    torch.testing.assert_close(bn.running_mean, expected, rtol=1e-4, atol=1e-5)


def test_checkpoint_round_trip_and_refusal_of_outside_architectures(tmp_path, tiny_space, tiny_arch):
    from evaluators.supernet import (Supernet, SupernetConfig, SupernetError, SupernetEvaluator,
                                     load_supernet, save_checkpoint)

    net = Supernet(tiny_space).eval()
    path = save_checkpoint(tmp_path / "s.pt", net, SupernetConfig(), epoch=3)
    loaded = load_supernet(path)
    assert loaded.epoch == 3 and loaded.space.to_dict() == tiny_space.to_dict()
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.state_dict().values()))
    arch = tiny_space.sample(seed=4)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(net(x, arch), loaded(x, arch))
    ev = SupernetEvaluator(path, tiny_data(), bn_batches=2, batch_size=32)
    r = ev.evaluate(arch)
    assert 0.0 <= r.accuracy <= 1.0 and r.epochs == 0 and ev.name == "supernet"
    outside = tiny_arch.replace(stages=[{"unit": "v2", "channels": 16, "depth": 2, "kernel": 7},
                                        {"unit": "v2", "channels": 32, "depth": 1}])
    with pytest.raises(SupernetError, match="outside the supernet's space.*stages.0.kernel=7"):
        ev.evaluate(outside)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SupernetError, match="bad.pt: not a readable supernet checkpoint"):
        load_supernet(tmp_path / "bad.pt")
    with pytest.raises(SupernetError, match="no such supernet checkpoint"):
        load_supernet(tmp_path / "missing.pt")


def test_tiny_training_runs_and_resumes_to_the_same_weights(tmp_path, tiny_space):
    from evaluators.supernet import SupernetConfig, load_supernet, train_supernet

    data = tiny_data()
    cfg = SupernetConfig(epochs=2, batch_size=32, lr=0.2, warmup_steps=2)
    full = train_supernet(tiny_space, data, cfg, out=tmp_path / "full.pt", progress=False)
    seen = []
    part = tmp_path / "part.pt"
    train_supernet(tiny_space, data, cfg, out=part, progress=False, callback=lambda e, a: seen.append(a) or True)
    assert len(seen) == 1 and 0 <= seen[0] <= 1 and load_supernet(part).epoch == 1  # stopped by callback
    train_supernet(tiny_space, data, cfg, out=part, progress=False)  # resumes at epoch 2
    a, b = load_supernet(full), load_supernet(part)
    assert a.epoch == b.epoch == 2 and len(b.history) == 2
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
    from evaluators.supernet import SupernetError
    with pytest.raises(SupernetError, match="other settings"):
        train_supernet(tiny_space, data, SupernetConfig(epochs=2, lr=0.5), out=part, progress=False)


def test_flops_band_sampling(tiny_space):
    from evaluators.supernet import SupernetError
    from evaluators.supernet.train import PathSampler

    macs = sorted(profile(a).macs for a in tiny_space.sample(40, seed=0))
    lo, hi = macs[10], macs[30]
    s = PathSampler(tiny_space, (lo, hi))
    g = torch.Generator().manual_seed(0)
    assert all(lo <= profile(s.sample(g)).macs <= hi for _ in range(10))
    with pytest.raises(SupernetError, match="widen --flops-band"):
        PathSampler(tiny_space, (1.0, 2.0), max_tries=50).sample(g)


def test_cli_train_and_eval(tmp_path, cli, tiny_space_file, tiny_arch):
    ckpt = tmp_path / "sn.pt"
    r = cli("supernet", "train", tiny_space_file, "--data", "digits", "--out", ckpt, "--epochs", "1",
            "--subset", "300", "--flops-band", "0.1M,100M", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["epochs"] == 1 and ckpt.exists()
    arch = SearchSpace.from_yaml(tiny_space_file).sample(seed=0)
    arch.to_yaml(tmp_path / "a.yaml")
    r = cli("supernet", "eval", ckpt, tmp_path / "a.yaml", "--data", "digits", "--bn-batches", "2", "--json")
    assert r.returncode == 0, r.stderr
    assert 0 <= json.loads(r.stdout)["accuracy"] <= 1
    tiny_arch.replace(head_channels=128).to_yaml(tmp_path / "outside.yaml")
    r = cli("supernet", "eval", ckpt, tmp_path / "outside.yaml", "--data", "digits")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "shufflenas: error:" in r.stderr and "head_channels=128" in r.stderr
