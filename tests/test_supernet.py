"""One-shot supernet: weight sharing is exact, BN recalibration, checkpoints, tiny training, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from search_space import SearchSpace, build_model, load_space, profile

from conftest import TINY_SPACE as TINY


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
    from evaluators.supernet import (Supernet, SupernetConfig, SupernetError, SupernetEvaluator, extract_subnet,
                                     load_supernet, recalibrate_bn, save_checkpoint)

    net = Supernet(tiny_space).eval()
    path = save_checkpoint(tmp_path / "s.pt", net, SupernetConfig(), epoch=3)
    loaded = load_supernet(path)
    assert loaded.epoch == 3 and loaded.space.to_dict() == tiny_space.to_dict()
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.state_dict().values()))
    arch = tiny_space.sample(seed=4)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(net(x, arch), loaded(x, arch))
    data = tiny_data()
    ev = SupernetEvaluator(path, data, bn_batches=2, batch_size=32)
    r = ev.evaluate(arch)
    assert r.epochs == 0 and ev.name == "supernet" and (r.extra["bn_images"], r.extra["val_images"]) == (64, 64)
    # the score is the inherited network's accuracy after BN re-estimation on the first 64 shuffled images
    model = extract_subnet(loaded, arch)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data.train), generator=gen)[:64]
    m, sd = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) * 255.0 for v in (data.mean, data.std))
    norm = lambda x: (x.float() - m) / sd
    recalibrate_bn(model, [norm(data.train.x[order[:32]]), norm(data.train.x[order[32:]])])
    with torch.no_grad():
        expected = (model(norm(data.val.x)).argmax(1) == data.val.y).float().mean().item()
    assert r.accuracy == pytest.approx(expected, abs=1e-9)
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


@pytest.mark.slow  # trains a supernet and scores it through two fresh interpreters
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
    got = json.loads(r.stdout)
    from evaluators.supernet import SupernetEvaluator

    # the command scores exactly what the evaluator does in-process with the same settings
    here = SupernetEvaluator(ckpt, "digits", bn_images=128).evaluate(arch)
    assert (got["accuracy"], got["loss"], got["bn_images"]) == (here.accuracy, pytest.approx(here.loss), 128)
    assert got["fidelity"] is None
    r = cli("supernet", "eval", ckpt, tmp_path / "a.yaml", "--data", "digits", "--bn-images", "0")
    assert r.returncode == 0 and "supernet fidelity: none measured" in r.stderr, r.stderr
    tiny_arch.replace(head_channels=128).to_yaml(tmp_path / "outside.yaml")
    r = cli("supernet", "eval", ckpt, tmp_path / "outside.yaml", "--data", "digits")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "shufflenas: error:" in r.stderr and "head_channels=128" in r.stderr


# ---- training recipes -------------------------------------------------------------------------


def test_schedule_anneals_to_zero_at_the_planned_end_also_when_stopped_and_resumed(tmp_path, tiny_space):
    from evaluators.supernet import SupernetConfig, load_supernet, train_supernet
    from evaluators.supernet.train import lr_at

    for schedule in ("cosine", "linear"):
        cfg = SupernetConfig(lr=0.4, warmup_steps=3, schedule=schedule)
        lrs = [lr_at(cfg, s, 20) for s in range(20)]
        assert lrs[:3] == pytest.approx([0.4 / 3, 0.8 / 3, 0.4]) and lrs[-1] == 0.0
        assert all(a > b for a, b in zip(lrs[2:], lrs[3:]))  # strictly down after the warm-up
    assert lr_at(SupernetConfig(lr=0.4, warmup_steps=0, schedule="linear"), 9, 20) == pytest.approx(0.2)
    cfg = SupernetConfig(epochs=2, batch_size=32, lr=0.2, warmup_steps=1)
    part = tmp_path / "part.pt"
    train_supernet(tiny_space, tiny_data(), cfg, out=part, progress=False, callback=lambda e, a: True)
    assert load_supernet(part).history[0]["lr_end"] > 0.05  # stopped half way: not annealed yet
    train_supernet(tiny_space, tiny_data(), cfg, out=part, progress=False)
    assert load_supernet(part).history[-1]["lr_end"] == 0.0  # the resumed run ends the planned schedule


def test_depth_sampling_uniform_and_balanced(tiny_space):
    from evaluators.supernet.sampling import PathSampler, step_generator

    for depth, want in (("uniform", 0.5), ("balanced", 2 / 3)):  # choices 1, 2: balanced draws 2 twice as often
        s = PathSampler(tiny_space, depth=depth)
        archs = [s.sample(step_generator(0, "path", i, 0)) for i in range(1500)]
        for stage in (0, 1):
            share = sum(a.stages[stage].depth == 2 for a in archs) / len(archs)
            assert abs(share - want) < 0.04, (depth, stage, share)
        kernels = sum(a.stages[0].kernel == 5 for a in archs) / len(archs)
        assert abs(kernels - 0.5) < 0.04  # other dimensions stay uniform


def test_band_sampling_covers_each_sub_band_and_refuses_an_empty_band(tiny_space):
    from evaluators.supernet import SupernetError
    from evaluators.supernet.sampling import PathSampler, macs, step_generator

    costs = sorted(macs(a) for a in tiny_space.sample(60, seed=0))
    lo, hi = costs[10], costs[50]
    s = PathSampler(tiny_space, (lo, hi), bins=2)
    got = [macs(s.sample(step_generator(0, "path", i, 0))) for i in range(200)]
    assert all(lo <= c <= hi for c in got)
    mid = (lo + hi) / 2
    below = sum(c <= mid for c in got) / len(got)
    assert 0.35 < below < 0.65  # SPOS: a sub-band first, so both halves are drawn about equally
    with pytest.raises(SupernetError, match="widen --flops-band"):
        PathSampler(tiny_space, (1.0, 2.0), max_tries=20).sample(step_generator(0, "x"))


def test_largest_and_smallest_paths_are_the_spaces_extremes(tiny_space):
    import itertools

    from evaluators.supernet.sampling import PathSampler, macs

    dims = tiny_space.open_dimensions
    every = [macs(tiny_space.decode(dict(zip([d.name for d in dims], c))))
             for c in itertools.product(*[d.choices for d in dims])]
    assert len(every) == tiny_space.size() == 128
    s = PathSampler(tiny_space)
    assert macs(s.largest) == max(every) and macs(s.smallest) == min(every)
    assert [st.depth for st in s.largest.stages] == [2, 2] and [st.depth for st in s.smallest.stages] == [1, 1]


def test_step_paths_depend_on_the_step_only(tiny_space):
    from evaluators.supernet import SupernetConfig
    from evaluators.supernet.sampling import PathSampler

    cfg = SupernetConfig.variant("sandwich", sandwich_random=3)
    a, b = PathSampler(tiny_space), PathSampler(tiny_space)
    first = a.step_paths(cfg, 7, 100)
    assert [r for r, _ in first] == ["largest", "smallest", "random", "random", "random"]
    assert first == b.step_paths(cfg, 7, 100)  # another worker, another process: the same paths
    assert any(x != y for x, y in zip(first[2:], b.step_paths(cfg, 8, 100)[2:]))
    warm = SupernetConfig.variant("ofa_warmup")
    assert [r for r, _ in a.step_paths(warm, 24, 100)] == ["largest"]
    assert [r for r, _ in a.step_paths(warm, 25, 100)] == ["random"]


def test_sandwich_step_sums_label_loss_of_largest_and_distillation_loss_of_the_others(tiny_space):
    import torch.nn.functional as F

    from evaluators.supernet import SupernetConfig, SupernetRun
    from evaluators.supernet.train import soft_cross_entropy

    data = tiny_data()
    cfg = SupernetConfig.variant("sandwich", sandwich_random=1, batch_size=32, grad_clip=None, warmup_steps=1)
    run = SupernetRun(tiny_space, data, cfg)
    ref = SupernetRun(tiny_space, data, cfg)  # same seed: the same initial weights
    x, y = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(1)), data.train.y[:32]
    paths = run.sampler.step_paths(cfg, 0, run.total)
    run.step(x, y, 0)
    teacher = ref.net(x, paths[0][1])
    loss = F.cross_entropy(teacher, y, label_smoothing=0.1)
    soft = teacher.detach().softmax(1)
    for _, arch in paths[1:]:
        loss = loss + soft_cross_entropy(ref.net(x, arch), soft)
    loss.backward()
    for name, p in run.net.weights.items():
        q = ref.net.weights[name]
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)


def test_every_variant_trains_and_resumes_to_the_same_weights(tmp_path, tiny_space):
    from evaluators.supernet import VARIANTS, SupernetConfig, load_supernet, train_supernet

    data = tiny_data(n_train=96)
    for name in VARIANTS:
        cfg = SupernetConfig.variant(name, epochs=2, batch_size=32, lr=0.2, warmup_steps=1)
        full = load_supernet(train_supernet(tiny_space, data, cfg, out=tmp_path / f"{name}.pt", progress=False))
        part = tmp_path / f"{name}-part.pt"
        train_supernet(tiny_space, data, cfg, out=part, progress=False, callback=lambda e, a: True)
        resumed = load_supernet(train_supernet(tiny_space, data, cfg, out=part, progress=False))
        assert full.epoch == resumed.epoch == 2, name
        for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
            assert torch.equal(a, b), (name, k)


def test_bn_images_zero_keeps_the_trained_statistics(tmp_path, tiny_space):
    from evaluators.supernet import SupernetConfig, SupernetEvaluator, extract_subnet, train_supernet

    data = tiny_data()
    path = train_supernet(tiny_space, data, SupernetConfig(epochs=1, batch_size=32), out=tmp_path / "s.pt",
                          progress=False)
    arch = tiny_space.sample(seed=2)
    kept = SupernetEvaluator(path, data, bn_images=0)
    r0 = kept.evaluate(arch)
    model = extract_subnet(kept.supernet, arch).eval()
    m, sd = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) * 255.0 for v in (data.mean, data.std))
    with torch.no_grad():
        expected = (model((data.val.x.float() - m) / sd).argmax(1) == data.val.y).float().mean().item()
    assert r0.extra["bn_images"] == 0 and r0.accuracy == pytest.approx(expected, abs=1e-9)
    assert SupernetEvaluator(path, data, bn_images=96).evaluate(arch).extra["bn_images"] == 96
    with pytest.raises(Exception, match="bn_images or bn_batches, not both"):
        SupernetEvaluator(path, data, bn_images=96, bn_batches=1)


def test_evaluator_refuses_another_space_or_dataset(tmp_path, tiny_space):
    from evaluators.supernet import Supernet, SupernetConfig, SupernetError, SupernetEvaluator, save_checkpoint

    path = save_checkpoint(tmp_path / "s.pt", Supernet(tiny_space), SupernetConfig(), epoch=1, data="digits")
    wider = SearchSpace.from_yaml(TINY.replace("[16, 24]", "[16, 24, 32]"))
    with pytest.raises(SupernetError, match=r"does not contain 'tiny': stages.0.channels \[32\] \(supernet: \[16, 24\]\)"):
        SupernetEvaluator(path, "digits", space=wider)
    narrower = SearchSpace.from_yaml(TINY.replace("[16, 24]", "[16]"))
    SupernetEvaluator(path, "digits", space=narrower)  # a subspace is scored by the same supernet
    with pytest.raises(SupernetError, match="trained on dataset 'digits', not 'cifar10'"):
        SupernetEvaluator(path, "cifar10:/nowhere")


def test_fidelity_is_recorded_per_checkpoint_content(tmp_path, tiny_space):
    from evaluators.supernet import (Supernet, SupernetConfig, describe_fidelity, read_fidelity, record_fidelity,
                                     save_checkpoint)

    path = save_checkpoint(tmp_path / "s.pt", Supernet(tiny_space), SupernetConfig(), epoch=1)
    assert read_fidelity(path) == [] and "none measured" in describe_fidelity(path)
    m = {"bn_images": 1024, "n": 20, "kendall_tau": 0.52, "kendall_p": 0.001, "spearman_rho": 0.7,
         "spearman_p": 0.0005, "top5_overlap": "3/5", "params_kendall_tau": 0.41, "ground_truth": "proxy training"}
    record_fidelity(path, m)
    record_fidelity(path, {**m, "bn_images": 0, "kendall_tau": 0.1})
    assert read_fidelity(path)[0] == m and len(read_fidelity(path)) == 2
    line = describe_fidelity(path, bn_images=1280)
    assert "Kendall tau 0.52 (p 0.001)" in line and "top-5 overlap 3/5" in line and "tau 0.41" in line
    assert "Kendall tau 0.10" in describe_fidelity(path, bn_images=0)
    save_checkpoint(path, Supernet(tiny_space), SupernetConfig(), epoch=2)  # trained further: a new checkpoint
    assert read_fidelity(path) == [] and "none measured" in describe_fidelity(path)


@pytest.mark.slow  # five CLI processes; the same refusals are checked in-process above
def test_cli_refuses_mismatched_dataset_space_and_input_size(tmp_path, cli, tiny_space, tiny_space_file, tiny_arch):
    from evaluators.supernet import Supernet, SupernetConfig, save_checkpoint

    ckpt = save_checkpoint(tmp_path / "s.pt", Supernet(tiny_space), SupernetConfig(), epoch=1, data="digits")
    arch = tiny_space.sample(seed=0)
    arch.to_yaml(tmp_path / "a.yaml")
    (tmp_path / "wide.yaml").write_text(TINY.replace("[32, 48]", "[32, 64]"))
    tiny_arch.replace(input_size=32).to_yaml(tmp_path / "big.yaml")
    for args, words in (
            (["--data", "mnist"], ["trained on dataset 'digits', not 'mnist'"]),
            (["--data", "digits", "--space", tmp_path / "wide.yaml"], ["stages.1.channels [64]"]),
            (["--data", "digits", "--space", "cifar"], ["input_size=32 (supernet: 16)"])):
        r = cli("supernet", "eval", ckpt, tmp_path / "a.yaml", *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith("shufflenas: error:") and all(w in r.stderr for w in words), r.stderr
    r = cli("supernet", "eval", ckpt, tmp_path / "big.yaml", "--data", "digits")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "input_size=32 (supernet: 16)" in r.stderr
    r = cli("supernet", "train", tmp_path / "wide.yaml", "--data", "digits", "--out", ckpt)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "holds a supernet of another space (stages.1.channels=[32, 64] (checkpoint: [32, 48]))" in r.stderr


def test_cli_device_that_is_not_here_is_one_line(tmp_path, cli, tiny_space_file):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = cli("supernet", "train", tiny_space_file, "--data", "digits", "--out", tmp_path / "s.pt", "--device", "cuda")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "CUDA is not available" in r.stderr, r.stderr
    assert not (tmp_path / "s.pt").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")
def test_supernet_trains_and_scores_on_cuda(tmp_path, tiny_space):
    from evaluators.supernet import SupernetConfig, SupernetEvaluator, load_supernet, train_supernet

    data = tiny_data()
    path = train_supernet(tiny_space, data, SupernetConfig.variant("sandwich", epochs=2, batch_size=32, device="cuda"),
                          out=tmp_path / "s.pt", progress=False)
    net = load_supernet(path)
    assert net.epoch == 2 and all(math.isfinite(h["train_loss"]) for h in net.history)
    arch = tiny_space.sample(seed=1)
    gpu = SupernetEvaluator(path, data, bn_images=64, device="cuda", amp="off").evaluate(arch)
    cpu = SupernetEvaluator(path, data, bn_images=64, device="cpu").evaluate(arch)
    assert gpu.extra["device"].startswith("cuda") and abs(gpu.accuracy - cpu.accuracy) <= 2 / 64


def test_latency_band_sampling_uses_the_lookup_table(tmp_path, tiny_space):
    from evaluators.latency import LatencyLUT, LatencyTarget
    from evaluators.latency.lut import space_blocks
    from evaluators.supernet import PathSampler, SupernetConfig
    from evaluators.supernet.sampling import step_generator

    keys = list(space_blocks(tiny_space))
    lut = LatencyLUT(LatencyTarget(threads=1), {k: {"median_ms": 0.01 * (1 + i % 7)} for i, k in enumerate(keys)},
                     space=tiny_space.to_dict(), meta={"space_name": "tiny", "blocks_in_space": len(keys),
                                                       "complete": True})
    path = lut.save(tmp_path / "lut.json")
    ms = sorted(lut.predict(a) for a in tiny_space.sample(60, seed=0))
    lo, hi = ms[15], ms[45]
    assert lo < hi
    s = PathSampler.from_config(tiny_space, SupernetConfig(latency_band=(lo, hi), lut=str(path)))
    assert s.cost_name == "latency_ms"
    assert all(lo <= lut.predict(s.sample(step_generator(0, "path", i, 0))) <= hi for i in range(30))
    with pytest.raises(Exception, match="latency_band needs lut"):
        SupernetConfig(latency_band=(lo, hi))


# ---- a variant named in settings (experiment files) ---------------------------------------------


def test_a_variant_in_the_settings_fills_its_recipe_and_explicit_settings_override_it():
    from evaluators.supernet import VARIANTS, SupernetConfig
    from search_space.errors import ShuffleNASError

    cfg = SupernetConfig(variant="sandwich", epochs=3)
    assert cfg == SupernetConfig(strategy="sandwich", sandwich_random=2, distill=True, epochs=3)
    assert cfg == SupernetConfig.variant("sandwich", epochs=3)
    assert SupernetConfig(variant="sandwich", sandwich_random=0).sandwich_random == 0
    # an explicit setting wins even where it equals the field's default
    assert SupernetConfig(variant="ofa_warmup").largest_warmup == 0.25
    assert SupernetConfig(variant="ofa_warmup", largest_warmup=0.0) == SupernetConfig()
    assert SupernetConfig(variant="spos_balanced").depth_sampling == "balanced"
    assert SupernetConfig(variant="spos") == SupernetConfig()
    with pytest.raises(ShuffleNASError) as err:
        SupernetConfig(variant="bignas", epochs=3)
    msg = str(err.value)
    assert "\n" not in msg and "unknown variant 'bignas'" in msg and all(v in msg for v in VARIANTS), msg


def test_an_experiment_names_a_supernet_variant_and_preflight_refuses_an_unknown_one(tmp_path, capsys):
    import yaml

    from evaluators.supernet import load_supernet
    from nas.experiment import experiment_from_dict
    from nas.objective import prepare
    from nas.preflight import PreflightError, preflight

    def experiment(train: dict):
        return experiment_from_dict({"name": "v", "space": yaml.safe_load(TINY), "data": "digits",
                                     "search": {"trials": 2}, "output": str(tmp_path / "run"),
                                     "accuracy": {"method": "supernet", "checkpoint": str(tmp_path / "sn.pt"),
                                                  "supernet_train": train}}, base_dir=tmp_path)

    with pytest.raises(PreflightError) as err:
        preflight(experiment({"variant": "bignas", "epochs": 1}), resume=False, address=None)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("accuracy.supernet_train: ") and "unknown variant 'bignas'" in msg
    assert "spos, spos_balanced, sandwich, ofa_warmup" in msg, msg
    exp = experiment({"variant": "sandwich", "sandwich_random": 1, "epochs": 1, "batch_size": 32, "subset": 160})
    preflight(exp, resume=False, address=None)
    prepare(exp, progress=False)
    cfg = load_supernet(tmp_path / "sn.pt").config
    assert (cfg.strategy, cfg.distill, cfg.sandwich_random, cfg.epochs) == ("sandwich", True, 1, 1)


# ---- streamed folder: data ----------------------------------------------------------------------

FOLDER_SPACE = TINY.replace("num_classes: 10", "num_classes: 3")


@pytest.fixture
def streamed(tmp_path):
    """A generated ImageNet-layout folder (3 classes, 12 train + 4 val images each), its spec and a space for it."""
    from imagenet_folder import make_imagenet_folder

    root = make_imagenet_folder(tmp_path / "imagenet", classes=3, train_per_class=12, val_per_class=4)
    return f"folder:{root}", SearchSpace.from_yaml(FOLDER_SPACE)


def test_supernet_trains_and_resumes_on_a_streamed_folder(tmp_path, streamed):
    from evaluators.supernet import SupernetConfig, load_supernet, train_supernet

    spec, space = streamed
    cfg = SupernetConfig(epochs=2, batch_size=8, lr=0.2, warmup_steps=1, val_fraction=0.25, loader_workers=0)
    full = load_supernet(train_supernet(space, spec, cfg, out=tmp_path / "full.pt", progress=False))
    assert full.data == spec and full.epoch == 2
    # 36 train/ images: 9 held out for validation, 27 train, 3 whole batches of 8 per epoch
    assert [(h["images"], h["skipped_images"]) for h in full.history] == [(24, 0), (24, 0)]
    seen = []
    part = tmp_path / "part.pt"
    train_supernet(space, spec, cfg, out=part, progress=False, callback=lambda e, a: seen.append(a) or True)
    assert len(seen) == 1 and seen[0] in {k / 9 for k in range(10)}  # the reference path scored on the 9
    train_supernet(space, spec, cfg.replace(loader_workers=1), out=part, progress=False)  # loader processes: same
    for (k, a), b in zip(full.state_dict().items(), load_supernet(part).state_dict().values()):
        assert torch.equal(a, b), k


def test_streamed_worker_shares_are_the_rows_of_each_global_batch(streamed):
    from evaluators.supernet import SupernetConfig
    from evaluators.supernet.data import load_data, train_batches

    spec, space = streamed
    cfg = SupernetConfig(batch_size=8, val_fraction=0.25, loader_workers=0, augment=False)
    data = load_data(spec, space, cfg)
    assert data.streamed
    one = list(train_batches(data, cfg, 1))
    ranks = [list(train_batches(data, cfg, 1, rank=r, world=2)) for r in (0, 1)]
    assert [b[0] for b in one] == [b[0] for b in ranks[0]] == [b[0] for b in ranks[1]] == [0, 1, 2]
    for (_, x, y, _), (_, x0, y0, _), (_, x1, y1, _) in zip(one, *ranks):
        assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)  # rank r: rows r::2 of the global batch
        assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)
    other = list(train_batches(data, cfg, 2))  # another epoch, another order
    assert any(not torch.equal(a[2], b[2]) for a, b in zip(one, other))


def test_streamed_unreadable_images_are_counted_and_a_workers_empty_share_is_one_line(streamed):
    from evaluators.data import DataError
    from evaluators.supernet import SupernetConfig
    from evaluators.supernet.data import global_order, load_data, rank_rows, train_batches

    spec, space = streamed
    cfg = SupernetConfig(batch_size=4, val_fraction=0.25, loader_workers=0)
    data = load_data(spec, space, cfg)
    order = global_order(len(data.train), cfg, 0)  # epoch 1's order, the same for every batch size
    bad = data.train.path(int(order[4]))  # in the second batch of 4
    with open(bad, "wb") as f:
        f.write(b"not a jpeg")
    got = list(train_batches(data, cfg, 0))  # one process: the batch is one image short, the file counted
    assert [i for i, *_ in got] == list(range(6)) and sum(s for *_, s in got) == 1
    assert sum(len(y) for _, _, y, _ in got) == 23 and bad in data.train.skipped
    for k in (5, 6):  # now images 4-6 are unreadable: batch 3 of 2 (images 4, 5) has none left ...
        with open(data.train.path(int(order[k])), "wb") as f:
            f.write(b"")
    got = list(train_batches(data, cfg.replace(batch_size=2), 0))
    assert [i for i, *_ in got] == [0, 1, *range(3, 13)]  # ... and is skipped; the steps keep their numbers
    assert torch.equal(rank_rows(order, 4, 0, 2)[2:4], order[[4, 6]])  # ... nor has worker 0's share of step 2
    with pytest.raises(DataError) as err:
        list(train_batches(data, cfg, 0, rank=0, world=2))
    msg = str(err.value)
    assert "\n" not in msg and "worker 0: no image of its share of a batch in epoch 1" in msg and bad in msg, msg


def test_supernet_scores_on_a_streamed_folder_as_computed_by_hand(tmp_path, streamed):
    from evaluators.data import batches, load_dataset
    from evaluators.supernet import (Supernet, SupernetConfig, SupernetEvaluator, extract_subnet, load_supernet,
                                     recalibrate_bn, save_checkpoint)

    spec, space = streamed
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "s.pt", Supernet(space), SupernetConfig(val_fraction=0.25), epoch=1, data=spec)
    arch = space.sample(seed=3)
    ev = SupernetEvaluator(ckpt, spec, bn_images=10, batch_size=4, loader_workers=0)
    r = ev.evaluate(arch)
    assert (r.extra["bn_images"], r.extra["val_images"], r.extra["skipped_images"]) == (10, 9, 0)
    # by hand: BN statistics from the first 10 images of the seeded order, accuracy on the 9 held out
    d = load_dataset(spec, input_size=16, val_fraction=0.25, seed=0)
    first = torch.randperm(len(d.train), generator=torch.Generator().manual_seed(0))[:10]
    norm = dict(shuffle=False, augment=False, generator=None, mean=d.mean, std=d.std, workers=0)
    model = recalibrate_bn(extract_subnet(load_supernet(ckpt), arch), list(batches(d.train.subset(first), 4, **norm)))
    x, y = next(batches(d.val, 100, **norm))
    with torch.no_grad():
        logits = model(x)
    assert r.accuracy == int((logits.argmax(1) == y).sum()) / 9
    assert r.loss == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert ev.evaluate(arch).accuracy == r.accuracy  # the validation split is read again, the same



@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")
def test_supernet_trains_and_scores_a_streamed_folder_on_cuda(tmp_path, streamed):
    from evaluators.supernet import SupernetConfig, SupernetEvaluator, load_supernet, train_supernet

    spec, space = streamed
    cfg = SupernetConfig(epochs=2, batch_size=8, lr=0.2, warmup_steps=1, val_fraction=0.25, loader_workers=1,
                         device="cuda")
    path = train_supernet(space, spec, cfg, out=tmp_path / "s.pt", progress=False)  # pinned batches, bf16
    net = load_supernet(path)
    assert [h["images"] for h in net.history] == [24, 24] and all(math.isfinite(h["train_loss"]) for h in net.history)
    arch = space.sample(seed=1)
    gpu = SupernetEvaluator(path, spec, bn_images=16, device="cuda", amp="off", loader_workers=1).evaluate(arch)
    cpu = SupernetEvaluator(path, spec, bn_images=16, device="cpu", loader_workers=0).evaluate(arch)
    assert gpu.extra["device"].startswith("cuda") and gpu.extra["val_images"] == cpu.extra["val_images"] == 9
    assert abs(gpu.accuracy - cpu.accuracy) <= 2 / 9
