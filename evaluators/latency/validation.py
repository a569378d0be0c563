"""How well a lookup table predicts measured whole networks: MAPE, share within +/-5% / +/-10%, rank correlation."""

from __future__ import annotations

import json

import numpy as np
from scipy import stats

from search_space import Architecture, SearchSpace

from .lut import LatencyLUT
from .target import MeasurementProtocol, machine_info
from .worker import MeasurementWorker

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


def validate_lut(lut: LatencyLUT, archs: list[Architecture], protocol: MeasurementProtocol | None = None) -> dict:
    """Predict every architecture from ``lut`` and measure it in one worker session on ``lut.target``.

    Predictions are made first, so a table missing a block fails before anything is measured.
    With ``MIN_FOR_DRIFT`` or more architectures the reference preset is measured before and after
    (and every ``protocol.reference_every``), so the report says whether the machine drifted.
    ``same_machine`` tells whether this machine matches the table's processor and library versions.
    """
    predicted = [lut.predict(a) for a in archs]
    # The same clock the table was measured with; a table's CPU-time entries predict CPU time.
    protocol = protocol or MeasurementProtocol(clock=lut.protocol.clock)
    if len(archs) < MIN_FOR_DRIFT:  # a reference before and after is worth it only for a longer session
        protocol = protocol.model_copy(update={"reference_every": 0})
    with MeasurementWorker(lut.target, protocol) as w:
        results = [w.latency(a) for a in archs]
        if protocol.reference_every:
            w.reference()  # closing check, so drift spans the whole session
        drift = {k: v for k, v in w.drift().items() if k != "history"}
    measured = [r.median_ms for r in results]
    here = machine_info(lut.target.device)
    keys = ("cpu", "torch", "onnxruntime")
    rows = [{"name": a.name, "predicted_ms": p, "measured_ms": r.median_ms, "error": (p - r.median_ms) / r.median_ms,
             "iqr_rel": r.iqr_rel, "flagged": r.flagged, "cpu_share": r.extra.get("cpu_share"), "arch": a.to_dict()}
            for a, p, r in zip(archs, predicted, results)]
    shares = [r.extra["cpu_share"] for r in results if r.extra.get("cpu_share") is not None]
    return {**error_metrics(predicted, measured), "flagged": sum(r.flagged for r in results),
            "cpu_share_median": float(np.median(shares)) if shares else None,
            "target": lut.target.to_dict(), "same_machine": all(lut.machine.get(k) == here.get(k) for k in keys),
            "machine": here, "drift": drift, "anchors_within_10": ANCHORS, "rows": rows}
