"""Analytic cost model: params, multiply-adds, memory access cost, peak activations.

Computed from the description alone, block by block, without building the
network. Conventions:

* **multiply-adds** count convolutions and the classifier (the convention of
  the ShuffleNet papers and torchvision's "GFLOPS"); BN, activations, pooling
  and shuffles are free. ``torch.utils.flop_counter`` reports exactly 2x.
* **params** are exact (conv weights, BN affine, SE biases, classifier).
* **MAC** (memory access cost, ShuffleNet V2 paper, Sec. 2): for a 1x1 conv
  ``hw(c1 + c2) + c1 c2 / g``; extended to every layer as
  "elements read + elements written + weights", with BN and activations folded
  into the preceding conv (as deployed), split a free view, concat+shuffle one
  copy (read + write), element-wise add 2 reads + 1 write.
* **peak activation memory**: the largest sum of live activations (an op's
  input and output plus tensors held for a later concat/add), float32 bytes,
  batch 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .architecture import Architecture
from .blocks import SPLIT_UNITS, Block, HeadBlock, StemBlock, conv_out, iter_blocks, se_channels


@dataclass(frozen=True)
class Op:
    name: str
    macs: int = 0
    params: int = 0
    mac: int = 0
    live: int = 0  # activation elements alive while this op runs


def _conv(name, cin, cout, k, stride, groups, res, *, held=0, input_is_held=False, bn=True, bias=False):
    rout = conv_out(res, k, stride)
    w = cout * (cin // groups) * k * k
    params = w + (2 * cout if bn else 0) + (cout if bias else 0)
    inp, out = cin * res * res, cout * rout * rout
    return Op(name, macs=w * rout * rout, params=params, mac=inp + out + w,
              live=(0 if input_is_held else inp) + out + held), rout


def _move(name, inp, out, held=0, reads=1):
    """A parameter-free op that reads ``reads`` tensors of ``inp`` elements and writes ``out``."""
    return Op(name, mac=reads * inp + out, live=reads * inp + out + held)


def _se(prefix, c, res, held):
    m = se_channels(c)
    hw = res * res
    return [
        _move(f"{prefix}.se.pool", c * hw, c, held + c * hw),
        Op(f"{prefix}.se.fc", macs=2 * c * m, params=2 * c * m + c + m, mac=2 * (c + m) + 2 * c * m,
           live=held + c * hw + c + m),
        Op(f"{prefix}.se.scale", mac=2 * c * hw + c, live=held + 2 * c * hw + c),
    ]


def block_ops(block: Block, prefix: str = "") -> list[Op]:
    """The layers of one block with their costs, in forward order."""
    ops: list[Op] = []
    if isinstance(block, StemBlock):
        op, r = _conv(f"{prefix}.conv", block.in_channels, block.out_channels, block.kernel,
                      block.stride, 1, block.resolution)
        ops.append(op)
        if block.maxpool:
            c = block.out_channels
            ops.append(_move(f"{prefix}.maxpool", c * r * r, c * block.out_resolution ** 2))
        return ops
    if isinstance(block, HeadBlock):
        c, r = block.in_channels, block.resolution
        if block.head_channels:
            op, r = _conv(f"{prefix}.conv5", c, block.head_channels, 1, 1, 1, r)
            ops.append(op)
            c = block.head_channels
        ops.append(_move(f"{prefix}.pool", c * r * r, c))
        w = c * block.num_classes
        ops.append(Op(f"{prefix}.fc", macs=w, params=w + block.num_classes,
                      mac=c + block.num_classes + w, live=c + block.num_classes))
        return ops

    b = block
    r, rout, s = b.resolution, b.out_resolution, b.stride
    x = b.in_channels * r * r  # the unit's input, alive until the unit's last op
    g, mid, out = b.groups, b.mid_channels, b.branch_channels
    held = x
    if b.unit in SPLIT_UNITS and s == 2:
        op1, _ = _conv(f"{prefix}.branch1.dw", b.in_channels, b.in_channels, b.kernel, 2,
                       b.in_channels, r, held=x, input_is_held=True)
        b1 = b.identity_channels * rout * rout
        op2, _ = _conv(f"{prefix}.branch1.pw", b.in_channels, b.identity_channels, 1, 1, 1, rout,
                       held=x)
        ops += [op1, op2]
        held = x + b1
    if b.unit == "xception":  # (depthwise, 1x1) x 3, the first depthwise on the branch input with the stride
        cin = b.branch_in_channels
        for i, (c1, c2) in enumerate(((cin, mid), (mid, mid), (mid, out))):
            op, _ = _conv(f"{prefix}.branch2.dw{i + 1}", c1, c1, b.kernel, s if i == 0 else 1, c1,
                          r if i == 0 else rout, held=held, input_is_held=(i == 0))
            ops.append(op)
            op, _ = _conv(f"{prefix}.branch2.pw{i + 1}", c1, c2, 1, 1, g, rout, held=held)
            ops.append(op)
            if g > 1 and i < 2:
                ops.append(_move(f"{prefix}.branch2.shuffle{i + 1}", c2 * rout * rout, c2 * rout * rout, held))
    else:
        first_groups = b.first_groups if b.unit == "v1" else g
        op, _ = _conv(f"{prefix}.branch2.pw1", b.branch_in_channels, mid, 1, 1, first_groups, r,
                      held=held, input_is_held=True)
        ops.append(op)
        if g > 1:
            ops.append(_move(f"{prefix}.branch2.shuffle", mid * r * r, mid * r * r, held))
        op, _ = _conv(f"{prefix}.branch2.dw", mid, mid, b.kernel, s, mid, r, held=held)
        ops.append(op)
        op, _ = _conv(f"{prefix}.branch2.pw2", mid, out, 1, 1, g, rout, held=held)
        ops.append(op)
    if b.se:
        ops += _se(f"{prefix}.branch2", out, rout, held)
    y = b.out_channels * rout * rout
    if b.unit in SPLIT_UNITS:  # concat + channel shuffle = one copy of the output
        ops.append(_move(f"{prefix}.concat_shuffle", y, y, x if s == 1 else 0))
    elif s == 1:
        ops.append(_move(f"{prefix}.add", y, y, reads=2))
    else:
        ops.append(_move(f"{prefix}.shortcut_pool", x, x // 4, out * rout * rout))
        ops.append(_move(f"{prefix}.concat", y, y))
    return ops


@dataclass(frozen=True)
class Profile:
    """Cost of a whole network, and of each block (``blocks``: path -> totals)."""

    params: int
    macs: int
    mac: int
    peak_activation_bytes: int
    input_size: int
    blocks: dict = field(default_factory=dict, compare=False)

    @property
    def mflops(self) -> float:
        return self.macs / 1e6

    def summary(self) -> dict:
        return {"params": self.params, "macs": self.macs, "mflops": round(self.mflops, 3),
                "mac": self.mac, "peak_activation_bytes": self.peak_activation_bytes,
                "input_size": self.input_size}


def profile(arch: Architecture, input_size: int | None = None) -> Profile:
    """Cost model of ``arch`` (optionally at another input resolution)."""
    if input_size is not None and input_size != arch.input_size:
        arch = arch.replace(input_size=input_size)
    per_block, totals, peak = {}, [0, 0, 0], 0
    for path, block in iter_blocks(arch):
        ops = block_ops(block, path)
        p, m, a = sum(o.params for o in ops), sum(o.macs for o in ops), sum(o.mac for o in ops)
        per_block[path] = {"key": block.key(), "params": p, "macs": m, "mac": a}
        totals = [totals[0] + p, totals[1] + m, totals[2] + a]
        peak = max([peak] + [o.live for o in ops])
    return Profile(params=totals[0], macs=totals[1], mac=totals[2],
                   peak_activation_bytes=4 * peak, input_size=arch.input_size, blocks=per_block)
