"""Published networks are exact points of the space, and the cost model matches papers and a real count."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from search_space import Architecture, build_model, presets, profile

V2_PARAMS = {  # torchvision, exact
    "shufflenet_v2_x0_5": 1_366_792, "shufflenet_v2_x1_0": 2_278_604,
    "shufflenet_v2_x1_5": 3_503_624, "shufflenet_v2_x2_0": 7_393_996,
}
PAPER_MFLOPS = {  # ShuffleNet V2 Table / ShuffleNet V1 Table 1 (1x)
    "shufflenet_v2_x0_5": (41, 0.02), "shufflenet_v2_x1_0": (146, 0.02),
    "shufflenet_v2_x1_5": (299, 0.02), "shufflenet_v2_x2_0": (591, 0.02),
    "shufflenet_v1_g1": (143, 0.03), "shufflenet_v1_g2": (140, 0.03), "shufflenet_v1_g3": (137, 0.03),
    "shufflenet_v1_g4": (133, 0.03), "shufflenet_v1_g8": (137, 0.03),
    "spos": (323, 0.01),  # SPOS README (megvii-model/SinglePathOneShot): 323M FLOPs
}


@pytest.mark.parametrize("name", V2_PARAMS)
def test_v2_params_equal_torchvision(name):
    arch = presets.get(name)
    assert profile(arch).params == V2_PARAMS[name]
    assert sum(p.numel() for p in build_model(arch).parameters()) == V2_PARAMS[name]


@pytest.mark.parametrize("name", PAPER_MFLOPS)
def test_multiply_adds_match_papers(name):
    paper, tol = PAPER_MFLOPS[name]
    got = profile(presets.get(name)).mflops
    assert abs(got - paper) / paper <= tol, f"{name}: {got:.2f} MFLOPs vs paper {paper}"


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_builds_runs_and_round_trips(name, tmp_path):
    arch = presets.get(name)
    model = build_model(arch).eval()
    with torch.no_grad():
        out = model(torch.randn(1, arch.in_channels, arch.input_size, arch.input_size))
    assert out.shape == (1, arch.num_classes)
    path = tmp_path / f"{name}.yaml"
    arch.to_yaml(path)
    assert Architecture.from_yaml(path) == arch
    assert Architecture.from_dict(arch.to_dict()) == arch


@pytest.mark.parametrize("name", ["shufflenet_v2_x1_0_cifar", "shufflenet_v1_g8_cifar", "shufflenet_v2_x0_5",
                                  "spos_cifar"])
def test_cost_model_equals_a_real_count(name):
    """Params equal the module's; multiply-adds equal FlopCounterMode / 2 (it counts 2 FLOPs per MAC)."""
    arch = presets.get(name)
    model = build_model(arch).eval()
    x = torch.randn(1, 3, arch.input_size, arch.input_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    p = profile(arch)
    assert p.macs * 2 == counter.get_total_flops()
    assert p.params == sum(t.numel() for t in model.parameters())


def test_cost_model_counts_se_groups_and_kernels():
    arch = Architecture(
        input_size=32, num_classes=10, stem={"channels": 16, "stride": 1, "maxpool": False},
        stages=[{"unit": "v2", "channels": 64, "depth": 2, "groups": 2, "kernel": 5, "se": True,
                 "act": "hswish", "split": 0.375},
                {"unit": "v1", "channels": 128, "depth": 2, "groups": 4, "kernel": 7, "se": True}],
        head_channels=None,
    )
    model = build_model(arch).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    p = profile(arch)
    assert p.macs * 2 == counter.get_total_flops()
    assert p.params == sum(t.numel() for t in model.parameters())


def test_cost_model_counts_xception_units():
    """The Xception-like unit at both strides, with groups (shuffles), SE, h-swish, kernel 5 and a set mid width."""
    arch = Architecture(
        input_size=32, num_classes=10, stem={"channels": 16, "stride": 1, "maxpool": False},
        stages=[{"unit": "xception", "channels": 64, "depth": 3, "units": [
                    {"split": 0.25, "mid_channels": 32}, {"groups": 2, "se": True, "act": "hswish"}, {"kernel": 5}]},
                {"unit": "xception", "channels": 128, "depth": 2, "groups": 2, "kernel": 7, "mid_channels": 48}],
        head_channels=256,
    )
    model = build_model(arch).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    p = profile(arch)
    assert p.macs * 2 == counter.get_total_flops()
    assert p.params == sum(t.numel() for t in model.parameters())


def test_spos_preset_is_the_official_network():
    """The official SPOS network (megvii-model/SinglePathOneShot, src/Evaluation/template/network.py with the
    README's choices, channel scales 1.0) counts 322,918,720 multiply-adds (FlopCounterMode / 2) and 3,558,464
    parameters; our classifier has a bias (1,000 more), SPOS's has none. The paper/README says 323M, 3.5M."""
    from search_space import load_space

    arch = presets.get("spos")
    p = profile(arch)
    assert p.macs == 322_918_720
    assert p.params == 3_558_464 + 1_000
    assert [u.unit for st in arch.stages for u in st.unit_list()].count("xception") == 4
    # a point of the spos space, and its per-unit choices are the README's list
    params = load_space("spos").params_of(arch)
    labels = ["kernel=3", "kernel=5", "kernel=7", "unit=xception,kernel=3"]
    chosen = [labels.index(v) for k, v in params.items() if ".units." in k]
    assert tuple(chosen) == presets.SPOS_CHOICES == (2, 1, 0, 1, 2, 0, 2, 0, 2, 0, 2, 3, 0, 0, 0, 0, 3, 2, 3, 3)


def test_per_block_costs_sum_to_the_total():
    p = profile(presets.get("shufflenet_v2_x1_0"))
    assert sum(b["macs"] for b in p.blocks.values()) == p.macs
    assert sum(b["params"] for b in p.blocks.values()) == p.params
    assert list(p.blocks)[0] == "conv1" and list(p.blocks)[-1] == "head"


def test_mac_follows_the_v2_paper_for_a_1x1_conv():
    """ShuffleNet V2, Sec. 2: MAC of a 1x1 conv = hw(c1 + c2) + c1*c2 (groups divide the weights)."""
    from search_space.cost import _conv

    op, _ = _conv("pw", 64, 128, 1, 1, 1, 14)
    assert op.mac == 14 * 14 * (64 + 128) + 64 * 128
    op, _ = _conv("pw", 64, 128, 1, 1, 4, 14)
    assert op.mac == 14 * 14 * (64 + 128) + 64 * 128 // 4


def test_mac_is_minimal_at_equal_widths_for_fixed_flops():
    """Guideline G1 follows from the MAC formula: at fixed FLOPs, c1 = c2 minimises MAC."""
    from search_space.cost import _conv

    macs = {}
    for c1, c2 in [(128, 128), (64, 256), (32, 512)]:  # c1*c2 constant -> equal FLOPs
        op, _ = _conv("pw", c1, c2, 1, 1, 1, 28)
        macs[(c1, c2)] = op.mac
    assert macs[(128, 128)] < macs[(64, 256)] < macs[(32, 512)]


def test_input_size_override_scales_flops_not_params():
    arch = presets.get("shufflenet_v2_x1_0")
    small = profile(arch, input_size=112)
    assert small.params == profile(arch).params
    assert small.macs < profile(arch).macs / 3
