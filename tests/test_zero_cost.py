"""Zero-cost proxies: deterministic, finite, discriminating; the evaluator wrapper."""

from __future__ import annotations

import math

import pytest
import torch

from evaluators.zero_cost import PROXIES, ZeroCostError, ZeroCostEvaluator, score


@pytest.mark.parametrize("proxy", sorted(PROXIES))
def test_proxy_is_deterministic_finite_and_depends_on_the_architecture(proxy, tiny_arch):
    a = score(tiny_arch, proxy, batch_size=16, seed=0)
    assert math.isfinite(a)
    assert score(tiny_arch, proxy, batch_size=16, seed=0) == a
    wider = tiny_arch.replace(stages=[{"unit": "v2", "channels": 32, "depth": 2},
                                      {"unit": "v2", "channels": 64, "depth": 2}])
    assert score(wider, proxy, batch_size=16, seed=0) != a


def test_evaluator_reports_the_score_as_accuracy_with_the_proxy_named(tiny_arch):
    from evaluators.data import DataSplits, TensorData

    g = torch.Generator().manual_seed(0)
    split = lambda n: TensorData(torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8),
                                 torch.randint(0, 10, (n,), generator=g))
    data = DataSplits(name="random", train=split(32), val=split(8), num_classes=10,
                      mean=(0.5,) * 3, std=(0.3,) * 3)
    ev = ZeroCostEvaluator("naswot", data, batch_size=16)
    r = ev.evaluate(tiny_arch)
    assert ev.name == "zero_cost:naswot" and r.extra["proxy"] == "naswot" and r.epochs == 0
    assert r.accuracy == score(tiny_arch, "naswot", batch_size=16, data=data)
    assert r.accuracy != score(tiny_arch, "naswot", batch_size=16)  # data vs noise batch


def test_unknown_proxy_and_mismatched_data(tiny_arch):
    with pytest.raises(ZeroCostError, match="unknown zero-cost proxy 'snip'; choose from synflow"):
        ZeroCostEvaluator("snip")
    with pytest.raises(ZeroCostError, match="unknown zero-cost proxy"):
        score(tiny_arch, "snip")
