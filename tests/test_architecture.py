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
