"""Latency lookup table vs measurement on held-out random architectures.

    python experiments/lut_validation.py [--space experiments/spaces/lut_imagenet.yaml] [--samples 30]

Builds (or resumes, or reuses) the table for the space on this machine
(ONNX Runtime, 1 thread, batch 1, the space's input size), measures
``--samples`` random architectures that were not used for calibration, each
in ``--network-sessions`` worker sessions (median kept), and prints MAPE,
the share within +/-5% and +/-10% and the rank correlations beside the
published anchors. Writes
``experiments/results/lut/lut_<space>.json`` (the table) and
``experiments/results/lut/lut_validation_<space>.{txt,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from evaluators.latency import LatencyLUT, LatencyTarget, MeasurementProtocol, held_out_sample, validate_lut
from evaluators.latency.validation import ANCHORS
from search_space import load_space
from search_space.io import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results" / "lut"
SPACES = Path(__file__).resolve().parent / "spaces"
GOALS = {"within_10": 0.95, "mape": 0.05, "spearman": 0.98}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default=str(SPACES / "lut_imagenet.yaml"), help="space file or built-in name")
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calibration", type=int, default=30)
    ap.add_argument("--rebuild", action="store_true", help="measure the table again from scratch")
    ap.add_argument("--unpaired", action="store_true",
                    help="time blocks and networks alone, not in turns with the reference (the pre-issue-#3 protocol)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: per-run CPU time of the worker thread, a load-robust proxy (not latency)")
    ap.add_argument("--recalibrate", action="store_true",
                    help="time the calibration networks of an existing table again (its entries are kept)")
    ap.add_argument("--network-seconds", type=float, default=MeasurementProtocol.quick().network_seconds,
                    help="time each whole network (calibration, validation) for at least this long")
    ap.add_argument("--network-sessions", type=int, default=MeasurementProtocol.quick().network_sessions,
                    help="time each whole network in this many worker sessions and keep the median")
    ap.add_argument("--suffix", default="",
                    help="appended to the result file names, so a rerun keeps earlier tables and reports")
    args = ap.parse_args(argv)

    space = load_space(args.space)
    target = LatencyTarget(threads=args.threads)
    tag = space.name + ("_cpuclock" if args.clock == "cpu" else "") + ("_unpaired" if args.unpaired else "") + args.suffix
    lut_path = RESULTS / f"lut_{tag}.json"
    if args.rebuild and lut_path.exists():
        lut_path.unlink()
    load0 = os.getloadavg()[0]
    reuse = lut_path.exists() and json.loads(lut_path.read_text()).get("meta", {}).get("complete")
    t0 = time.time()
    lut = (LatencyLUT.load(lut_path, target=target) if reuse else
           LatencyLUT.build(space, target, MeasurementProtocol.quick(clock=args.clock, paired=not args.unpaired,
                                                                     network_seconds=args.network_seconds,
                                                                     network_sessions=args.network_sessions),
                            progress=True, path=lut_path,
                            calibration=args.calibration))
    build_s = time.time() - t0
    if reuse and args.recalibrate:  # the same networks, timed for --network-seconds each
        lut.protocol = lut.protocol.model_copy(update={"network_seconds": args.network_seconds,
                                                       "network_sessions": args.network_sessions})
        lut.recalibrate(progress=True)
        lut.save(lut_path)
    elif reuse:
        lut.refit()  # the correction as the current code fits it, from the stored calibration networks
        lut.save(lut_path)
    archs = held_out_sample(lut, space, args.samples, seed=args.seed)
    t0 = time.time()
    # the table's own protocol and clock (paired: timed in turns with the reference), --network-sessions sessions
    rep = validate_lut(lut, archs, sessions=args.network_sessions, seed=args.seed, progress=True)
    sc = rep.get("speed_corrected")
    o = lut.overhead
    lines = [
        f"LUT validation: space {space.name} ({space.spec.input_size}x{space.spec.input_size}), "
        f"{target.describe()}, clock {args.clock}"
        + (" (CPU time of the worker thread per run: a load-robust proxy, NOT wall-clock latency)"
           if args.clock == "cpu" else " (wall-clock latency)"),
        f"machine: {lut.machine.get('cpu')}, {lut.machine.get('cores')} cores, torch {lut.machine.get('torch')}, "
        f"onnxruntime {lut.machine.get('onnxruntime')}",
        f"table: {len(lut):,} blocks ({'reused' if reuse else f'built in {build_s:.0f} s'}), "
        f"{lut.meta.get('flagged_entries', 0)} flagged; correction {o.get('fit')}: a={o['a']:.3f}, "
        f"c={o.get('c_ms', 0) * 1000:.1f} us/block, b={o['b_ms'] * 1000:.1f} us "
        f"(calibration MAPE {o.get('fit_mape', float('nan')):.2%} on {len(o.get('calibration', []))} networks)",
        f"load average: {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end "
        f"(2 cores shared; > 1 means the numbers are disturbed)",
        "",
        f"{'metric':<16}{'measured':>10}{'speed-corr.':>13}   goal",
        f"{'architectures':<16}{rep['n']:>10d}{'':>13}   >= 30 held out",
        *[f"{label:<16}{_fmt(rep, k, fmt):>10}{_fmt(sc, k, fmt):>13}   {goal}"
          for label, k, fmt, goal in (("MAPE", "mape", ".2%", "< 5%"), ("within +/-5%", "within_5", ".1%", ""),
                                      ("within +/-10%", "within_10", ".1%", ">= 95%"),
                                      ("Spearman", "spearman", ".3f", ">= 0.98"), ("Kendall", "kendall", ".3f", ""),
                                      ("max |error|", "max_abs_error", ".2%", ""))],
        f"{'sessions':<16}{rep['sessions']:>10d}   worker sessions per network, median kept"
        + (f"; they differ by a median {rep['session_spread_median']:.1%}" if "session_spread_median" in rep else ""),
        f"{'flagged':<16}{rep['flagged']:>10d}   measurements whose spread stayed above threshold",
        f"{'drift':<16}{rep['drift'].get('worst_ratio', 1.0):>10.3f}   worst reference ratio during validation",
        f"{'speed':<16}{_speed(rep):>10}   the machine's speed during validation over the table's (reference "
        + (f"{ANCHOR_REF} timed in turns with each network, {lut.protocol.pair_turn} runs each); speed-corr. = "
           f"each network's median ratio to it x the table's unit" if lut.protocol.paired else
           f"{ANCHOR_REF} before every network); speed-corr. divides each measurement by it"),
        f"{'CPU share':<16}{rep.get('cpu_share_median') or float('nan'):>10.2f}   median share of wall time the "
        f"worker ran (1.0 = had a core to itself)",
        "",
        "published anchors (share within +/-10%): " + "; ".join(f"{k} {v:.1%}" for k, v in ANCHORS.items()),
        "goals met (measured): " + ", ".join(f"{k} {'yes' if _met(k, rep) else 'NO'}" for k in GOALS),
        "goals met (speed-corrected): " + (", ".join(f"{k} {'yes' if _met(k, sc) else 'NO'}" for k in GOALS)
                                           if sc else "n/a (no reference timings)"),
        f"validation took {time.time() - t0:.0f} s",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = f"lut_validation_{tag}" + (f"_seed{args.seed}" if args.seed else "")  # another held-out sample
    atomic_write_text(RESULTS / f"{out}.txt", text + "\n")
    atomic_write_json(RESULTS / f"{out}.json",
                      {**rep, "space": space.name, "clock": args.clock, "lut": str(lut_path.name), "loadavg_start": load0})
    return 0


ANCHOR_REF = "shufflenet_v2_x0_5"


def _fmt(rep: dict | None, key: str, fmt: str) -> str:
    return "-" if not rep or key not in rep else format(rep[key], fmt)


def _speed(rep: dict) -> str:
    sp = rep.get("speed")
    return f"{sp['min']:.2f}-{sp['max']:.2f}x" if sp else "-"


def _met(key: str, rep: dict) -> bool:
    v = rep.get(key, float("nan"))
    return v < GOALS[key] if key == "mape" else v >= GOALS[key]


if __name__ == "__main__":
    sys.exit(main())
