"""Where accuracy evaluators run: the device, mixed precision and memory format.

One setting names the device everywhere it is asked for (``TrainConfig.device``,
``--device``, an experiment's ``accuracy.train.device``):
``auto | cpu | cuda | cuda:N | mps``.

``auto`` is, inside a Ray worker, the GPU that Ray assigned to it (Ray sets
``CUDA_VISIBLE_DEVICES`` to it, so it is ``cuda:0`` there) or the CPU when it
was given none (never a GPU that another trial holds); outside Ray, the first
visible CUDA GPU, else Apple's MPS GPU, else the CPU. A device that is not there raises
:class:`DeviceError` with one line, before any work starts.

The whole API, for trainers (proxy training, supernet, retraining) and scorers::

    p = placement("auto", amp="auto", channels_last="auto")   # or resolve_device("cuda:1")
    model = p.module(build_model(arch))                         # on the device, channels_last if on
    scaler = p.scaler()                                         # a GradScaler for fp16, else None
    with p.autocast():                                          # bf16/fp16 autocast, or nothing
        loss = F.cross_entropy(model(p.inputs(x)), y)
    p.describe()                                                # what was used, for results

``amp``: ``auto`` (bf16 on CUDA where the GPU has it, else fp16 with a
gradient scaler; off on CPU and MPS), ``off``, ``bf16``, ``fp16``.
``channels_last``: ``auto`` (on for CUDA, off elsewhere), ``true``, ``false``.
With ``auto`` for all three, work on the CPU runs exactly as it did before
these settings existed (same operations, same bits).
"""

from __future__ import annotations

import contextlib
import re
import sys
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from search_space.errors import ShuffleNASError

DEVICE_FORMS = "auto, cpu, cuda, cuda:N, mps"
AMP_CHOICES = ("auto", "off", "bf16", "fp16")
CHANNELS_LAST_CHOICES = ("auto", "true", "false")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: a dataset is moved to the accelerator when it takes at most this share of its free memory
FIT_SHARE = 0.25


class DeviceError(ShuffleNASError):
    """A device, precision or memory-format setting that is malformed or not available here."""


def check_device_setting(device: str) -> str:
    """``device`` in canonical form if it is well-formed (whether it exists here is not checked)."""
    d = str(device).strip().lower()
    if not _DEVICE.match(d):
        raise DeviceError(f"device {device!r} is not one of {DEVICE_FORMS}")
    return d


def check_amp_setting(amp: str) -> str:
    a = str(amp).strip().lower()
    if a not in AMP_CHOICES:
        raise DeviceError(f"amp {amp!r} is not one of {', '.join(AMP_CHOICES)}")
    return a


def check_channels_last_setting(value) -> str:
    """``auto`` / ``true`` / ``false`` (booleans and on/off accepted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    v = str(value).strip().lower()
    v = {"on": "true", "yes": "true", "1": "true", "off": "false", "no": "false", "0": "false"}.get(v, v)
    if v not in CHANNELS_LAST_CHOICES:
        raise DeviceError(f"channels_last {value!r} is not one of {', '.join(CHANNELS_LAST_CHOICES)}")
    return v


def _ray_worker():
    """The ``ray`` module when this process is a Ray worker (a trial, a task, an actor), else None."""
    ray = sys.modules.get("ray")  # a Ray worker has imported ray; never import it just to ask
    if ray is None or not ray.is_initialized():
        return None
    try:
        return ray if ray.get_runtime_context().worker.mode == ray.WORKER_MODE else None  # not the driver
    except AttributeError:  # a Ray without these attributes: treat as outside Ray
        return None


def ray_assigned_gpus() -> Optional[list]:
    """The GPU ids Ray assigned to this process when it is a Ray worker, else None (not in Ray)."""
    ray = _ray_worker()
    return None if ray is None else list(ray.get_gpu_ids())


def ray_assigned_cpus() -> Optional[float]:
    """The CPUs Ray assigned to this process when it is a Ray worker, else None (not in Ray)."""
    ray = _ray_worker()
    return None if ray is None else float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0))


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(device: str = "auto") -> torch.device:
    """The ``torch.device`` for a setting; :class:`DeviceError` (one line) if it is not here."""
    d = check_device_setting(device)
    if d == "auto":
        assigned = ray_assigned_gpus()
        if assigned is not None:  # a Ray worker uses what it was given, and only that
            return torch.device("cuda:0") if assigned and torch.cuda.is_available() else torch.device("cpu")
        if torch.cuda.is_available() and torch.cuda.device_count() > 0:
            return torch.device("cuda:0")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if d == "cpu":
        return torch.device("cpu")
    if d == "mps":
        if not _mps_available():
            raise DeviceError("device mps requested but MPS (Apple GPU) is not available on this machine; "
                              "use device cpu or auto")
        return torch.device("mps")
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        raise DeviceError(f"device {d} requested but CUDA is not available on this machine "
                          f"(torch {torch.__version__}); use device cpu or auto")
    index = int(d.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"device {d} requested but this machine has {count} CUDA device(s) "
                          f"(cuda:0..cuda:{count - 1}); use one of those or auto")
    return torch.device("cuda", index)


def _amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    a = check_amp_setting(amp)
    if a == "off" or (a == "auto" and device.type != "cuda"):
        return None
    if a == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cuda" and a == "bf16" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"amp bf16 requested but {torch.cuda.get_device_name(device)} has no bf16 "
                          f"support; use amp fp16 or off")
    if not torch.amp.autocast_mode.is_autocast_available(device.type):
        raise DeviceError(f"amp {a} requested but torch has no autocast for {device.type}; use amp off")
    return _DTYPES[a]


@dataclass(frozen=True)
class Placement:
    """A resolved device with its precision and memory format; see the module docstring."""

    device: torch.device
    amp_dtype: Optional[torch.dtype] = None  # None = full float32
    channels_last: bool = False

    @property
    def is_cpu(self) -> bool:
        return self.device.type == "cpu"

    def module(self, model: nn.Module) -> nn.Module:
        """``model`` moved to the device (in place, as ``nn.Module.to``), channels_last if on."""
        if self.channels_last:
            return model.to(self.device, memory_format=torch.channels_last)
        return model.to(self.device)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the device (asynchronous from pinned memory), channels_last if on."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def autocast(self):
        """Mixed-precision autocast when ``amp_dtype`` is set, else a context that does nothing."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def scaler(self) -> Optional["torch.amp.GradScaler"]:
        """A gradient scaler for fp16 (whose small range underflows gradients), else None."""
        if self.amp_dtype != torch.float16:
            return None
        return torch.amp.GradScaler(self.device.type)

    def holds(self, nbytes: int) -> bool:
        """Whether ``nbytes`` of data may live on the device (at most FIT_SHARE of its free memory)."""
        if self.device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self.device)
            return nbytes <= FIT_SHARE * free
        if self.device.type == "mps":
            return nbytes <= FIT_SHARE * torch.mps.recommended_max_memory()
        return True

    def synchronize(self) -> None:
        """Wait for queued device work (for timing); nothing to wait for on the CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def describe(self) -> dict:
        """What was used, as plain data for results: device, its name, amp, channels_last."""
        name = "cpu"
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
        elif self.device.type == "mps":
            name = "Apple MPS"
        amp = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        return {"device": str(self.device), "device_name": name, "amp": amp, "channels_last": self.channels_last}


def placement(device: str = "auto", amp: str = "auto", channels_last="auto") -> Placement:
    """Resolve the three settings (see the module docstring); :class:`DeviceError` if unavailable."""
    dev = resolve_device(device)
    cl = check_channels_last_setting(channels_last)
    return Placement(dev, _amp_dtype(amp, dev), cl == "true" or (cl == "auto" and dev.type == "cuda"))


__all__ = ["DeviceError", "Placement", "placement", "resolve_device", "check_device_setting",
           "check_amp_setting", "check_channels_last_setting", "ray_assigned_gpus", "ray_assigned_cpus", "DEVICE_FORMS",
           "AMP_CHOICES", "CHANNELS_LAST_CHOICES"]
