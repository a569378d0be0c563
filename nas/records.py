"""One record per trial, and the run's ``trials.jsonl`` / ``trials.csv``.

Both backends produce the same :class:`TrialRecord` (from
:func:`nas.objective.evaluate_candidate`). The files are rewritten atomically
after every finished trial, so a killed search loses nothing that finished;
the JSONL file is the complete record (architecture as a YAML-able dict,
evaluator details), the CSV the same trials flattened for spreadsheets.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional, Sequence

from search_space.io import atomic_write_text

from . import pareto
from .experiment import METRICS

STATES = ("COMPLETE", "PRUNED", "FAIL")


@dataclass
class TrialRecord:
    number: int
    arch: dict
    arch_key: str
    state: str = "COMPLETE"  # COMPLETE | PRUNED | FAIL
    reason: str = ""  # why a trial failed or was pruned
    seed: Optional[str] = None  # name of the seeded known architecture, None for sampled ones
    in_space: bool = True
    accuracy: float = float("nan")
    latency_ms: float = float("nan")
    latency_source: str = ""  # measured | lut
    latency_measured_ms: float = float("nan")  # re-measurement of a front member (LUT searches)
    params: int = 0
    macs: int = 0
    constraint: float = float("nan")  # latency_ms - budget (<= 0 feasible); nan = no budget
    feasible: bool = True
    started: float = 0.0  # unix time
    finished: float = 0.0
    accuracy_seconds: float = 0.0
    latency_seconds: float = 0.0
    epochs: int = 0
    stopped_early: bool = False
    checkpoint: Optional[str] = None
    trial_id: str = ""  # backend's id (Optuna trial number / Ray Tune trial id)
    node: str = ""  # where it ran: host:pid (Optuna) or the Ray node id
    copy_of: Optional[int] = None  # the sampler proposed an architecture already scored: that trial's number
    accuracy_extra: dict = field(default_factory=dict)
    latency_extra: dict = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    def to_dict(self) -> dict:
        return {k: _json_safe(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "TrialRecord":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("accuracy", "latency_ms", "latency_measured_ms", "constraint"):
            if kw.get(k) is None:
                kw[k] = float("nan")
        return cls(**kw)

    def values(self, objectives: Sequence[str]) -> list[float]:
        return [float(getattr(self, m)) for m in objectives]

    @property
    def usable(self) -> bool:
        """Finished, feasible and scored: may enter the Pareto front."""
        return self.state == "COMPLETE" and self.feasible and math.isfinite(self.accuracy) \
            and math.isfinite(self.latency_ms)


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


CSV_COLUMNS = ["number", "state", "reason", "seed", "in_space", "accuracy", "latency_ms",
               "latency_source", "latency_measured_ms", "params", "macs", "constraint", "feasible",
               "seconds", "accuracy_seconds", "latency_seconds", "epochs", "stopped_early",
               "checkpoint", "trial_id", "node", "arch_key", "arch"]


def write_records(run_dir: str | Path, records: Sequence[TrialRecord]) -> None:
    """Rewrite ``trials.jsonl`` and ``trials.csv`` (sorted by trial number), each atomically.

    Device re-measurements of front members (``remeasured.json``) are merged in.
    """
    run_dir = Path(run_dir)
    recs = sorted(records, key=lambda r: r.number)
    remeasured = run_dir / "remeasured.json"
    if remeasured.is_file():
        ms = json.loads(remeasured.read_text())
        for r in recs:
            if r.arch_key in ms:
                r.latency_measured_ms = float(ms[r.arch_key])
    atomic_write_text(run_dir / "trials.jsonl",
                      "".join(json.dumps(r.to_dict(), sort_keys=False) + "\n" for r in recs))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in recs:
        d = r.to_dict()
        row = {c: d.get(c) for c in CSV_COLUMNS if c not in ("seconds", "arch")}
        row["seconds"] = round(r.seconds, 3)
        row["arch"] = json.dumps(r.arch, sort_keys=True)
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic_write_text(run_dir / "trials.csv", buf.getvalue())


def read_records(run_dir: str | Path) -> list[TrialRecord]:
    p = Path(run_dir) / "trials.jsonl"
    if not p.is_file():
        return []
    return [TrialRecord.from_dict(json.loads(line)) for line in p.read_text().splitlines() if line.strip()]


def read_csv(path: str | Path) -> list[dict]:
    """``trials.csv`` rows with numbers parsed (as a user's script would read it)."""
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            for k in ("accuracy", "latency_ms", "latency_measured_ms", "constraint"):
                row[k] = float(row[k]) if row[k] != "" else float("nan")
            for k in ("number", "params", "macs"):
                row[k] = int(row[k])
            for k in ("feasible", "in_space", "stopped_early"):
                row[k] = row[k] == "True"
            row["arch"] = json.loads(row["arch"])
            rows.append(row)
    return rows


def front(records: Sequence[TrialRecord], objectives: Sequence[str]) -> list[TrialRecord]:
    """The non-dominated set of feasible completed trials, one per architecture (lowest number kept)."""
    seen, cands = set(), []
    for r in sorted(records, key=lambda r: r.number):
        if r.usable and r.arch_key not in seen and all(math.isfinite(v) for v in r.values(objectives)):
            seen.add(r.arch_key)
            cands.append(r)
    if not cands:
        return []
    pts = pareto.to_minimization([r.values(objectives) for r in cands], [METRICS[m] for m in objectives])
    mask = pareto.non_dominated(pts)
    return [r for r, keep in zip(cands, mask) if keep]


def fronts(records: Sequence[TrialRecord], objectives: Sequence[str], n: int) -> list[list[TrialRecord]]:
    """The first ``n`` non-dominated layers: the front, the front of what is left, and so on."""
    layers, rest = [], list(records)
    for _ in range(n):
        layer = front(rest, objectives)
        if not layer:
            break
        layers.append(layer)
        taken = {r.arch_key for r in layer}
        rest = [r for r in rest if r.arch_key not in taken]
    return layers


def reference_point(records: Sequence[TrialRecord], objectives: Sequence[str],
                    given: dict | None = None, budget_ms: float | None = None) -> dict[str, float]:
    """Hypervolume reference point (worst values): given > latency budget > nadir + 10% of the range."""
    given = dict(given or {})
    if budget_ms is not None and "latency_ms" in objectives:
        given.setdefault("latency_ms", budget_ms)
    usable = [r for r in records if r.usable]
    out = {}
    if usable:
        pts = pareto.to_minimization([r.values(objectives) for r in usable],
                                     [METRICS[m] for m in objectives])
        derived = pareto.reference_point(pts)
    for i, m in enumerate(objectives):
        if m in given:
            out[m] = float(given[m])
        elif usable:
            out[m] = float(-derived[i] if METRICS[m] == "maximize" else derived[i])
    return out


def hypervolume(records: Sequence[TrialRecord], objectives: Sequence[str], ref: dict[str, float]) -> float:
    f = front(records, objectives)
    if not f or len(ref) != len(objectives):
        return 0.0
    dirs = [METRICS[m] for m in objectives]
    pts = pareto.to_minimization([r.values(objectives) for r in f], dirs)
    r = pareto.to_minimization([[ref[m] for m in objectives]], dirs)[0]
    return pareto.hypervolume(pts, r)


def hypervolume_history(records: Sequence[TrialRecord], objectives: Sequence[str],
                        ref: dict[str, float]) -> list[tuple[int, float]]:
    """(trials finished, hypervolume of the front so far) in finishing order, against one fixed ref."""
    recs = sorted(records, key=lambda r: (r.finished, r.number))
    return [(i + 1, hypervolume(recs[: i + 1], objectives, ref)) for i in range(len(recs))]


def best_accuracy(records: Sequence[TrialRecord]) -> float:
    accs = [r.accuracy for r in records if r.usable]
    return max(accs) if accs else float("nan")


def summary_counts(records: Sequence[TrialRecord]) -> dict[str, int]:
    return {s: sum(r.state == s for r in records) for s in STATES} | {
        "infeasible": sum(r.state == "COMPLETE" and not r.feasible for r in records)}


__all__ = ["TrialRecord", "write_records", "read_records", "read_csv", "front", "reference_point",
           "hypervolume", "hypervolume_history", "best_accuracy", "summary_counts"]
