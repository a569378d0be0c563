"""Published networks as points of the space (torchvision ShuffleNetV2, ShuffleNet V1 1x, SPOS).

Each preset also has a CIFAR-size variant ``<name>_cifar``: 32x32 input, stem
stride 1, no max-pool, 10 classes. Published numbers are kept beside the
configs they describe.
"""

from __future__ import annotations

from .architecture import Architecture
from .errors import ArchitectureError

# torchvision: stages_out_channels (stem, 3 stages, conv5), repeats [4, 8, 4]
_V2 = {
    "x0_5": (24, 48, 96, 192, 1024),
    "x1_0": (24, 116, 232, 464, 1024),
    "x1_5": (24, 176, 352, 704, 1024),
    "x2_0": (24, 244, 488, 976, 2048),
}
# ShuffleNet V1 1x (paper Table 1): stage widths per group count
_V1 = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088),
       8: (384, 768, 1536)}
REPEATS = (4, 8, 4)

# Single Path One-Shot (Guo et al. 2020), megvii-model/SinglePathOneShot: the network its README
# publishes as the search result, one choice block per unit (src/Evaluation/template/network.py):
# 0, 1, 2 = ShuffleNet V2 unit with a 3x3, 5x5, 7x7 depthwise conv; 3 = the Xception-like unit.
# Same layers, widths, parameters (plus the classifier's bias, which SPOS leaves out) and multiply-adds;
# the channel shuffle is torchvision's (see search_space.modules.ShuffleXceptionUnit for what differs).
SPOS_CHOICES = (2, 1, 0, 1, 2, 0, 2, 0, 2, 0, 2, 3, 0, 0, 0, 0, 3, 2, 3, 3)
SPOS_BLOCKS = ({"unit": "v2", "kernel": 3}, {"unit": "v2", "kernel": 5}, {"unit": "v2", "kernel": 7},
               {"unit": "xception", "kernel": 3})
SPOS_STEM, SPOS_WIDTHS, SPOS_REPEATS, SPOS_HEAD = 16, (64, 160, 320, 640), (4, 4, 8, 4), 1024

#: Published facts: params (exact, torchvision) and multiply-adds in millions (papers), ImageNet top-1.
PUBLISHED = {
    "shufflenet_v2_x0_5": {"params": 1_366_792, "mflops": 41, "top1": 60.552},
    "shufflenet_v2_x1_0": {"params": 2_278_604, "mflops": 146, "top1": 69.362},
    "shufflenet_v2_x1_5": {"params": 3_503_624, "mflops": 299, "top1": 72.996},
    "shufflenet_v2_x2_0": {"params": 7_393_996, "mflops": 591, "top1": 76.230},
    "shufflenet_v1_g1": {"mflops": 143},
    "shufflenet_v1_g2": {"mflops": 140},
    "shufflenet_v1_g3": {"mflops": 137},
    "shufflenet_v1_g4": {"mflops": 133},
    "shufflenet_v1_g8": {"mflops": 137},
    # SPOS README: 323M FLOPs (multiply-adds), 3.5M params, top-1 error 25.6%
    "spos": {"mflops": 323, "mparams": 3.5, "top1": 74.4},
}


def _v2(name: str, widths) -> Architecture:
    stem, *stages, head = widths
    return Architecture(
        name=name, stem={"channels": stem},
        stages=[{"unit": "v2", "channels": c, "depth": d} for c, d in zip(stages, REPEATS)],
        head_channels=head,
    )


def _v1(name: str, groups: int, widths) -> Architecture:
    return Architecture(
        name=name, stem={"channels": 24},
        stages=[{"unit": "v1", "channels": c, "depth": d, "groups": groups}
                for c, d in zip(widths, REPEATS)],
        head_channels=None,
    )


def spos_stride2(in_channels: int, channels: int) -> dict:
    """SPOS's stride-2 unit layout: the projection branch keeps the input width and the main
    branch is half the stage width wide (``mid_channels``), so the main branch outputs the rest."""
    return {"split": in_channels / channels, "mid_channels": channels // 2}


def _spos(name: str, choices=SPOS_CHOICES) -> Architecture:
    stages, cin, i = [], SPOS_STEM, 0
    for c, d in zip(SPOS_WIDTHS, SPOS_REPEATS):
        units = [dict(SPOS_BLOCKS[k]) for k in choices[i:i + d]]
        units[0].update(spos_stride2(cin, c))
        stages.append({"channels": c, "depth": d, "units": units})
        cin, i = c, i + d
    return Architecture(name=name, stem={"channels": SPOS_STEM, "stride": 2, "maxpool": False},
                        stages=stages, head_channels=SPOS_HEAD)


def cifar(arch: Architecture) -> Architecture:
    """The CIFAR-size variant: 32x32, stem stride 1, no max-pool, 10 classes."""
    return arch.replace(
        name=f"{arch.name}_cifar", input_size=32, num_classes=10,
        stem=arch.stem.model_copy(update={"stride": 1, "maxpool": False}),
    )


def _all() -> dict[str, Architecture]:
    base = {f"shufflenet_v2_{k}": _v2(f"shufflenet_v2_{k}", w) for k, w in _V2.items()}
    base |= {f"shufflenet_v1_g{g}": _v1(f"shufflenet_v1_g{g}", g, w) for g, w in _V1.items()}
    base["spos"] = _spos("spos")
    return base | {f"{n}_cifar": cifar(a) for n, a in base.items()}


PRESETS: dict[str, Architecture] = _all()


def names() -> list[str]:
    return list(PRESETS)


def get(name: str) -> Architecture:
    try:
        return PRESETS[name]
    except KeyError:
        raise ArchitectureError(
            f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}"
        ) from None
