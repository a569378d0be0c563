"""One network of the ShuffleNet design space, as a plain validated description.

An :class:`Architecture` holds no tensors and no code: it is what a search
samples, what a lookup table is keyed by and what a user saves as YAML. The
builder (:mod:`search_space.builder`) turns it into a ``torch.nn.Module`` and
the cost model (:mod:`search_space.cost`) computes its FLOPs from it alone.

Units follow the papers:

* ``v1`` -- ShuffleNet (Zhang et al., 2018): 1x1 group conv, channel shuffle,
  depthwise kxk, 1x1 group conv, residual add; the stride-2 unit concatenates
  a 3x3 average-pooled shortcut. Bottleneck width is a quarter of the output.
* ``v2`` -- ShuffleNet V2 (Ma et al., 2018): channel split, branch of
  1x1 / depthwise kxk / 1x1, concat, channel shuffle; the stride-2 unit has no
  split and a depthwise + 1x1 second branch. Generalised with ``split`` (share
  of channels on the identity branch), pointwise ``groups``, ``kernel``,
  squeeze-excitation and h-swish (ShuffleNetV2+).
* ``xception`` -- the Xception-like choice block of Single Path One-Shot (Guo
  et al., 2020): a v2 unit whose main branch is three depthwise kxk + 1x1
  pairs (SPOS: k = 3), the first depthwise conv carrying the stride.

Every stage starts with one stride-2 unit followed by ``depth - 1`` stride-1
units, as in both papers. A stage's fields apply to all its units; ``units``
(one entry per unit) overrides any of ``unit, split, groups, kernel, se, act,
mid_channels`` for single units, which is how SPOS's space (every unit its own
choice block) is written. ``mid_channels`` sets the width inside a v2 /
xception unit's main branch (default: the branch's output width, ShuffleNet
V2's layout; SPOS uses half the stage width in its stride-2 units).

A description is stored in one normal form, so that two descriptions of one
network compare (and hash) equal: a field all units share is stored on the
stage, a field they do not share takes the stage value most units have (the
first such on a tie), and ``units`` lists only what differs from it (and is
dropped when nothing does). ``units`` and ``mid_channels`` are left out of
the serialised form while unset, so descriptions without them read and write
exactly as before.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

from pydantic import Field, ValidationError, model_serializer, model_validator

from .blocks import SPLIT_UNITS, check_buildable
from .errors import ArchitectureError
from .io import atomic_write_text, dump_yaml, load_yaml, parse_yaml
from .validation import Frozen, one_line

UnitType = Literal["v1", "v2", "xception"]
Activation = Literal["relu", "hswish"]
Kernel = Literal[3, 5, 7]

ACTIVATIONS = ("relu", "hswish")
KERNELS = (3, 5, 7)
#: The fields of a stage that a single unit may override (``Stage.units``).
UNIT_FIELDS = ("unit", "split", "groups", "kernel", "se", "act", "mid_channels")


class Stem(Frozen):
    """First conv (kxk, stride) + BN + ReLU, then an optional 3x3/2 max-pool."""

    channels: int = Field(24, ge=1, le=4096)
    kernel: Kernel = 3
    stride: Literal[1, 2] = 2
    maxpool: bool = True


class UnitOverride(Frozen):
    """One entry of ``Stage.units``: the fields in which that unit differs from its stage."""

    unit: Optional[UnitType] = None
    split: Optional[float] = Field(None, gt=0.0, lt=1.0)
    groups: Optional[int] = Field(None, ge=1, le=64)
    kernel: Optional[Kernel] = None
    se: Optional[bool] = None
    act: Optional[Activation] = None
    mid_channels: Optional[int] = Field(None, ge=1, le=8192)

    @model_serializer(mode="wrap")
    def _only_set_fields(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}


class Unit(Frozen):
    """One unit with every field resolved (``split`` / ``mid_channels`` are None where they do not apply)."""

    unit: UnitType
    split: Optional[float]
    groups: int
    kernel: Kernel
    se: bool
    act: Activation
    mid_channels: Optional[int]


def resolve_unit(stage: Mapping[str, Any], override: Mapping[str, Any], channels: int) -> Unit:
    """The unit that a stage's fields (``UNIT_FIELDS``) and one unit's ``override`` describe.

    A v2 / xception unit takes the override's split (else the stage's, else 0.5) and
    mid_channels (else the stage's; None when it equals the branch width, the default, so that
    one network has one description); a v1 unit has neither and refuses them in its override.
    Raises a one-line ValueError.
    """
    o = {k: v for k, v in override.items() if v is not None}
    unit = o.get("unit", stage["unit"])
    if unit in SPLIT_UNITS:
        split = o.get("split", stage.get("split") if stage.get("split") is not None else 0.5)
        mid = o.get("mid_channels", stage.get("mid_channels"))
        if mid == channels - int(round(channels * split)):
            mid = None
    else:
        for f in ("split", "mid_channels"):
            if f in o:
                raise ValueError(f"{f} applies to {' and '.join(SPLIT_UNITS)} units; remove it from this {unit} unit")
        split = mid = None
    return Unit(unit=unit, split=split, mid_channels=mid,
                **{f: o.get(f, stage[f]) for f in ("groups", "kernel", "se", "act")})


def _most_common(values: list) -> Any:
    counts = Counter(map(repr, values))
    return max(values, key=lambda v: counts[repr(v)])  # max keeps the first of equal counts


class Stage(Frozen):
    """``depth`` units at one width, the first with stride 2; ``units`` overrides fields per unit."""

    unit: UnitType = "v2"
    channels: int = Field(ge=2, le=8192)
    depth: int = Field(ge=1, le=64)
    split: Optional[float] = Field(None, gt=0.0, lt=1.0)
    groups: int = Field(1, ge=1, le=64)
    kernel: Kernel = 3
    se: bool = False
    act: Activation = "relu"
    mid_channels: Optional[int] = Field(None, ge=1, le=8192)
    units: Optional[tuple[UnitOverride, ...]] = Field(None, min_length=1, max_length=64)

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data):
        if isinstance(data, dict):
            if data.get("unit", "v2") in SPLIT_UNITS and data.get("split") is None:
                data = {**data, "split": 0.5}
            if isinstance(data.get("units"), (list, tuple)) and "depth" not in data:
                data = {**data, "depth": len(data["units"])}
        return data

    @model_validator(mode="after")
    def _check_units(self):
        for f in ("split", "mid_channels"):
            if self.unit not in SPLIT_UNITS and getattr(self, f) is not None:
                raise ValueError(f"{f} applies to {' and '.join(SPLIT_UNITS)} units only; "
                                 f"remove it from this {self.unit} stage")
        if self.units is not None and len(self.units) != self.depth:
            raise ValueError(f"units has {len(self.units)} entries but depth is {self.depth}; "
                             f"give one entry per unit (depth may be left out)")
        for i, o in enumerate(self.units or ()):
            try:
                resolve_unit(self._fields(), o.model_dump(), self.channels)
            except ValueError as exc:
                raise ValueError(f"units[{i}]: {exc}") from None
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _normal_form(cls, data, handler):
        # Defined last, so it wraps the validators above: validate, then store the normal form.
        stage = handler(data)
        normal = stage._normal_dict()
        return stage if normal is None else handler(normal)

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None or k not in ("mid_channels", "units")}

    def _fields(self) -> dict:
        return {f: getattr(self, f) for f in UNIT_FIELDS}

    def unit_list(self) -> tuple[Unit, ...]:
        """Every unit of the stage, resolved, in order (``depth`` of them)."""
        fields = self._fields()
        if self.units is None:
            return (resolve_unit(fields, {}, self.channels),) * self.depth
        return tuple(resolve_unit(fields, o.model_dump(), self.channels) for o in self.units)

    def _normal_dict(self) -> dict | None:
        """The normal form (see the module docstring) as a dict, or None when this already is it."""
        if self.units is None and self.mid_channels is None:
            return None
        units = self.unit_list()
        base = {"unit": _most_common([u.unit for u in units])}
        split_units = [u for u in units if u.unit in SPLIT_UNITS]
        for f in ("split", "mid_channels"):
            base[f] = _most_common([getattr(u, f) for u in split_units]) if base["unit"] in SPLIT_UNITS else None
        for f in ("groups", "kernel", "se", "act"):
            base[f] = _most_common([getattr(u, f) for u in units])
        overrides = []
        for u in units:
            o = {f: getattr(u, f) for f in ("unit", "groups", "kernel", "se", "act") if getattr(u, f) != base[f]}
            plain = resolve_unit(base, o, self.channels)
            o.update({f: getattr(u, f) for f in ("split", "mid_channels") if getattr(u, f) != getattr(plain, f)})
            overrides.append(o)
        normal = {**self.model_dump(mode="json"), **base, "units": overrides if any(overrides) else None}
        normal = {k: v for k, v in normal.items() if v is not None or k not in ("mid_channels", "units")}
        return None if normal == self.model_dump(mode="json") else normal


class Architecture(Frozen):
    """A whole network: stem, stages, optional final 1x1 conv, classifier."""

    name: Optional[str] = Field(None, max_length=200)
    input_size: int = Field(224, ge=8, le=4096)
    in_channels: int = Field(3, ge=1, le=64)
    num_classes: int = Field(1000, ge=1, le=100_000)
    stem: Stem = Stem()
    stages: tuple[Stage, ...] = Field(min_length=1, max_length=8)
    head_channels: Optional[int] = Field(1024, ge=1, le=16384)

    @model_validator(mode="after")
    def _units_are_buildable(self):
        check_buildable(self)
        return self

    # ---- construction from / to plain data -------------------------------
    @classmethod
    def from_dict(cls, data, source: str = "architecture") -> "Architecture":
        if not isinstance(data, dict):
            raise ArchitectureError(
                f"{source}: expected a mapping with keys stem, stages, ... (got {type(data).__name__})"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ArchitectureError(one_line(exc, source)) from None

    @classmethod
    def from_yaml(cls, path_or_text: str | Path) -> "Architecture":
        """Load from a YAML file path (or YAML text if it contains a newline)."""
        if isinstance(path_or_text, str) and "\n" in path_or_text:
            return cls.from_dict(parse_yaml(path_or_text), "architecture")
        data = load_yaml(path_or_text)
        if isinstance(data, dict) and "architecture" in data and "stages" not in data:
            data = data["architecture"]  # an exported candidate file wraps it
        return cls.from_dict(data, str(path_or_text))

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", exclude_none=False)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = dump_yaml(self.to_dict())
        if path is not None:
            atomic_write_text(path, text)
        return text

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes) -> "Architecture":
        """A validated copy with some top-level fields changed."""
        return Architecture.from_dict({**self.to_dict(), **_plain(changes)})


def _plain(changes: dict) -> dict:
    out = {}
    for k, v in changes.items():
        if isinstance(v, Frozen):
            v = v.model_dump(mode="json")
        elif isinstance(v, (list, tuple)):
            v = [x.model_dump(mode="json") if isinstance(x, Frozen) else x for x in v]
        out[k] = v
    return out
