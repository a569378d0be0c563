"""Search spaces: loading, validation of every combination, size, sampling, the Optuna adapter, per-unit choices."""

import itertools

import optuna
import pytest
import torch

from search_space import SearchSpace, SpaceError, build_model, load_space, presets, profile
from search_space.space import builtin_spaces


def test_builtin_spaces_load():
    for name in builtin_spaces():
        assert load_space(name).size() > 1


def test_size_counts_conditional_split(tiny_space):
    # tiny: stage channels 2x2, depth 2x2, kernel 2x2, head 2 -> 2^7
    assert tiny_space.size() == 2 ** 7
    sp = SearchSpace.from_yaml("""
stages:
  - {unit: [v1, v2], channels: [48, 96], depth: 1, split: [0.25, 0.5, 0.75]}
""")
    assert sp.size() == 2 * (1 + 3)  # channels x (v1 | v2 with 3 splits)


def test_sampling_is_seeded_and_valid(tiny_space):
    a = tiny_space.sample(20, seed=3)
    b = tiny_space.sample(20, seed=3)
    assert a == b
    assert len(set(a)) > 5
    assert all(tiny_space.contains(x) for x in a)


def test_all_open_space_samples_build_and_run():
    """A space with every dimension open (both unit types, splits, groups, kernels, SE, act, stem, head).

    The full 1,000-sample run is experiments/sample_all.py; CI checks 150.
    """
    sp = load_space("all_open")
    assert all(d.is_open for d in sp.dimensions)
    for arch in sp.sample(150, seed=0):
        model = build_model(arch).eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, arch.input_size, arch.input_size))
        assert out.shape == (1, 10)
        assert profile(arch).params == sum(p.numel() for p in model.parameters())


def test_params_of_inverts_decode():
    for name in ("all_open", "spos"):
        sp = load_space(name)
        for arch in sp.sample(30, seed=1):
            assert sp.decode(sp.params_of(arch)) == arch


def test_optuna_define_by_run_asks_split_only_for_v2():
    sp = load_space("all_open")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        arch = sp.suggest(trial)
        for i, st in enumerate(arch.stages):
            assert (f"stages.{i}.split" in trial.params) == (st.unit == "v2")
        study.tell(trial, 0.0)
        assert sp.contains(arch)


def test_presets_belong_to_matching_spaces():
    sp = SearchSpace.from_yaml("""
input_size: 32
num_classes: 10
stem: {channels: 24, stride: 1, maxpool: false}
stages:
  - {channels: [48, 116], depth: 4}
  - {channels: [96, 232], depth: 8}
  - {channels: [192, 464], depth: 4}
head_channels: 1024
""")
    assert sp.contains(presets.get("shufflenet_v2_x1_0_cifar"))
    assert not sp.contains(presets.get("shufflenet_v2_x1_5_cifar"))


BAD_SPACES = [
    ("empty choices", "stages: [{channels: [], depth: 2}]", "empty list"),
    ("no stages", "stages: []", "stages"),
    ("impossible channel/group combination", "stages: [{channels: [48, 50], depth: 2, groups: [1, 4]}]",
     "impossible"),
    ("unknown key", "stages: [{channels: 48, depth: 2, widths: 3}]", "unknown key"),
    ("unknown unit", "stages: [{unit: [v2, v9], channels: 48, depth: 2}]", "v9"),
    ("bad kernel", "stages: [{channels: 48, depth: 2, kernel: [3, 9]}]", "kernel 9"),
    ("negative depth", "stages: [{channels: 48, depth: [-1, 2]}]", "depth -1"),
    ("repeated choice", "stages: [{channels: [48, 48], depth: 2}]", "repeated"),
    ("not a mapping", "- 1\n- 2", "expected a mapping"),
    ("v1 narrower than its input", "stem: {channels: 64}\nstages: [{unit: v1, channels: 48, depth: 2}]",
     "exceed"),
]


@pytest.mark.parametrize("desc,text,words", BAD_SPACES, ids=[b[0] for b in BAD_SPACES])
def test_bad_spaces_are_rejected(desc, text, words):
    with pytest.raises(SpaceError) as exc:
        SearchSpace.from_yaml(text + "\n")
    assert "\n" not in str(exc.value)
    assert words in str(exc.value)


def test_decode_rejects_values_outside_the_space(tiny_space):
    with pytest.raises(SpaceError, match="not a choice"):
        tiny_space.decode({"stages.0.channels": 17})
    with pytest.raises(SpaceError, match="unknown dimension"):
        tiny_space.decode({"stages.9.channels": 16})


PER_UNIT = """
input_size: 32
num_classes: 10
stem: {channels: 16, stride: 1, maxpool: false}
stages:
  - {unit: [v1, v2], channels: 48, depth: [1, 2], split: [0.25, 0.5]}
  - channels: 64
    depth: [1, 2, 3]
    units:
      - {split: 0.25, choices: [{kernel: 3}, {unit: xception}]}
      - [{kernel: 3}, {kernel: 5}, {kernel: 7}]
      - {se: true}
head_channels: 64
"""


def test_per_unit_size_counts_each_depth_once_by_brute_force():
    """size() equals the number of distinct architectures that decoding every combination gives."""
    sp = SearchSpace.from_yaml(PER_UNIT)
    open_dims = sp.open_dimensions
    assert [d.name for d in open_dims if ".units." in d.name] == ["stages.1.units.0", "stages.1.units.1"]
    archs = {sp.decode(dict(zip([d.name for d in open_dims], combo)))
             for combo in itertools.product(*(d.choices for d in open_dims))}
    # stage 0: (v1 | v2 x 2 splits) x 2 depths = 6; stage 1: 2 + 2*3 + 2*3*1 = 14
    assert sp.size() == len(archs) == 6 * 14
    assert all(sp.decode(sp.params_of(a)) == a for a in archs)


def test_per_unit_choices_decode_into_the_units():
    sp = SearchSpace.from_yaml(PER_UNIT)
    arch = sp.decode({"stages.1.depth": 3, "stages.1.units.0": "unit=xception", "stages.1.units.1": "kernel=7"})
    units = arch.stages[1].unit_list()
    assert [(u.unit, u.split, u.kernel, u.se) for u in units] == [
        ("xception", 0.25, 3, False), ("v2", 0.5, 7, False), ("v2", 0.5, 3, True)]
    out = build_model(arch).eval()(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 10)


def test_optuna_asks_a_unit_choice_only_when_the_stage_is_that_deep():
    sp = SearchSpace.from_yaml(PER_UNIT)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    depths = set()
    for _ in range(40):
        trial = study.ask()
        arch = sp.suggest(trial)
        depth = arch.stages[1].depth
        depths.add(depth)
        assert "stages.1.units.0" in trial.params
        assert ("stages.1.units.1" in trial.params) == (depth >= 2)
        study.tell(trial, 0.0)
        assert sp.contains(arch)
    assert depths == {1, 2, 3}


BAD_PER_UNIT = [
    ("entries and depth differ", "stages: [{channels: 48, depth: [2, 3], units: [{}, {}]}]",
     "units has 2 entries but the largest depth is 3"),
    ("field chosen per stage and per unit", "stages: [{channels: 48, depth: 1, kernel: [3, 5], units: [[{kernel: 7}]]}]",
     "kernel is chosen per unit"),
    ("unit type per unit with an open split",
     "stages: [{channels: 48, depth: 1, split: [0.25, 0.5], units: [[{}, {unit: xception}]]}]", "split is chosen per unit"),
    ("split for a v1 unit", "stages: [{unit: v1, channels: 48, depth: 1, units: [{split: 0.5}]}]",
     "stages[0].units[0]: split applies to v2 and xception units"),
    ("repeated alternatives", "stages: [{channels: 48, depth: 1, units: [[{kernel: 3}, {kernel: 3}]]}]", "repeated"),
    ("alternatives making one unit", "stages: [{channels: 48, depth: 1, units: [[{kernel: 3}, {}]]}]",
     "choices kernel=3 and default make the same unit"),
    ("mid_channels equal to the default", "stages: [{channels: 48, depth: 1, units: [[{}, {mid_channels: 24}]]}]",
     "choices default and mid_channels=24 make the same unit"),
    ("field fixed and in a choice", "stages: [{channels: 48, depth: 1, units: [{kernel: 3, choices: [{kernel: 5}]}]}]",
     "set both"),
    ("impossible per-unit groups", "stages: [{channels: 48, depth: 2, units: [{}, [{groups: 1}, {groups: 5}]]}]",
     "stages[0].units[1] (unit v2, channels 48, groups 5, split 0.5) is impossible"),
    ("unknown unit field", "stages: [{channels: 48, depth: 1, units: [[{kernal: 3}]]}]", "unknown key"),
    ("unknown unit type", "stages: [{channels: 48, depth: 1, units: [[{unit: v3}]]}]", "xception"),
]


@pytest.mark.parametrize("desc,text,words", BAD_PER_UNIT, ids=[b[0] for b in BAD_PER_UNIT])
def test_bad_per_unit_spaces_are_rejected(desc, text, words):
    with pytest.raises(SpaceError) as exc:
        SearchSpace.from_yaml(text + "\n")
    assert "\n" not in str(exc.value)
    assert words in str(exc.value)


def test_params_of_refuses_units_the_space_cannot_make():
    sp = SearchSpace.from_yaml(PER_UNIT)
    arch = sp.sample(seed=0)
    st = [s.model_dump(mode="json") for s in arch.stages]
    mixed = dict(st[0], unit="v2", split=0.5, depth=2, units=[{"kernel": 5}, {}])
    with pytest.raises(SpaceError, match="stages.0.kernel: the stage's units differ .* chooses kernel per stage"):
        sp.params_of(arch.replace(stages=[mixed, st[1]]))
    wide = dict(st[1], depth=1, units=[{"kernel": 5, "split": 0.25}])  # kernel 5 is not offered for unit 0
    with pytest.raises(SpaceError, match=r"stages.1.units.0: unit \(unit v2, split 0.25, .*kernel 5.*choices: "):
        sp.params_of(arch.replace(stages=[st[0], wide]))
