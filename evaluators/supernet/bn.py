"""BatchNorm statistics re-estimated for one sub-network (SPOS scores candidates this way).

Running statistics collected while the supernet trained mix every sampled path,
so a candidate's own statistics are re-estimated on a few training batches
before it is scored; its weights stay untouched.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable) -> nn.Module:
    """Reset every BatchNorm's running mean/var and re-estimate them as an exact average over ``batches``.

    ``batches`` yields image tensors or ``(images, labels)`` pairs. The model is
    left in eval mode; momentum is restored afterwards.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    for b in batches:
        model(b[0] if isinstance(b, (tuple, list)) else b)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return model.eval()
