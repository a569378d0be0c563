"""Shared fixtures. Tests use tiny networks and data; real-size runs live in experiments/.

Tests that start Ray clusters or several processes, run whole searches, or train or build a table for
more than ~10 s are marked ``slow``: ``pytest -m "not slow"`` is the fast subset, and every module keeps
fast tests of its own logic there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHUFFLENAS_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Keep every test process on one thread and Ray quiet and local.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real CIFAR-10, Fashion-MNIST); skipped on a user's clone without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present (real datasets for offline machines)")
    return SHARED_DATA


@pytest.fixture
def tiny_arch():
    from search_space import Architecture

    return Architecture(
        name="tiny", input_size=16, num_classes=10,
        stem={"channels": 8, "stride": 1, "maxpool": False},
        stages=[{"unit": "v2", "channels": 16, "depth": 2}, {"unit": "v2", "channels": 32, "depth": 1}],
        head_channels=64,
    )


TINY_SPACE = """
name: tiny
input_size: 16
num_classes: 10
stem: {channels: 8, stride: 1, maxpool: false}
stages:
  - {unit: v2, channels: [16, 24], depth: [1, 2], kernel: [3, 5]}
  - {unit: v2, channels: [32, 48], depth: [1, 2], kernel: [3, 5]}
head_channels: [null, 64]
"""


@pytest.fixture
def tiny_space_file(tmp_path) -> Path:
    p = tmp_path / "tiny_space.yaml"
    p.write_text(TINY_SPACE)
    return p


@pytest.fixture
def tiny_space(tiny_space_file):
    from search_space import SearchSpace

    return SearchSpace.from_yaml(tiny_space_file)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """Run ``python -m shufflenas ARGS`` in a fresh process; returns CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "shufflenas", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def cli():
    return run_cli
