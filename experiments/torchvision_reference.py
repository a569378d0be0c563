"""Record torchvision's ShuffleNetV2 state_dict layout and outputs, for tests/test_torchvision_compat.py.

torchvision from PyPI does not import beside the CPU torch build these machines
use, so the reference is recorded once in a separate venv that has it:

    python -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/tv/bin/python experiments/torchvision_reference.py > tests/data/torchvision_shufflenetv2.json

(The current file was recorded with torchvision 0.29.1's model code on torch
2.13.0+cpu: its package imported with ``torchvision._meta_registrations``
stubbed out, since only its compiled detection ops need the matching torch.)

For each variant it stores every state_dict key with its shape, and the
logits on a fixed input after filling the weights deterministically (see
``fill_deterministic``; the test rebuilds the same weights from the recorded
key list and loads them into our model with strict=True). The fill keeps the
signal alive through the ~50 layers, so the logits depend on every layer.
"""

from __future__ import annotations

import json
import math

import torch


def fill_deterministic(model: torch.nn.Module) -> None:
    """Seeded weights in state_dict order (float tensors only): convolution and linear weights
    randn x sqrt(2 / fan_in), BatchNorm near identity (weight 1 + 0.1 randn, bias and running mean
    0.1 randn, running variance 1 + 0.1 |randn|), so that the input reaches the logits.
    (A flat 0.1 randn fill, used before, let the signal die out: the logits then depended on the
    last BatchNorm and the classifier only.)"""
    g = torch.Generator().manual_seed(0)
    sd = model.state_dict()
    for key, t in sd.items():
        if not t.is_floating_point():
            continue
        v = torch.randn(t.shape, generator=g)
        if t.dim() > 1:
            v = v * math.sqrt(2.0 / math.prod(t.shape[1:]))
        elif key.endswith("running_var"):
            v = 1 + 0.1 * v.abs()
        elif key.endswith("weight"):
            v = 1 + 0.1 * v
        else:
            v = 0.1 * v
        t.copy_(v)
    model.load_state_dict(sd, strict=True)


def fixed_input() -> torch.Tensor:
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def main() -> None:
    import torchvision

    out = {"torch": torch.__version__, "torchvision": torchvision.__version__, "variants": {}}
    for name in ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"]:
        model = getattr(torchvision.models, name)(weights=None).eval()
        fill_deterministic(model)
        with torch.no_grad():
            logits = model(fixed_input())[0]
        out["variants"][name] = {
            "state_dict": [[k, list(v.shape)] for k, v in model.state_dict().items()],
            "params": sum(p.numel() for p in model.parameters()),
            "logits_head": [round(float(x), 6) for x in logits[:16]],
            "logits_sum": float(logits.sum()),
            "argmax": int(logits.argmax()),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
