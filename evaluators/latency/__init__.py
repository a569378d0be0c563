"""Latency of an Architecture on the target device: measured, or predicted from a lookup table.

>>> from evaluators.latency import LatencyTarget, measure
>>> measure(presets.get("shufflenet_v2_x1_0"), LatencyTarget(threads=1)).median_ms  # doctest: +SKIP

Measurements run in a separate worker process with the thread count fixed
before anything is built, one at a time under a machine-wide lock; the Ray
actor for clusters lives in :mod:`evaluators.latency.ray_actor` (imports Ray).
"""

from .lut import LatencyLUT, space_blocks
from .target import (ExportError, LatencyError, LatencyTarget, LUTMissingError, MeasurementProtocol,
                     check_available, machine_info)
from .validation import error_metrics, held_out_sample, validate_lut
from .worker import MeasurementWorker, measure

__all__ = ["LatencyTarget", "MeasurementProtocol", "measure", "MeasurementWorker", "LatencyLUT", "space_blocks",
           "validate_lut", "held_out_sample", "error_metrics", "LatencyError", "ExportError", "LUTMissingError",
           "check_available", "machine_info"]
