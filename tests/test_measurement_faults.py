"""A latency measurement disturbed by load is detected by the spread check: repeated, then flagged.

A CPU hog runs bursts of random length on the very core the measurement
worker is pinned to, so some timed runs share the core and some do not. The
result must say so (more than one attempt, or flagged), never come back as a
clean number.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

HOG = textwrap.dedent("""
    import os, random, sys, time
    os.sched_setaffinity(0, {int(sys.argv[1])})
    rng = random.Random(0)
    while True:
        end = time.perf_counter() + rng.uniform(0.001, 0.012)   # busy burst
        while time.perf_counter() < end:
            pass
        time.sleep(rng.uniform(0.001, 0.012))                 # then idle
""")
pytestmark = pytest.mark.slow  # a CPU hog beside repeated measurements in a worker process


@pytest.fixture
def hog_on_worker_core():
    core = max(os.sched_getaffinity(0))  # the protocol pins a 1-thread worker to the last allowed CPU
    proc = subprocess.Popen([sys.executable, "-c", HOG, str(core)])
    yield core
    proc.kill()
    proc.wait()


def test_hog_on_the_measured_core_is_repeated_and_flagged(hog_on_worker_core):
    from evaluators.latency import LatencyTarget, MeasurementProtocol, MeasurementWorker
    from search_space import presets

    protocol = MeasurementProtocol(warmup_runs=5, warmup_seconds=0.05, min_runs=40, min_seconds=0.3,
                                   max_attempts=2, reference_every=0, lock=False)
    with MeasurementWorker(LatencyTarget(input_size=224), protocol) as worker:
        res = worker.latency(presets.get("shufflenet_v2_x1_0"))
    spreads = res.extra["spreads"]
    assert res.attempts == 2 and len(spreads) == 2, (res.attempts, spreads)  # repeated once
    assert res.flagged and min(spreads) > protocol.spread_threshold, spreads  # and still disturbed: flagged
    assert res.iqr_rel > protocol.spread_threshold
