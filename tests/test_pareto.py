"""Pareto front, exact hypervolume (checked against brute force), knee point, reference point."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nas import pareto


def brute_non_dominated(p):
    out = []
    for i, a in enumerate(p):
        out.append(not any((b <= a).all() and (b < a).any() for j, b in enumerate(p) if j != i))
    return np.array(out)


def brute_hypervolume(p, ref):
    """Exact by cells: the grid of all point coordinates; add each cell some point dominates."""
    p = np.asarray([x for x in p if (x < ref).all()])
    if len(p) == 0:
        return 0.0
    axes = [np.unique(np.concatenate([p[:, k], [ref[k]]])) for k in range(len(ref))]
    total = 0.0
    for idx in itertools.product(*[range(len(a) - 1) for a in axes]):
        lo = np.array([axes[k][i] for k, i in enumerate(idx)])
        hi = np.array([axes[k][i + 1] for k, i in enumerate(idx)])
        if (p <= lo).all(axis=1).any():
            total += float(np.prod(hi - lo))
    return total


@pytest.mark.parametrize("d,n,seed", [(2, 30, 0), (3, 12, 1), (3, 15, 2), (4, 8, 3), (5, 6, 4)])
def test_hypervolume_equals_brute_force(d, n, seed):
    rng = np.random.default_rng(seed)
    p = rng.random((n, d))
    # include duplicates, ties on one coordinate, and a point outside the reference box
    p = np.vstack([p, p[:2], [p[0, 0]] + list(rng.random(d - 1)), np.full(d, 1.5)])
    ref = np.full(d, 1.1)
    assert pareto.hypervolume(p, ref) == pytest.approx(brute_hypervolume(p, ref), rel=1e-12)


def test_hypervolume_known_values():
    assert pareto.hypervolume([[1, 1]], [2, 2]) == 1.0
    assert pareto.hypervolume([[1, 2], [2, 1]], [3, 3]) == 3.0  # 2x1 + 1x2 - 1x1 overlap
    assert pareto.hypervolume([[1, 1, 1]], [2, 3, 4]) == 6.0
    assert pareto.hypervolume([], [1, 1]) == 0.0
    assert pareto.hypervolume([[2, 0]], [2, 1]) == 0.0  # not strictly better than ref


@pytest.mark.parametrize("seed", range(5))
def test_non_dominated_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    p = rng.integers(0, 5, size=(25, 3)).astype(float)  # many ties and duplicates
    assert (pareto.non_dominated(p) == brute_non_dominated(p)).all()


def test_maximize_is_negated():
    v = pareto.to_minimization([[0.9, 3.0], [0.8, 1.0], [0.7, 2.0]], ["maximize", "minimize"])
    assert pareto.non_dominated(v).tolist() == [True, True, False]


def test_knee_point_is_the_balanced_one():
    front = np.array([[0.0, 10.0], [1.0, 1.0], [10.0, 0.0], [5.0, 0.5]])
    assert pareto.knee_point(front) == 1
    assert pareto.knee_point([[3.0, 4.0]]) == 0
    with pytest.raises(ValueError):
        pareto.knee_point([])


def test_reference_point_is_worse_than_every_point():
    p = np.array([[1.0, 5.0], [2.0, 3.0], [4.0, 4.0]])
    ref = pareto.reference_point(p)
    assert (ref > p.max(axis=0)).all()
    assert pareto.hypervolume(p, ref) > 0
