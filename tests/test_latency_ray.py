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


MICRO_SPACE = """
name: micro
input_size: 16
num_classes: 10
stem: {channels: 8, stride: 1, maxpool: false}
stages:
  - {unit: v2, channels: 16, depth: 1}
head_channels: [null]
"""  # three blocks: stem, one unit, head

#: whole networks timed as briefly as blocks, in one session: in the build's own worker process
FAST_LUT = FAST.model_copy(update={"network_seconds": 0.0, "network_sessions": 1})


@pytest.mark.slow
def test_lut_is_built_on_the_device_node_and_resumes(ray_local, tmp_path):
    """On a cluster the table is measured by the latency actor on the node offering latency_device;
    the driver saves each copy it streams, so a killed build resumes from the driver's file."""
    import json

    from evaluators.latency.lut import LatencyLUT, space_blocks
    from evaluators.latency.ray_actor import LatencyActorHandle, load_or_build_on_device
    from evaluators.latency.target import host_identity
    from search_space import SearchSpace

    space = SearchSpace.from_yaml(MICRO_SPACE)
    handle = LatencyActorHandle(LatencyTarget(), protocol=FAST)
    path = tmp_path / "lut.json"
    lut = load_or_build_on_device(handle, space, path, FAST_LUT, calibration=1, save_every_s=0.0)
    node_host = handle.call("host")
    assert node_host == host_identity(LatencyTarget())  # (one machine: the device node is this one)
    saved = json.loads(path.read_text())
    assert saved["host"] == lut.host == node_host and saved["meta"]["complete"]
    assert set(saved["entries"]) == set(space_blocks(space)) and len(saved["overhead"]["calibration"]) == 1
    assert lut.path == path and lut.predict(space.sample(seed=0)) > 0

    # a build killed after one block: the driver's copy is resumed, its entries and calibration kept
    first = next(iter(saved["entries"]))
    partial = {**saved, "entries": {first: saved["entries"][first]}, "meta": {**saved["meta"], "complete": False}}
    path.write_text(json.dumps(partial))
    resumed = load_or_build_on_device(handle, space, path, FAST_LUT, calibration=1, save_every_s=0.0)
    assert resumed.entries[first] == saved["entries"][first] and len(resumed.entries) == 3
    assert resumed.overhead["calibration"] == saved["overhead"]["calibration"]
    assert json.loads(path.read_text())["meta"]["complete"] and resumed.host == node_host

    # a complete table is loaded, not rebuilt; one tagged with another host is refused in one line
    assert load_or_build_on_device(handle, space, path, FAST_LUT).entries == resumed.entries
    other = {**json.loads(path.read_text()), "host": {**node_host, "hostname": "elsewhere"}}
    path.write_text(json.dumps(other))
    from evaluators.latency.target import LUTHostError

    with pytest.raises(LUTHostError) as ei:
        load_or_build_on_device(handle, space, path, FAST_LUT, override="OVERRIDE")
    msg = str(ei.value)
    assert msg.startswith(f"{path}: lookup table built on elsewhere (") and msg.endswith("(hostname differ); OVERRIDE")
    assert f"measured on {node_host['hostname']} (" in msg and "\n" not in msg
    assert load_or_build_on_device(handle, space, path, FAST_LUT, host_check=False).host["hostname"] == "elsewhere"
    assert LatencyLUT.load(path).entries == resumed.entries


@pytest.mark.slow
def test_search_on_a_cluster_takes_its_lut_through_the_actor(ray_local, tmp_path, monkeypatch):
    """A ray-backend search connected to the cluster loads (or builds) its table through the latency actor,
    checked against the device node's host, with the experiment's override."""
    import yaml

    from evaluators.latency import ray_actor
    from evaluators.latency.target import LUTHostError
    from nas.experiment import experiment_from_dict
    from nas.objective import load_or_build_lut
    from search_space import SearchSpace

    from evaluators.latency.lut import LatencyLUT, space_blocks

    path = tmp_path / "lut.json"
    space = SearchSpace.from_yaml(MICRO_SPACE)
    keep = ray_actor.LatencyActorHandle(LatencyTarget(), protocol=FAST)  # the actor lives while its creator's
    node_host = keep.call("host")                                        # handle does: one actor for the test
    entry = {"median_ms": 0.01, "p90_ms": 0.01, "iqr_rel": 0.0, "runs": 10, "attempts": 1, "flagged": False}
    built = LatencyLUT(LatencyTarget(), {k: entry for k in space_blocks(space)}, space=space.to_dict(),
                       host=node_host, meta={"complete": True})  # (measured tables: the test above)
    built.save(path)
    calls = []
    real = ray_actor.load_or_build_on_device
    monkeypatch.setattr(ray_actor, "load_or_build_on_device", lambda *a, **k: calls.append(k) or real(*a, **k))

    def exp(**latency):
        return experiment_from_dict({"space": yaml.safe_load(MICRO_SPACE), "output": str(tmp_path / "run"),
                                     "search": {"backend": "ray"},
                                     "latency": {"mode": "lut", "lut": str(path), **latency}}, base_dir=tmp_path)

    assert load_or_build_lut(exp(), space).entries == built.entries
    assert calls[-1]["host_check"] is True
    path.write_text(path.read_text().replace(f'"hostname": "{built.host["hostname"]}"', '"hostname": "elsewhere"'))
    with pytest.raises(LUTHostError, match="elsewhere.*set latency.lut_host_check: false to use it anyway$"):
        load_or_build_lut(exp(), space)
    assert load_or_build_lut(exp(lut_host_check=False), space).host["hostname"] == "elsewhere"
    assert len(calls) == 3


def _ray_experiment(tmp_path, **latency):
    import yaml

    from nas.experiment import experiment_from_dict

    return experiment_from_dict({"space": yaml.safe_load(MICRO_SPACE), "output": str(tmp_path / "run"),
                                 "search": {"backend": "ray"}, "latency": latency}, base_dir=tmp_path)


def test_ray_backend_loads_its_lut_through_the_actor_it_measures_with(tmp_path, monkeypatch):
    """RayBackend.open makes the latency actor's handle first and loads or builds the table through it, with
    the search's progress flag: one actor (one measurement worker on the device node) for the build and the
    search, and a build there shows its progress. Cluster and table stubbed; the real path: the test above."""
    pytest.importorskip("ray")
    import nas.backends.ray as rb
    from nas.backends import Breaker
    from nas.run_folder import RunFolder

    calls, connected = [], []
    monkeypatch.setattr(rb, "init_ray", lambda address, exp: False)  # (as if already connected)
    monkeypatch.setattr(rb, "load_or_build_lut", lambda exp, space, **kw: calls.append(kw) or "the table")
    monkeypatch.setattr(rb.ActorLatency, "connect", lambda self: connected.append(self) or self)
    exp = _ray_experiment(tmp_path, mode="lut", lut=str(tmp_path / "lut.json"))
    for progress in (True, False):
        with rb.RayBackend(exp, RunFolder(exp.output), resume=False, breaker=Breaker(0), progress=progress) as b:
            assert b.lut == "the table"
            assert calls[-1] == {"progress": progress, "device": b.latency.handle}
            assert connected[-1] is b.latency  # the front is re-measured through that same handle
    assert len(calls) == 2 and not (tmp_path / "run").exists()


def test_joining_a_cluster_without_the_device_node_stops_in_every_latency_mode(tmp_path, monkeypatch):
    """init_ray on ``--address``: measured candidates, a table loaded or built through the device node's
    actor and the re-measured front all need the node offering latency_device, so no mode joins without
    it (one line, Ray shut down again). Ray's own calls stubbed: no cluster is started."""
    ray = pytest.importorskip("ray")
    import nas.backends.ray as rb
    from nas.experiment import ExperimentError

    events, offered = [], []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: events.append(("init", kw["address"])))
    monkeypatch.setattr(ray, "shutdown", lambda: events.append(("shutdown",)))
    monkeypatch.setattr(rb, "offering_nodes", lambda resource: offered)
    lut = str(tmp_path / "lut.json")
    modes = {"measured": _ray_experiment(tmp_path),
             "lut": _ray_experiment(tmp_path, mode="lut", lut=lut),
             "lut, front not re-measured": _ray_experiment(tmp_path, mode="lut", lut=lut, remeasure_front=False)}
    for mode, exp in modes.items():
        events.clear()
        with pytest.raises(ExperimentError) as info:
            rb.init_ray("127.0.0.1:6379", exp)
        msg = str(info.value)
        assert "no node of the Ray cluster at 127.0.0.1:6379 offers the 'latency_device'" in msg, mode
        assert "\n" not in msg and events == [("init", "127.0.0.1:6379"), ("shutdown",)], mode
    offered.append("device-node")
    for exp in modes.values():
        events.clear()
        assert rb.init_ray("127.0.0.1:6379", exp) is True and events == [("init", "127.0.0.1:6379")]
