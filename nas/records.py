"""One record per trial, its two file formats, and what a set of records says (front, hypervolume).

Both backends produce the same :class:`TrialRecord` (from
:func:`nas.objective.evaluate_candidate`). The JSONL form is the complete
record (architecture as a YAML-able dict, evaluator details), the CSV the same
trials flattened for spreadsheets; :mod:`nas.run_folder` writes both into the
run folder after every finished trial.

The hypervolume has one definition (:func:`fixed_reference_point`): its
reference point is fixed by the experiment, so the hypervolume of the trials
finished so far never falls as more finish -- on the console, in the report
and in ``pareto/front.json`` alike.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional, Sequence

from . import pareto
from .experiment import METRICS, Experiment

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


def to_jsonl(records: Sequence[TrialRecord]) -> str:
    """The records as JSON lines, sorted by trial number."""
    return "".join(json.dumps(r.to_dict(), sort_keys=False) + "\n" for r in sorted(records, key=lambda r: r.number))


def to_csv(records: Sequence[TrialRecord]) -> str:
    """The records as CSV (:data:`CSV_COLUMNS`), sorted by trial number."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in sorted(records, key=lambda r: r.number):
        d = r.to_dict()
        row = {c: d.get(c) for c in CSV_COLUMNS if c not in ("seconds", "arch")}
        row["seconds"] = round(r.seconds, 3)
        row["arch"] = json.dumps(r.arch, sort_keys=True)
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


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


#: accuracy methods whose score is a fraction in [0, 1] (zero-cost proxies have scales of their own)
FRACTION_METHODS = ("proxy_training", "supernet")


def fixed_reference_point(exp: Experiment, records: Sequence[TrialRecord]) -> dict[str, float]:
    """The hypervolume's reference point (the worst value that still counts, per objective).

    In this order: ``reference_point`` of the experiment; the latency budget for
    ``latency_ms``; 0 for an accuracy that is a fraction (proxy training, supernet).
    An objective still without one (a zero-cost score, params, macs, latency with no
    budget) takes the value of the first usable trial to finish, moved away by its own
    size (a cost doubled, a positive score to 0): the same for every reader of the same
    records, and fixed once that trial exists. Fixed points make the hypervolume of the
    trials finished so far non-decreasing. Objectives with no reference yet are left out
    (the hypervolume is then 0).
    """
    out = {m: float(v) for m, v in exp.reference_point.items()}
    if exp.latency.budget_ms is not None and "latency_ms" in exp.objectives:
        out.setdefault("latency_ms", float(exp.latency.budget_ms))
    if exp.accuracy.method in FRACTION_METHODS:
        out.setdefault("accuracy", 0.0)
    missing = [m for m in exp.objectives if m not in out]
    usable = sorted((r for r in records if r.usable), key=lambda r: (r.finished, r.number))
    if missing and usable:
        first = usable[0]
        for m in missing:
            v = float(getattr(first, m))
            out[m] = v - abs(v) if METRICS[m] == "maximize" else v + (abs(v) or 1.0)
    return {m: out[m] for m in exp.objectives if m in out}


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
    """(trials finished, hypervolume of the front so far) in finishing order, against one fixed ref
    (non-decreasing: a trial can only add to the front's dominated region)."""
    recs = sorted(records, key=lambda r: (r.finished, r.number))
    return [(i + 1, hypervolume(recs[: i + 1], objectives, ref)) for i in range(len(recs))]


def best_accuracy(records: Sequence[TrialRecord]) -> float:
    accs = [r.accuracy for r in records if r.usable]
    return max(accs) if accs else float("nan")


def summary_counts(records: Sequence[TrialRecord]) -> dict[str, int]:
    return {s: sum(r.state == s for r in records) for s in STATES} | {
        "infeasible": sum(r.state == "COMPLETE" and not r.feasible for r in records)}


__all__ = ["TrialRecord", "to_jsonl", "to_csv", "read_csv", "front", "fronts", "fixed_reference_point",
           "hypervolume", "hypervolume_history", "best_accuracy", "summary_counts"]
