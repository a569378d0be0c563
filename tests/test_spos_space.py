"""The canonical SPOS space (issue 18 §6): per-unit choice blocks with the Xception-like unit, built, costed,
enumerated for the lookup table and shared by the supernet."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from search_space import SearchSpace, build_model, iter_blocks, load_space, presets, profile

#: SPOS's layout at a tiny size: stride-2 units keep the input width on the projection branch, half the stage
#: width inside the main branch (split 8/16, mid 8; split 16/32, mid 16); every unit one of SPOS's four blocks.
TINY_SPOS = """
name: tiny_spos
input_size: 32
num_classes: 10
stem: {channels: 8, stride: 1, maxpool: false}
stages:
  - channels: 16
    depth: [1, 2]
    units:
      - {split: 0.5, mid_channels: 8, choices: &block [{kernel: 3}, {kernel: 5}, {kernel: 7}, {unit: xception}]}
      - *block
  - channels: 32
    depth: 2
    units: [{split: 0.5, mid_channels: 16, choices: *block}, *block]
head_channels: 64
"""


@pytest.fixture(scope="module")
def spos():
    return load_space("spos")


def test_spos_space_is_the_published_supernet(spos):
    """megvii-model/SinglePathOneShot src/Supernet/network.py: stem 16, stages 64/160/320/640 x 4/4/8/4, head 1024,
    four choice blocks per unit."""
    assert spos.size() == 4 ** 20
    assert len(spos.open_dimensions) == 20
    assert all(d.choices == ("kernel=3", "kernel=5", "kernel=7", "unit=xception,kernel=3") for d in spos.open_dimensions)
    arch = spos.sample(seed=0)
    assert (arch.input_size, arch.stem.channels, arch.stem.stride, arch.stem.maxpool, arch.head_channels) == (
        224, 16, 2, False, 1024)
    assert [(s.channels, s.depth) for s in arch.stages] == [(64, 4), (160, 4), (320, 8), (640, 4)]
    # SPOS's stride-2 layout: the projection branch keeps the input width, the main branch is half the stage wide
    firsts = [b for p, b in iter_blocks(arch) if p.endswith(".0")]
    assert [(b.identity_channels, b.mid_channels) for b in firsts] == [(16, 32), (64, 80), (160, 160), (320, 320)]


def test_spos_samples_build_and_run(spos):
    archs = spos.sample(6, seed=1)
    assert {u.unit for a in archs for s in a.stages for u in s.unit_list()} == {"v2", "xception"}
    assert {u.kernel for a in archs for s in a.stages for u in s.unit_list() if u.unit == "v2"} == {3, 5, 7}
    for i, arch in enumerate(archs):
        model = build_model(arch).eval()
        assert profile(arch).params == sum(p.numel() for p in model.parameters())
        size = 224 if i == 0 else 32  # one at the space's size, the others small to keep the test short
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            out = model(torch.randn(1, 3, size, size))
        assert out.shape == (1, 1000)
        if i == 0:
            assert profile(arch).macs * 2 == counter.get_total_flops()
    # the published network's neighbours are near its 323M multiply-adds
    assert all(250 < profile(a).mflops < 400 for a in archs)


def test_lut_enumerates_every_spos_block(spos):
    from evaluators.latency.lut import space_blocks

    keys = space_blocks(spos)
    # stem; per stage the 4 choice blocks at stride 2 and at stride 1; head
    assert len(keys) == 1 + 4 * 8 + 1
    assert sum(k.startswith("xception|") for k in keys) == 8
    for arch in [presets.get("spos"), *spos.sample(10, seed=2)]:
        assert all(b.key() in keys for _, b in iter_blocks(arch))


@pytest.fixture(scope="module")
def tiny_supernet():
    from evaluators.supernet import Supernet

    space = SearchSpace.from_yaml(TINY_SPOS)
    torch.manual_seed(0)
    net = Supernet(space)
    for name, buf in net.stats.named_buffers():  # non-trivial statistics, so eval mode is a real check
        if name.endswith("running_mean"):
            buf.normal_()
        elif name.endswith("running_var"):
            buf.uniform_(0.5, 2.0)
    return space, net


@pytest.mark.parametrize("training", [False, True])
def test_supernet_path_with_xception_units_equals_the_built_network(tiny_supernet, training):
    """As tests/test_supernet.py checks for the per-stage spaces: the supernet's forward on a sampled path equals
    the standalone network built from that path with the weights it inherits."""
    from evaluators.supernet import extract_subnet

    space, net = tiny_supernet
    archs = [a for a in space.sample(16, seed=3) if any(u.unit == "xception" for s in a.stages for u in s.unit_list())]
    assert len(archs) >= 4
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    net.train(training)
    try:
        for arch in archs[:4]:
            sub = extract_subnet(net, arch).train(training)
            assert {k: v.shape for k, v in sub.state_dict().items()} == {
                k: v.shape for k, v in build_model(arch).state_dict().items()}
            with torch.no_grad():
                torch.testing.assert_close(net(x, arch), sub(x), rtol=1e-5, atol=1e-6)
    finally:
        net.eval()


def test_supernet_keeps_choice_blocks_apart_and_shares_kernels(tiny_supernet):
    """A v2 and an xception unit at one position have weights of their own; the v2 kernels share the 7x7's centre."""
    from evaluators.supernet import extract_subnet

    space, net = tiny_supernet
    pick = lambda choice: space.decode({"stages.0.depth": 2, "stages.1.units.1": choice})
    assert any(k.startswith("stage3/1/xception/") for k in net.weights) and any(
        k.startswith("stage3/1/v2/") for k in net.weights)
    k3 = extract_subnet(net, pick("kernel=3")).stage3[1].branch2[3].weight
    k7 = extract_subnet(net, pick("kernel=7")).stage3[1].branch2[3].weight
    torch.testing.assert_close(k3, k7[:, :, 2:5, 2:5])
    xc = extract_subnet(net, pick("unit=xception")).stage3[1].branch2
    assert xc[0].weight.shape == (16, 1, 3, 3) and xc[2].weight.shape == (16, 16, 1, 1)
    assert not torch.equal(xc[2].weight, extract_subnet(net, pick("kernel=3")).stage3[1].branch2[0].weight)


def test_real_spos_supernet_holds_the_published_network(spos):
    from evaluators.supernet import Supernet, extract_subnet

    net = Supernet(spos)
    arch = presets.get("spos")
    sub = extract_subnet(net, arch)
    assert {k: v.shape for k, v in sub.state_dict().items()} == {
        k: v.shape for k, v in build_model(arch).state_dict().items()}
