"""Blocks: what determines one block's module, cost and latency, and the rules for building it.

A block config is everything that determines a block's module, cost and
latency (type, stride, channels, split, groups, kernel, SE, activation, middle
width and input resolution), so the builder, the cost model and the latency
lookup table all key on the same objects. :func:`iter_blocks` unrolls an
Architecture into them.

This module sits below :mod:`search_space.architecture` (which imports it to
check that a description builds) and imports nothing of the package's own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator, Union

#: Unit types, and those with a channel split (identity branch + main branch, concat, shuffle).
UNIT_TYPES = ("v1", "v2", "xception")
SPLIT_UNITS = ("v2", "xception")


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Spatial size after a conv/pool with ``padding = kernel // 2``."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def se_channels(channels: int) -> int:
    """Squeeze-excitation bottleneck width (reduction 4, as in ShuffleNetV2+)."""
    return max(1, channels // 4)


@dataclass(frozen=True)
class StemBlock:
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    maxpool: bool
    resolution: int  # input height = width

    kind = "stem"

    @property
    def conv_resolution(self) -> int:
        return conv_out(self.resolution, self.kernel, self.stride)

    @property
    def out_resolution(self) -> int:
        r = self.conv_resolution
        return conv_out(r, 3, 2) if self.maxpool else r

    def key(self) -> str:
        return (f"stem|in{self.in_channels}|out{self.out_channels}|k{self.kernel}|s{self.stride}"
                f"|mp{int(self.maxpool)}|r{self.resolution}")


@dataclass(frozen=True)
class UnitBlock:
    unit: str  # "v1" | "v2" | "xception"
    stride: int
    in_channels: int
    out_channels: int
    split: float | None
    groups: int
    kernel: int
    se: bool
    act: str
    resolution: int
    first_ungrouped: bool = False  # v1: the paper leaves the first 1x1 after the stem ungrouped
    mid: int | None = None  # v2 / xception: width inside the main branch; None = the branch's output width

    kind = "unit"

    @property
    def out_resolution(self) -> int:
        return conv_out(self.resolution, self.kernel, self.stride)

    # channel bookkeeping of the split units (v2, xception) ----------------------
    @property
    def identity_channels(self) -> int:
        """v2 / xception: channels on the identity (stride 1) or projection (stride 2) branch."""
        assert self.split is not None
        return int(round(self.out_channels * self.split))

    @property
    def branch_channels(self) -> int:
        """Output channels of the main branch (the one with the 1x1 convs)."""
        if self.unit in SPLIT_UNITS:
            return self.out_channels - self.identity_channels
        return self.out_channels - self.in_channels if self.stride == 2 else self.out_channels

    @property
    def branch_in_channels(self) -> int:
        """Input channels of the main branch."""
        if self.unit in SPLIT_UNITS and self.stride == 1:
            return self.in_channels - self.identity_channels
        return self.in_channels

    @property
    def mid_channels(self) -> int:
        """Width of the depthwise conv(s) between the main branch's 1x1 convs."""
        if self.unit == "v1":
            return self.out_channels // 4
        return self.branch_channels if self.mid is None else self.mid

    @property
    def first_groups(self) -> int:
        return 1 if self.first_ungrouped else self.groups

    def key(self) -> str:
        split = "-" if self.split is None else f"{self.split:g}"
        return (f"{self.unit}|s{self.stride}|in{self.in_channels}|out{self.out_channels}|sp{split}"
                f"|g{self.groups}|k{self.kernel}|se{int(self.se)}|{self.act}|r{self.resolution}"
                + ("|fu" if self.first_ungrouped else "") + ("" if self.mid is None else f"|m{self.mid}"))

    def problem(self) -> str | None:
        """Why this unit cannot be built, or None."""
        c, g = self.out_channels, self.groups
        if self.unit in SPLIT_UNITS:
            if c % 2:
                return f"channels {c} is odd; a {self.unit} unit shuffles channels in pairs, use an even number"
            ident, branch = self.identity_channels, self.branch_channels
            if ident < 1 or branch < 1:
                return (f"split {self.split:g} of {c} channels leaves an empty branch "
                        f"({ident} identity / {branch} branch); use a split between "
                        f"{1 / c:.3f} and {1 - 1 / c:.3f}")
            widths = [("branch input", self.branch_in_channels), ("branch", branch)]
            if self.mid is not None:
                widths.append(("mid_channels", self.mid))
            for what, n in widths:
                if n % g:
                    return (f"groups {g} does not divide the {what} width {n} "
                            f"(channels {c}, split {self.split:g}); allowed groups: {_divisors(n)}")
            return None
        # v1
        if c % 4:
            return f"channels {c} of a v1 unit must be a multiple of 4 (bottleneck is channels/4)"
        mid, out = self.mid_channels, self.branch_channels
        if out < 1:
            return (f"channels {c} must exceed the input width {self.in_channels}: the v1 stride-2 "
                    f"unit concatenates its input")
        for what, n in (("bottleneck", mid), ("branch output", out)) + (
            () if self.first_ungrouped else (("input", self.in_channels),)
        ):
            if n % g:
                return f"groups {g} does not divide the {what} width {n}; allowed groups: {_divisors(n)}"
        return None


@dataclass(frozen=True)
class HeadBlock:
    in_channels: int
    head_channels: int | None  # final 1x1 conv, None = straight to the classifier
    num_classes: int
    resolution: int

    kind = "head"

    def key(self) -> str:
        return f"head|in{self.in_channels}|c{self.head_channels or 0}|n{self.num_classes}|r{self.resolution}"


Block = Union[StemBlock, UnitBlock, HeadBlock]


def _divisors(n: int) -> str:
    ds = [d for d in range(1, n + 1) if n % d == 0]
    return ", ".join(map(str, ds[:12])) + (", ..." if len(ds) > 12 else "")


def iter_blocks(arch) -> Iterator[tuple[str, Block]]:
    """Yield ``(module_path, block)`` of an Architecture in forward order; paths match the builder's modules.

    Reads only the description's plain fields and ``Stage.unit_list()`` (so this module needs no
    import of :mod:`search_space.architecture`, which imports it).
    """
    stem = StemBlock(arch.in_channels, arch.stem.channels, arch.stem.kernel, arch.stem.stride,
                     arch.stem.maxpool, arch.input_size)
    yield "conv1", stem
    res, cin = stem.out_resolution, stem.out_channels
    for si, st in enumerate(arch.stages):
        for ui, u in enumerate(st.unit_list()):
            unit = UnitBlock(
                unit=u.unit, stride=2 if ui == 0 else 1, in_channels=cin, out_channels=st.channels,
                split=u.split, groups=u.groups, kernel=u.kernel, se=u.se, act=u.act, resolution=res,
                first_ungrouped=(u.unit == "v1" and si == 0 and ui == 0), mid=u.mid_channels,
            )
            yield f"stage{si + 2}.{ui}", unit
            res, cin = unit.out_resolution, st.channels
    yield "head", HeadBlock(cin, arch.head_channels, arch.num_classes, res)


def blocks(arch) -> list[Block]:
    return [b for _, b in iter_blocks(arch)]


def check_buildable(arch) -> None:
    """Raise a one-line ValueError naming the first field that makes ``arch`` unbuildable."""
    for path, b in iter_blocks(arch):
        if isinstance(b, StemBlock) and b.out_resolution < 1:
            raise ValueError(f"input_size {arch.input_size} is too small for the stem")
        if isinstance(b, UnitBlock):
            stage, unit = path.split(".")
            where = f"stages[{int(stage[5:]) - 2}]"
            if b.stride == 2 and b.resolution < 2:
                raise ValueError(
                    f"{where}: input_size {arch.input_size} is already {b.resolution}x{b.resolution} "
                    f"before this stride-2 stage; raise input_size or remove a stage")
            why = b.problem()
            if why:
                per_unit = arch.stages[int(stage[5:]) - 2].units is not None
                raise ValueError(f"{where}{f'.units[{unit}]' if per_unit else ''}: {why}")


def block_dict(b: Block) -> dict:
    d = asdict(b)
    d["kind"] = b.kind
    return d
