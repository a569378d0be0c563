"""What a latency number is measured on (:class:`LatencyTarget`) and how (:class:`MeasurementProtocol`).

A latency is only meaningful with its target attached: the runtime changes
the ranking of networks, not just the scale (NOTES.md: eager vs ONNX Runtime),
and thread count, batch, resolution and dtype change it again. Every result
and every lookup table carries the target it was measured for.
"""

from __future__ import annotations

import os
import platform
import socket
from functools import lru_cache
from typing import Literal, Optional

from pydantic import Field, ValidationError, model_validator

from search_space.errors import ShuffleNASError
from search_space.validation import Frozen, one_line

DEVICES = ("cpu", "cuda")
RUNTIMES = ("onnxruntime", "eager", "torchscript", "compile")
DTYPES = ("float32", "float16", "bfloat16")


class LatencyError(ShuffleNASError):
    """A latency target, measurement or lookup table the user has to fix."""


class ExportError(LatencyError):
    """An architecture (or block) that cannot be exported to / run in the target runtime."""


class LUTMissingError(LatencyError):
    """A lookup table without an entry for a block the architecture needs."""


class LUTHostError(LatencyError):
    """A lookup table built on another host than the one whose latency it is used for."""


class LUTHostWarning(UserWarning):
    """A lookup table without a host tag (built before tables were tagged): it cannot be checked."""


class LatencyTarget(Frozen):
    """The deployment a latency is measured for. ``input_size=None`` keeps each architecture's own."""

    device: Literal["cpu", "cuda"] = "cpu"
    runtime: Literal["onnxruntime", "eager", "torchscript", "compile"] = "onnxruntime"
    threads: int = Field(1, ge=1, le=256)
    batch: int = Field(1, ge=1, le=4096)
    input_size: Optional[int] = Field(None, ge=8, le=4096)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"

    @model_validator(mode="after")
    def _supported(self):
        if self.dtype != "float32" and self.runtime == "onnxruntime":
            raise ValueError(f"dtype {self.dtype} is not supported with runtime onnxruntime "
                             f"(models are exported in float32); use dtype float32 or a torch runtime")
        if self.dtype == "float16" and self.device == "cpu":
            raise ValueError("dtype float16 is not supported on cpu; use float32 or bfloat16")
        return self

    @classmethod
    def from_dict(cls, data, source: str = "latency target") -> "LatencyTarget":
        if not isinstance(data, dict):
            raise LatencyError(f"{source}: expected a mapping with keys device, runtime, threads, ...")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise LatencyError(one_line(exc, source)) from None

    @classmethod
    def make(cls, **fields) -> "LatencyTarget":
        """Like the constructor, but bad values raise a one-line :class:`LatencyError`."""
        return cls.from_dict({k: v for k, v in fields.items() if v is not None})

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def describe(self) -> str:
        size = "own size" if self.input_size is None else f"{self.input_size}x{self.input_size}"
        return (f"{self.runtime} on {self.device}, {self.threads} thread(s), batch {self.batch}, "
                f"{size}, {self.dtype}")

    def apply(self, arch):
        """``arch`` at the target's input size (unchanged when ``input_size`` is None)."""
        if self.input_size is None or self.input_size == arch.input_size:
            return arch
        return arch.replace(input_size=self.input_size)


class MeasurementProtocol(Frozen):
    """Warm-up, timed runs, spread check with repeats, periodic reference for drift.

    Defaults time each network for at least 1 s and 30 runs after at least
    0.3 s and 10 runs of warm-up (the first call costs 1.5-3x a warm one).
    A measurement whose IQR/median exceeds ``spread_threshold`` is repeated up
    to ``max_attempts`` times; if it stays above, the result is flagged. With
    ``paired`` timing the spread judged is that of the per-turn ratios, the
    quantity a paired measurement reports, not that of the raw runs, which
    carries the host's swings the pairing cancels.
    """

    warmup_runs: int = Field(10, ge=0)
    warmup_seconds: float = Field(0.3, ge=0)
    min_runs: int = Field(30, ge=3)
    min_seconds: float = Field(1.0, ge=0)
    max_runs: int = Field(5000, ge=3)
    max_seconds: float = Field(20.0, gt=0)
    spread_threshold: float = Field(0.10, gt=0)  # IQR / median
    max_attempts: int = Field(3, ge=1)
    reference: str = "shufflenet_v2_x0_5"  # preset re-measured to detect drift of the machine
    reference_every: int = Field(50, ge=0)  # measurements between reference runs; 0 = never
    drift_threshold: float = Field(0.10, gt=0)  # |reference / baseline - 1| that counts as drift
    lock: bool = True  # hold a machine-wide lock while timing, so measurements never overlap
    #: "wall": wall-clock latency (what a user waits for; the default). "cpu": CPU time of the measuring
    #: thread per run -- with 1 thread on CPU it excludes time the worker was descheduled, a
    #: load-robust proxy for a shared machine; it is not a latency and is labelled as such.
    clock: Literal["wall", "cpu"] = "wall"
    #: pin the worker process to the last ``threads`` CPUs it may run on, so the scheduler never
    #: migrates it between cores mid-measurement (CPU targets only)
    pin: bool = True
    #: interleave the measured model with the reference preset (at the model's input size), ``pair_turn``
    #: runs of each in turn, after one discarded run per turn: the reply adds ``ref_ms`` (the
    #: reference's median in the same window) and ``ratio`` (median over turns of model / reference
    #: time). On a shared host whose speed moves by 10-50% within seconds, ``ratio`` times a fixed
    #: reference time is several times steadier than the raw median (experiments/README.md, issue #3)
    paired: bool = False
    pair_turn: int = Field(5, ge=1)
    #: lookup tables time whole networks (calibration, validation) for at least this long, 0 = ``min_seconds``:
    #: each one's error enters a table's correction and its validation whole, unlike a block's, which
    #: averages with the network's other blocks
    network_seconds: float = Field(0.0, ge=0)
    #: lookup tables time each whole network in this many worker sessions (fresh processes, the networks in a
    #: new order each time) and keep the median: one session's reading of a 32x32 network moved a median
    #: 4.7% (max 27%) between two sessions minutes apart on a shared 2-core host (experiments/README.md)
    network_sessions: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _consistent(self):
        if self.max_runs < self.min_runs:
            raise ValueError(f"max_runs {self.max_runs} is below min_runs {self.min_runs}")
        return self

    @classmethod
    def quick(cls, **changes) -> "MeasurementProtocol":
        """A short protocol for building lookup tables of many small blocks (and for tests)."""
        base = dict(warmup_runs=5, warmup_seconds=0.05, min_runs=20, min_seconds=0.15, reference_every=20,
                    paired=True, network_seconds=2.0, network_sessions=3)
        return cls(**{**base, **changes})

    def for_networks(self) -> "MeasurementProtocol":
        """This protocol for timing whole networks: at least ``network_seconds`` long."""
        if self.network_seconds <= self.min_seconds:
            return self
        return self.model_copy(update={"min_seconds": self.network_seconds,
                                       "max_seconds": max(self.max_seconds, 2 * self.network_seconds)})

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def check_available(target: LatencyTarget, protocol: MeasurementProtocol | None = None) -> None:
    """Raise a one-line error if this machine cannot measure ``target`` (checked before any worker starts)."""
    if target.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise LatencyError(f"device cuda requested but CUDA is not available on this machine "
                               f"(torch {torch.__version__}); use --device cpu or run on a GPU node")
        if target.runtime == "onnxruntime":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise LatencyError("device cuda with runtime onnxruntime needs onnxruntime-gpu "
                                   "(CUDAExecutionProvider is missing); install it or use --runtime eager")
    check_settings(target, protocol)
    if target.threads > (os.cpu_count() or 1):
        raise LatencyError(f"threads {target.threads} exceeds the {os.cpu_count()} CPU cores of this "
                           f"machine; use --threads {os.cpu_count()} or fewer")


def check_settings(target: LatencyTarget, protocol: MeasurementProtocol | None = None) -> None:
    """Raise a one-line error for a target and protocol that no machine can measure together (the part
    of :func:`check_available` that holds wherever the measuring happens, e.g. on another Ray node)."""
    if protocol is not None and protocol.clock == "cpu" and (target.threads != 1 or target.device != "cpu"):
        raise LatencyError(f"clock cpu measures one thread's CPU time, so it needs device cpu and threads 1 "
                           f"(got {target.device}, {target.threads} threads); use clock wall")


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict:
    """What a measurement depends on besides the target: library versions and the processor."""
    import onnxruntime
    import torch

    info = {"hostname": socket.gethostname(), "cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(terse=True),
            "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__}
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


#: what identifies the host a latency is measured on, in the order they are described
HOST_FIELDS = ("hostname", "cpu", "gpu", "runtime", "runtime_version", "threads")


def host_identity(target: LatencyTarget, machine: dict | None = None) -> dict:
    """The host a latency for ``target`` is measured on: hostname, processor model (and GPU on cuda),
    runtime and its version, threads. A lookup table is tagged with it and only used where it matches.

    ``machine`` is a :func:`machine_info` taken where the measuring happens (a worker's); without it,
    this process's.
    """
    m = machine if machine is not None else machine_info(target.device)
    version = m.get("onnxruntime") if target.runtime == "onnxruntime" else m.get("torch")
    host = {"hostname": m.get("hostname") or socket.gethostname(), "cpu": m.get("cpu"),
            "runtime": target.runtime, "runtime_version": version, "threads": target.threads}
    if target.device == "cuda":
        host["gpu"] = m.get("gpu")
    return {k: host[k] for k in HOST_FIELDS if k in host}


def describe_host(host: dict) -> str:
    """``hostname (processor, runtime version, N thread(s))`` on one line."""
    parts = [host.get("cpu"), host.get("gpu"),
             " ".join(str(v) for v in (host.get("runtime"), host.get("runtime_version")) if v),
             f"{host['threads']} thread(s)" if host.get("threads") is not None else None]
    return f"{host.get('hostname', '?')} ({', '.join(str(p) for p in parts if p)})"


def host_differences(have: dict, want: dict) -> list[str]:
    """The fields of :data:`HOST_FIELDS` in which two host identities differ."""
    return [k for k in HOST_FIELDS if (k in have or k in want) and have.get(k) != want.get(k)]
