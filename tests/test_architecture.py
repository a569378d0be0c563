"""Architecture descriptions: validation with one-line errors, immutability, serialisation."""

import json

import pytest
import torch

from search_space import Architecture, ArchitectureError, build_model

BASE = {
    "input_size": 32, "num_classes": 10, "stem": {"channels": 16, "stride": 1, "maxpool": False},
    "stages": [{"unit": "v2", "channels": 48, "depth": 2}, {"unit": "v1", "channels": 96, "depth": 2,
                                                          "groups": 2}],
    "head_channels": 128,
}


def with_stage(i, **kw):
    d = json.loads(json.dumps(BASE))
    d["stages"][i].update(kw)
    return d


BAD = [  # (description, data, words the message must contain)
    ("odd channels for a v2 shuffle", with_stage(0, channels=47), ["stages[0]", "odd"]),
    ("split leaving an empty branch", with_stage(0, split=0.99), ["stages[0]", "empty branch"]),
    ("split out of range", with_stage(0, split=1.5), ["stages[0].split"]),
    ("groups not dividing a v2 branch", with_stage(0, groups=5), ["stages[0]", "groups 5", "allowed groups"]),
    ("groups not dividing a v1 bottleneck", with_stage(1, groups=7), ["stages[1]", "groups 7"]),
    ("v1 channels not a multiple of 4", with_stage(1, channels=98), ["stages[1]", "multiple of 4"]),
    ("v1 stride-2 unit narrower than its input", with_stage(1, channels=40), ["stages[1]", "exceed"]),
    ("unknown unit type", with_stage(0, unit="v3"), ["stages[0].unit", "v1", "v2"]),
    ("negative depth", with_stage(0, depth=-1), ["stages[0].depth"]),
    ("zero depth", with_stage(0, depth=0), ["stages[0].depth"]),
    ("kernel not 3/5/7", with_stage(0, kernel=4), ["stages[0].kernel"]),
    ("unknown activation", with_stage(0, act="gelu"), ["stages[0].act"]),
    ("split on a v1 unit", with_stage(1, split=0.5), ["split applies to v2"]),
    ("unknown key", {**BASE, "widht": 3}, ["widht", "unknown key"]),
    ("wrong type", {**BASE, "input_size": "big"}, ["input_size"]),
    ("no stages", {**BASE, "stages": []}, ["stages"]),
    ("input too small for the stages", {**BASE, "input_size": 8, "stem": {"channels": 16}},
     ["input_size"]),
    ("not a mapping", [1, 2], ["expected a mapping"]),
    ("units and depth differ", with_stage(0, units=[{}, {}, {}]), ["stages[0]", "units has 3 entries but depth is 2"]),
    ("split for a v1 unit", with_stage(1, units=[{}, {"split": 0.5}]),
     ["stages[1]", "units[1]: split applies to v2 and xception units"]),
    ("mid_channels on a v1 stage", with_stage(1, mid_channels=24), ["stages[1]", "mid_channels applies to"]),
    ("mid_channels not divisible by groups", with_stage(0, groups=2, mid_channels=25),
     ["stages[0]", "groups 2 does not divide the mid_channels width 25"]),
    ("one unit unbuildable", with_stage(0, units=[{}, {"groups": 5}]), ["stages[0].units[1]", "groups 5"]),
    ("unknown unit type in units", with_stage(0, units=[{}, {"unit": "v3"}]), ["stages[0].units[1].unit", "xception"]),
    ("unknown key in units", with_stage(0, units=[{}, {"kernal": 5}]), ["stages[0].units[1].kernal", "unknown key"]),
    ("xception with odd channels", with_stage(0, unit="xception", channels=47), ["stages[0]", "odd"]),
]


@pytest.mark.parametrize("desc,data,words", BAD, ids=[b[0] for b in BAD])
def test_invalid_architectures_are_rejected_with_one_line(desc, data, words):
    with pytest.raises(ArchitectureError) as exc:
        Architecture.from_dict(data)
    msg = str(exc.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, f"{desc}: {msg!r} lacks {w!r}"


def test_valid_base_builds_and_is_immutable():
    arch = Architecture.from_dict(BASE)
    with pytest.raises(Exception):
        arch.input_size = 64
    assert hash(arch) == hash(Architecture.from_dict(BASE))
    out = build_model(arch)(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_yaml_and_json_round_trip(tmp_path):
    arch = Architecture.from_dict(with_stage(0, split=0.375, groups=2, kernel=7, se=True, act="hswish"))
    assert Architecture.from_yaml(arch.to_yaml()) == arch
    assert Architecture.from_dict(json.loads(arch.to_json())) == arch
    path = tmp_path / "a.yaml"
    arch.to_yaml(path)
    assert Architecture.from_yaml(path) == arch


def test_v2_defaults_split_to_half_and_v1_has_none():
    arch = Architecture.from_dict(BASE)
    assert arch.stages[0].split == 0.5 and arch.stages[1].split is None


def test_missing_and_malformed_files_give_one_line_errors(tmp_path):
    from search_space import FileFormatError

    with pytest.raises(FileFormatError, match="file not found"):
        Architecture.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [unit: v2, channels: 48\n")
    with pytest.raises(FileFormatError, match="malformed YAML at line"):
        Architecture.from_yaml(bad)


def test_yaml_is_safe_loaded(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    from search_space import FileFormatError

    with pytest.raises(FileFormatError):
        Architecture.from_yaml(evil)


def test_per_unit_form_of_a_uniform_stage_is_the_shorthand():
    """Descriptions of one network compare, hash and serialise equal (the normal form)."""
    short = Architecture.from_dict(with_stage(0, kernel=5))
    per_unit = Architecture.from_dict(with_stage(0, kernel=3, units=[{"kernel": 5}, {"kernel": 5}]))
    assert per_unit == short and hash(per_unit) == hash(short)
    assert per_unit.to_dict() == short.to_dict() and "units" not in per_unit.to_dict()["stages"][0]
    # mid_channels equal to the branch width is the default layout
    assert Architecture.from_dict(with_stage(0, mid_channels=24)) == Architecture.from_dict(BASE)
    # the stage keeps the value most units have; units list only what differs
    a = Architecture.from_dict(with_stage(0, depth=3, kernel=3, units=[{"kernel": 7}, {"kernel": 7}, {}]))
    b = Architecture.from_dict(with_stage(0, depth=3, kernel=7, units=[{}, {}, {"kernel": 3}]))
    assert a == b and a.stages[0].kernel == 7
    assert a.to_dict()["stages"][0]["units"] == [{}, {}, {"kernel": 3}]


def test_per_unit_description_round_trips_and_builds(tmp_path):
    arch = Architecture.from_dict(with_stage(0, depth=3, units=[
        {"unit": "xception", "kernel": 5, "split": 0.25, "mid_channels": 16},
        {"kernel": 7, "se": True, "act": "hswish"},
        {"unit": "v1", "groups": 2}]))
    units = arch.stages[0].unit_list()
    assert [u.unit for u in units] == ["xception", "v2", "v1"]
    assert (units[0].split, units[0].mid_channels, units[2].split, units[2].mid_channels) == (0.25, 16, None, None)
    assert Architecture.from_yaml(arch.to_yaml()) == arch
    assert Architecture.from_dict(json.loads(arch.to_json())) == arch
    model = build_model(arch)
    assert [type(m).__name__ for m in model.stage2] == ["ShuffleXceptionUnit", "ShuffleV2Unit", "ShuffleV1Unit"]
    assert model.stage2[0].branch2[2].out_channels == 16  # first 1x1 of the main branch: mid_channels wide
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_xception_unit_follows_spos_shuffle_xception():
    """Layer by layer, SPOS's Shuffle_Xception (megvii-model/SinglePathOneShot, blocks.py) at stride 2:
    projection dw3x3/2 + 1x1 to the input width; main dw3x3/2, 1x1 to mid, dw3x3, 1x1, dw3x3, 1x1 to the rest,
    BN after every conv, ReLU after every 1x1."""
    from search_space.blocks import UnitBlock
    from search_space.modules import build_unit

    unit = build_unit(UnitBlock("xception", 2, 16, 64, 0.25, 1, 3, False, "relu", 56, mid=32))

    def layers(seq):
        out = []
        for m in seq:
            if isinstance(m, torch.nn.Conv2d):
                out.append(("conv", m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.groups))
            else:
                out.append(type(m).__name__)
        return out

    bn, relu = "BatchNorm2d", "ReLU"
    assert layers(unit.branch1) == [("conv", 16, 16, 3, 2, 16), bn, ("conv", 16, 16, 1, 1, 1), bn, relu]
    assert layers(unit.branch2) == [
        ("conv", 16, 16, 3, 2, 16), bn, ("conv", 16, 32, 1, 1, 1), bn, relu,
        ("conv", 32, 32, 3, 1, 32), bn, ("conv", 32, 32, 1, 1, 1), bn, relu,
        ("conv", 32, 32, 3, 1, 32), bn, ("conv", 32, 48, 1, 1, 1), bn, relu]
    assert unit(torch.randn(1, 16, 56, 56)).shape == (1, 64, 28, 28)
