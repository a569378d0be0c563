"""Scores of an Architecture: latency on the target device and accuracy on a dataset.

``evaluators`` depends on ``search_space`` only; the search (``nas``) depends on it.
"""

from .base import AccuracyEvaluator, AccuracyResult, EpochCallback, LatencyEstimator, LatencyResult

__all__ = ["AccuracyEvaluator", "AccuracyResult", "EpochCallback", "LatencyEstimator", "LatencyResult"]
