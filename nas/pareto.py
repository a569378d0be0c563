"""Pareto front, hypervolume and knee point (numpy only; every objective minimised).

Callers turn maximised objectives into minimised ones by negating them
(:func:`to_minimization`). The hypervolume is exact: a sweep in 2-D and the
WFG algorithm (While, Bradstreet & Barone, 2012) in more dimensions.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def to_minimization(values, directions: Sequence[str]) -> np.ndarray:
    """``values`` (n x d) with every ``maximize`` column negated."""
    v = np.asarray(values, dtype=float).reshape(-1, len(directions))
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return v * sign


def non_dominated(points) -> np.ndarray:
    """Boolean mask of the points no other point dominates (minimisation).

    Equal points do not dominate each other: duplicates are all kept (the
    caller deduplicates architectures before this).
    """
    p = np.asarray(points, dtype=float)
    if p.size == 0:
        return np.zeros(0, dtype=bool)
    le = (p[:, None, :] <= p[None, :, :]).all(axis=2)  # le[j, i]: j <= i everywhere
    lt = (p[:, None, :] < p[None, :, :]).any(axis=2)
    dominated = (le & lt).any(axis=0)
    return ~dominated


def _hv2d(p: np.ndarray, ref: np.ndarray) -> float:
    p = p[np.argsort(p[:, 0], kind="stable")]
    hv, best_y = 0.0, ref[1]
    for x, y in p:
        if y < best_y:
            hv += (ref[0] - x) * (best_y - y)
            best_y = y
    return hv


def _wfg(p: np.ndarray, ref: np.ndarray) -> float:
    if len(p) == 0:
        return 0.0
    if p.shape[1] == 1:
        return float(ref[0] - p[:, 0].min())
    if p.shape[1] == 2:
        return _hv2d(p, ref)
    p = p[np.argsort(p[:, 0], kind="stable")]
    total = 0.0
    for k in range(len(p)):
        incl = float(np.prod(ref - p[k]))
        rest = np.maximum(p[k + 1:], p[k])  # the part of later boxes inside p[k]'s box
        if len(rest):
            rest = rest[non_dominated(rest)]
            rest = np.unique(rest, axis=0)
        total += incl - _wfg(rest, ref)
    return total


def hypervolume(points, ref) -> float:
    """Exact volume dominated by ``points`` and bounded by ``ref`` (minimisation).

    Points not strictly better than ``ref`` in every objective add nothing.
    """
    p = np.asarray(points, dtype=float)
    ref = np.asarray(ref, dtype=float)
    if p.size == 0:
        return 0.0
    p = p.reshape(-1, ref.size)
    p = p[(p < ref).all(axis=1)]
    if len(p) == 0:
        return 0.0
    p = np.unique(p[non_dominated(p)], axis=0)
    return float(_wfg(p, ref))


def reference_point(points, margin: float = 0.1) -> np.ndarray:
    """Nadir of ``points`` pushed out by ``margin`` of each objective's range (a common default)."""
    p = np.asarray(points, dtype=float)
    lo, hi = p.min(axis=0), p.max(axis=0)
    span = np.where(hi > lo, hi - lo, np.maximum(np.abs(hi), 1.0))
    return hi + margin * span


def knee_point(front) -> int:
    """Index of the front point closest to the ideal point after scaling each objective to [0, 1].

    With two objectives this is the usual "best trade-off" pick; a single point is its own knee.
    """
    f = np.asarray(front, dtype=float)
    if len(f) == 0:
        raise ValueError("empty front has no knee point")
    lo, hi = f.min(axis=0), f.max(axis=0)
    scaled = (f - lo) / np.where(hi > lo, hi - lo, 1.0)
    return int(np.argmin(np.linalg.norm(scaled, axis=1)))
