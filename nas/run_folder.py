"""The run folder: its layout, and the one place that reads and writes the search's files there.

Layout (every name a constant below; other modules take paths from :class:`RunFolder`)::

    RUN_DIR/experiment.json        the resolved experiment (absolute paths) + its fingerprint
    RUN_DIR/trials.jsonl           every finished trial's record, complete (rewritten atomically)
    RUN_DIR/trials.csv             the same trials flattened for spreadsheets
    RUN_DIR/remeasured.json        device re-measurements of front members {arch_key: ms}
    RUN_DIR/optuna.journal         Optuna backend: the study (unless search.optuna.storage names a database)
    RUN_DIR/ray/tune/              Ray backend: Tune's experiment state (and its .snapshot)
    RUN_DIR/checkpoints/           weights the accuracy evaluator saved per candidate
    RUN_DIR/pareto/                the exported front: front.json + one folder per member (nas.export)
    RUN_DIR/report.html, front.png the report (nas.report)
    RUN_DIR/retrain/               equal-budget retraining of the front and the baselines (nas.retrain)
    RUN_DIR/.claim.lock            Optuna journal: one trial claimed at a time (nas.backends.optuna.StudyLock)
    RUN_DIR/.records.lock          one writer of trials.jsonl/.csv at a time
    RUN_DIR/.finish.lock           searches sharing the folder re-measure, export and report in turn

Records are rewritten whole and atomically after every finished trial, so a
killed search loses nothing that finished; a resumed one checks that the
experiment still decides the same search (:meth:`RunFolder.prepare`).
"""

from __future__ import annotations

import fcntl
import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from search_space import Architecture
from search_space.io import atomic_write_json, atomic_write_text, read_jsonl

from . import records as R
from .experiment import Experiment, ExperimentError, upgrade_search_layout

EXPERIMENT = "experiment.json"
TRIALS_JSONL = "trials.jsonl"
TRIALS_CSV = "trials.csv"
REMEASURED = "remeasured.json"
OPTUNA_JOURNAL = "optuna.journal"
RAY_DIR = "ray"
TUNE_NAME = "tune"  # Tune's experiment name: its state lives in RAY_DIR/TUNE_NAME
CHECKPOINTS = "checkpoints"
PARETO = "pareto"
FRONT_JSON = "front.json"  # inside PARETO
REPORT_HTML = "report.html"
FRONT_PNG = "front.png"
RETRAIN = "retrain"
DEPLOY = "deploy"  # the trained networks of retrain (nas.deploy)
CLAIM_LOCK = ".claim.lock"
RECORDS_LOCK = ".records.lock"
FINISH_LOCK = ".finish.lock"


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if absent), for processes of one machine."""
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class RunFolder:
    """One run folder: paths of the layout above, the experiment, the records, the locks."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ---- layout -----------------------------------------------------------------------------
    experiment_json = property(lambda self: self.path / EXPERIMENT)
    trials_jsonl = property(lambda self: self.path / TRIALS_JSONL)
    trials_csv = property(lambda self: self.path / TRIALS_CSV)
    remeasured_json = property(lambda self: self.path / REMEASURED)
    optuna_journal = property(lambda self: self.path / OPTUNA_JOURNAL)
    ray_dir = property(lambda self: self.path / RAY_DIR)
    tune_dir = property(lambda self: self.path / RAY_DIR / TUNE_NAME)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    pareto = property(lambda self: self.path / PARETO)
    front_json = property(lambda self: self.path / PARETO / FRONT_JSON)
    report_html = property(lambda self: self.path / REPORT_HTML)
    front_png = property(lambda self: self.path / FRONT_PNG)
    retrain = property(lambda self: self.path / RETRAIN)

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold the folder's lock ``name`` (:data:`CLAIM_LOCK`, :data:`RECORDS_LOCK`, :data:`FINISH_LOCK`)."""
        with file_lock(self.path / name):
            yield

    # ---- the experiment ---------------------------------------------------------------------
    def is_run(self) -> bool:
        return self.experiment_json.is_file()

    def read_experiment(self) -> Experiment:
        """The experiment this folder's search was started with."""
        if not self.is_run():
            raise ExperimentError(f"{self.path}: not a search run directory (no {EXPERIMENT})")
        try:
            stored = json.loads(self.experiment_json.read_text())["experiment"]
        except (ValueError, KeyError, TypeError):
            raise ExperimentError(f"{self.experiment_json}: not a stored experiment (damaged?); "
                                  f"start the run again in another output folder") from None
        return Experiment.model_validate(upgrade_search_layout(stored))

    def prepare(self, exp: Experiment, resume: bool) -> None:
        """Create the folder for ``exp``, or check that it holds the same search when resuming.

        The fingerprints are compared on the stored experiment read again, not on the string
        stored beside it, so a folder written by an earlier version still resumes.
        """
        if self.is_run():
            if not resume:
                raise ExperimentError(f"{self.path} already holds a search; pass --resume to continue it, "
                                      f"or set another output folder")
            if self.read_experiment().fingerprint() != exp.fingerprint():
                raise ExperimentError(f"{self.path}: the experiment changed since this run started "
                                      f"(search settings differ); resume with the same file or use another output")
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.experiment_json, {"fingerprint": exp.fingerprint(), "experiment": exp.to_dict()})

    # ---- records ----------------------------------------------------------------------------
    def read_records(self) -> list[R.TrialRecord]:
        return [R.TrialRecord.from_dict(d) for d in read_jsonl(self.trials_jsonl)]

    def write_records(self, records: Sequence[R.TrialRecord]) -> None:
        """Rewrite ``trials.jsonl`` and ``trials.csv`` (each atomically), with the device
        re-measurements of front members merged in. Callers that read-modify-write hold
        :data:`RECORDS_LOCK`."""
        ms = self.remeasured()
        for r in records:
            if r.arch_key in ms:
                r.latency_measured_ms = float(ms[r.arch_key])
        atomic_write_text(self.trials_jsonl, R.to_jsonl(records))
        atomic_write_text(self.trials_csv, R.to_csv(records))

    def add_record(self, rec: R.TrialRecord) -> Optional[list[R.TrialRecord]]:
        """Append one finished trial (under the records lock); returns every record, or None if
        the trial was recorded already: the same backend trial id, or the same sampled trial
        number run again after a restore (the first result stands)."""
        with self.lock(RECORDS_LOCK):
            recs = self.read_records()
            if any(r.trial_id == rec.trial_id or (rec.number >= 0 and r.number == rec.number) for r in recs):
                return None
            recs.append(rec)
            self.write_records(recs)
            return recs

    def rerender(self, records: Callable[[], Sequence[R.TrialRecord]]) -> list[R.TrialRecord]:
        """Write ``records()`` (read under the lock, so the newest view wins) and return them."""
        with self.lock(RECORDS_LOCK):
            recs = list(records())
            self.write_records(recs)
        return recs

    # ---- re-measurement of the front ----------------------------------------------------------
    def remeasured(self) -> dict[str, float]:
        return json.loads(self.remeasured_json.read_text()) if self.remeasured_json.is_file() else {}

    def remeasure_front(self, exp: Experiment, measure: Callable[[Architecture], float]) -> dict[str, float]:
        """Measure every front member on the device once (``measure(arch) -> ms``), saved after each
        one in ``remeasured.json`` (a killed re-measurement resumes) and merged into the records."""
        done = self.remeasured()
        todo = [r for r in R.front(self.read_records(), exp.objectives) if r.arch_key not in done]
        if not todo:
            return done
        for r in todo:
            ms = float(measure(Architecture.from_dict(r.arch)))
            if not math.isfinite(ms):
                raise ExperimentError(f"latency: re-measuring front member {r.number} gave {ms} ms")
            done[r.arch_key] = ms
            atomic_write_json(self.remeasured_json, done)
        self.rerender(self.read_records)  # re-read: a worker sharing the folder may have written since
        return done
