"""Measurement: target validation, timing statistics, repeat-and-flag, isolation, worker process, CLI."""

from __future__ import annotations

import itertools
import json
import os
import threading
import time

import pytest
import torch

from evaluators.base import LatencyEstimator
from evaluators.latency import (ExportError, LatencyError, LatencyTarget, MeasurementProtocol,
                                MeasurementWorker, check_available, measure)
from evaluators.latency.runners import export_onnx
from evaluators.latency.timing import device_lock, measure_timed, summarise
from shufflenas.cli import main

QUICK = MeasurementProtocol.quick(min_seconds=0.05, warmup_seconds=0.01, lock=False)


def test_target_defaults_and_one_line_errors():
    t = LatencyTarget()
    assert (t.device, t.runtime, t.threads, t.batch, t.input_size, t.dtype) == ("cpu", "onnxruntime", 1, 1, None, "float32")
    for bad, word in [({"runtime": "tflite"}, "runtime"), ({"device": "tpu"}, "device"),
                      ({"threads": 0}, "threads"), ({"dtype": "bfloat16"}, "float32")]:
        with pytest.raises(LatencyError) as ei:
            LatencyTarget.make(**bad)
        assert word in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(LatencyError, match="CUDA is not available"):
        check_available(LatencyTarget(device="cuda", runtime="eager"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here; the CUDA path runs where torch sees one")
@pytest.mark.parametrize("runtime", ["eager", "torchscript"])
def test_cuda_latency_with_events_in_a_worker(runtime):
    """Where a GPU is present: a preset measured on it with CUDA events, in the worker process."""
    from search_space import presets

    arch = presets.get("shufflenet_v2_x0_5")
    r = measure(arch, LatencyTarget(device="cuda", runtime=runtime), QUICK)
    assert r.target["device"] == "cuda" and r.runs >= QUICK.min_runs and 0 < r.median_ms <= r.p90_ms
    assert r.extra["ratio"] > 0  # timed in turns with the reference, on the GPU too


def test_summarise_known_samples():
    s = summarise([float(x) for x in range(1, 102)])  # 1..101
    assert s["median_ms"] == 51 and s["runs"] == 101 and s["p90_ms"] == pytest.approx(91)
    assert s["iqr_rel"] == pytest.approx((76 - 26) / 51)


def test_noisy_measurement_is_repeated_and_flagged():
    values = itertools.cycle([1.0, 3.0])
    noisy = measure_timed(lambda: next(values), QUICK.model_copy(update={"max_attempts": 3}))
    assert noisy["attempts"] == 3 and noisy["flagged"] and len(noisy["spreads"]) == 3
    steady = measure_timed(lambda: 2.0, QUICK)
    assert steady["attempts"] == 1 and not steady["flagged"] and steady["median_ms"] == 2.0


def test_paired_timing_cancels_a_host_slowdown():
    """The host slows down 1.5x halfway: raw medians move, the per-turn ratio to the reference does not."""
    speed = itertools.chain([1.0] * 200, itertools.repeat(1.5))
    now = {"s": 1.0}

    def model():
        now["s"] = next(speed)
        return 2.0 * now["s"]

    def ref():
        return 0.5 * now["s"]

    protocol = MeasurementProtocol(warmup_runs=0, warmup_seconds=0, min_runs=400, min_seconds=0, max_runs=400,
                                   spread_threshold=1.0, paired=True, pair_turn=4, lock=False)
    out = measure_timed(model, protocol, timed_ref=ref)
    assert out["ratio"] == pytest.approx(4.0) and out["ratio_iqr_rel"] == pytest.approx(0.0)
    assert out["runs"] == 400 and out["turns"] == 100 and 0.5 <= out["ref_ms"] <= 0.75
    assert out["iqr_rel"] > 0.2  # the raw model times saw the slowdown


def test_paired_spread_is_judged_on_the_ratio():
    """The host's speed swings 3x from one turn to the next: the raw runs spread far beyond the
    threshold, the paired ratio (what is reported) does not, so it is accepted at once, not repeated."""
    calls = itertools.count()
    now = {"s": 1.0}
    k = 4

    def model():
        now["s"] = 3.0 if (next(calls) // (k + 1)) % 2 else 1.0
        return 2.0 * now["s"]

    protocol = MeasurementProtocol(warmup_runs=0, warmup_seconds=0, min_runs=80, min_seconds=0, max_runs=80,
                                   paired=True, pair_turn=k, lock=False)
    out = measure_timed(model, protocol, timed_ref=lambda: 0.5 * now["s"])
    assert out["iqr_rel"] > 0.5 and out["ratio_iqr_rel"] == pytest.approx(0.0) and out["ratio"] == pytest.approx(4.0)
    assert out["attempts"] == 1 and not out["flagged"] and out["spreads"] == [0.0]
    unpaired = measure_timed(model, protocol.model_copy(update={"paired": False}))
    assert unpaired["attempts"] == protocol.max_attempts and unpaired["flagged"]


def test_median_of_sessions():
    from evaluators.base import LatencyResult
    from evaluators.latency.worker import median_of_sessions

    def one(ms, ratio, flagged=False):
        return LatencyResult(median_ms=ms, p90_ms=ms * 1.1, iqr_rel=0.02, runs=10, flagged=flagged,
                             extra={"ratio": ratio, "ref_ms": ms / ratio, "worker_pid": ms})

    r = median_of_sessions([one(1.0, 2.0), one(1.5, 2.2, flagged=True), one(1.2, 2.1)])
    assert (r.median_ms, r.extra["ratio"], r.runs, r.flagged) == (1.2, 2.1, 30, False)
    assert r.extra["session_spread"] == pytest.approx(0.2 / 2.1) and len(r.extra["sessions"]) == 3
    assert median_of_sessions([one(1.0, 2.0, True), one(1.0, 2.0, True), one(1.0, 2.0)]).flagged  # most were
    single = one(1.0, 2.0)
    assert median_of_sessions([single]) is single


@pytest.mark.slow  # several worker processes, each measuring for seconds
def test_measure_sessions_runs_fresh_workers(tiny_arch):
    from evaluators.latency.worker import measure_sessions

    archs = [tiny_arch, tiny_arch.replace(name="tiny again")]
    results, drifts = measure_sessions(archs, LatencyTarget(), QUICK.model_copy(update={"reference_every": 0}),
                                       sessions=2)
    assert len(results) == 2 and len(drifts) == 2
    for r in results:
        sessions = r.extra["sessions"]
        assert len(sessions) == 2 and sessions[0]["worker_pid"] != sessions[1]["worker_pid"]
        assert r.extra["ratio"] == pytest.approx((sessions[0]["ratio"] + sessions[1]["ratio"]) / 2)
        assert r.median_ms == pytest.approx((sessions[0]["median_ms"] + sessions[1]["median_ms"]) / 2)


def test_device_lock_serialises_holders():
    spans = []

    def hold():
        with device_lock("pytest-lock-check"):
            t0 = time.perf_counter()
            time.sleep(0.05)
            spans.append((t0, time.perf_counter()))

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # no two holders overlap


def test_export_failure_is_one_line():
    class Bad(torch.nn.Module):
        def forward(self, x):
            return {"not": "a tensor"}

    with pytest.raises(ExportError) as ei:
        export_onnx(Bad(), torch.zeros(1, 3, 8, 8), "block X")
    assert "block X" in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.slow  # several worker processes, each measuring for seconds
@pytest.mark.filterwarnings("ignore::evaluators.latency.worker.LatencyDriftWarning")  # a busy machine drifts
def test_worker_measures_and_reports_drift(tiny_arch):
    protocol = QUICK.model_copy(update={"reference_every": 2, "reference": "shufflenet_v2_x0_5_cifar"})
    with MeasurementWorker(LatencyTarget(), protocol) as w:
        assert isinstance(w, LatencyEstimator)
        assert w.pid != os.getpid()
        results = [w.latency(tiny_arch) for _ in range(3)]
        drift = w.drift()
    r = results[-1]
    assert r.source == "measured" and r.runs >= QUICK.min_runs and r.median_ms > 0
    assert r.p90_ms >= r.median_ms and r.target["runtime"] == "onnxruntime"
    assert drift["checks"] == 2 and "latest_ratio" in drift and "drift_ratio" in r.extra
    # the worker runs pinned to the last CPU it may use (1 thread), away from the parent
    if hasattr(os, "sched_getaffinity"):
        assert r.extra["pinned_cpus"] == sorted(os.sched_getaffinity(0))[-1:]
    # measure() starts a fresh worker per call; bigger input costs more
    big = measure(tiny_arch, LatencyTarget(input_size=64), QUICK.model_copy(update={"clock": "cpu"}))
    assert big.extra["worker_pid"] != r.extra["worker_pid"] and big.extra["clock"] == "cpu"
    assert big.median_ms > r.median_ms and big.target["input_size"] == 64


def test_cli_latency_json_and_errors(tiny_arch, tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    tiny_arch.to_yaml(path)
    # in-process: the command's own code path, without another interpreter start (the worker is still fresh)
    assert main(["latency", str(path), "--json", "--min-time", "0.05", "--runtime", "eager"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["median_ms"] > 0 and out["target"]["runtime"] == "eager" and out["source"] == "measured"
    bad = [(["--runtime", "tflite"], "tflite"), (["--runtime", "onnxruntime", "--dtype", "bfloat16"], "float32")]
    if not torch.cuda.is_available():
        bad.append((["--device", "cuda"], "CUDA is not available"))
    bad.append((["--clock", "cpu", "--threads", "2"], "threads 1"))
    for args, words in bad:
        assert main(["latency", str(path), *args]) == 2
        err = capsys.readouterr().err
        assert words in err and err.startswith("shufflenas: error:") and len(err.strip().splitlines()) == 1


def test_drift_report_from_reference_history():
    w = MeasurementWorker(LatencyTarget(), MeasurementProtocol(drift_threshold=0.1))  # not started
    assert w.drift() == {"reference": "shufflenet_v2_x0_5", "checks": 0, "threshold": 0.1, "drifted": False}
    w.references = [{"at": 0, "median_ms": 2.0}, {"at": 50, "median_ms": 2.1}]
    assert not w.drift()["drifted"] and w.drift()["latest_ratio"] == pytest.approx(1.05)
    w.references.append({"at": 100, "median_ms": 2.6})
    d = w.drift()
    assert d["drifted"] and d["worst_ratio"] == pytest.approx(1.3) and d["checks"] == 3
