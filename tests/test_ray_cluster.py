"""A search through ``--address`` on a real two-node Ray cluster, all on loopback.

Both nodes and the driver run inside a network namespace that has only
loopback (``unshare -n``) and a private PID namespace (so ``ray stop --force``
there can only stop this test's processes); every process carries the same
auth token (Ray 2.60 token authentication).
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from test_search_common import records, tiny_experiment

UNSHARE = ["unshare", "--net", "--pid", "--fork", "--mount-proc"]


def _namespaces_work() -> str | None:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "unshare/ip not installed"
    r = subprocess.run([*UNSHARE, "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    return None if r.returncode == 0 else f"network namespaces not permitted here ({r.stderr.strip()[:120]})"


def test_two_node_cluster_search_over_loopback(tmp_path):
    why = _namespaces_work()
    if why:
        pytest.skip(why)
    exp = tiny_experiment(tmp_path, name="two", backend="ray", trials=6, concurrency=2, budget_ms=50.0)
    ray = Path(sys.executable).with_name("ray")
    temp = Path(f"/tmp/rsn_{secrets.token_hex(4)}")
    script = textwrap.dedent(f"""
        set -u
        ip link set lo up
        export RAY_AUTH_MODE=token RAY_AUTH_TOKEN={secrets.token_hex(32)} RAY_USAGE_STATS_ENABLED=0
        common="--num-cpus=1 --object-store-memory=150000000 --disable-usage-stats"
        {ray} start --head --port=6390 --include-dashboard=false --temp-dir={temp} \\
            --resources='{{"latency_device": 1}}' $common >ray_head.log 2>&1 || exit 90
        {ray} start --address=127.0.0.1:6390 $common >ray_worker.log 2>&1 || exit 91
        {sys.executable} -m shufflenas search {exp} --address 127.0.0.1:6390 --json --no-onnx \\
            >search.json 2>search.log
        rc=$?
        {ray} stop --force >/dev/null 2>&1
        exit $rc
    """)
    try:
        r = subprocess.run([*UNSHARE, "bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                           timeout=280)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    log = lambda n: (tmp_path / n).read_text()[-2000:] if (tmp_path / n).exists() else ""
    assert r.returncode == 0, f"rc {r.returncode}\n{log('search.log')}\n{log('ray_head.log')}\n{r.stderr[-1000:]}"
    summary = json.loads((tmp_path / "search.json").read_text())
    assert summary["trials"] == 6 and summary["states"]["COMPLETE"] == 6
    recs = records(tmp_path / "run")
    assert len({x["node"] for x in recs}) == 2, "trials should have run on both nodes"
    assert all(x["latency_source"] == "measured" for x in recs)
