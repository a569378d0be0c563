"""Latency of an Architecture on the target device: measured, or predicted from a lookup table.

>>> from evaluators.latency import LatencyTarget, measure
>>> measure(presets.get("shufflenet_v2_x1_0"), LatencyTarget(threads=1)).median_ms  # doctest: +SKIP

Measurements run in a separate worker process with the thread count fixed
before anything is built, one at a time under a machine-wide lock; the Ray
actor for clusters lives in :mod:`evaluators.latency.ray_actor` (imports Ray).
"""

from .target import (ExportError, LatencyError, LatencyTarget, LUTMissingError, MeasurementProtocol,
                     check_available, machine_info)
from .worker import MeasurementWorker, measure

__all__ = ["LatencyTarget", "MeasurementProtocol", "measure", "MeasurementWorker", "LatencyError",
           "ExportError", "LUTMissingError", "check_available", "machine_info"]
