"""How well a lookup table predicts measured whole networks: MAPE, share within +/-5% / +/-10%, rank correlation."""

from __future__ import annotations

import json

import numpy as np
from scipy import stats

from search_space import Architecture, SearchSpace

from .lut import LatencyLUT
from .target import MeasurementProtocol, machine_info
from .worker import measure_sessions

#: Published reference points (NOTES.md): share of models within +/-10%.
MIN_FOR_DRIFT = 10
ANCHORS = {"nn-Meter, mobile CPU": 0.990, "operator sum, CPU (nn-Meter paper)": 0.913}


def error_metrics(predicted, measured) -> dict:
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    rel = (p - m) / m
    out = {"n": int(m.size), "mape": float(np.mean(np.abs(rel))), "within_5": float(np.mean(np.abs(rel) <= 0.05)),
           "within_10": float(np.mean(np.abs(rel) <= 0.10)), "max_abs_error": float(np.max(np.abs(rel))),
           "mean_error": float(np.mean(rel))}
    if m.size >= 3:
        out["spearman"] = float(stats.spearmanr(p, m).statistic)
        out["kendall"] = float(stats.kendalltau(p, m).statistic)
    return out


def held_out_sample(lut: LatencyLUT, space: SearchSpace, n: int, seed: int = 0) -> list[Architecture]:
    """``n`` random architectures of ``space`` that were not used to calibrate ``lut``."""
    seen = {json.dumps(c["arch"], sort_keys=True) for c in lut.overhead.get("calibration", [])}
    out, rng = [], np.random.default_rng(seed)
    for _ in range(50 * n + 100):
        if len(out) == n:
            break
        a = lut.target.apply(space.sample(seed=rng))
        key = json.dumps(a.to_dict(), sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(a)
    return out


def validate_lut(lut: LatencyLUT, archs: list[Architecture], protocol: MeasurementProtocol | None = None,
                 sessions: int | None = None, seed: int = 0, progress: bool = False) -> dict:
    """Predict every architecture from ``lut`` and measure it on ``lut.target``.

    Predictions are made first, so a table missing a block fails before anything is measured.
    The protocol is the table's own for whole networks (same clock and reference timing, at least
    ``network_seconds`` per network: :meth:`MeasurementProtocol.for_networks`) unless given; each
    network is measured in ``sessions`` worker sessions (default ``protocol.network_sessions``, the
    table's calibration networks got as many) and the median kept. A paired protocol times the
    reference in turns with every network, and the drift is the reference's reading there against
    the table's unit; unpaired, with ``MIN_FOR_DRIFT`` or more architectures, the reference preset
    is measured before every network and once at the end of each session. The metrics are reported
    twice: against the raw measurements, and ``speed_corrected`` -- each measurement at the table's
    unit speed (with a paired protocol, the network's own ratio to the reference timed in turns
    with it, times the unit; else divided by the reference reading of its moment over the unit),
    which is the table's error at the speed it predicts for, separated from the host's drift. ``same_machine`` tells whether this machine matches the table's processor
    and library versions.
    """
    predicted = [lut.predict(a) for a in archs]
    protocol = protocol or lut.protocol.for_networks()
    base = lut.meta.get("reference_ms") or (lut.meta.get("drift") or {}).get("baseline_ms")
    # paired: each network brings its own reference reading, a separate one would only double the time
    every = 1 if len(archs) >= MIN_FOR_DRIFT and not (protocol.paired and base) else 0
    protocol = protocol.model_copy(update={"reference_every": every})
    results, drifts = measure_sessions(archs, lut.target, protocol, sessions, seed=seed, closing_reference=True,
                                       progress=progress, desc="validation")
    drift = (_paired_drift(results, base, protocol) if protocol.paired and base else
             max(drifts, key=lambda d: abs(d.get("worst_ratio", 1.0) - 1)))
    measured = [r.median_ms for r in results]
    here = machine_info(lut.target.device)
    keys = ("cpu", "torch", "onnxruntime")
    speeds = nominal = None
    if base and all(r.extra.get("ref_ms") for r in results):
        speeds = [r.extra["ref_ms"] / base for r in results]
        nominal = ([r.extra["ratio"] * base for r in results] if protocol.paired else
                   [m / s for m, s in zip(measured, speeds)])
    rows = [{"name": a.name, "predicted_ms": p, "measured_ms": r.median_ms, "error": (p - r.median_ms) / r.median_ms,
             "iqr_rel": r.iqr_rel, "flagged": r.flagged, "cpu_share": r.extra.get("cpu_share"),
             "speed": speeds[i] if speeds else None, "nominal_ms": nominal[i] if speeds else None,
             **{k: r.extra[k] for k in ("session_spread", "sessions") if k in r.extra},
             "arch": a.to_dict()}
            for i, (a, p, r) in enumerate(zip(archs, predicted, results))]
    shares = [r.extra["cpu_share"] for r in results if r.extra.get("cpu_share") is not None]
    out = {**error_metrics(predicted, measured), "flagged": sum(r.flagged for r in results),
           "sessions": len(drifts), "cpu_share_median": float(np.median(shares)) if shares else None,
           "target": lut.target.to_dict(), "same_machine": all(lut.machine.get(k) == here.get(k) for k in keys),
           "machine": here, "drift": drift, "anchors_within_10": ANCHORS, "rows": rows}
    spreads = [r.extra["session_spread"] for r in results if "session_spread" in r.extra]
    if spreads:
        out["session_spread_median"] = float(np.median(spreads))
    if speeds:
        out["speed_corrected"] = error_metrics(predicted, nominal)
        out["speed"] = {"min": min(speeds), "max": max(speeds), "table_reference_ms": base}
    return out


def _paired_drift(results, base: float, protocol: MeasurementProtocol) -> dict:
    """The machine's speed over the table's: every session's paired reference reading over its unit."""
    ratios = [s.get("ref_ms", r.extra.get("ref_ms")) / base for r in results
              for s in (r.extra.get("sessions") or [r.extra])]
    worst = max(ratios, key=lambda x: abs(x - 1))
    return {"reference": protocol.reference, "checks": len(ratios), "threshold": protocol.drift_threshold,
            "baseline_ms": base, "baseline": "the table's unit", "worst_ratio": worst,
            "drifted": abs(worst - 1) > protocol.drift_threshold}
