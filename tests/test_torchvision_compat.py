"""Our ShuffleNetV2 presets are torchvision's networks: same state_dict, same outputs.

The reference (tests/data/torchvision_shufflenetv2.json) was recorded from
torchvision 0.29.1 by experiments/torchvision_reference.py, because torchvision
does not import beside the CPU torch build used here.
"""

import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from search_space import build_model, presets

REF = json.loads((Path(__file__).parent / "data" / "torchvision_shufflenetv2.json").read_text())


def torchvision_state_dict(name: str) -> OrderedDict:
    """The weights torchvision's network held when the reference logits were recorded, rebuilt from
    torchvision's own key list and shapes, independent of our model's key order: the seeded fill of
    experiments/torchvision_reference.py, in torchvision's state_dict order (weights randn x
    sqrt(2 / fan_in), BatchNorm near identity)."""
    g = torch.Generator().manual_seed(0)
    sd = OrderedDict()
    for key, shape in REF["variants"][name]["state_dict"]:
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(0)
            continue
        v = torch.randn(shape, generator=g)
        if len(shape) > 1:
            v = v * math.sqrt(2.0 / math.prod(shape[1:]))
        elif key.endswith("running_var"):
            v = 1 + 0.1 * v.abs()
        elif key.endswith("weight"):
            v = 1 + 0.1 * v
        else:  # bias, running_mean
            v = 0.1 * v
        sd[key] = v
    return sd


def fixed_input() -> torch.Tensor:
    """The input the reference logits were recorded on (experiments/torchvision_reference.py)."""
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", list(REF["variants"]))
def test_state_dict_keys_and_shapes_equal_torchvision(name):
    ours = [[k, list(v.shape)] for k, v in build_model(presets.get(name)).state_dict().items()]
    assert ours == REF["variants"][name]["state_dict"]


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0"])
def test_torchvision_weights_load_strictly_and_give_the_same_outputs(name):
    model = build_model(presets.get(name)).eval()
    weights = torchvision_state_dict(name)
    model.load_state_dict(weights, strict=True)  # raises on any missing, unexpected or mis-shaped key
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    with torch.no_grad():
        logits = model(fixed_input())[0]
    ref = REF["variants"][name]
    assert int(logits.argmax()) == ref["argmax"]
    assert torch.allclose(logits[:16], torch.tensor(ref["logits_head"]), rtol=1e-4, atol=1e-4)
    assert abs(float(logits.sum()) - ref["logits_sum"]) <= 1e-3 * max(1.0, abs(ref["logits_sum"]))
