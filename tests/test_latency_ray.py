"""Ray actor: placed by the custom resource, get-or-create by name, clear error without the resource.

One private single-node Ray for the module, bound to 127.0.0.1 only (NOTES.md).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from evaluators.latency import LatencyError, LatencyTarget, MeasurementProtocol

FAST = MeasurementProtocol.quick(min_runs=10, min_seconds=0.03, warmup_seconds=0.01, reference_every=0)


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    from evaluators.ray_cluster import start_private_cluster

    start_private_cluster(num_cpus=2, resources={"latency_device": 1})  # loopback only
    yield ray
    ray.shutdown()


def test_ray_is_imported_lazily():
    """Only ray_actor.py imports Ray, and only inside a function (so importing it stays cheap)."""
    root = Path(__file__).resolve().parents[1]
    files = [*sorted((root / "evaluators" / "latency").glob("*.py")), root / "shufflenas" / "commands" / "latency.py"]
    for f in files:
        tree = ast.parse(f.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "ray" or n.startswith("ray.") for n in names):
                assert f.name == "ray_actor.py" and id(node) not in top, f"{f.name} imports ray"


@pytest.mark.slow
def test_actor_measures_on_the_resource_node(ray_local, tiny_arch):
    from evaluators.latency.ray_actor import latency_actor

    ray = ray_local
    handle = latency_actor(LatencyTarget(), protocol=FAST)
    r = ray.get(handle.latency.remote(tiny_arch.to_dict()), timeout=120)
    assert r["source"] == "measured" and r["median_ms"] > 0 and r["runs"] >= FAST.min_runs
    same = latency_actor(LatencyTarget(), protocol=FAST)  # get-or-create by name
    info, info2 = ray.get([handle.info.remote(), same.info.remote()])
    assert info["actor_pid"] == info2["actor_pid"] and info["worker_pid"] != os.getpid()
    with pytest.raises(LatencyError, match="no Ray node offers the resource 'gpu_phone'"):
        latency_actor(LatencyTarget(), resource="gpu_phone")
    ray.get(handle.close.remote())
    ray.kill(handle)
