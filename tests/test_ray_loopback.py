"""The private local Ray cluster the tool starts listens on loopback only (checked with ``ss -ltn``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) not installed"),
              pytest.mark.slow]  # each test starts a real Ray cluster


def descendants(root: int) -> set[int]:
    children: dict[int, set[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), set()).add(int(stat.parent.name))
    out, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def test_private_cluster_binds_only_loopback():
    import ray

    from evaluators.ray_cluster import listening_addresses, start_private_cluster

    if ray.is_initialized():
        ray.shutdown()
    start_private_cluster(num_cpus=1, resources={"latency_device": 1})
    try:
        @ray.remote
        def node_ip():
            return ray.util.get_node_ip_address()

        assert ray.get(node_ip.remote()) == "127.0.0.1"
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        addrs = listening_addresses(descendants(os.getpid()) | {os.getpid()})
        assert addrs, "found none of Ray's listening sockets"
        outward = [a for a in addrs if not a.rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")
                   .startswith("127.")]
        assert outward == [], f"Ray listens beyond loopback: {outward}"
    finally:
        ray.shutdown()


def test_loopback_switch_does_not_leak_into_the_environment():
    """A leaked RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes every later 'ray start --address' refuse to join."""
    import ray

    from evaluators.ray_cluster import start_private_cluster

    if ray.is_initialized():
        ray.shutdown()
    before = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    start_private_cluster(num_cpus=1)
    try:
        assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == before
        from ray._private import ray_constants

        assert ray_constants.ENABLE_RAY_CLUSTER is True or before == "0"
        assert ray.util.get_node_ip_address() == "127.0.0.1"  # the running driver keeps its address
    finally:
        ray.shutdown()
