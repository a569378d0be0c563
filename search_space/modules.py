"""The torch modules of the design space: channel shuffle, SE, the v1, v2 and xception units.

Module and parameter names follow torchvision's ``shufflenetv2.py`` (``branch1``
/ ``branch2`` Sequentials, same indices) so that any torchvision-expressible
unit has exactly torchvision's ``state_dict`` keys; extra layers (a shuffle
between grouped 1x1s, squeeze-excitation) are only inserted when the unit
uses them.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import HeadBlock, StemBlock, UnitBlock, se_channels


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channels across ``groups`` (ShuffleNet's one trick)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class SqueezeExcite(nn.Module):
    """Squeeze-excitation with reduction 4 and a hard sigmoid gate (ShuffleNetV2+)."""

    def __init__(self, channels: int):
        super().__init__()
        mid = se_channels(channels)
        self.reduce = nn.Conv2d(channels, mid, 1)
        self.expand = nn.Conv2d(mid, channels, 1)
        self.act = nn.ReLU(inplace=True)
        self.gate = nn.Hardsigmoid(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


def activation(name: str) -> nn.Module:
    return nn.Hardswish(inplace=True) if name == "hswish" else nn.ReLU(inplace=True)


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


def _projection(cfg: UnitBlock) -> nn.Sequential:
    """The stride-2 split unit's second branch: depthwise kxk/2, 1x1 to the identity width."""
    return nn.Sequential(
        *conv_bn(cfg.in_channels, cfg.in_channels, cfg.kernel, 2, groups=cfg.in_channels),
        *conv_bn(cfg.in_channels, cfg.identity_channels, 1),
        activation(cfg.act),
    )


class _SplitUnit(nn.Module):
    """Channel split (stride 1) or projection branch (stride 2), main branch, concat, shuffle.

    The projection branch (``branch1``) is registered here, before a subclass adds its main branch
    (``branch2``): torchvision's state_dict order."""

    def __init__(self, cfg: UnitBlock):
        super().__init__()
        self.stride, self.identity = cfg.stride, cfg.identity_channels
        if cfg.stride == 2:
            self.branch1 = _projection(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            out = torch.cat((x[:, : self.identity], self.branch2(x[:, self.identity:])), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return channel_shuffle(out, 2)


class ShuffleV2Unit(_SplitUnit):
    """ShuffleNet V2 unit, generalised (split ratio, pointwise groups, kernel, SE, h-swish, middle width)."""

    def __init__(self, cfg: UnitBlock):
        super().__init__(cfg)
        k, g, act = cfg.kernel, cfg.groups, cfg.act
        cin, mid, out = cfg.branch_in_channels, cfg.mid_channels, cfg.branch_channels
        layers: list[nn.Module] = [*conv_bn(cin, mid, 1, groups=g), activation(act)]
        if g > 1:
            layers.append(ChannelShuffle(g))
        layers += [*conv_bn(mid, mid, k, cfg.stride, groups=mid), *conv_bn(mid, out, 1, groups=g),
                   activation(act)]
        if cfg.se:
            layers.append(SqueezeExcite(out))
        self.branch2 = nn.Sequential(*layers)


class ShuffleXceptionUnit(_SplitUnit):
    """Single Path One-Shot's Xception-like choice block (``Shuffle_Xception``, Guo et al. 2020).

    The channel split, stride-2 projection branch, concat and shuffle of a v2 unit, with a
    main branch of three depthwise kxk + 1x1 pairs (SPOS: k = 3): dw/stride, BN, 1x1, BN,
    act; dw, BN, 1x1, BN, act; dw, BN, 1x1, BN, act -- the first depthwise conv sees the
    branch input and carries the stride, the last 1x1 goes to the branch's output width.
    With pointwise groups a channel shuffle follows each of the first two 1x1 convs.
    Loaded with SPOS's weights, one unit gives SPOS's output up to the order of its channels.
    Like the v2 unit it shuffles after the concat (torchvision's order); SPOS instead splits
    the next unit's input into even and odd channels. Where both branches are equally wide
    that is the same network up to a channel permutation; after a stride-2 unit whose
    projection branch is narrower (SPOS's first two stages: 16 of 64, 64 of 160 channels)
    all projected channels reach the next unit's identity branch here, half of them its
    main branch in SPOS (same widths, parameters and multiply-adds).
    """

    def __init__(self, cfg: UnitBlock):
        super().__init__(cfg)
        k, g, act = cfg.kernel, cfg.groups, cfg.act
        cin, mid, out = cfg.branch_in_channels, cfg.mid_channels, cfg.branch_channels
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(((cin, mid), (mid, mid), (mid, out))):
            layers += [*conv_bn(a, a, k, cfg.stride if i == 0 else 1, groups=a), *conv_bn(a, b, 1, groups=g),
                       activation(act)]
            if g > 1 and i < 2:
                layers.append(ChannelShuffle(g))
        if cfg.se:
            layers.append(SqueezeExcite(out))
        self.branch2 = nn.Sequential(*layers)


class ShuffleV1Unit(nn.Module):
    """ShuffleNet V1 unit: group 1x1, shuffle, depthwise, group 1x1; add or concat a pooled shortcut."""

    def __init__(self, cfg: UnitBlock):
        super().__init__()
        self.stride = cfg.stride
        k, g, mid, out = cfg.kernel, cfg.groups, cfg.mid_channels, cfg.branch_channels
        layers: list[nn.Module] = [*conv_bn(cfg.in_channels, mid, 1, groups=cfg.first_groups),
                                   activation(cfg.act)]
        if g > 1:
            layers.append(ChannelShuffle(g))
        layers += [*conv_bn(mid, mid, k, cfg.stride, groups=mid), *conv_bn(mid, out, 1, groups=g)]
        if cfg.se:
            layers.append(SqueezeExcite(out))
        self.branch2 = nn.Sequential(*layers)
        if cfg.stride == 2:
            self.branch1 = nn.AvgPool2d(3, 2, 1)
        self.act = activation(cfg.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return self.act(x + self.branch2(x))
        return torch.cat((self.branch1(x), self.act(self.branch2(x))), 1)


UNIT_MODULES = {"v1": ShuffleV1Unit, "v2": ShuffleV2Unit, "xception": ShuffleXceptionUnit}


def build_unit(cfg: UnitBlock) -> nn.Module:
    return UNIT_MODULES[cfg.unit](cfg)


def build_stem(cfg: StemBlock) -> nn.Sequential:
    return nn.Sequential(*conv_bn(cfg.in_channels, cfg.out_channels, cfg.kernel, cfg.stride),
                         nn.ReLU(inplace=True))


def build_head(cfg: HeadBlock) -> tuple[nn.Module, nn.Linear]:
    """Optional final 1x1 conv (torchvision's ``conv5``) and the classifier after global pooling."""
    c = cfg.in_channels
    conv5: nn.Module = nn.Identity()
    if cfg.head_channels:
        conv5 = nn.Sequential(*conv_bn(c, cfg.head_channels, 1), nn.ReLU(inplace=True))
        c = cfg.head_channels
    return conv5, nn.Linear(c, cfg.num_classes)
