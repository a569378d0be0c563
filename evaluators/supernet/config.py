"""Supernet training settings (plain data, stored inside every checkpoint)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Optional

from search_space.errors import ShuffleNASError


@dataclass(frozen=True)
class SupernetConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1  # SGD + nesterov, cosine to 0 after a short linear warm-up
    momentum: float = 0.9
    weight_decay: float = 4e-5  # SPOS's value
    label_smoothing: float = 0.1
    warmup_steps: int = 50
    grad_clip: Optional[float] = 5.0  # max gradient L2 norm per step: one bad path must not wreck shared weights
    seed: int = 0
    threads: int = 1
    subset: Optional[int] = None  # images drawn from the training set (then split train/val)
    val_fraction: float = 0.1
    augment: bool = True
    flops_band: Optional[tuple[float, float]] = None  # sample only paths with MACs in [lo, hi] (SPOS)
    affine_bn: bool = False  # SPOS: BatchNorm without scale/shift in the supernet

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.threads < 1:
            raise ShuffleNASError("supernet config: epochs, batch_size and threads must be >= 1")
        if self.lr <= 0:
            raise ShuffleNASError(f"supernet config: lr must be > 0 (got {self.lr})")
        if self.flops_band is not None:
            lo, hi = self.flops_band
            if not 0 <= lo < hi:
                raise ShuffleNASError(f"flops band {lo:g},{hi:g}: need 0 <= LO < HI (multiply-adds)")
            object.__setattr__(self, "flops_band", (float(lo), float(hi)))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flops_band"] = list(self.flops_band) if self.flops_band else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SupernetConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if d.get("flops_band") is not None:
            d["flops_band"] = tuple(d["flops_band"])
        return cls(**d)

    def same_run(self, other: "SupernetConfig") -> bool:
        """Whether a checkpoint trained with ``other`` can be resumed with this config (threads may differ)."""
        a, b = self.to_dict(), other.to_dict()
        a.pop("threads"), b.pop("threads")
        return a == b
