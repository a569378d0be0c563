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

Every stage starts with one stride-2 unit followed by ``depth - 1`` stride-1
units, as in both papers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, ValidationError, model_validator

from .errors import ArchitectureError
from .io import atomic_write_text, dump_yaml, load_yaml, parse_yaml
from .validation import Frozen, one_line

UnitType = Literal["v1", "v2"]
Activation = Literal["relu", "hswish"]
Kernel = Literal[3, 5, 7]

UNIT_TYPES = ("v1", "v2")
ACTIVATIONS = ("relu", "hswish")
KERNELS = (3, 5, 7)


class Stem(Frozen):
    """First conv (kxk, stride) + BN + ReLU, then an optional 3x3/2 max-pool."""

    channels: int = Field(24, ge=1, le=4096)
    kernel: Kernel = 3
    stride: Literal[1, 2] = 2
    maxpool: bool = True


class Stage(Frozen):
    """``depth`` units of one type at one width; the first unit has stride 2."""

    unit: UnitType = "v2"
    channels: int = Field(ge=2, le=8192)
    depth: int = Field(ge=1, le=64)
    split: Optional[float] = Field(None, gt=0.0, lt=1.0)
    groups: int = Field(1, ge=1, le=64)
    kernel: Kernel = 3
    se: bool = False
    act: Activation = "relu"

    @model_validator(mode="before")
    @classmethod
    def _default_split(cls, data):
        if isinstance(data, dict) and data.get("unit", "v2") == "v2" and data.get("split") is None:
            data = {**data, "split": 0.5}
        return data

    @model_validator(mode="after")
    def _split_only_for_v2(self):
        if self.unit == "v1" and self.split is not None:
            raise ValueError("split applies to v2 units only; remove it from this v1 stage")
        return self


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
        # Imported here: blocks.py imports this module for type hints only.
        from .blocks import check_buildable

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

    @property
    def total_units(self) -> int:
        return sum(s.depth for s in self.stages)


def _plain(changes: dict) -> dict:
    out = {}
    for k, v in changes.items():
        if isinstance(v, Frozen):
            v = v.model_dump(mode="json")
        elif isinstance(v, (list, tuple)):
            v = [x.model_dump(mode="json") if isinstance(x, Frozen) else x for x in v]
        out[k] = v
    return out
