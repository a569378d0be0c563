"""Measurement sessions: one worker process that measures one thing at a time.

:class:`MeasurementWorker` is a long-lived worker process (a context manager)
that satisfies :class:`evaluators.base.LatencyEstimator`; :func:`measure` is
one fresh worker for one call. Thread variables are set in the worker's
environment before its interpreter starts; requests are answered strictly in
turn, and the timing itself runs under a machine-wide lock
(:func:`~evaluators.latency.timing.device_lock`), so measurements never
overlap -- not even those of different workers or users on the same host.

Drift: every ``protocol.reference_every`` measurements the worker re-measures
a reference preset; :meth:`MeasurementWorker.drift` compares it with the
first (baseline) measurement and each result carries the latest ratio.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import weakref
from typing import Sequence, overload

import numpy as np

from search_space import Architecture
from search_space.blocks import Block, block_dict

from ..base import LatencyResult
from .target import ExportError, LatencyError, LatencyTarget, MeasurementProtocol, check_available

class LatencyDriftWarning(UserWarning):
    """The reference network's latency moved beyond ``protocol.drift_threshold`` during a session."""


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
START_TIMEOUT_S = 180


class MeasurementWorker:
    """A worker process measuring architectures (or blocks) on ``target``, one at a time.

    >>> with MeasurementWorker(LatencyTarget(threads=1)) as w:   # doctest: +SKIP
    ...     w.latency(arch).median_ms
    """

    def __init__(self, target: LatencyTarget | None = None, protocol: MeasurementProtocol | None = None):
        self.target = target or LatencyTarget()
        self.protocol = protocol or MeasurementProtocol()
        self.machine: dict = {}
        self.pinned_cpus: list[int] | None = None
        self.count = 0  # measurements served (references not counted)
        self.references: list[dict] = []  # {"at": count, "median_ms", "iqr_rel", "time"}
        self._proc: subprocess.Popen | None = None
        self._stderr = None
        self._mutex = threading.RLock()  # one request at a time; latency() may nest a reference run
        self._finalizer = None

    # ---- process lifetime ---------------------------------------------------
    def start(self) -> "MeasurementWorker":
        if self._proc is not None:
            return self
        check_available(self.target, self.protocol)
        env = {**os.environ, **{v: str(self.target.threads) for v in THREAD_VARS}}
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "evaluators.latency.worker_process",
             self.target.model_dump_json(), self.protocol.model_dump_json()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env, text=True, bufsize=1)
        self._finalizer = weakref.finalize(self, _stop, self._proc)
        ready = self._read()
        self.machine = ready.get("machine", {})
        self.pinned_cpus = ready.get("pinned_cpus")
        return self

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> "MeasurementWorker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # ---- requests -------------------------------------------------------------
    def _read(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            code = self._proc.wait(timeout=30)
            raise LatencyError(f"measurement worker exited with status {code}: {self._stderr_tail()}")
        reply = json.loads(line)
        if not reply.get("ok"):
            cls = ExportError if reply.get("type") == "ExportError" else LatencyError
            raise cls(reply.get("error", "measurement failed"))
        return reply

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        lines = [ln for ln in self._stderr.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines[-1][:300] if lines else "(no output)"

    def _request(self, req: dict) -> dict:
        with self._mutex:
            self.start()
            self._proc.stdin.write(json.dumps(req) + "\n")
            self._proc.stdin.flush()
            return self._read()["result"]

    # ---- measurements -----------------------------------------------------------
    def latency(self, arch: Architecture) -> LatencyResult:
        """Measure ``arch`` (at the target's input size) on the target."""
        arch = self.target.apply(arch)
        with self._mutex:
            self._maybe_reference()
            raw = self._request({"op": "arch", "arch": arch.to_dict()})
            self.count += 1
            return self._result(raw, name=arch.name)

    def block_latency(self, block: Block, ref_size: int | None = None) -> dict:
        """Raw timing statistics of one block, as the lookup table stores them. With a paired
        protocol, ``ref_size`` is the input size of the reference it is timed against (that of
        the networks the block belongs to)."""
        with self._mutex:
            self._maybe_reference()
            raw = self._request({"op": "block", "block": block_dict(block), "ref_size": ref_size})
            self.count += 1
            return raw

    def reference(self) -> LatencyResult:
        """Measure the reference preset now and record it for drift detection."""
        raw = self._request({"op": "reference"})
        self.references.append({"at": self.count, "median_ms": raw["median_ms"], "iqr_rel": raw["iqr_rel"],
                                "time": time.time(), "loadavg": raw.get("loadavg")})
        d = self.drift()
        if d["drifted"] and abs(d["latest_ratio"] - 1) > self.protocol.drift_threshold:
            warnings.warn(f"latency drift: reference {d['reference']} now {d['latest_ms']:.3f} ms, "
                          f"{d['latest_ratio']:.2f}x its first measurement ({d['baseline_ms']:.3f} ms); "
                          f"the machine's speed changed (load, thermal, frequency)", LatencyDriftWarning, stacklevel=2)
        return self._result(raw, name=self.protocol.reference)

    def reference_now(self) -> float | None:
        """The latest reference reading (ms), None when the protocol measures none."""
        return self.references[-1]["median_ms"] if self.references else None

    def drift(self) -> dict:
        """Reference latency now vs at the first check; ``drifted`` when beyond ``drift_threshold``."""
        refs = self.references
        out = {"reference": self.protocol.reference, "checks": len(refs), "threshold": self.protocol.drift_threshold}
        if not refs:
            return {**out, "drifted": False}
        base = refs[0]["median_ms"]
        ratios = [r["median_ms"] / base for r in refs]
        worst = max(ratios, key=lambda r: abs(r - 1))
        return {**out, "baseline_ms": base, "latest_ms": refs[-1]["median_ms"], "latest_ratio": ratios[-1],
                "worst_ratio": worst, "drifted": abs(worst - 1) > self.protocol.drift_threshold,
                "history": [dict(r) for r in refs]}

    def _maybe_reference(self) -> None:
        every = self.protocol.reference_every
        if every and (not self.references or self.count - self.references[-1]["at"] >= every):
            self.reference()

    def _result(self, raw: dict, name: str | None) -> LatencyResult:
        extra = {k: raw[k] for k in ("min_ms", "spreads", "loadavg", "cpu_share", "ref_ms", "ratio", "ratio_iqr_rel",
                                     "turns") if k in raw}
        extra["name"] = name
        extra["worker_pid"] = self.pid
        extra["clock"] = self.protocol.clock
        extra["pinned_cpus"] = self.pinned_cpus
        if len(self.references) >= 2:
            d = self.drift()
            extra["drift_ratio"] = round(d["latest_ratio"], 4)
            extra["drifted"] = d["drifted"]
        return LatencyResult(median_ms=raw["median_ms"], p90_ms=raw["p90_ms"], iqr_rel=raw["iqr_rel"],
                             runs=raw["runs"], flagged=raw["flagged"], attempts=raw["attempts"],
                             source="measured", target=self.target.to_dict(), extra=extra)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
            proc.stdin.flush()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            proc.kill()
            proc.wait()
    for f in (proc.stdin, proc.stdout):
        try:
            f.close()
        except OSError:
            pass


@overload
def measure(arch_or_list: Architecture, target: LatencyTarget = ..., protocol: MeasurementProtocol | None = ...) -> LatencyResult: ...
@overload
def measure(arch_or_list: Sequence[Architecture], target: LatencyTarget = ..., protocol: MeasurementProtocol | None = ...) -> list[LatencyResult]: ...


def measure(arch_or_list, target: LatencyTarget | None = None, protocol: MeasurementProtocol | None = None):
    """Measure one architecture or a list in one fresh worker process (one measurement session).

    The drift reference is only run when the list is longer than ``protocol.reference_every``.
    """
    single = isinstance(arch_or_list, Architecture)
    archs = [arch_or_list] if single else list(arch_or_list)
    protocol = protocol or MeasurementProtocol()
    if protocol.reference_every and len(archs) <= protocol.reference_every:
        protocol = protocol.model_copy(update={"reference_every": 0})
    with MeasurementWorker(target or LatencyTarget(), protocol) as w:
        results = [w.latency(a) for a in archs]
    return results[0] if single else results


def measure_sessions(archs: Sequence[Architecture], target: LatencyTarget, protocol: MeasurementProtocol,
                     sessions: int | None = None, worker: MeasurementWorker | None = None, seed: int = 0,
                     closing_reference: bool = False, progress: bool = False,
                     desc: str = "networks") -> tuple[list[LatencyResult], list[dict]]:
    """Measure every architecture in ``sessions`` worker sessions (default ``protocol.network_sessions``)
    and return, per architecture, the median over sessions, with each session's drift summary.

    The first session runs in ``worker`` when it is given and uses ``protocol``, in the given order;
    every other session is a fresh worker process that measures the networks in a new random order,
    so neither one process's luck nor one slow minute of the host falls on the same networks each
    time. Unpaired results get ``ref_ms``, the reference reading of their moment, when the protocol
    times a reference. ``closing_reference`` times it once more at the end of each session, so the
    drift summary spans the whole session. ``progress`` shows a bar over all measurements.
    """
    from tqdm import tqdm

    sessions = sessions or protocol.network_sessions
    per_session: list[list[LatencyResult | None]] = []
    drifts: list[dict] = []
    rng = np.random.default_rng(seed)
    bar = tqdm(total=sessions * len(archs), desc=f"{desc}, {sessions} session(s)", unit="net", disable=not progress,
               dynamic_ncols=True)
    for s in range(sessions):
        order = list(range(len(archs))) if s == 0 else [int(i) for i in rng.permutation(len(archs))]
        own = not (s == 0 and worker is not None and worker.protocol == protocol)
        w = MeasurementWorker(target, protocol) if own else worker
        got: list[LatencyResult | None] = [None] * len(archs)
        try:
            for i in order:
                r = w.latency(archs[i])
                ref = w.reference_now()
                if "ref_ms" not in r.extra and ref:
                    r.extra["ref_ms"] = ref
                got[i] = r
                bar.update()
            if closing_reference and protocol.reference_every:
                w.reference()
            drifts.append({k: v for k, v in w.drift().items() if k != "history"})
        finally:
            if own:
                w.close()
        per_session.append(got)
    bar.close()
    return [median_of_sessions([got[i] for got in per_session]) for i in range(len(archs))], drifts


def median_of_sessions(results: Sequence[LatencyResult]) -> LatencyResult:
    """One network measured in several sessions as one result: the median over sessions of its median,
    p90, spread and (paired) reference time and ratio. It is flagged when most sessions were; the
    sessions' own readings stay in ``extra["sessions"]`` and their relative range (of the ratio when
    paired) in ``extra["session_spread"]``."""
    if len(results) == 1:
        return results[0]

    def med(values) -> float:
        return float(np.median(list(values)))

    extra = dict(results[0].extra)
    for key in ("ref_ms", "ratio", "ratio_iqr_rel", "min_ms", "cpu_share"):
        values = [r.extra[key] for r in results if r.extra.get(key) is not None]
        if values:
            extra[key] = med(values)
    paired = all("ratio" in r.extra for r in results)
    values = [r.extra["ratio"] if paired else r.median_ms for r in results]
    extra["session_spread"] = (max(values) - min(values)) / med(values)
    extra["sessions"] = [{"median_ms": r.median_ms, "iqr_rel": r.iqr_rel, "flagged": r.flagged,
                          **{k: r.extra[k] for k in ("ratio", "ref_ms", "worker_pid") if k in r.extra}}
                         for r in results]
    return LatencyResult(median_ms=med(r.median_ms for r in results), p90_ms=med(r.p90_ms for r in results),
                         iqr_rel=med(r.iqr_rel for r in results), runs=sum(r.runs for r in results),
                         flagged=2 * sum(r.flagged for r in results) > len(results),
                         attempts=sum(r.attempts for r in results), source="measured", target=results[0].target,
                         extra=extra)
