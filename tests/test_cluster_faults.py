"""Cluster faults on a real multi-node Ray cluster on loopback: worker nodes killed (SIGKILL of the
whole node) in the middle of a search run through ``--address`` (tests/loopback_cluster.py).

Trials are short proxy trainings (a few seconds), so a node is killed while a
trial or the latency actor runs on it: the test waits until the process is
there, then kills the node.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
from pathlib import Path

import pytest
import yaml

from loopback_cluster import LoopbackCluster, namespaces_work, node_options
from nas.run_folder import TRIALS_JSONL, RunFolder
from test_search_common import records, tiny_experiment

needs_namespaces = pytest.mark.skipif(namespaces_work() is not None, reason=str(namespaces_work()))
pytestmark = pytest.mark.slow  # real multi-node Ray clusters

TRIAL = "ray::ImplicitFunc.train"  # a Tune trial running on that node
LATENCY_ACTOR = "ray::LatencyActor"
DEVICE = {"latency_device": 1}
LOST = re.compile(r"its node ([0-9a-f]+) left the Ray cluster")


def experiment(tmp: Path, name: str, **search) -> Path:
    p = tiny_experiment(tmp, name=name, backend="ray", accuracy={
        "method": "proxy_training", "subset": 300, "train": {"epochs": 3, "batch_size": 64, "threads": 1}}, **search)
    d = yaml.safe_load(p.read_text())
    d["latency"]["remeasure_front"] = False  # (measured on the device already)
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def search(exp: Path, out: str = "search", *args: str) -> str:
    return (f"{sys.executable} -m shufflenas search {exp} --address $ADDRESS --json --no-onnx {' '.join(args)} "
            f">{out}.json 2>{out}.log")


def wait_records(run_dir: Path, n: int, cluster: LoopbackCluster, log: str = "search.log",
                 timeout: float = 120) -> list[dict]:
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert cluster.proc.poll() is None, cluster.log(log)
        if RunFolder(run_dir).trials_jsonl.exists() and len(recs := records(run_dir)) >= n:
            return recs
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} trials recorded within {timeout} s")


def run_through(cluster: LoopbackCluster, during, log: str = "search.log"):
    """Start ``cluster`` (its command runs the search), call ``during(cluster)`` while the command
    runs, wait for the command, close the cluster. Returns what ``during`` returned, the command's
    exit status, and a failure message with the search's log and the command's output tail."""
    cluster.start()
    try:
        got = during(cluster)
        rc, out = cluster.wait()
    finally:
        cluster.close()
    return got, rc, f"rc {rc}\n{cluster.log(log)}\n{out[-1000:]}"


def assert_kept(before: list[dict], after: list[dict]) -> None:
    """Every trial finished before the kill is still recorded, unchanged."""
    by_id = {x["trial_id"]: x for x in after}
    for b in before:
        assert {k: by_id[b["trial_id"]][k] for k in ("started", "state", "node", "accuracy")} == \
            {k: b[k] for k in ("started", "state", "node", "accuracy")}


@needs_namespaces
def test_worker_node_killed_mid_trial_the_trial_is_retried(tmp_path):
    exp = experiment(tmp_path, "retry", trials=4, concurrency=2, ray={"max_failures": 1})
    cluster = LoopbackCluster(tmp_path, search(exp), head={"cpus": 1, "resources": DEVICE}, workers=[{"cpus": 1}])

    def kill_mid_trial(c):
        # Kill the worker node as soon as a trial runs there: that first trial loads its data, so it is
        # mid-training. (Waiting for a first record instead let the kill land in the moment after the
        # worker's trial had sent its final result -- nothing lost, nothing retried -- on a loaded box.)
        c.kill_node_running(TRIAL)
        return records(tmp_path / "run") if RunFolder(tmp_path / "run").trials_jsonl.exists() else []

    before, rc, why = run_through(cluster, kill_mid_trial)
    assert rc == 0, why
    after = records(tmp_path / "run")
    assert sorted(x["number"] for x in after) == list(range(4))
    assert all(x["state"] == "COMPLETE" for x in after), [(x["state"], x["reason"]) for x in after]
    assert_kept(before, after)
    retried = [x for x in after if x["reason"].startswith("retried 1x after a trial error")]  # one loss
    assert len(retried) == 1, [x["reason"] for x in after]
    lost = LOST.search(retried[0]["reason"])[1]
    assert retried[0]["node"] != lost  # run again on the node that is left
    assert json.loads((tmp_path / "search.json").read_text())["states"]["COMPLETE"] == 4


@needs_namespaces
def test_latency_actor_node_killed_the_actor_moves_to_the_other_device_node(tmp_path):
    # two nodes offer latency_device and run trials; the head only drives
    exp = experiment(tmp_path, "move", trials=6, concurrency=2, ray={"max_failures": 0})
    node = {"cpus": 1, "resources": DEVICE}
    cluster = LoopbackCluster(tmp_path, search(exp), head={"cpus": 0}, workers=[node, node])

    def kill_actor_node(c):
        killed = c.kill_node_running(LATENCY_ACTOR, TRIAL)
        t_kill = time.time()
        c.wait_node_running(LATENCY_ACTOR, exclude=(killed,))  # created again on the other node
        return t_kill

    t_kill, rc, why = run_through(cluster, kill_actor_node)
    assert rc == 0, why
    recs = records(tmp_path / "run")
    assert sorted(x["number"] for x in recs) == list(range(6))
    # the trial running on the killed node failed (max_failures 0), naming the node; the search went on
    failed = [x for x in recs if x["state"] == "FAIL"]
    assert len(failed) == 1 and LOST.search(failed[0]["reason"])[1] == failed[0]["node"], failed
    measured_later = [x for x in recs if x["state"] == "COMPLETE" and x["started"] > t_kill]
    assert measured_later and all(x["latency_source"] == "measured" and x["latency_ms"] > 0 for x in measured_later)
    assert failed[0]["node"] not in {x["node"] for x in measured_later}


@needs_namespaces
def test_only_latency_device_node_killed_the_search_stops_resumably(tmp_path):
    exp = experiment(tmp_path, "stop", trials=4, concurrency=1)
    device = shlex.quote(node_options({"cpus": 0, "resources": DEVICE}))
    # the search stops; the device node comes back; --resume finishes the search
    command = "; ".join([search(exp, "first"), "echo $? >first.rc", f"cp run/{TRIALS_JSONL} stopped.jsonl",
                         f"start_worker device2 {device}", "wait_nodes 2", search(exp, "resumed", "--resume")])
    cluster = LoopbackCluster(tmp_path, command, head={"cpus": 1}, workers=[{"cpus": 0, "resources": DEVICE}])

    def kill_the_device(c):
        before = wait_records(tmp_path / "run", 1, c, log="first.log")
        c.kill_node_running(LATENCY_ACTOR)
        return before

    before, rc, why = run_through(cluster, kill_the_device, log="resumed.log")
    first_log = cluster.log("first.log", tail=100_000).splitlines()
    assert (tmp_path / "first.rc").read_text().strip() == "2", "\n".join(first_log[-30:])
    assert first_log[-1] == (
        "shufflenas: error: latency: the node offering 'latency_device' left the Ray cluster; no node offers it "
        "now -- restart that node (ray start --address=HEAD:PORT --resources='{\"latency_device\": 1}') "
        "and resume with --resume"), "\n".join(first_log[-30:])
    stopped = [json.loads(x) for x in (tmp_path / "stopped.jsonl").read_text().splitlines()]
    assert len(stopped) < 4 and all(x["state"] == "COMPLETE" for x in stopped)
    assert_kept(before, stopped)
    # resumed with the device node back: every trial, the ones finished before the stop unchanged
    assert rc == 0, why
    after = records(tmp_path / "run")
    assert sorted(x["number"] for x in after) == list(range(4))
    assert all(x["state"] == "COMPLETE" for x in after), [(x["state"], x["reason"]) for x in after]
    assert_kept(stopped, after)


def _wait_until_dead(actor, timeout_s: float = 60.0) -> None:
    import time

    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=10)
        except RayActorError:
            return
        except GetTimeoutError:
            continue
        time.sleep(0.2)
    raise AssertionError(f"the killed actor still answers after {timeout_s:.0f} s")


def test_latency_handle_recreates_a_dead_actor():
    """Without namespaces: the handle replaces an actor that died (here: ray.kill) and repeats the call."""
    import ray

    from evaluators.latency import LatencyTarget, MeasurementProtocol
    from evaluators.latency.ray_actor import LatencyActorHandle
    from evaluators.ray_cluster import start_private_cluster
    from test_search_common import QUICK_PROTOCOL

    if ray.is_initialized():
        ray.shutdown()
    start_private_cluster(num_cpus=1, resources=DEVICE)
    try:
        handle = LatencyActorHandle(LatencyTarget(), protocol=MeasurementProtocol(**QUICK_PROTOCOL))
        handle.call("close")  # (cheap: the measurement worker is not started)
        first = handle.actor()
        ray.kill(first, no_restart=True)
        _wait_until_dead(first)  # ray.kill is asynchronous: a call sent at once may still reach the old actor
        handle.call("close")
        assert handle.actor()._actor_id != first._actor_id
    finally:
        ray.shutdown()
