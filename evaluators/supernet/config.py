"""Supernet training settings (plain data, stored inside every checkpoint).

Every training recipe the fidelity benchmark compares is one setting of
:class:`SupernetConfig`; :data:`VARIANTS` names the ones that follow published
methods. ``SupernetConfig(variant="sandwich", epochs=30)`` (what an experiment
file's ``accuracy.supernet_train: {variant: sandwich, epochs: 30}`` becomes) or
``SupernetConfig.variant("sandwich", epochs=30)`` builds one: the variant fills
its settings, and settings given explicitly override them.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import asdict, dataclass, fields, replace
from typing import Optional

from evaluators.device import check_amp_setting, check_channels_last_setting, check_device_setting
from search_space.errors import ShuffleNASError

SCHEDULES = ("cosine", "linear")
STRATEGIES = ("uniform", "sandwich")
DEPTH_SAMPLING = ("uniform", "balanced")

#: Settings that change how a run computes, not what it computes: a checkpoint
#: may be resumed with other values (see :meth:`SupernetConfig.same_run`).
RUNTIME_FIELDS = ("threads", "device", "amp", "channels_last", "loader_workers")


@dataclass(frozen=True)
class SupernetConfig:
    epochs: int = 10  # the whole planned budget: the learning-rate schedule spans all of it
    batch_size: int = 64  # global batch (split evenly over distributed workers)
    lr: float = 0.1  # SGD + nesterov, linear warm-up, then annealed to 0 at the last step
    schedule: str = "cosine"  # "cosine" or "linear" (SPOS decays linearly to 0)
    momentum: float = 0.9
    weight_decay: float = 4e-5  # SPOS's value
    label_smoothing: float = 0.1
    warmup_steps: int = 50
    grad_clip: Optional[float] = 5.0  # max gradient L2 norm per step: one bad path must not wreck shared weights
    seed: int = 0
    threads: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (evaluators.device: auto = Ray's GPU, a GPU, else CPU)
    amp: str = "auto"  # auto (bf16/fp16 autocast on CUDA only) | off | bf16 | fp16
    channels_last: str = "auto"  # auto (on for CUDA) | true | false
    loader_workers: Optional[int] = None  # folder: data: decoding processes per trainer (None: one per spare core)
    subset: Optional[int] = None  # images drawn from the training set (then split train/val)
    val_fraction: float = 0.1
    augment: bool = True
    # --- which paths a step trains -------------------------------------------------------
    strategy: str = "uniform"  # "uniform": one path per step (SPOS); "sandwich": largest + smallest + random (BigNAS)
    sandwich_random: int = 2  # sandwich: random paths per step besides the largest and the smallest
    distill: bool = True  # sandwich: in-place distillation (all but the largest learn the largest's soft labels)
    depth_sampling: str = "uniform"  # "uniform" per stage, or "balanced": P(depth d) proportional to d
    largest_warmup: float = 0.0  # fraction of the steps that train only the largest path (OFA's first phase)
    flops_band: Optional[tuple[float, float]] = None  # sample only paths with MACs in [lo, hi] (SPOS)
    latency_band: Optional[tuple[float, float]] = None  # ... or with latency (ms, predicted by ``lut``) in [lo, hi]
    lut: Optional[str] = None  # latency lookup table for latency_band
    band_bins: int = 1  # SPOS: pick one of this many equal sub-bands first, then reject within it
    band_tries: int = 500  # SPOS's timeout: samples drawn per sub-band before giving up
    affine_bn: bool = False  # SPOS: BatchNorm without scale/shift in the supernet

    def __post_init__(self):
        def bad(msg: str) -> ShuffleNASError:
            return ShuffleNASError(f"supernet config: {msg}")

        object.__setattr__(self, "device", check_device_setting(self.device))
        object.__setattr__(self, "amp", check_amp_setting(self.amp))
        object.__setattr__(self, "channels_last", check_channels_last_setting(self.channels_last))
        if self.epochs < 1 or self.batch_size < 1 or self.threads < 1:
            raise bad("epochs, batch_size and threads must be >= 1")
        if self.loader_workers is not None and self.loader_workers < 0:
            raise bad(f"loader_workers must be >= 0 (got {self.loader_workers})")
        if self.lr <= 0:
            raise bad(f"lr must be > 0 (got {self.lr})")
        for name, allowed in (("schedule", SCHEDULES), ("strategy", STRATEGIES),
                              ("depth_sampling", DEPTH_SAMPLING)):
            if getattr(self, name) not in allowed:
                raise bad(f"{name} must be one of {', '.join(allowed)} (got {getattr(self, name)!r})")
        if self.sandwich_random < 0 or self.band_bins < 1 or self.band_tries < 1:
            raise bad("sandwich_random must be >= 0, band_bins and band_tries >= 1")
        if not 0.0 <= self.largest_warmup < 1.0:
            raise bad(f"largest_warmup must be in [0, 1) (got {self.largest_warmup})")
        for name, unit in (("flops_band", "multiply-adds"), ("latency_band", "ms")):
            band = getattr(self, name)
            if band is None:
                continue
            lo, hi = band
            if not 0 <= lo < hi:
                raise ShuffleNASError(f"{name.replace('_', ' ')} {lo:g},{hi:g}: need 0 <= LO < HI ({unit})")
            object.__setattr__(self, name, (float(lo), float(hi)))
        if self.flops_band is not None and self.latency_band is not None:
            raise bad("give flops_band or latency_band, not both")
        if self.latency_band is not None and not self.lut:
            raise bad("latency_band needs lut: the lookup table that predicts each path's latency")

    @property
    def band(self) -> Optional[tuple[str, tuple[float, float]]]:
        """``("macs"|"latency_ms", (lo, hi))`` or None."""
        if self.flops_band is not None:
            return "macs", self.flops_band
        if self.latency_band is not None:
            return "latency_ms", self.latency_band
        return None

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("flops_band", "latency_band"):
            d[k] = list(d[k]) if d[k] else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SupernetConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for k in ("flops_band", "latency_band"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)

    @classmethod
    def variant(cls, name: str, **overrides) -> "SupernetConfig":
        """The recipe :data:`VARIANTS` calls ``name``, with ``overrides`` on top."""
        return cls(variant=name, **overrides)

    def replace(self, **changes) -> "SupernetConfig":
        return replace(self, **changes)

    def same_run(self, other: "SupernetConfig") -> bool:
        """Whether a checkpoint trained with ``other`` can be resumed with this config (RUNTIME_FIELDS may differ)."""
        a, b = self.to_dict(), other.to_dict()
        for k in RUNTIME_FIELDS:
            a.pop(k), b.pop(k)
        return a == b

    def differences(self, other: "SupernetConfig") -> list[str]:
        """``field=value (other: value)`` for every setting that makes ``other`` another run."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}={a[k]!r} (checkpoint: {b[k]!r})" for k in a if k not in RUNTIME_FIELDS and a[k] != b.get(k)]


def _accept_variant(init):
    """Wrap the dataclass ``__init__`` so that ``variant=NAME`` fills that recipe's settings first.

    The name itself is not stored: a config is its settings, so a checkpoint trained as
    ``variant: sandwich`` resumes under the same settings written out field by field.
    The signature lists ``variant`` beside the fields (preflight names the known settings from it).
    """
    @functools.wraps(init)
    def __init__(self, *args, variant: Optional[str] = None, **settings):
        if variant is not None:
            if variant not in VARIANTS:
                raise ShuffleNASError(f"supernet config: unknown variant {variant!r}; "
                                      f"choose one of: {', '.join(VARIANTS)}")
            settings = {**VARIANTS[variant], **settings}
        init(self, *args, **settings)

    sig = inspect.signature(init)
    __init__.__signature__ = sig.replace(parameters=[
        *sig.parameters.values(),
        inspect.Parameter("variant", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Optional[str])])
    return __init__


SupernetConfig.__init__ = _accept_variant(SupernetConfig.__init__)


#: Named recipes, each one setting of SupernetConfig (compared by experiments/fidelity.py):
#:
#: * ``spos`` -- Single Path One-Shot (Guo et al. 2020; megvii-model/SinglePathOneShot
#:   src/Supernet/train.py): one uniformly sampled path per step, BN without affine,
#:   label smoothing 0.1, weight decay 4e-5, the learning rate annealed to 0 over the whole budget.
#: * ``spos_balanced`` -- SPOS with a stage's depth d drawn with probability proportional to d:
#:   with uniform depths the last unit of a 4-deep stage trains on 1/4 of the steps and the first
#:   on all, so deep paths are scored with under-trained tails; here the shares are 1, 0.9, 0.7, 0.4.
#: * ``sandwich`` -- BigNAS (Yu et al. 2020) / AttentiveNAS train_attentive_nas.py: per step the
#:   largest path on the labels, then the smallest and two random paths on the largest's soft
#:   labels (in-place distillation), gradients summed, one optimizer step. The largest path trains
#:   every unit at every step, so depth is not starved.
#: * ``ofa_warmup`` -- Once-for-All's progressive shrinking (Cai et al. 2020), in its simplest form:
#:   the first quarter of the steps trains the largest path only, then every dimension is open.
VARIANTS: dict[str, dict] = {
    "spos": {},
    "spos_balanced": {"depth_sampling": "balanced"},
    "sandwich": {"strategy": "sandwich", "sandwich_random": 2, "distill": True},
    "ofa_warmup": {"largest_warmup": 0.25},
}
