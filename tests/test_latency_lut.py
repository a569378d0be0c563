"""Lookup table: reachable block enumeration, build/save/load, prediction, errors, resume, validation, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import TINY_SPACE
from evaluators.base import LatencyResult
from evaluators.latency import LatencyError, LatencyTarget, LUTMissingError, MeasurementProtocol
from evaluators.latency.lut import LatencyLUT, space_blocks
from evaluators.latency.validation import error_metrics, held_out_sample, validate_lut
from search_space import SearchSpace, iter_blocks, load_space
from shufflenas.cli import main

#: calibration networks timed a little longer than blocks, as in real tables (in a worker of their own);
#: one session each, to keep the suite short (several sessions: test_validate_held_out)
FAST = MeasurementProtocol.quick(min_runs=10, min_seconds=0.03, warmup_seconds=0.01, reference_every=0,
                                 network_seconds=0.06, network_sessions=1)


@pytest.fixture(scope="session")
def tiny_lut(tmp_path_factory):
    """A table measured on this machine (tens of seconds): the tests that use it are ``slow``."""
    path = tmp_path_factory.mktemp("lut") / "tiny_lut.json"
    lut = LatencyLUT.build(SearchSpace.from_yaml(TINY_SPACE), LatencyTarget(), FAST, progress=False,
                           path=path, calibration=6)
    return path, lut


def test_whole_networks_are_timed_for_network_seconds():
    quick = MeasurementProtocol.quick()
    nets = quick.for_networks()
    assert quick.min_seconds < nets.min_seconds == quick.network_seconds <= nets.max_seconds / 2
    assert nets.model_copy(update={"min_seconds": quick.min_seconds, "max_seconds": quick.max_seconds}) == quick
    plain = MeasurementProtocol(min_seconds=1.0, network_seconds=0.5)
    assert plain.for_networks() is plain  # never shorter than the protocol itself


@pytest.mark.parametrize("name", ["imagenet", "all_open"])
def test_enumeration_covers_every_sampled_block(name):
    sp = load_space(name)
    keys = space_blocks(sp)
    assert all(b.key() in keys for a in sp.sample(40, seed=3) for _, b in iter_blocks(a))


def test_enumeration_lists_only_reachable_configs():
    blocks = space_blocks(SearchSpace.from_yaml(TINY_SPACE))
    kinds = [b.kind for b in blocks.values()]
    # stem 1; stage 1: 2 widths x 2 kernels, stride 2 + stride 1 = 8; stage 2: 2 input widths x 4 + 4 = 12; head 2 x 2
    assert (kinds.count("stem"), kinds.count("unit"), kinds.count("head")) == (1, 20, 4)
    assert all(b.resolution == 16 for b in blocks.values() if b.kind == "unit" and b.in_channels == 8)


@pytest.mark.slow
def test_build_save_predict(tiny_lut, tiny_space):
    path, lut = tiny_lut
    data = json.loads(path.read_text())
    assert data["target"] == LatencyTarget().to_dict() and data["meta"]["complete"]
    assert {"torch", "onnxruntime", "cpu"} <= set(data["machine"])
    assert set(data["entries"]) == set(space_blocks(tiny_space))
    loaded = LatencyLUT.load(path, target=LatencyTarget())
    arch = tiny_space.sample(seed=1)
    parts = loaded.breakdown(arch)
    assert list(parts) == [p for p, _ in iter_blocks(arch)]
    o = loaded.overhead
    assert loaded.predict(arch) == pytest.approx(o["a"] * sum(parts.values()) + o["c_ms"] * len(parts) + o["b_ms"])
    r = loaded.latency(arch)
    assert r.source == "lut" and r.median_ms == loaded.predict(arch) > 0
    assert len(o["calibration"]) == 6 and o["fit_mape"] < 0.5
    # paired: every entry timed in turns with the reference stores its ratio to it and the reference's reading
    assert loaded.protocol.paired and all(e["ratio"] > 0 and e["ref_ms"] > 0 for e in loaded.entries.values())


@pytest.mark.slow
def test_recalibrate_times_the_same_networks_again(tiny_lut):
    path, _ = tiny_lut
    lut = LatencyLUT.load(path)  # a copy in memory: the session's table stays as built
    before = lut.overhead["calibration"]
    after = lut.recalibrate()["calibration"]
    assert [c["arch"] for c in after] == [c["arch"] for c in before]
    assert all(c["measured_ms"] > 0 for c in after) and after is not before


@pytest.mark.slow
def test_wrong_target_and_missing_block_are_clear(tiny_lut, tiny_space):
    path, _ = tiny_lut
    with pytest.raises(LatencyError, match="another target") as ei:
        LatencyLUT.load(path, target=LatencyTarget(threads=2))
    assert "threads=2" in str(ei.value)
    lut = LatencyLUT.load(path)
    arch = tiny_space.sample(seed=2)
    key = next(b.key() for _, b in iter_blocks(arch) if b.kind == "unit")
    del lut.entries[key]
    with pytest.raises(LUTMissingError, match="no entry for block") as ei:
        lut.predict(arch)
    assert key in str(ei.value) and "\n" not in str(ei.value)
    lut.path = None  # keep the shared file intact
    lut.fallback, lut.protocol = "measure", FAST
    with lut:
        assert lut.predict(arch) > 0
    assert lut.entries[key]["fallback"] is True


@pytest.mark.slow
def test_killed_build_resumes(tiny_lut, tmp_path):
    path, lut = tiny_lut
    data = json.loads(path.read_text())
    # flagged entries are measured once more at the end of a build (kept if steadier): leave them out
    keep = dict([(k, e) for k, e in data["entries"].items() if not e["flagged"]][:10])
    data["entries"], data["meta"]["complete"] = keep, False
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(data))
    resumed = LatencyLUT.build(SearchSpace.from_yaml(TINY_SPACE), LatencyTarget(), FAST, progress=False,
                               path=partial, calibration=6)
    assert all(resumed.entries[k] == v for k, v in keep.items())  # not re-measured
    assert len(resumed) == len(lut) and json.loads(partial.read_text())["meta"]["complete"]
    assert resumed.overhead["calibration"] == lut.overhead["calibration"]  # reused, not re-measured


def test_error_metrics_known_values():
    m = error_metrics([1.0, 2.18, 2.9, 4.5], [1.0, 2.0, 3.0, 4.0])
    assert m["n"] == 4 and m["within_5"] == 0.5 and m["within_10"] == 0.75
    assert m["mape"] == pytest.approx((0 + 0.09 + 1 / 30 + 0.125) / 4)
    assert m["spearman"] == pytest.approx(1.0) and m["kendall"] == pytest.approx(1.0)


@pytest.mark.slow
def test_validate_held_out(tiny_lut, tiny_space):
    _, lut = tiny_lut
    archs = held_out_sample(lut, tiny_space, 4, seed=7)
    calib = {json.dumps(c["arch"], sort_keys=True) for c in lut.overhead["calibration"]}
    assert len(archs) == 4 and not calib & {json.dumps(a.to_dict(), sort_keys=True) for a in archs}
    rep = validate_lut(lut, archs, FAST, sessions=2)
    assert rep["n"] == 4 and rep["same_machine"] and rep["sessions"] == 2
    assert len(rep["rows"]) == 4 and all(r["speed"] and r["nominal_ms"] for r in rep["rows"])
    # each network measured in two worker processes; the report's figures, recomputed from those raw readings
    measured, spreads = [], []
    for row in rep["rows"]:
        assert len({s["worker_pid"] for s in row["sessions"]}) == 2
        measured.append(float(np.median([s["median_ms"] for s in row["sessions"]])))
        ratios = [s["ratio"] for s in row["sessions"]]
        spreads.append((max(ratios) - min(ratios)) / float(np.median(ratios)))
    assert [r["measured_ms"] for r in rep["rows"]] == pytest.approx(measured)
    rel = [(lut.predict(a) - m) / m for a, m in zip(archs, measured)]
    assert rep["mape"] == pytest.approx(float(np.mean(np.abs(rel))))
    assert rep["within_10"] == sum(abs(e) <= 0.10 for e in rel) / 4
    assert rep["session_spread_median"] == pytest.approx(float(np.median(spreads)))


@pytest.mark.slow
def test_cli_lut(tiny_lut, tiny_space_file, capsys, tmp_path):
    path, _ = tiny_lut
    assert main(["lut", "build", str(tiny_space_file), "--out", str(tmp_path / "x.json"), "--count", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["blocks"] == 25
    assert main(["lut", "validate", str(path), "--samples", "3", "--min-time", "0.03", "--sessions", "1",
                 "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["n"] == 3 and {"mape", "within_5", "within_10", "spearman", "kendall"} <= set(rep)
    assert rep["sessions"] == 1
    for args, words in [(("latency", "--preset", "shufflenet_v2_x1_0_cifar", "--lut", path, "--threads", "2"),
                         "another target"),
                        (("latency", "--preset", "shufflenet_v2_x1_0_cifar", "--lut", path), "no entry for block"),
                        (("lut", "validate", path, "--space", "cifar", "--samples", "2"), "no entry for block")]:
        assert main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert words in err and err.startswith("shufflenas: error:") and len(err.strip().splitlines()) == 1


def synthetic_lut(space, ratio: float = 0.1, unit: float = 0.5) -> LatencyLUT:
    """A paired table for ``space`` without measuring anything: every block at ``ratio`` x the unit,
    correction latency = sum of blocks + 0.1 ms."""
    entries = {k: {"median_ms": ratio * unit, "ref_ms": unit, "ratio": ratio, "iqr_rel": 0.01, "runs": 10,
                   "attempts": 1, "flagged": False} for k in space_blocks(space)}
    return LatencyLUT(LatencyTarget(), entries, {"a": 1.0, "c_ms": 0.0, "b_ms": 0.1, "calibration": []},
                      meta={"reference_ms": unit})


def test_entries_are_scaled_to_the_tables_nominal_speed(tiny_space):
    """An entry measured while the reference read 2x the table's unit counts half: predictions
    stay at the machine's typical speed whatever it did during the build. An entry timed in turns
    with the reference (paired) counts its ratio to the reference times the unit."""
    lut = synthetic_lut(tiny_space)
    arch = tiny_space.sample(seed=4)
    unpaired = {k: {**{f: v for f, v in e.items() if f != "ratio"}, "ref_ms": 1.0} for k, e in lut.entries.items()}
    before = LatencyLUT(lut.target, unpaired, lut.overhead, meta={"reference_ms": 1.0}).breakdown(arch)
    slow = LatencyLUT(lut.target, {k: {**e, "ref_ms": 2.0} for k, e in unpaired.items()}, lut.overhead,
                      meta={"reference_ms": 1.0})
    assert slow.breakdown(arch) == pytest.approx({p: v / 2 for p, v in before.items()})
    unit = lut.meta["reference_ms"]
    assert lut.nominal_ms({"ratio": 0.25, "ref_ms": 4 * unit}, 9.0) == pytest.approx(0.25 * unit)


def test_validation_scores_the_table_at_its_own_speed(tiny_space, monkeypatch):
    """The host runs 2x slower than when the table was built. The raw error shows it; the error
    against each network's paired ratio to the reference x the table's unit does not. The readings
    are given, so every expected figure is computed here from them and the table's definition."""
    unit, block_ms, b_ms = 0.5, 0.05, 0.1
    lut = synthetic_lut(tiny_space, ratio=block_ms / unit, unit=unit)
    archs = held_out_sample(lut, tiny_space, 4, seed=3)
    predicted = [block_ms * len(list(iter_blocks(a))) + b_ms for a in archs]
    off = [0.0, 0.04, -0.08, 0.25]  # the truth at the table's speed: predicted x (1 + off)
    truth = [p * (1 + e) for p, e in zip(predicted, off)]

    def fake_sessions(archs_, target, protocol, sessions=None, **kw):
        assert [a.to_dict() for a in archs_] == [a.to_dict() for a in archs] and protocol.paired
        return [LatencyResult(median_ms=2 * n, extra={"ref_ms": 2 * unit, "ratio": n / unit}) for n in truth], [{}]

    monkeypatch.setattr("evaluators.latency.validation.measure_sessions", fake_sessions)
    rep = validate_lut(lut, archs)
    assert [r["predicted_ms"] for r in rep["rows"]] == pytest.approx(predicted)
    assert [r["nominal_ms"] for r in rep["rows"]] == pytest.approx(truth) and {r["speed"] for r in rep["rows"]} == {2.0}
    raw = [p / (2 * n) - 1 for p, n in zip(predicted, truth)]  # about -50%: the host is twice as slow
    at_unit = [p / n - 1 for p, n in zip(predicted, truth)]  # 0, -3.8%, +8.7%, -20%
    assert rep["mape"] == pytest.approx(np.mean(np.abs(raw))) and rep["within_10"] == 0
    sc = rep["speed_corrected"]
    assert sc["mape"] == pytest.approx(np.mean(np.abs(at_unit))) and sc["within_10"] == 0.75
    assert sc["mean_error"] == pytest.approx(np.mean(at_unit))
    assert rep["speed"] == {"min": 2.0, "max": 2.0, "table_reference_ms": unit}
    assert rep["drift"]["worst_ratio"] == pytest.approx(2.0) and rep["drift"]["drifted"]


@pytest.mark.slow
def test_build_tags_every_entry_with_the_reference_and_a_resumed_build_keeps_the_tags(tiny_lut, tmp_path,
                                                                                       tiny_space):
    built, lut = tiny_lut
    refs = [e["ref_ms"] for e in lut.entries.values()] + [c["ref_ms"] for c in lut.overhead["calibration"]]
    assert all(r > 0 for r in refs) and lut.meta["reference_ms"] == pytest.approx(float(np.median(refs)))
    # a killed build resumes: the old entries keep their readings, the unit is the median of all of them
    data = json.loads(built.read_text())
    data["entries"] = dict(list(data["entries"].items())[:-3])
    data["meta"]["complete"] = False
    path = tmp_path / "l.json"
    path.write_text(json.dumps(data))
    resumed = LatencyLUT.build(tiny_space, LatencyTarget(), lut.protocol, progress=False, path=path, calibration=6)
    assert all(resumed.entries[k]["ref_ms"] == e["ref_ms"] for k, e in data["entries"].items()
               if not e["flagged"])  # (flagged ones are measured once more at the end of a build)
    refs = [e["ref_ms"] for e in resumed.entries.values()] + [c["ref_ms"] for c in resumed.overhead["calibration"]]
    assert resumed.meta["reference_ms"] == pytest.approx(float(np.median(refs)))


PER_UNIT_SPACE = """
name: tiny_per_unit
input_size: 16
num_classes: 10
stem: {channels: 8, stride: 1, maxpool: false}
stages:
  - channels: 32
    depth: [1, 2]
    units:
      - {split: 0.25, mid_channels: 16, choices: [{kernel: 3}, {unit: xception}]}
      - [{kernel: 5}, {unit: xception}]
head_channels: null
"""


def test_enumeration_walks_per_unit_choices():
    """Each unit position has its own choices: stride 2 (position 0) and stride 1 (position 1) blocks differ."""
    sp = SearchSpace.from_yaml(PER_UNIT_SPACE)
    blocks = space_blocks(sp)
    units = [b for b in blocks.values() if b.kind == "unit"]
    assert sorted((b.unit, b.stride, b.kernel, b.mid) for b in units) == [
        ("v2", 1, 5, None), ("v2", 2, 3, 16), ("xception", 1, 3, None), ("xception", 2, 3, 16)]
    assert [b.kind for b in blocks.values()].count("head") == 1
    archs = {sp.decode({"stages.0.depth": d, "stages.0.units.0": u0, "stages.0.units.1": u1})
             for d in (1, 2) for u0 in ("kernel=3", "unit=xception") for u1 in ("kernel=5", "unit=xception")}
    assert len(archs) == sp.size() == 6
    assert {b.key() for a in archs for _, b in iter_blocks(a)} == set(blocks)  # reachable, and only those


@pytest.mark.slow
def test_tiny_per_unit_table_predicts_every_network(tmp_path):
    """Its blocks (xception units among them) are measured in the worker; no calibration (not the point here)."""
    sp = SearchSpace.from_yaml(PER_UNIT_SPACE)
    lut = LatencyLUT.build(sp, LatencyTarget(), FAST, progress=False, path=tmp_path / "per_unit.json", calibration=0)
    assert set(lut.entries) == set(space_blocks(sp)) and len(lut) == 6
    xception = next(k for k in lut.entries if k.startswith("xception|s2"))
    assert "|m16" in xception  # SPOS's stride-2 layout is a block of its own
    for seed in range(4):
        arch = sp.sample(seed=seed)
        parts = lut.breakdown(arch)
        assert list(parts) == [p for p, _ in iter_blocks(arch)] and all(v > 0 for v in parts.values())
        assert lut.predict(arch) == pytest.approx(sum(parts.values()))  # no calibration: the block sum
