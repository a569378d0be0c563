"""The private local Ray cluster the tool starts listens on loopback only (checked with ``ss -ltn``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) not installed")


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
