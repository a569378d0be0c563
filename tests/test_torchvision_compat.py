"""Our ShuffleNetV2 presets are torchvision's networks: same state_dict, same outputs.

The reference (tests/data/torchvision_shufflenetv2.json) was recorded from
torchvision 0.29.1 by experiments/torchvision_reference.py, because torchvision
does not import beside the CPU torch build used here.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

from search_space import build_model, presets

ROOT = Path(__file__).resolve().parents[1]
REF = json.loads((Path(__file__).parent / "data" / "torchvision_shufflenetv2.json").read_text())
sys.path.insert(0, str(ROOT / "experiments"))
from torchvision_reference import fill_deterministic, fixed_input  # noqa: E402


@pytest.mark.parametrize("name", list(REF["variants"]))
def test_state_dict_keys_and_shapes_equal_torchvision(name):
    ours = [[k, list(v.shape)] for k, v in build_model(presets.get(name)).state_dict().items()]
    assert ours == REF["variants"][name]["state_dict"]


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0"])
def test_torchvision_weights_load_strictly_and_give_the_same_outputs(name):
    model = build_model(presets.get(name)).eval()
    # The same deterministic fill, applied in state_dict order, is what loading
    # torchvision's weights with strict=True amounts to once keys/shapes/order match.
    fill_deterministic(model)
    with torch.no_grad():
        logits = model(fixed_input())[0]
    ref = REF["variants"][name]
    assert int(logits.argmax()) == ref["argmax"]
    assert torch.allclose(logits[:16], torch.tensor(ref["logits_head"]), rtol=1e-4, atol=1e-4)
    assert abs(float(logits.sum()) - ref["logits_sum"]) <= 1e-3 * max(1.0, abs(ref["logits_sum"]))
