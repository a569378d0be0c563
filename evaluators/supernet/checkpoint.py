"""Supernet checkpoints: weights plus the space and config they belong to, in one file.

Written atomically (temp file + ``os.replace``) and read with
``torch.load(weights_only=True)``: only tensors and plain data inside.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch

from search_space import SearchSpace
from search_space.errors import ShuffleNASError

from .config import SupernetConfig
from .network import Supernet, SupernetError

FORMAT = "shufflenas-supernet/1"


def space_outside(space: SearchSpace, outer: SearchSpace) -> list[str]:
    """Why ``space`` is not a subspace of ``outer`` (the supernet's): one entry per choice it lacks."""
    a, b = space.spec, outer.spec
    out = [f"{f}={getattr(a, f)} (supernet: {getattr(b, f)})" for f in ("input_size", "in_channels", "num_classes")
           if getattr(a, f) != getattr(b, f)]
    if len(a.stages) != len(b.stages):
        return out + [f"{len(a.stages)} stages (supernet: {len(b.stages)})"]
    theirs = {d.name: d.choices for d in outer.dimensions}
    for d in space.dimensions:
        extra = [c for c in d.choices if c not in theirs.get(d.name, ())]
        if extra:
            out.append(f"{d.name} {extra} (supernet: {list(theirs.get(d.name, ()))})")
    return out


def space_differences(want: dict, have: dict, path: str = "") -> list[str]:
    """``field: value (checkpoint: value)`` for every field where space dict ``want`` differs from ``have``."""
    if isinstance(want, dict) and isinstance(have, dict):
        out = []
        for k in sorted(set(want) | set(have), key=str):
            out += space_differences(want.get(k), have.get(k), f"{path}.{k}" if path else str(k))
        return out
    if isinstance(want, list) and isinstance(have, list) and len(want) == len(have) and \
            all(isinstance(v, dict) for v in want + have):
        return [d for i, (a, b) in enumerate(zip(want, have)) for d in space_differences(a, b, f"{path}.{i}")]
    return [] if want == have else [f"{path}={want} (checkpoint: {have})"]


def save_checkpoint(path: str | Path, supernet: Supernet, config: SupernetConfig, *, epoch: int,
                    optimizer: dict | None = None, history: list | None = None, data: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT, "space": supernet.space.to_dict(), "config": config.to_dict(),
        "epoch": epoch, "data": data, "history": history or [],
        "state_dict": supernet.state_dict(), "optimizer": optimizer,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict; one-line SupernetError if missing or not a supernet checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise SupernetError(f"{path}: no such supernet checkpoint; train one with `shufflenas supernet train`")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before refusing them: one line is enough
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated or not a torch file
        raise SupernetError(f"{path}: not a readable supernet checkpoint ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:120]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SupernetError(f"{path}: not a supernet checkpoint (expected format {FORMAT})")
    return state


def load_supernet(path: str | Path) -> Supernet:
    """The trained supernet stored at ``path`` (eval mode)."""
    state = read_checkpoint(path)
    try:
        space = SearchSpace.from_dict(state["space"], source=f"{path} (stored space)")
        config = SupernetConfig.from_dict(state["config"])
    except ShuffleNASError as exc:
        raise SupernetError(f"{path}: stored space/config invalid: {exc}") from None
    net = Supernet(space, affine_bn=config.affine_bn)
    try:
        net.load_state_dict(state["state_dict"], strict=True)
    except RuntimeError as exc:
        raise SupernetError(f"{path}: weights do not match the stored space ({str(exc).splitlines()[0][:160]})") from None
    net.config, net.epoch, net.history, net.data = config, state["epoch"], state["history"], state.get("data", "")
    return net.eval()
