"""The timing protocol: warm-up, timed runs, robust statistics, repeat-and-flag on spread.

Pure functions over a ``timed_run()`` callable that returns one run's
duration in milliseconds, so the same protocol serves every runtime (the
runtime decides how one run is timed: ``perf_counter`` on CPU, CUDA events
with synchronisation on a GPU).
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .target import MeasurementProtocol

TimedRun = Callable[[], float]


def summarise(samples_ms: list[float]) -> dict:
    """Median, p90, IQR/median and run count of one timing session."""
    a = np.asarray(samples_ms, dtype=float)
    q25, med, q75, p90 = np.percentile(a, [25, 50, 75, 90])
    return {"median_ms": float(med), "p90_ms": float(p90), "iqr_rel": float((q75 - q25) / med) if med > 0 else 0.0,
            "runs": int(a.size), "min_ms": float(a.min())}


def _warm_then_time(warm_once: Callable[[], object], timed_once: Callable[[], int], protocol: MeasurementProtocol,
                    usage: dict | None) -> None:
    """The protocol's warm-up and stopping rules, shared by plain and paired timing: ``warm_once()``
    is one warm-up step, ``timed_once()`` one timed step returning the model's sample count so far."""
    p = protocol
    start, n = time.perf_counter(), 0
    warm_cap = start + max(p.warmup_seconds, p.max_seconds / 4)
    while n < p.warmup_runs or time.perf_counter() - start < p.warmup_seconds:
        warm_once()
        n += 1
        if time.perf_counter() > warm_cap:
            break
    start, cpu0 = time.perf_counter(), time.process_time()
    while True:
        count = timed_once()
        elapsed = time.perf_counter() - start
        if count >= p.max_runs or elapsed >= p.max_seconds:
            break
        if count >= p.min_runs and elapsed >= p.min_seconds:
            break
    if usage is not None and elapsed > 0:
        usage["cpu_share"] = round((time.process_time() - cpu0) / elapsed, 3)


def time_runs(timed_run: TimedRun, protocol: MeasurementProtocol, usage: dict | None = None) -> list[float]:
    """Warm up (at least ``warmup_runs`` and ``warmup_seconds``), then time until both minimums are met.

    ``usage``, if given, receives ``cpu_share``: CPU time of this process over wall time of the
    timed runs. With one thread it is ~1 on an idle machine; well below 1 means the worker was
    descheduled (other load), so the wall-clock samples include waiting.
    """
    samples: list[float] = []

    def one() -> int:
        samples.append(timed_run())
        return len(samples)

    _warm_then_time(timed_run, one, protocol, usage)
    return samples


def time_paired(timed_run: TimedRun, timed_ref: TimedRun, protocol: MeasurementProtocol,
                usage: dict | None = None) -> tuple[list[float], list[float], list[float]]:
    """Time ``timed_run`` in turns with a reference: ``pair_turn`` runs of each, each turn's first
    run discarded (it pays for the other model having taken the caches). The stopping rules of
    :func:`time_runs` apply to the model's samples over the whole interleaved wall time.

    Returns the model's samples, the reference's, and one ratio per turn (median model run over
    median reference run): a slowdown of the host that lasts longer than a turn (a few ms)
    scales both and cancels in the ratio.
    """
    k = protocol.pair_turn
    samples: list[float] = []
    refs: list[float] = []
    ratios: list[float] = []

    def turn() -> int:
        timed_run()
        a = [timed_run() for _ in range(k)]
        timed_ref()
        r = [timed_ref() for _ in range(k)]
        samples.extend(a)
        refs.extend(r)
        ratios.append(float(np.median(a) / np.median(r)))
        return len(samples)

    _warm_then_time(lambda: (timed_run(), timed_ref()), turn, protocol, usage)
    return samples, refs, ratios


def _timed_stats(timed_run: TimedRun, protocol: MeasurementProtocol, timed_ref: TimedRun | None) -> dict:
    usage: dict = {}
    if timed_ref is None:
        return {**summarise(time_runs(timed_run, protocol, usage)), **usage}
    samples, refs, ratios = time_paired(timed_run, timed_ref, protocol, usage)
    q25, ratio, q75 = np.percentile(ratios, [25, 50, 75])
    return {**summarise(samples), **usage, "ref_ms": float(np.median(refs)), "ratio": float(ratio),
            "ratio_iqr_rel": float((q75 - q25) / ratio), "turns": len(ratios)}


def measure_timed(timed_run: TimedRun, protocol: MeasurementProtocol, lock_name: str = "cpu",
                  timed_ref: TimedRun | None = None) -> dict:
    """Time ``timed_run`` (in turns with ``timed_ref`` if given, see :func:`time_paired`); repeat
    while IQR/median exceeds the threshold -- of the runs, or with a reference of the per-turn
    ratios (what is reported then) -- and flag if it never settles.

    The attempt with the smallest spread is reported; ``spreads`` lists every attempt's,
    so a repeated or flagged measurement is visible, never silently accepted.
    """
    spread = "iqr_rel" if timed_ref is None else "ratio_iqr_rel"  # the spread of what is reported
    attempts: list[dict] = []
    for _ in range(protocol.max_attempts):
        with device_lock(lock_name, enabled=protocol.lock):
            stats = _timed_stats(timed_run, protocol, timed_ref)
        attempts.append(stats)
        if stats[spread] <= protocol.spread_threshold:
            break
    best = min(attempts, key=lambda s: s[spread])
    return {**best, "attempts": len(attempts), "flagged": best[spread] > protocol.spread_threshold,
            "spreads": [round(s[spread], 4) for s in attempts], "loadavg": _loadavg()}


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not on every platform
        return None


def lock_path(name: str) -> Path:
    return Path(tempfile.gettempdir()) / f"shufflenas-latency-{name}.lock"


@contextmanager
def device_lock(name: str, enabled: bool = True) -> Iterator[None]:
    """Machine-wide exclusive lock (``flock``) so no two measurements on one host overlap,
    whichever process or Ray actor runs them."""
    if not enabled:
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no cross-process lock, measurements may overlap
        yield
        return
    with open(lock_path(name), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
