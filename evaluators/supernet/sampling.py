"""Which paths the supernet trains at a step.

* Uniform single-path sampling, one choice per open dimension of the space
  (SPOS, Guo et al. 2020), optionally kept inside a cost band by rejection:
  SPOS's ``get_uniform_sample_cand`` picks one of several equal sub-bands of
  the FLOPs range, then draws up to a bounded number of candidates until one
  falls inside (megvii-model/SinglePathOneShot, src/Supernet/train.py; NNI's
  ``SPOSSupernetTrainingMutator`` does the same). Cost is multiply-adds from
  the space's cost model, or latency predicted by a lookup table.
* Depth: ``uniform`` draws a stage's depth uniformly among its choices, as
  SPOS and OFA's ``sample_active_subnet`` do; ``balanced`` draws depth d with
  probability proportional to d, so the last units of a stage (which only
  deep paths use) train more often.
* The largest and the smallest path (the sandwich rule of BigNAS, and the
  first phase of OFA's progressive shrinking) are the space's extremes in
  multiply-adds, found by coordinate ascent over the open dimensions, so any
  dimension the space adds is covered without special cases.

Every draw comes from a generator seeded by (seed, step, slot), so a step's
paths are the same in every distributed worker and after a resume.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from typing import Callable, Optional

import torch

from search_space import Architecture, SearchSpace, profile

from .config import SupernetConfig
from .network import SupernetError


def step_generator(seed: int, *keys) -> torch.Generator:
    """A torch.Generator seeded by a hash of ``(seed, *keys)`` (independent streams per purpose/step)."""
    digest = hashlib.blake2b(repr((seed, *keys)).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


def macs(arch: Architecture) -> float:
    return float(profile(arch).macs)


def latency_cost(lut_path: str) -> Callable[[Architecture], float]:
    """Predicted latency (ms) from the lookup table at ``lut_path``."""
    from evaluators.latency import LatencyLUT  # onnxruntime behind it: only when a latency band is asked for

    lut = LatencyLUT.load(lut_path)
    return lut.predict


class PathSampler:
    """Draws architectures of ``space``: uniform per dimension, depth per ``depth``, optionally in a band."""

    def __init__(self, space: SearchSpace, band: Optional[tuple[float, float]] = None, *,
                 cost: Callable[[Architecture], float] = macs, cost_name: str = "macs", bins: int = 1,
                 max_tries: int = 500, depth: str = "uniform"):
        self.space, self.band, self.cost, self.cost_name = space, band, cost, cost_name
        self.bins, self.max_tries, self.depth = bins, max_tries, depth
        self._dims = space.open_dimensions

    @classmethod
    def from_config(cls, space: SearchSpace, config: SupernetConfig) -> "PathSampler":
        kw = dict(bins=config.band_bins, max_tries=config.band_tries, depth=config.depth_sampling)
        if config.latency_band is not None:
            return cls(space, config.latency_band, cost=latency_cost(config.lut), cost_name="latency_ms", **kw)
        return cls(space, config.flops_band, **kw)

    def _draw(self, gen: torch.Generator) -> Architecture:
        params = {}
        for d in self._dims:
            if self.depth == "balanced" and d.name.endswith(".depth"):
                weights = torch.tensor([float(c) for c in d.choices])
                i = int(torch.multinomial(weights, 1, generator=gen))
            else:
                i = int(torch.randint(len(d.choices), (1,), generator=gen))
            params[d.name] = d.choices[i]
        return self.space.decode(params)

    def sample(self, gen: torch.Generator) -> Architecture:
        if self.band is None:
            return self._draw(gen)
        lo, hi = self.band
        width = (hi - lo) / self.bins
        b = int(torch.randint(self.bins, (1,), generator=gen))
        for a, z in ((lo + b * width, lo + (b + 1) * width), (lo, hi)):  # the sub-band, then the whole band
            for _ in range(self.max_tries):
                arch = self._draw(gen)
                if a <= self.cost(arch) <= z:
                    return arch
        unit = "multiply-adds" if self.cost_name == "macs" else "ms"
        raise SupernetError(f"no architecture with {self.cost_name} in [{lo:.4g}, {hi:.4g}] {unit} found in "
                            f"{2 * self.max_tries} samples of space {self.space.name!r}; widen "
                            f"--{'flops' if self.cost_name == 'macs' else 'latency'}-band")

    def _extreme(self, sign: int) -> Architecture:
        params = {d.name: d.choices[0] for d in self._dims}
        best = sign * macs(self.space.decode(params))
        for _ in range(8):  # coordinate ascent; converges in 2-3 rounds
            changed = False
            for d in self._dims:
                for c in d.choices:
                    trial = {**params, d.name: c}
                    v = sign * macs(self.space.decode(trial))
                    if v > best:
                        params, best, changed = trial, v, True
            if not changed:
                break
        return self.space.decode(params)

    @cached_property
    def largest(self) -> Architecture:
        """The path with the most multiply-adds (every unit of every stage, widest, largest kernels)."""
        return self._extreme(+1)

    @cached_property
    def smallest(self) -> Architecture:
        return self._extreme(-1)

    def step_paths(self, config: SupernetConfig, step: int, total: int) -> list[tuple[str, Architecture]]:
        """``[(role, arch), ...]`` trained at ``step`` of ``total``; role is ``largest``, ``smallest`` or ``random``.

        In the sandwich the largest comes first: the others learn its soft labels.
        """
        if step < config.largest_warmup * total:
            return [("largest", self.largest)]
        if config.strategy == "sandwich":
            rand = [("random", self.sample(step_generator(config.seed, "path", step, k)))
                    for k in range(config.sandwich_random)]
            return [("largest", self.largest), ("smallest", self.smallest), *rand]
        return [("random", self.sample(step_generator(config.seed, "path", step, 0)))]
