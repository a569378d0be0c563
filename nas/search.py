"""A whole search: the run folder, one backend, the breaker, the re-measured front, export, report.

The run folder's layout is :mod:`nas.run_folder`'s; the backends and their
lifecycle are :mod:`nas.backends`'.
"""

from __future__ import annotations

import sys
import time
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from . import records as R
from .backends import Breaker, backend_class
from .experiment import Experiment
from .export import export_front
from .objective import prepare
from .preflight import preflight
from .report import write_report
from .run_folder import FINISH_LOCK, RunFolder


class Progress:
    """tqdm bar on stderr: trials done, best feasible accuracy, hypervolume of the front so far
    (against the run's fixed reference point, so it never falls)."""

    def __init__(self, exp: Experiment, enabled: bool):
        self.exp = exp
        self.bar = None
        if enabled:
            self.bar = tqdm(total=exp.search.trials, desc=f"search {exp.name}", unit="trial",
                            file=sys.stderr, dynamic_ncols=True)

    def __call__(self, recs: list[R.TrialRecord]) -> None:
        if self.bar is None:
            return
        exp = self.exp
        hv = R.hypervolume(recs, exp.objectives, R.fixed_reference_point(exp, recs))
        self.bar.n = sum(r.number >= 0 for r in recs)
        self.bar.set_postfix_str(f"best acc {R.best_accuracy(recs):.4g}, HV {hv:.4g}, "
                                 f"failed {sum(r.state == 'FAIL' for r in recs)}")
        self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()


@dataclass
class SearchResult:
    run_dir: Path
    records: list
    front: list
    reference_point: dict
    hypervolume: float
    export_dir: Optional[Path] = None
    report: Optional[Path] = None
    png: Optional[Path] = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"run_dir": str(self.run_dir), "trials": len(self.records),
                "states": R.summary_counts(self.records), "front_size": len(self.front),
                "reference_point": self.reference_point, "hypervolume": self.hypervolume,
                "best_accuracy": R.best_accuracy(self.records),
                "export_dir": str(self.export_dir) if self.export_dir else None,
                "report": str(self.report) if self.report else None,
                "png": str(self.png) if self.png else None, "seconds": round(self.seconds, 2)}


def run_search(exp: Experiment, *, resume: bool = False, address: str | None = None,
               progress: bool = True, export: bool = True, onnx: bool = True) -> SearchResult:
    """Run ``exp`` end to end; ``address`` overrides ``search.ray.address`` (Ray backend).

    While it runs, whatever a library prints to stdout (Ray's messages about the cluster)
    goes to stderr: stdout carries only the result the caller prints (``--json``).
    """
    t0 = time.time()
    preflight(exp, resume=resume, address=address)  # nothing is written before this passes (nas.preflight)
    run = RunFolder(exp.output)
    run.prepare(exp, resume)
    prepare(exp, progress=progress)
    # the breaker judges the trials this search finishes, not those of the folder's earlier searches
    breaker = Breaker(exp.search.stop_after_failures, [r.trial_id for r in run.read_records()])
    bar = Progress(exp, progress)
    backend = backend_class(exp.search.backend)(exp, run, resume=resume, address=address, breaker=breaker,
                                                on_records=bar, progress=progress)
    try:
        with redirect_stdout(sys.stderr), backend:
            backend.seed()
            backend.search()
            bar.close()
            breaker.stop(run.read_records())
            with run.lock(FINISH_LOCK):  # searches sharing a run folder re-measure and export in turn
                if exp.latency.mode == "lut" or exp.latency.remeasure_front:
                    run.remeasure_front(exp, backend.measure)
                return finish(exp, run.path, export=export, onnx=onnx, seconds=time.time() - t0)
    finally:
        bar.close()


def finish(exp: Experiment, run_dir: Path, *, export: bool = True, onnx: bool = True,
           seconds: float = 0.0) -> SearchResult:
    """Front summary, export and report of a run folder."""
    recs = RunFolder(run_dir).read_records()
    ref = R.fixed_reference_point(exp, recs)
    res = SearchResult(Path(run_dir), recs, R.front(recs, exp.objectives), ref,
                       R.hypervolume(recs, exp.objectives, ref), seconds=seconds)
    if export:
        res.export_dir = export_front(run_dir, onnx=onnx)
    res.report, res.png = write_report(run_dir)
    return res
