"""A whole search run: run directory, backend, re-measured front, export, report.

Run directory layout::

    RUN_DIR/experiment.json   the resolved experiment (absolute paths) + its fingerprint
    RUN_DIR/trials.jsonl/.csv every trial (rewritten atomically after each one)
    RUN_DIR/optuna.journal    Optuna storage (optuna backend) / RUN_DIR/ray/ (Ray Tune state)
    RUN_DIR/remeasured.json   device re-measurements of front members {arch_key: ms}
    RUN_DIR/pareto/           exported front (see nas.export)
    RUN_DIR/report.html, RUN_DIR/front.png
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from search_space.io import atomic_write_json

from . import records as R
from .experiment import Experiment, ExperimentError, upgrade_search_layout
from .objective import SearchContext, prepare
from .preflight import preflight


def run_experiment_file(run_dir: str | Path) -> Experiment:
    """The experiment a run directory was made by."""
    p = Path(run_dir) / "experiment.json"
    if not p.is_file():
        raise ExperimentError(f"{run_dir}: not a search run directory (no experiment.json)")
    return Experiment.model_validate(upgrade_search_layout(json.loads(p.read_text())["experiment"]))


def prepare_run_dir(exp: Experiment, run_dir: Path, resume: bool) -> None:
    meta = run_dir / "experiment.json"
    if meta.exists():
        if not resume:
            raise ExperimentError(f"{run_dir} already holds a search; pass --resume to continue it, "
                                  f"or set another output folder")
        if run_experiment_file(run_dir).fingerprint() != exp.fingerprint():
            raise ExperimentError(f"{run_dir}: the experiment changed since this run started "
                                  f"(search settings differ); resume with the same file or use another output")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(meta, {"fingerprint": exp.fingerprint(), "experiment": exp.to_dict()})


class Progress:
    """tqdm bar on stderr: trials done, best feasible accuracy, hypervolume of the front so far."""

    def __init__(self, exp: Experiment, enabled: bool):
        self.exp = exp
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=exp.search.trials, desc=f"search {exp.name}", unit="trial",
                            file=sys.stderr, dynamic_ncols=True)

    def __call__(self, recs: list[R.TrialRecord]) -> None:
        if self.bar is None:
            return
        exp = self.exp
        ref = R.reference_point(recs, exp.objectives, exp.reference_point, exp.latency.budget_ms)
        hv = R.hypervolume(recs, exp.objectives, ref)
        best = R.best_accuracy(recs)
        done = sum(r.number >= 0 for r in recs)
        self.bar.n = done
        self.bar.set_postfix_str(f"best acc {best:.4g}, HV {hv:.4g}, failed {sum(r.state == 'FAIL' for r in recs)}")
        self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def remeasure_front(exp: Experiment, run_dir: Path, ctx: Optional[SearchContext] = None) -> dict:
    """Measure every front member on the device (once per architecture); saved in remeasured.json."""
    from search_space import Architecture

    path = run_dir / "remeasured.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    recs = R.read_records(run_dir)
    todo = [r for r in R.front(recs, exp.objectives) if r.arch_key not in done]
    if not todo:
        return done
    own = ctx is None
    ctx = ctx or SearchContext(exp, run_dir)
    try:
        for r in todo:
            done[r.arch_key] = float(ctx.measure(Architecture.from_dict(r.arch)).median_ms)
            atomic_write_json(path, done)
    finally:
        if own:
            ctx.close()
    from .optuna_backend import file_lock

    with file_lock(run_dir / ".records.lock"):  # re-read: a worker sharing the run dir may have written since
        R.write_records(run_dir, R.read_records(run_dir))  # merges remeasured.json
    return done


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
    """Run ``exp`` end to end; ``address`` overrides ``search.address`` (Ray backend)."""
    t0 = time.time()
    run_dir = Path(exp.output)
    preflight(exp, resume=resume, address=address)  # nothing is written before this passes
    prepare_run_dir(exp, run_dir, resume)
    prepare(exp, progress=progress)
    bar = Progress(exp, progress)
    try:
        if exp.search.backend == "optuna":
            if address:
                raise ExperimentError("--address applies to the ray backend only (search.backend: ray)")
            from . import optuna_backend

            optuna_backend.run(exp, run_dir, resume=resume, on_records=bar)
        else:
            from . import ray_backend

            ray_backend.run(exp, run_dir, resume=resume, address=address or exp.search.ray.address,
                            on_records=bar)
    finally:
        bar.close()
    from .optuna_backend import file_lock

    with file_lock(run_dir / ".finish.lock"):  # searches sharing a run dir re-measure and export in turn
        if exp.search.backend == "optuna" and (exp.latency.mode == "lut" or exp.latency.remeasure_front):
            remeasure_front(exp, run_dir)  # (the ray backend re-measures on the device's node itself)
        return finish(exp, run_dir, export=export, onnx=onnx, seconds=time.time() - t0)


def finish(exp: Experiment, run_dir: Path, *, export: bool = True, onnx: bool = True,
           seconds: float = 0.0) -> SearchResult:
    """Front summary (pareto.json), export and report of a run directory."""
    from .export import export_front
    from .report import write_report

    recs = R.read_records(run_dir)
    ref = R.reference_point(recs, exp.objectives, exp.reference_point, exp.latency.budget_ms)
    res = SearchResult(run_dir, recs, R.front(recs, exp.objectives), ref,
                       R.hypervolume(recs, exp.objectives, ref), seconds=seconds)
    if export:
        res.export_dir = export_front(run_dir, onnx=onnx)
    res.report, res.png = write_report(run_dir)
    return res
