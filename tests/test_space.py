"""Search spaces: loading, validation of every combination, size, sampling, adapters, encoding."""

import numpy as np
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


def test_encode_decode_round_trip():
    sp = load_space("all_open")
    for arch in sp.sample(50, seed=1):
        vec = sp.encode(arch)
        assert vec.shape == (len(sp.dimensions),)
        assert np.all(vec < sp.vector_bounds())
        assert sp.decode_vector(vec) == arch


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


def test_ray_tune_space_has_every_open_dimension():
    from ray.tune.search.sample import Categorical

    sp = load_space("cifar")
    tune_space = sp.to_tune()
    assert set(tune_space) == {d.name for d in sp.open_dimensions}
    assert all(isinstance(v, Categorical) for v in tune_space.values())
    cfg = {k: v.sample() for k, v in tune_space.items()}
    assert sp.contains(sp.decode(cfg))


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
