"""What every evaluator hands back, and the two interfaces the search relies on.

The search (``nas/``) knows evaluators only through these types: an accuracy
evaluator scores an Architecture, a latency estimator gives its latency on
the target. Everything a score carries is plain data, so it can be written to
``trials.jsonl`` and sent between Ray processes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Protocol, runtime_checkable

from search_space import Architecture

#: Called after each epoch with (epoch index from 1, validation accuracy in [0, 1]).
#: Returning True asks the trainer to stop early (e.g. a Ray Tune scheduler decided so).
EpochCallback = Callable[[int, float], Optional[bool]]


@dataclass
class AccuracyResult:
    accuracy: float  # validation accuracy in [0, 1]
    loss: float = float("nan")
    seconds: float = 0.0  # wall time of the evaluation
    epochs: int = 0  # epochs actually run (proxy training), 0 for one-shot / zero-cost
    stopped_early: bool = False
    checkpoint: Optional[str] = None  # path of saved weights (safe to load with weights_only=True)
    #: evaluator-specific data; proxy training: history, config (the recipe), placement (device,
    #: amp, channels_last used), train_seconds, and for streamed folders skipped_images
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LatencyResult:
    median_ms: float
    p90_ms: float = float("nan")
    iqr_rel: float = float("nan")  # inter-quartile range / median
    runs: int = 0
    flagged: bool = False  # spread stayed above the threshold after repeats
    attempts: int = 1
    source: str = "measured"  # "measured" | "lut"
    target: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class AccuracyEvaluator(Protocol):
    name: str

    def evaluate(self, arch: Architecture, callback: EpochCallback | None = None) -> AccuracyResult:
        ...


@runtime_checkable
class LatencyEstimator(Protocol):
    def latency(self, arch: Architecture) -> LatencyResult:
        ...
