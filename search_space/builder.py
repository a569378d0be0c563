"""``Architecture -> torch.nn.Module``.

For every architecture torchvision's ShuffleNetV2 can express (v2 units,
split 0.5, kernel 3, groups 1, no SE, ReLU, 3 stages) the module tree -- and
so ``state_dict()`` -- is exactly torchvision's: ``conv1``, ``maxpool``,
``stage2..4``, ``conv5``, ``fc``; its pretrained weights load with
``strict=True``.
"""

from __future__ import annotations

import torch
from torch import nn

from .architecture import Architecture
from .blocks import HeadBlock, StemBlock, UnitBlock, iter_blocks
from .modules import build_head, build_stem, build_unit


class ShuffleNet(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        stages: dict[str, list[nn.Module]] = {}
        for path, block in iter_blocks(arch):
            if isinstance(block, StemBlock):
                self.conv1 = build_stem(block)
                self.maxpool = nn.MaxPool2d(3, 2, 1) if block.maxpool else nn.Identity()
            elif isinstance(block, UnitBlock):
                stages.setdefault(path.split(".")[0], []).append(build_unit(block))
            elif isinstance(block, HeadBlock):
                self.conv5, self.fc = build_head(block)
        self.stage_names = list(stages)
        for name, units in stages.items():
            self.add_module(name, nn.Sequential(*units))
        # Keep the registration order torchvision uses, so state_dict() keys come out in its order.
        self._modules = {k: self._modules[k] for k in
                         ["conv1", "maxpool", *self.stage_names, "conv5", "fc"]}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.conv5(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x).mean((2, 3)))


def build_model(arch: Architecture) -> ShuffleNet:
    """Build the network an Architecture describes (freshly initialised)."""
    return ShuffleNet(arch)
