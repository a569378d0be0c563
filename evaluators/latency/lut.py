"""Latency lookup table: one measured entry per block configuration, plus a whole-network correction.

Prediction is a dict lookup per block and a linear correction::

    latency ~= a * sum(block medians) + c * number_of_blocks + b

``c`` (negative) removes the per-call overhead each isolated block
measurement carries (8-22 us per ONNX Runtime ``run()``, which made the block
sum 1.02-1.21x the whole network, NOTES.md); ``b`` is the whole network's own
call overhead, ``a`` absorbs cache effects. The three are fitted by least
squares (robustly: see :func:`fit_overhead`) on a few whole networks of the space measured in the
same session.

The machine's speed is not constant (a shared host: the reference network
was seen 1.1-2.2x slower for minutes at a time, NOTES.md), so the build
re-measures a reference network every ``protocol.reference_every`` blocks and
stores with each entry the latest reference reading (``ref_ms``). The
table's unit is the median of those readings (``meta["reference_ms"]``, set
when the build completes): an entry measured while the reference read 2x
that median counts half. Predictions are therefore at the machine's typical
speed, the same for every candidate of a search whatever the machine did
meanwhile.

The table is JSON, tagged with the target, library versions and processor,
and written atomically while it is built, so a killed build resumes where it
stopped. It is also tagged with the host it was measured on
(:func:`~evaluators.latency.target.host_identity`: hostname, processor,
runtime and version, threads); :meth:`LatencyLUT.check_host` refuses it on
another host, and warns for a table from before the tag existed.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import time
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from search_space import Architecture, SearchSpace, load_space
from search_space.blocks import Block, HeadBlock, StemBlock, UnitBlock, iter_blocks
from search_space.io import atomic_write_json

from ..base import LatencyResult
from .target import (LatencyError, LatencyTarget, LUTHostError, LUTHostWarning, LUTMissingError, MeasurementProtocol,
                     describe_host, host_differences, host_identity)
from .worker import MeasurementWorker, measure_sessions

LUT_FORMAT = "shufflenas-latency-lut/1"
ENTRY_FIELDS = ("median_ms", "p90_ms", "iqr_rel", "runs", "attempts", "flagged")
PAIRED_FIELDS = ("ref_ms", "ratio", "ratio_iqr_rel")
SAVE_EVERY_S = 2.0
#: what to do about a table tagged with another host, said by :meth:`LatencyLUT.check_host` (callers say theirs)
HOST_OVERRIDE = "rebuild it on that host, or skip the host check to use it anyway"


def space_blocks(space: SearchSpace, input_size: int | None = None) -> dict[str, Block]:
    """Every block configuration ``space`` can produce, keyed by ``block.key()``, in forward order.

    Walks the stages: a stage's stride-2 unit sees every (width, resolution)
    the previous stage (or the stem) can output; its stride-1 units see the
    stage's own width. Per-unit choices are walked unit position by unit
    position. Only reachable configurations are listed.
    """
    s = space.spec
    size = input_size or s.input_size
    out: dict[str, Block] = {}
    inputs: set[tuple[int, int]] = set()
    for c, k, st, mp in itertools.product(s.stem.channels, s.stem.kernel, s.stem.stride, s.stem.maxpool):
        b = StemBlock(s.in_channels, c, k, st, mp, size)
        out.setdefault(b.key(), b)
        inputs.add((c, b.out_resolution))
    for i in range(len(s.stages)):
        nxt: set[tuple[int, int]] = set()
        for j in space.distinct_positions(i):
            for c, u in space.unit_choices(i, j):
                for cin, res in (sorted(inputs) if j == 0 else sorted(r for r in nxt if r[0] == c)):
                    b = UnitBlock(u.unit, 2 if j == 0 else 1, cin, c, u.split, u.groups, u.kernel, u.se, u.act,
                                  res, first_ungrouped=(u.unit == "v1" and i == 0 and j == 0), mid=u.mid_channels)
                    out.setdefault(b.key(), b)
                    if j == 0:
                        nxt.add((c, b.out_resolution))
        inputs = nxt
    for (cin, res), hc in itertools.product(sorted(inputs), s.head_channels):
        b = HeadBlock(cin, hc, s.num_classes, res)
        out.setdefault(b.key(), b)
    return out


def _space_of(space) -> SearchSpace:
    return space if isinstance(space, SearchSpace) else load_space(space)


class LatencyLUT:
    """Per-block latency table for one target; ``predict(arch)`` in microseconds."""

    def __init__(self, target: LatencyTarget, entries: dict[str, dict], overhead: dict | None = None,
                 machine: dict | None = None, protocol: MeasurementProtocol | None = None,
                 space: dict | None = None, meta: dict | None = None, fallback: str = "error",
                 host: dict | None = None):
        if fallback not in ("error", "measure"):
            raise LatencyError(f"fallback {fallback!r} unknown; use 'error' or 'measure'")
        self.target = target
        self.entries = entries
        self.overhead = overhead or {"a": 1.0, "c_ms": 0.0, "b_ms": 0.0, "calibration": []}
        self.machine = machine or {}
        self.protocol = protocol or MeasurementProtocol.quick()
        self.space = space
        self.meta = meta or {}
        self.fallback = fallback
        self.host = host  # host_identity() of where it was measured; None in tables from before the tag
        self.path: Path | None = None
        self._worker: MeasurementWorker | None = None

    # ---- building ---------------------------------------------------------------
    @classmethod
    def build(cls, space, target: LatencyTarget | None = None, protocol: MeasurementProtocol | None = None,
              progress: bool = True, path: str | Path | None = None, calibration: int = 30,
              seed: int = 1_000_003, *, host_check: bool = True, override: str = HOST_OVERRIDE) -> "LatencyLUT":
        """Measure every reachable block of ``space`` on ``target``, then fit the overhead term.

        With ``path``, partial results are written atomically every few seconds and an
        existing partial table for the same target is resumed -- unless it was measured on
        another host (:meth:`check_host`; ``host_check=False`` resumes it anyway, ``override``
        says how in the error). ``calibration`` whole networks (sampled with ``seed``) fit
        the correction; they are recorded so a validation can hold them out.
        """
        target = target or LatencyTarget()
        resume = cls.load(path, target=target) if path is not None and Path(path).exists() else None
        lut = None
        for lut in cls.build_steps(space, target, protocol, progress=progress, calibration=calibration, seed=seed,
                                   resume=resume, host_check=host_check, override=override):
            if path is not None:
                lut.save(path)
        lut.path = Path(path) if path is not None else None
        return lut

    @classmethod
    def build_steps(cls, space, target: LatencyTarget | None = None, protocol: MeasurementProtocol | None = None,
                    progress: bool = True, calibration: int = 30, seed: int = 1_000_003, *,
                    resume: "LatencyLUT | None" = None, host_check: bool = True, override: str = HOST_OVERRIDE,
                    save_every_s: float = SAVE_EVERY_S) -> Iterator["LatencyLUT"]:
        """:meth:`build` one step at a time: yields the table being built (one object, growing) every
        ``save_every_s`` of block measurements, once the blocks are done, and complete at the end.

        Each yield is a moment to save it: a table saved then and passed back as ``resume``
        continues where it stopped (its entries and calibration networks are kept). The
        build's own process need not be the one that saves (the Ray actor builds on the
        device's node and the driver saves, :mod:`evaluators.latency.ray_actor`).
        """
        from tqdm import tqdm

        sp = _space_of(space)
        target = target or LatencyTarget()
        protocol = protocol or MeasurementProtocol.quick()
        blocks = space_blocks(sp, target.input_size)
        lut = cls(target, {}, protocol=protocol, space=sp.to_dict(),
                  meta={"space_name": sp.name, "blocks_in_space": len(blocks), "complete": False})
        if resume is not None and resume.target != target:
            raise LatencyError(f"cannot resume a table built for {resume.target.describe()} as one for "
                               f"{target.describe()}")
        lut.host = host_identity(target)  # this process runs where the worker measures
        if resume is not None:
            if host_check:
                resume.check_host(lut.host, override)  # entries of two hosts are not one table
            lut.entries = {k: v for k, v in resume.entries.items() if k in blocks}
            lut.overhead = resume.overhead
            lut.meta.update({k: v for k, v in resume.meta.items() if k.startswith("build_")})
        todo = [k for k in blocks if k not in lut.entries]
        calib_archs = sp.sample(calibration, seed=seed) if calibration else []
        ref_size = target.input_size or sp.spec.input_size  # paired timing: the reference at the networks' size
        t_start = time.time()
        with MeasurementWorker(target, protocol) as w:
            lut.machine = w.machine
            last_save = time.monotonic()
            bar = tqdm(total=len(blocks), initial=len(blocks) - len(todo), desc=f"LUT {sp.name}",
                       unit="block", disable=not progress, dynamic_ncols=True)
            with bar:
                for key in todo:
                    lut.entries[key] = lut._speed_tagged(_entry(w.block_latency(blocks[key], ref_size)), w)
                    bar.update()
                    if time.monotonic() - last_save > save_every_s:
                        yield lut
                        last_save = time.monotonic()
            # One more pass for blocks whose spread never settled: keep the steadier measurement.
            for key in [k for k, e in lut.entries.items() if e.get("flagged")]:
                again = lut._speed_tagged(_entry(w.block_latency(blocks[key], ref_size)), w)
                if _spread(again) < _spread(lut.entries[key]):
                    lut.entries[key] = again
            if protocol.reference_every:
                w.reference()  # closing check, so drift spans the whole build
            lut.meta["drift"] = {k: v for k, v in w.drift().items() if k != "history"}
            yield lut
            lut.calibrate(calib_archs, worker=w, progress=progress)
        lut.meta.update({"complete": True, "build_seconds": round(time.time() - t_start, 1),
                         "flagged_entries": sum(bool(e.get("flagged")) for e in lut.entries.values())})
        yield lut

    def calibrate(self, archs: Iterable[Architecture], worker: MeasurementWorker | None = None,
                  progress: bool = False) -> dict:
        """Time whole networks with ``protocol.for_networks()``, each in ``protocol.network_sessions``
        sessions, the median kept (:func:`~evaluators.latency.worker.measure_sessions`; the first session
        in ``worker`` if it uses that protocol; networks already in the calibration are kept), and fit the
        network correction on them. Returns the correction."""
        done = {json.dumps(c["arch"], sort_keys=True) for c in self.overhead.get("calibration", [])}
        calib = list(self.overhead.get("calibration", []))
        todo = [a for a in (self.target.apply(a) for a in archs)
                if json.dumps(a.to_dict(), sort_keys=True) not in done]
        if todo:
            results, _ = measure_sessions(todo, self.target, self.protocol.for_networks(), worker=worker,
                                          progress=progress, desc="calibration")
            for arch, r in zip(todo, results):
                calib.append({"arch": arch.to_dict(), "measured_ms": r.median_ms, "iqr_rel": r.iqr_rel,
                              "flagged": r.flagged,
                              **{k: r.extra[k] for k in ("ref_ms", "ratio", "session_spread") if k in r.extra}})
        self.overhead = {**self.overhead, "calibration": calib}
        self._set_unit()
        self.overhead = {**fit_overhead(self, calib), "calibration": calib}
        return self.overhead

    # ---- the machine's speed ------------------------------------------------------------
    def _speed_tagged(self, entry: dict, worker: MeasurementWorker) -> dict:
        """The entry with the reference reading of its moment: its own paired one, else the latest."""
        ref = worker.reference_now()
        return entry if ref is None or entry.get("ref_ms") else {**entry, "ref_ms": ref}

    def _set_unit(self) -> None:
        """The table's unit: the median reference reading over its entries and calibration networks."""
        refs = [e["ref_ms"] for e in self.entries.values() if e.get("ref_ms")]
        refs += [c["ref_ms"] for c in self.overhead.get("calibration", []) if c.get("ref_ms")]
        if refs:
            self.meta["reference_ms"] = float(np.median(refs))

    def speed_of(self, item: dict) -> float:
        """How much slower than the table's unit the machine was when ``item`` was measured."""
        ref, unit = item.get("ref_ms"), self.meta.get("reference_ms")
        return ref / unit if ref and unit else 1.0

    def nominal_ms(self, item: dict, ms: float) -> float:
        """``ms`` measured for ``item`` (an entry or a calibration network), at the table's unit speed:
        its paired ratio times the unit when it has one, else ``ms`` over the speed of its moment."""
        unit = self.meta.get("reference_ms")
        if item.get("ratio") and unit:
            return item["ratio"] * unit
        return ms / self.speed_of(item)

    # ---- persistence --------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": LUT_FORMAT, "saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "target": self.target.to_dict(), "host": self.host, "machine": self.machine,
                "protocol": self.protocol.to_dict(),
                "meta": self.meta, "overhead": self.overhead, "space": self.space,
                "entries": dict(sorted(self.entries.items()))}

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path, target: LatencyTarget | Mapping | None = None,
             fallback: str = "error", host: dict | None = None, override: str = HOST_OVERRIDE) -> "LatencyLUT":
        """Load a table; with ``target`` (a LatencyTarget, or a dict of the fields that must match),
        a table built for anything else is a one-line error. With ``host`` (a
        :func:`~evaluators.latency.target.host_identity`), see :meth:`check_host`."""
        p = Path(path)
        if not p.is_file():
            raise LatencyError(f"{p}: lookup table not found; build it with 'shufflenas lut build SPACE --out {p}'")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LatencyError(f"{p}: not a readable JSON lookup table ({exc.__class__.__name__})") from None
        lut = cls.from_dict(data, target, fallback=fallback, source=str(p))
        lut.path = p
        if host is not None:
            lut.check_host(host, override)
        return lut

    @classmethod
    def from_dict(cls, data, target: LatencyTarget | Mapping | None = None, fallback: str = "error",
                  source: str = "lookup table") -> "LatencyLUT":
        """The table :meth:`to_dict` wrote (``source`` names it in errors); ``target`` as in :meth:`load`."""
        p = source
        if not isinstance(data, dict) or data.get("format") != LUT_FORMAT:
            raise LatencyError(f"{p}: not a shufflenas latency lookup table (expected format {LUT_FORMAT})")
        built_for = LatencyTarget.from_dict(data["target"], f"{p}: target")
        if target is not None:
            want = target.to_dict() if isinstance(target, LatencyTarget) else dict(target)
            have = built_for.to_dict()
            diff = [f"{k}={want[k]} (table: {have.get(k)})" for k in want if want[k] != have.get(k)]
            if diff:
                raise LatencyError(f"{p} was built for another target ({built_for.describe()}); requested "
                                   f"{', '.join(diff)}; build a table for this target with 'shufflenas lut build'")
        return cls(built_for, data["entries"], data.get("overhead"), data.get("machine"),
                   MeasurementProtocol.model_validate(data.get("protocol") or {}), data.get("space"),
                   data.get("meta"), fallback=fallback, host=data.get("host"))

    def check_host(self, host: dict, override: str = HOST_OVERRIDE) -> None:
        """Refuse (:class:`LUTHostError`, one line naming the file, both hosts and ``override``) a table
        tagged with another host than ``host``, the one its predictions stand for; warn
        (:class:`LUTHostWarning`) for a table from before the tag, which cannot be checked."""
        where = f"{self.path}: " if self.path else ""
        if not self.host:
            warnings.warn(f"{where}lookup table without a host tag (built before tables were tagged), so it "
                          f"cannot be checked against {describe_host(host)}; rebuild it on that host to tag it",
                          LUTHostWarning, stacklevel=2)
            return
        diff = host_differences(self.host, host)
        if diff:
            raise LUTHostError(f"{where}lookup table built on {describe_host(self.host)}, but latency is measured "
                               f"on {describe_host(host)} ({', '.join(diff)} differ); {override}")

    # ---- prediction -----------------------------------------------------------------
    def block_ms(self, arch: Architecture) -> dict[str, tuple[str, float]]:
        """``{module_path: (block key, isolated median ms)}`` for every block of ``arch``."""
        arch = self.target.apply(arch)
        blocks = list(iter_blocks(arch))
        missing = [(path, b) for path, b in blocks if b.key() not in self.entries]
        if missing:
            if self.fallback != "measure":
                path, b = missing[0]
                more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
                raise LUTMissingError(f"lookup table has no entry for block {b.key()} ({path}){more}; build a "
                                      f"table for a space that contains it, or use fallback='measure'")
            self._measure_missing([b for _, b in missing])
        return {path: (b.key(), self.nominal_ms(self.entries[b.key()], self.entries[b.key()]["median_ms"]))
                for path, b in blocks}

    def breakdown(self, arch: Architecture) -> dict[str, float]:
        """Isolated latency (ms) of every block, by module path (before the network correction)."""
        return {path: ms for path, (_, ms) in self.block_ms(arch).items()}

    def predict(self, arch: Architecture) -> float:
        """Predicted latency in ms of the whole network."""
        ms = self.block_ms(arch)
        return self._correct(sum(v for _, v in ms.values()), len(ms))

    def _correct(self, block_sum: float, n_blocks: int) -> float:
        o = self.overhead
        return o["a"] * block_sum + o.get("c_ms", 0.0) * n_blocks + o["b_ms"]

    def latency(self, arch: Architecture) -> LatencyResult:
        ms = self.block_ms(arch)
        block_sum = sum(v for _, v in ms.values())
        return LatencyResult(median_ms=self._correct(block_sum, len(ms)), source="lut",
                             target=self.target.to_dict(),
                             extra={"name": arch.name, "block_sum_ms": block_sum, "blocks": len(ms),
                                    "clock": self.protocol.clock,
                                    "lut": str(self.path) if self.path else None})

    # ---- measured fallback -------------------------------------------------------------
    def _measure_missing(self, blocks: Iterable[Block]) -> None:
        if self._worker is None:
            self._worker = MeasurementWorker(self.target, self.protocol).start()
        for b in blocks:
            if b.key() not in self.entries:
                self.entries[b.key()] = {**self._speed_tagged(_entry(self._worker.block_latency(
                    b, self.target.input_size or (self.space or {}).get("input_size"))), self._worker),
                                         "fallback": True}
        if self.path:
            self.save(self.path)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def __enter__(self) -> "LatencyLUT":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def recalibrate(self, progress: bool = False) -> dict:
        """Time the calibration networks again, with the current protocol, and refit the correction."""
        archs = [Architecture.from_dict(c["arch"]) for c in self.overhead.get("calibration", [])]
        self.overhead = {**self.overhead, "calibration": []}
        return self.calibrate(archs, progress=progress)

    def refit(self) -> dict:
        """Fit the network correction again from the stored calibration measurements (nothing is measured)."""
        calib = self.overhead.get("calibration", [])
        self.overhead = {**fit_overhead(self, calib), "calibration": calib}
        return self.overhead

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"LatencyLUT({len(self.entries)} blocks, {self.target.describe()})"


def _spread(entry: dict) -> float:
    """The spread the measurement was judged by: of the paired ratios when it has them, else of the runs."""
    return entry.get("ratio_iqr_rel", entry["iqr_rel"])


def _entry(raw: dict) -> dict:
    """What a table keeps of one block's timing; with paired timing also ``ref_ms`` and ``ratio``."""
    return {k: raw[k] for k in ENTRY_FIELDS + PAIRED_FIELDS if k in raw}


def fit_overhead(lut: LatencyLUT, calibration: list[dict]) -> dict:
    """Fit ``measured ~ a * block_sum + c * n_blocks + b`` on the calibration networks, robustly.

    Four candidate models -- the median ratio (``a`` only), a Theil-Sen line and a least-squares
    line (``a``, ``b``), and least squares with the per-block term (``a``, ``c``, ``b``) -- are
    compared by leave-one-out mean relative error (the MAPE a validation reports) and the best
    is kept. Theil-Sen resists one disturbed calibration network (seen here: a least-squares fit
    dragged to 45% calibration MAPE); with 10 networks the 3-parameter model overfitted
    (held-out MAPE 6.6% against 4.7% for the least-squares line).
    """
    from scipy.stats import theilslopes

    rows = []
    for c in calibration:
        ms = lut.block_ms(Architecture.from_dict(c["arch"]))
        rows.append((sum(v for _, v in ms.values()), len(ms), lut.nominal_ms(c, c["measured_ms"])))
    if not rows:
        return {"a": 1.0, "c_ms": 0.0, "b_ms": 0.0, "fit": "none"}
    s, n, y = (np.array(col, dtype=float) for col in zip(*rows))

    def ratio(i):
        return float(np.median(y[i] / s[i])), 0.0, 0.0

    def theil(i):
        a, b, *_ = theilslopes(y[i], s[i])
        return float(a), 0.0, float(b)

    def line(i):
        (a, b), *_ = np.linalg.lstsq(np.c_[s[i], np.ones(len(i))], y[i], rcond=None)
        return float(a), 0.0, float(b)

    def lsq(i):
        (a, c, b), *_ = np.linalg.lstsq(np.c_[s[i], n[i], np.ones(len(i))], y[i], rcond=None)
        return float(a), float(c), float(b)

    models = {"ratio": (ratio, 1), "a*sum+b (Theil-Sen)": (theil, 3), "a*sum+b": (line, 3),
              "a*sum+c*n+b": (lsq, 6)}
    idx = np.arange(len(rows))
    scores = {}
    for name, (fit, need) in models.items():
        if len(rows) - 1 < need:
            continue
        errs = []
        for k in idx:
            a, c, b = fit(idx[idx != k])
            errs.append(abs(a * s[k] + c * n[k] + b - y[k]) / y[k])
        scores[name] = float(np.mean(errs))
    best = min(scores, key=scores.get) if scores else "ratio"
    a, c, b = models[best][0](idx)
    pred = a * s + c * n + b
    return {"a": a, "c_ms": c, "b_ms": b, "fit": best,
            "loo_mean_error": {k: round(v, 4) for k, v in scores.items()},
            "sum_over_measured": [round(float(v), 4) for v in s / y],
            "fit_mape": float(np.mean(np.abs(pred - y) / y))}
