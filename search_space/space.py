"""A search space: the choices for every dimension of an Architecture.

Loaded from YAML, where every field is either a fixed value or a list of
choices::

    input_size: 32
    num_classes: 10
    stem: {channels: [16, 24], stride: 1, maxpool: false}
    stages:
      - {unit: v2, channels: [48, 64, 96], depth: [2, 3, 4], kernel: [3, 5, 7]}
      - ...
    head_channels: [512, 1024]

Dimensions are named by their path (``stem.channels``, ``stages.1.kernel``,
``head_channels``). ``split`` only exists for v2 and xception units; when a
stage may also be v1 it is a conditional dimension (asked only when a split
unit is chosen in the Optuna sampler, ignored by :meth:`decode` otherwise).

Per-unit choices: a stage's ``units`` gives one entry per unit position (as
many as the stage's largest depth). An entry is a mapping of fields fixed for
that unit (``{split: 0.25, mid_channels: 32}``), a list of alternatives -- one
choice among whole unit settings, like SPOS's choice blocks::

    units:
      - &block [{kernel: 3}, {kernel: 5}, {kernel: 7}, {unit: xception}]
      - *block

-- or both (``{mid_channels: 32, choices: *block}``). Each entry with
alternatives is a dimension ``stages.1.units.0`` whose choices are labels
such as ``kernel=5`` or ``unit=xception``; it is asked only when the stage is
deep enough to have that unit. A field an entry sets must have a single value
at the stage level (and the stage's ``unit`` and ``split`` too when an entry
sets ``unit``), so every architecture has one set of choices.

Every combination of choices is checked when the space is loaded, so any
sampled point is a valid Architecture; an impossible combination is reported
with the stage, the choices involved and the reason.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_serializer, model_validator

from .architecture import ACTIVATIONS, KERNELS, UNIT_FIELDS, Architecture, Unit, UnitOverride, resolve_unit
from .blocks import SPLIT_UNITS, UNIT_TYPES, UnitBlock, conv_out
from .errors import SpaceError
from .io import load_yaml, parse_yaml
from .validation import Frozen, one_line


def _choices(v):
    """A scalar is a single fixed choice; a list must be non-empty and without repeats."""
    vals = list(v) if isinstance(v, (list, tuple)) else [v]
    if not vals:
        raise ValueError("empty list of choices; give at least one value")
    if len(set(map(repr, vals))) != len(vals):
        raise ValueError(f"repeated choices in {vals}")
    return tuple(vals)


class _Choices(Frozen):
    @field_validator("*", mode="before")
    @classmethod
    def _listify(cls, v, info: ValidationInfo):
        return v if info.field_name == "units" else _choices(v)


def label(override: dict) -> str:
    """The name of one alternative of a per-unit choice: ``kernel=5``, ``unit=xception,kernel=3``."""
    show = lambda v: str(v).lower() if isinstance(v, bool) else str(v)
    return ",".join(f"{f}={show(override[f])}" for f in UNIT_FIELDS if override.get(f) is not None) or "default"


class UnitChoices(UnitOverride):
    """One entry of a space stage's ``units``: fields fixed for that unit, and/or alternatives."""

    choices: Optional[tuple[UnitOverride, ...]] = Field(None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _list_is_choices(cls, data):
        return {"choices": data} if isinstance(data, (list, tuple)) else data

    @model_validator(mode="after")
    def _distinct(self):
        fixed = {f for f in UNIT_FIELDS if getattr(self, f) is not None}
        for alt in self.choices or ():
            both = fixed & set(alt.model_dump())
            if both:
                raise ValueError(f"{sorted(both)[0]} is set both for the unit and in its choice "
                                 f"{label(alt.model_dump())}; set it in one place")
        labels = [label(a.model_dump()) for a in self.choices or ()]
        if len(set(labels)) != len(labels):
            raise ValueError(f"repeated choices in {labels}")
        return self

    def overrides(self) -> dict[str, dict]:
        """``{label: the unit's override}``, one per alternative (one, ``default``, without choices)."""
        fixed = {f: getattr(self, f) for f in UNIT_FIELDS if getattr(self, f) is not None}
        alts = [a.model_dump() for a in self.choices] if self.choices else [{}]
        return {label(a): {**fixed, **a} for a in alts}


class StemChoices(_Choices):
    channels: tuple[int, ...] = (24,)
    kernel: tuple[int, ...] = (3,)
    stride: tuple[int, ...] = (2,)
    maxpool: tuple[bool, ...] = (True,)


class StageChoices(_Choices):
    unit: tuple[str, ...] = ("v2",)
    channels: tuple[int, ...]
    depth: tuple[int, ...]
    split: tuple[float, ...] = (0.5,)
    groups: tuple[int, ...] = (1,)
    kernel: tuple[int, ...] = (3,)
    se: tuple[bool, ...] = (False,)
    act: tuple[str, ...] = ("relu",)
    units: Optional[tuple[UnitChoices, ...]] = Field(None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _units_fit(self):
        if self.units is None:
            return self
        if len(self.units) != max(self.depth):
            raise ValueError(f"units has {len(self.units)} entries but the largest depth is {max(self.depth)}; "
                             f"give one entry per unit position")
        set_by_units = {f for e in self.units for o in e.overrides().values() for f in o}
        if "unit" in set_by_units:
            set_by_units |= {"unit", "split"}
        for f in sorted(set_by_units - {"mid_channels"}, key=UNIT_FIELDS.index):
            if len(getattr(self, f)) > 1:
                raise ValueError(f"{f} is chosen per unit in units, so the stage's {f} must be one value "
                                 f"(got {list(getattr(self, f))})")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None or k != "units"}

    def stage_fields(self, unit: str, split, groups, kernel, se, act) -> dict:
        """The stage-level unit fields of one combination of this stage's choices."""
        return {"unit": unit, "split": split if unit in SPLIT_UNITS else None, "groups": groups,
                "kernel": kernel, "se": se, "act": act, "mid_channels": None}

    def combinations(self) -> list[dict]:
        """Every combination of the stage-level unit fields (split only where the unit has one)."""
        out = []
        for unit, g, k, se, act in itertools.product(self.unit, self.groups, self.kernel, self.se, self.act):
            for sp in (self.split if unit in SPLIT_UNITS else (None,)):
                out.append(self.stage_fields(unit, sp, g, k, se, act))
        return out

    def entry(self, position: int) -> UnitChoices:
        """The per-unit entry of unit ``position`` (an empty one when the stage has no ``units``)."""
        return self.units[position] if self.units is not None else UnitChoices()


class SpaceSpec(Frozen):
    name: Optional[str] = None
    input_size: int = Field(224, ge=8, le=4096)
    in_channels: int = Field(3, ge=1, le=64)
    num_classes: int = Field(1000, ge=1)
    stem: StemChoices = StemChoices()
    stages: tuple[StageChoices, ...] = Field(min_length=1, max_length=8)
    head_channels: tuple[Optional[int], ...] = (1024,)

    @field_validator("head_channels", mode="before")
    @classmethod
    def _listify(cls, v):
        return _choices(v)


@dataclass(frozen=True)
class Dimension:
    name: str  # path in the Architecture, e.g. "stages.1.kernel", or "stages.1.units.0" (a per-unit choice)
    choices: tuple
    #: conditional: only meaningful when the stage's unit is one of these (``split``)
    only_for_units: tuple[str, ...] = ()
    #: conditional: a per-unit choice, only meaningful when the stage's depth exceeds this position
    unit_position: int | None = None

    @property
    def is_open(self) -> bool:
        return len(self.choices) > 1

    @property
    def stage(self) -> str:
        """``stages.<i>`` of a stage dimension."""
        return ".".join(self.name.split(".")[:2])


STAGE_FIELDS = [f for f in StageChoices.model_fields if f != "units"]


class SearchSpace:
    """The choices, with size, seeded sampling and the Optuna define-by-run adapter."""

    def __init__(self, spec: SpaceSpec):
        self.spec = spec
        self.name = spec.name or "space"
        dims = [Dimension(f"stem.{f}", getattr(spec.stem, f)) for f in StemChoices.model_fields]
        for i, st in enumerate(spec.stages):
            for f in STAGE_FIELDS:
                if f == "split" and not set(st.unit) & set(SPLIT_UNITS):
                    continue
                cond = SPLIT_UNITS if f == "split" and not set(st.unit) <= set(SPLIT_UNITS) else ()
                dims.append(Dimension(f"stages.{i}.{f}", getattr(st, f), cond))
            for j, e in enumerate(st.units or ()):
                dims.append(Dimension(f"stages.{i}.units.{j}", tuple(e.overrides()), unit_position=j))
        dims.append(Dimension("head_channels", spec.head_channels))
        self.dimensions: tuple[Dimension, ...] = tuple(dims)
        self._by_name = {d.name: d for d in dims}
        _check_all_combinations(self)

    # ---- loading --------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, source: str = "space") -> "SearchSpace":
        if not isinstance(data, dict):
            raise SpaceError(f"{source}: expected a mapping with keys stem, stages, ... "
                             f"(got {type(data).__name__})")
        try:
            spec = SpaceSpec.model_validate(data)
        except ValidationError as exc:
            raise SpaceError(one_line(exc, source)) from None
        try:
            return cls(spec)
        except ValueError as exc:
            raise SpaceError(f"{source}: {exc}") from None

    @classmethod
    def from_yaml(cls, path_or_text: str | Path) -> "SearchSpace":
        if isinstance(path_or_text, str) and "\n" in path_or_text:
            return cls.from_dict(parse_yaml(path_or_text))
        return cls.from_dict(load_yaml(path_or_text), str(path_or_text))

    def to_dict(self) -> dict:
        return self.spec.model_dump(mode="json")

    # ---- size -------------------------------------------------------------
    @property
    def open_dimensions(self) -> list[Dimension]:
        return [d for d in self.dimensions if d.is_open]

    def size(self) -> int:
        """Number of distinct architectures (conditional ``split`` counted only for v2)."""
        s = self.spec
        n = math.prod(len(getattr(s.stem, f)) for f in StemChoices.model_fields)
        n *= len(s.head_channels)
        for st in s.stages:
            common = math.prod(len(getattr(st, f)) for f in STAGE_FIELDS if f not in ("unit", "split", "depth"))
            per_unit = [len(st.entry(j).overrides()) for j in range(max(st.depth))]
            depths = sum(math.prod(per_unit[:d]) for d in st.depth)
            n *= common * depths * sum(len(st.split) if u in SPLIT_UNITS else 1 for u in st.unit)
        return n

    # ---- points -----------------------------------------------------------
    def decode(self, params: dict) -> Architecture:
        """Architecture from ``{dimension name: value}``; fixed dimensions may be omitted."""
        unknown = set(params) - set(self._by_name)
        if unknown:
            raise SpaceError(f"unknown dimension(s) {sorted(unknown)}; known: {list(self._by_name)}")
        val = {}
        for d in self.dimensions:
            v = params.get(d.name, d.choices[0])
            if v not in d.choices:
                raise SpaceError(f"{d.name}={v!r} is not a choice of this space; choices: {list(d.choices)}")
            val[d.name] = v
        stages = []
        for i, spec in enumerate(self.spec.stages):
            st = {f: val[f"stages.{i}.{f}"] for f in STAGE_FIELDS if f"stages.{i}.{f}" in val}
            if st["unit"] not in SPLIT_UNITS:
                st.pop("split", None)
            if spec.units is not None:
                st["units"] = [spec.units[j].overrides()[val[f"stages.{i}.units.{j}"]] for j in range(st["depth"])]
            stages.append(st)
        return Architecture.from_dict({
            "name": None, "input_size": self.spec.input_size, "in_channels": self.spec.in_channels,
            "num_classes": self.spec.num_classes,
            "stem": {f: val[f"stem.{f}"] for f in StemChoices.model_fields},
            "stages": stages, "head_channels": val["head_channels"],
        }, source=self.name)

    def params_of(self, arch: Architecture) -> dict:
        """Inverse of :meth:`decode`; raises SpaceError if ``arch`` is not a point of this space."""
        if len(arch.stages) != len(self.spec.stages):
            raise SpaceError(f"architecture has {len(arch.stages)} stages, the space {len(self.spec.stages)}")
        if (arch.input_size, arch.in_channels, arch.num_classes) != (
                self.spec.input_size, self.spec.in_channels, self.spec.num_classes):
            raise SpaceError("architecture's input_size/in_channels/num_classes differ from the space's")
        a = arch.to_dict()
        out = {f"stem.{f}": a["stem"][f] for f in StemChoices.model_fields}
        out["head_channels"] = a["head_channels"]
        for i, (st, spec) in enumerate(zip(arch.stages, self.spec.stages)):
            out.update(_stage_values(i, st, spec))
        for d in self.dimensions:
            if d.unit_position is not None:
                continue
            v = out.get(d.name)
            if v is None and d.only_for_units:
                v = out[d.name] = d.choices[0]  # a dimension this architecture does not use
            if v not in d.choices:
                raise SpaceError(f"{d.name}={v!r} is not a choice of this space; choices: {list(d.choices)}")
        for i, (st, spec) in enumerate(zip(arch.stages, self.spec.stages)):
            fields = spec.stage_fields(*(out[f"stages.{i}.{f}"] for f in ("unit", "split", "groups", "kernel",
                                                                           "se", "act")))
            for j, u in enumerate(st.unit_list()):
                options = spec.entry(j).overrides()
                found = [lab for lab, o in options.items() if _resolved(fields, o, st.channels) == u]
                if not found:
                    what = ", ".join(f"{f} {getattr(u, f)}" for f in UNIT_FIELDS if getattr(u, f) is not None)
                    raise SpaceError(f"stages.{i}.units.{j}: unit ({what}) is not a choice of this space"
                                     + (f"; choices: {list(options)}" if spec.units is not None else ""))
                if spec.units is not None:
                    out[f"stages.{i}.units.{j}"] = found[0]
        return {d.name: out.get(d.name, d.choices[0]) for d in self.dimensions}

    def contains(self, arch: Architecture) -> bool:
        try:
            self.params_of(arch)
            return True
        except SpaceError:
            return False

    def sample(self, n: int | None = None, seed: int | np.random.Generator | None = None):
        """One Architecture (``n=None``) or a list of ``n``, uniformly per dimension."""
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        draw = lambda: self.decode({d.name: d.choices[rng.integers(len(d.choices))]
                                    for d in self.dimensions})
        return draw() if n is None else [draw() for _ in range(n)]

    def suggest(self, trial) -> Architecture:
        """Define-by-run sampling with an Optuna trial (conditional dimensions asked only where used)."""
        params = {}
        for d in self.dimensions:
            if not d.is_open:
                continue
            if d.only_for_units:
                unit_dim = f"{d.stage}.unit"
                if params.get(unit_dim, self._by_name[unit_dim].choices[0]) not in d.only_for_units:
                    continue
            if d.unit_position is not None:
                depth_dim = f"{d.stage}.depth"
                if params.get(depth_dim, self._by_name[depth_dim].choices[0]) <= d.unit_position:
                    continue
            params[d.name] = trial.suggest_categorical(d.name, list(d.choices))
        return self.decode(params)

    # ---- what each unit position can be (for the LUT, the supernet and the load-time check) --------
    def unit_choices(self, stage: int, position: int) -> list[tuple[int, Unit]]:
        """Every ``(channels, unit)`` that unit ``position`` of stage ``stage`` can be, without repeats."""
        st = self.spec.stages[stage]
        overrides = list(st.entry(position).overrides().values())
        out: dict = {}
        for c, fields in itertools.product(st.channels, st.combinations()):
            for o in overrides:
                out.setdefault((c, resolve_unit(fields, o, c)), None)
        return list(out)

    def distinct_positions(self, stage: int) -> range:
        """Unit positions whose choices can differ: all with per-unit entries, else the stride-2 and one stride-1."""
        st = self.spec.stages[stage]
        return range(max(st.depth) if st.units is not None else min(2, max(st.depth)))

    def __repr__(self) -> str:
        return f"SearchSpace({self.name!r}, size={self.size():,}, open dims={len(self.open_dimensions)})"


def _stage_values(i: int, st, spec: StageChoices) -> dict:
    """The stage-level dimension values of stage ``st`` of an Architecture (``stages.<i>.<field>``)."""
    units = st.unit_list()
    per_unit = {f for e in spec.units or () for o in e.overrides().values() for f in o}
    if "unit" in per_unit:
        per_unit |= {"split"}
    out = {f"stages.{i}.channels": st.channels, f"stages.{i}.depth": st.depth}
    for f in ("unit", "split", "groups", "kernel", "se", "act"):
        if f in per_unit:  # fixed at the stage level (checked when the space loads)
            out[f"stages.{i}.{f}"] = getattr(spec, f)[0]
            continue
        vals = {repr(getattr(u, f)): getattr(u, f) for u in units if f != "split" or u.unit in SPLIT_UNITS}
        if len(vals) > 1:
            raise SpaceError(f"stages.{i}.{f}: the stage's units differ ({', '.join(vals)}) but this space "
                             f"chooses {f} per stage")
        out[f"stages.{i}.{f}"] = next(iter(vals.values()), None)
    return out


def _resolved(fields: dict, override: dict, channels: int) -> Unit | None:
    try:
        return resolve_unit(fields, override, channels)
    except ValueError:
        return None


def _check_all_combinations(space: SearchSpace) -> None:
    """Every choice combination must build: check each unit position against every input width it can see."""
    spec = space.spec
    s = spec.stem
    for k, st, mp in itertools.product(s.kernel, s.stride, s.maxpool):
        if k not in KERNELS:
            raise ValueError(f"stem.kernel {k} not allowed; choose from {list(KERNELS)}")
    res_options = {conv_out(spec.input_size, k, st) for k, st in itertools.product(s.kernel, s.stride)}
    res_options = {conv_out(r, 3, 2) if mp else r for r in res_options for mp in s.maxpool}
    in_options = set(s.channels)
    for i, st in enumerate(spec.stages):
        for u in st.unit:
            if u not in UNIT_TYPES:
                raise ValueError(f"stages[{i}].unit {u!r} unknown; choose from {list(UNIT_TYPES)}")
        for a in st.act:
            if a not in ACTIVATIONS:
                raise ValueError(f"stages[{i}].act {a!r} unknown; choose from {list(ACTIVATIONS)}")
        for k in st.kernel:
            if k not in KERNELS:
                raise ValueError(f"stages[{i}].kernel {k} not allowed; choose from {list(KERNELS)}")
        for d in st.depth:
            if d < 1:
                raise ValueError(f"stages[{i}].depth {d} must be >= 1")
        if min(res_options) < 2:
            raise ValueError(f"stages[{i}]: input_size {spec.input_size} is reduced to "
                             f"{min(res_options)}x{min(res_options)} before this stage; raise input_size")
        for j in space.distinct_positions(i):
            where = f"stages[{i}]" + (f".units[{j}]" if st.units is not None else "")
            try:
                choices = space.unit_choices(i, j)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            options = st.entry(j).overrides()
            for c, fields in itertools.product(st.channels, st.combinations()) if len(options) > 1 else ():
                made = {}
                for lab, o in options.items():
                    other = made.setdefault(resolve_unit(fields, o, c), lab)
                    if other != lab:
                        raise ValueError(f"{where}: choices {other} and {lab} make the same unit (channels {c}); "
                                         f"remove one")
            seen = set()
            for c, u in choices:
                for cin in (sorted(in_options) if j == 0 else [c]):
                    shape = (u.unit, cin, c, u.groups, u.split, u.mid_channels)
                    if shape in seen:
                        continue
                    seen.add(shape)
                    b = UnitBlock(u.unit, 2 if j == 0 else 1, cin, c, u.split, u.groups, 3, False, "relu", 8,
                                  first_ungrouped=(u.unit == "v1" and i == 0 and j == 0), mid=u.mid_channels)
                    why = b.problem()
                    if why:
                        combo = f"unit {u.unit}, channels {c}, groups {u.groups}" + (
                            f", split {u.split:g}" if u.split is not None else "") + (
                            f", mid_channels {u.mid_channels}" if u.mid_channels is not None else "") + (
                            f", after {cin} input channels" if j == 0 else "")
                        raise ValueError(f"{where} ({combo}) is impossible: {why}; remove one of these choices")
        in_options = set(st.channels)
        res_options = {conv_out(r, 3, 2) for r in res_options}


BUILTIN_DIR = Path(__file__).parent / "spaces"


def builtin_spaces() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A built-in space by name (``imagenet``, ``cifar``, ``all_open``) or a YAML file."""
    p = Path(name_or_path)
    if not p.exists() and str(name_or_path) in builtin_spaces():
        p = BUILTIN_DIR / f"{name_or_path}.yaml"
    elif not p.exists():
        raise SpaceError(f"{name_or_path}: no such space file, and not a built-in space "
                         f"({', '.join(builtin_spaces())})")
    return SearchSpace.from_yaml(p)
