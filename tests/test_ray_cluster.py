"""A search through ``--address`` on a real two-node Ray cluster, all on loopback (tests/loopback_cluster.py)."""

from __future__ import annotations

import json
import sys

import pytest

from loopback_cluster import LoopbackCluster, namespaces_work
from test_search_common import records, tiny_experiment


def test_two_node_cluster_search_over_loopback(tmp_path):
    why = namespaces_work()
    if why:
        pytest.skip(why)
    exp = tiny_experiment(tmp_path, name="two", backend="ray", trials=6, concurrency=2, budget_ms=50.0)
    search = f"{sys.executable} -m shufflenas search {exp} --address $ADDRESS --json --no-onnx >search.json 2>search.log"
    cluster = LoopbackCluster(tmp_path, search, head={"cpus": 1, "resources": {"latency_device": 1}},
                              workers=[{"cpus": 1}])
    rc, out = cluster.run()
    assert rc == 0, f"rc {rc}\n{cluster.log('search.log')}\n{cluster.log('ray_head.log')}\n{out[-1000:]}"
    summary = json.loads((tmp_path / "search.json").read_text())
    assert summary["trials"] == 6 and summary["states"]["COMPLETE"] == 6
    recs = records(tmp_path / "run")
    assert len({x["node"] for x in recs}) == 2, "trials should have run on both nodes"
    assert all(x["latency_source"] == "measured" for x in recs)
