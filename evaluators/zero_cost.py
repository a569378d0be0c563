"""Zero-cost proxies: score an untrained network from one forward/backward pass.

* ``synflow`` -- Tanaka et al. 2020 (SynFlow), used for NAS by Abdelfattah et
  al. 2021: with all weights replaced by their absolute values and an all-ones
  input, ``R = sum(output)``; score = ``sum |theta * dR/dtheta|`` over all
  weights. Data-free. BatchNorm runs in eval mode with fresh statistics (the
  identity up to 1/sqrt(1+eps)), as the zero-cost paper's "no BN" variant.
  Computed in float64; reported as log10 of the sum (same ranking, no overflow).
* ``naswot`` -- Mellor et al. 2021 (NAS without training): for a batch, the
  binary activation pattern ``c_i`` (unit > 0) of every ReLU/h-swish input;
  ``K = c c^T + (1-c)(1-c)^T`` (agreements between every pair of images);
  score = log|det K|.
* ``grad_norm`` -- Abdelfattah et al. 2021: sum over weight tensors of the L2
  norm of the cross-entropy gradient on one batch.

All are higher-is-better. With ``data=None`` the batch is seeded Gaussian
noise with random labels (documented proxy-without-data mode); given a
dataset, it is a seeded batch of training images. Same seed => same score
(on the CPU, bit for bit at a given thread count; see ``evaluators.device``).

``device`` (auto, cpu, cuda, cuda:N, mps) is where the network runs; the batch
and the initial weights are drawn on the CPU first, so every device scores the
same network on the same batch. No mixed precision: the scores are sums over
every weight. MPS has no float64, so synflow runs on the CPU there.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from search_space import Architecture, build_model
from search_space.errors import ShuffleNASError

from .base import AccuracyResult, EpochCallback
from .device import check_device_setting, resolve_device


class ZeroCostError(ShuffleNASError):
    """Unknown proxy or a batch that does not fit the architecture."""


def synflow(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    if x.device.type == "mps":  # no float64 there
        model, x = model.cpu(), x.cpu()
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    model.zero_grad()
    out = model(torch.ones((1, *x.shape[1:]), dtype=torch.float64, device=x.device))
    out.sum().backward()
    total = sum(float((p.detach() * p.grad).abs().sum()) for p in model.parameters() if p.grad is not None)
    return math.log10(total) if total > 0 else float("-inf")


def naswot(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    k = torch.zeros((len(x), len(x)), dtype=torch.float64)

    def hook(_module, inputs):  # a pre-hook: ReLU(inplace=True) overwrites its input
        nonlocal k
        c = (inputs[0].detach().flatten(1) > 0).float()
        # summed per layer on the CPU in float64 (never all codes at once; MPS has no float64)
        k += (c @ c.T + (1 - c) @ (1 - c).T).double().cpu()

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if isinstance(m, (nn.ReLU, nn.Hardswish))]
    try:
        model.train()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return float(torch.linalg.slogdet(k)[1])


def grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.train()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return float(sum(float(p.grad.norm()) for p in model.parameters() if p.grad is not None and p.dim() > 1))


#: name -> function(freshly initialised model, images, labels) -> higher-is-better score
PROXIES: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], float]] = {
    "synflow": synflow,
    "naswot": naswot,
    "grad_norm": grad_norm,
}


def _batch(arch: Architecture, batch_size: int, seed: int, data=None) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    if data is None:
        x = torch.randn((batch_size, arch.in_channels, arch.input_size, arch.input_size), generator=gen)
        return x, torch.randint(0, arch.num_classes, (batch_size,), generator=gen)
    from .data import batches

    if data.input_size != arch.input_size or data.in_channels != arch.in_channels:
        raise ZeroCostError(f"data {data.name} is {data.in_channels}x{data.input_size}x{data.input_size}; "
                            f"the architecture expects {arch.in_channels}x{arch.input_size}x{arch.input_size}")
    return next(batches(data.train, batch_size, shuffle=True, augment=False, generator=gen,
                        mean=data.mean, std=data.std, workers=0))  # one batch: no loader processes


def score(arch: Architecture, proxy: str, *, batch_size: int = 64, seed: int = 0, data=None,
          device: str = "auto") -> float:
    """The ``proxy`` score of ``arch`` initialised with ``seed`` (higher is better), computed on ``device``."""
    if proxy not in PROXIES:
        raise ZeroCostError(f"unknown zero-cost proxy {proxy!r}; choose from {', '.join(PROXIES)}")
    dev = resolve_device(device)
    x, y = _batch(arch, batch_size, seed, data)
    torch.manual_seed(seed)
    model = build_model(arch)
    return PROXIES[proxy](model.to(dev), x.to(dev), y.to(dev))


class ZeroCostEvaluator:
    """AccuracyEvaluator whose ``accuracy`` field is the proxy score, not an accuracy.

    For zero-cost evaluators ``AccuracyResult.accuracy`` holds the higher-is-better
    proxy score (its scale is the proxy's own, not [0, 1]) and ``extra["proxy"]``
    names the proxy. Use it to rank candidates, never to report accuracy.
    """

    def __init__(self, proxy: str = "synflow", data=None, *, batch_size: int = 64, seed: int = 0,
                 subset: Optional[int] = 2000, threads: Optional[int] = None, device: str = "auto"):
        if proxy not in PROXIES:
            raise ZeroCostError(f"unknown zero-cost proxy {proxy!r}; choose from {', '.join(PROXIES)}")
        self.device = check_device_setting(device)  # well-formed now; present where it scores (a Ray worker)
        self.proxy, self.name = proxy, f"zero_cost:{proxy}"
        self._data, self.batch_size, self.seed, self.subset, self.threads = data, batch_size, seed, subset, threads
        self._splits: dict[tuple[int, int], object] = {}

    def _data_for(self, arch: Architecture):
        if self._data is None or not isinstance(self._data, str):
            return self._data
        key = (arch.input_size, arch.in_channels)
        if key not in self._splits:
            from .data import load_dataset

            self._splits[key] = load_dataset(self._data, input_size=arch.input_size,
                                             in_channels=arch.in_channels, subset=self.subset, seed=self.seed)
        return self._splits[key]

    def evaluate(self, arch: Architecture, callback: EpochCallback | None = None) -> AccuracyResult:
        if self.threads:
            torch.set_num_threads(self.threads)
        dev = resolve_device(self.device)  # before any data is loaded
        data = self._data_for(arch)
        t0 = time.perf_counter()
        s = score(arch, self.proxy, batch_size=self.batch_size, seed=self.seed, data=data, device=str(dev))
        return AccuracyResult(accuracy=s, seconds=time.perf_counter() - t0, epochs=0,
                              extra={"proxy": self.proxy, "higher_is_better": True, "device": str(dev)})
