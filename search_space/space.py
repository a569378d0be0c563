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
``head_channels``). ``split`` only exists for v2 units; when a stage may be
v1 or v2 it is a conditional dimension (asked only when v2 is chosen in the
Optuna sampler, ignored by :meth:`decode` otherwise).

Every combination of choices is checked when the space is loaded, so any
sampled point is a valid Architecture; an impossible combination is reported
with the stage, the choices involved and the reason.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from pydantic import Field, ValidationError, field_validator

from .architecture import ACTIVATIONS, KERNELS, Architecture
from .blocks import UnitBlock, conv_out
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
    def _listify(cls, v):
        return _choices(v)


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
    name: str  # path in the Architecture, e.g. "stages.1.kernel"
    choices: tuple
    only_for_unit: str | None = None  # conditional: only meaningful when the stage's unit is this

    @property
    def is_open(self) -> bool:
        return len(self.choices) > 1


class SearchSpace:
    """The choices, with size, seeded sampling, Optuna/Ray adapters and vector encoding."""

    def __init__(self, spec: SpaceSpec):
        self.spec = spec
        self.name = spec.name or "space"
        dims = [Dimension(f"stem.{f}", getattr(spec.stem, f)) for f in StemChoices.model_fields]
        for i, st in enumerate(spec.stages):
            for f in StageChoices.model_fields:
                cond = "v2" if f == "split" and "v1" in st.unit else None
                if f == "split" and "v2" not in st.unit:
                    continue
                dims.append(Dimension(f"stages.{i}.{f}", getattr(st, f), cond))
        dims.append(Dimension("head_channels", spec.head_channels))
        self.dimensions: tuple[Dimension, ...] = tuple(dims)
        self._by_name = {d.name: d for d in dims}
        _check_all_combinations(spec)

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
            common = math.prod(len(getattr(st, f)) for f in StageChoices.model_fields
                               if f not in ("unit", "split"))
            n *= common * sum(len(st.split) if u == "v2" else 1 for u in st.unit)
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
        for i in range(len(self.spec.stages)):
            st = {f: val[f"stages.{i}.{f}"] for f in StageChoices.model_fields
                  if f"stages.{i}.{f}" in val}
            if st["unit"] == "v1":
                st.pop("split", None)
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
        out = {}
        for d in self.dimensions:
            parts = d.name.split(".")
            v: Any = a
            for p in parts:
                v = v[int(p)] if isinstance(v, list) else v[p]
            if v is None and d.only_for_unit:
                v = d.choices[0]
            if v not in d.choices:
                raise SpaceError(f"{d.name}={v!r} is not a choice of this space; choices: {list(d.choices)}")
            out[d.name] = v
        return out

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
        """Define-by-run sampling with an Optuna trial (split asked only for v2 stages)."""
        params = {}
        for d in self.dimensions:
            if not d.is_open:
                continue
            if d.only_for_unit:
                unit_dim = d.name.rsplit(".", 1)[0] + ".unit"
                if params.get(unit_dim, self._by_name[unit_dim].choices[0]) != d.only_for_unit:
                    continue
            params[d.name] = trial.suggest_categorical(d.name, list(d.choices))
        return self.decode(params)

    def to_tune(self) -> dict:
        """Ray Tune parameter space: ``{dimension: tune.choice([...])}`` for open dimensions."""
        from ray import tune

        return {d.name: tune.choice(list(d.choices)) for d in self.open_dimensions}

    # ---- fixed-length numeric vectors ---------------------------------------
    def encode(self, arch: Architecture) -> np.ndarray:
        """Choice index of every dimension (conditional dims of a v1 stage get 0)."""
        p = self.params_of(arch)
        return np.array([d.choices.index(p[d.name]) for d in self.dimensions], dtype=np.int64)

    def decode_vector(self, vec: Sequence[float]) -> Architecture:
        if len(vec) != len(self.dimensions):
            raise SpaceError(f"vector has {len(vec)} entries, the space has {len(self.dimensions)} dimensions")
        params = {}
        for d, x in zip(self.dimensions, vec):
            i = int(round(float(x)))
            if not 0 <= i < len(d.choices):
                raise SpaceError(f"{d.name}: index {i} out of range 0..{len(d.choices) - 1}")
            params[d.name] = d.choices[i]
        return self.decode(params)

    def vector_bounds(self) -> np.ndarray:
        """Number of choices per dimension (upper bound, exclusive, of each vector entry)."""
        return np.array([len(d.choices) for d in self.dimensions], dtype=np.int64)

    def __repr__(self) -> str:
        return f"SearchSpace({self.name!r}, size={self.size():,}, open dims={len(self.open_dimensions)})"


def _check_all_combinations(spec: SpaceSpec) -> None:
    """Every choice combination must build: check each stage against every input width it can see."""
    s = spec.stem
    for k, st, mp in itertools.product(s.kernel, s.stride, s.maxpool):
        if k not in KERNELS:
            raise ValueError(f"stem.kernel {k} not allowed; choose from {list(KERNELS)}")
    res_options = {conv_out(spec.input_size, k, st) for k, st in itertools.product(s.kernel, s.stride)}
    res_options = {conv_out(r, 3, 2) if mp else r for r in res_options for mp in s.maxpool}
    in_options = set(s.channels)
    for i, st in enumerate(spec.stages):
        for u in st.unit:
            if u not in ("v1", "v2"):
                raise ValueError(f"stages[{i}].unit {u!r} unknown; choose from ['v1', 'v2']")
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
        for unit, cin, c, g in itertools.product(st.unit, sorted(in_options), st.channels, st.groups):
            for sp in (st.split if unit == "v2" else (None,)):
                for stride, unit_in in ((2, cin), (1, c)):
                    if stride == 1 and max(st.depth) < 2:
                        continue
                    b = UnitBlock(unit, stride, unit_in, c, sp, g, 3, False, "relu", 8,
                                  first_ungrouped=(unit == "v1" and i == 0 and stride == 2))
                    why = b.problem()
                    if why:
                        combo = f"unit {unit}, channels {c}, groups {g}" + (
                            f", split {sp:g}" if sp is not None else "") + (
                            f", after {cin} input channels" if stride == 2 else "")
                        raise ValueError(f"stages[{i}] ({combo}) is impossible: {why}; "
                                         f"remove one of these choices")
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
