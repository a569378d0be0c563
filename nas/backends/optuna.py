"""Optuna backend: a multi-objective study driven by ask/tell, resumable from its storage.

* Architectures are sampled define-by-run (``SearchSpace.suggest(trial)``).
* The latency budget is a constraint (``trial.set_constraint``, <= 0 feasible);
  every Optuna 5 sampler reads it from the trial.
* Storage (``search.optuna.storage``): a JournalStorage file in the run folder by
  default (no server, safe for several processes on one machine); a PostgreSQL URL
  for workers on several machines, each running ``shufflenas search EXP --resume``
  with its own run folder (or ``sqlite:///FILE`` for processes of one machine).
* The study is the source of truth: each finished trial carries its
  :class:`TrialRecord` as a user attribute, and ``trials.jsonl``/``.csv`` are
  re-rendered from it after every trial. On ``--resume`` the trials left RUNNING
  by a dead process of this machine are marked FAIL ("interrupted") and their
  parameters enqueued again, so no finished trial is lost or repeated; trials of
  live processes (another ``--resume`` on the same run folder) are left alone.
* ``concurrency > 1`` runs that many worker processes on the same storage. Every
  worker, of this run or of another process or machine on the same study, claims
  a trial slot under one :class:`StudyLock`, so the trial budget is exact. Each
  worker stops claiming once the breaker trips on the records it rendered.
* On a shared database each run folder's ``trials.jsonl`` is written from the
  whole study, but a worker that stops while others still evaluate their last
  trials writes what had finished by then; ``--resume`` once more (nothing left to
  claim) re-renders the complete files, export and report.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import optuna
import sqlalchemy
import torch
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

from search_space import Architecture

from ..experiment import Experiment, ExperimentError
from ..objective import SearchContext, evaluate_candidate
from ..records import TrialRecord
from ..run_folder import CLAIM_LOCK, RunFolder, file_lock
from ..trial_worker import exit_with_parent
from .base import Breaker, SearchBackend, SeedPlan, score_seed
from .study import RECORD_ATTR, SEED_ATTR, make_sampler, scored_before, tell

STUDY_ATTR_SEED = "seed_record:"
#: sampler seed distance between the worker processes of one run (more than the largest concurrency)
WORKER_SEED_STRIDE = 100_003
RUN_SEED_STRIDE = WORKER_SEED_STRIDE * 257


def _rdb_engine(url: str, **kw):
    """A SQLAlchemy engine for ``url``; a missing database driver is one line naming what to install."""
    try:
        return sqlalchemy.create_engine(url, **kw)
    except ImportError as exc:
        scheme = url.split(":", 1)[0]
        raise ExperimentError(f"search.optuna.storage: no database driver for {scheme}:// ({exc}); install it, "
                              f"or name an installed one in the URL, e.g. postgresql+psycopg2://") from None


def _shown(url: str) -> str:
    """``url`` as an error message may show it: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url  # not URL-shaped: no password in it to hide


def storage_kind(exp: Experiment) -> str:
    """journal (the default), sqlite or postgresql: the storages :class:`StudyLock` can lock."""
    url = exp.search.optuna.storage
    if url is None:
        return "journal"
    for kind in ("sqlite", "postgresql"):
        if url.startswith(kind + ":") or url.startswith(kind + "+"):
            return kind
    raise ExperimentError(f"search.optuna.storage: {_shown(url)!r} is not a postgresql:// or sqlite:/// URL "
                          f"(the trial budget is kept exact by a lock only these two provide here)")


def make_storage(exp: Experiment, run: RunFolder) -> optuna.storages.BaseStorage:
    """The study's storage. No RDB heartbeat: Optuna beats only inside ``Study.optimize``, not for
    ask/tell, so on a shared database a trial of a worker that died stays RUNNING (counted, never
    recovered: another machine cannot tell a dead worker from a live one there)."""
    if storage_kind(exp) == "journal":
        return JournalStorage(JournalFileBackend(str(run.optuna_journal)))
    return RDBStorage(exp.search.optuna.storage)  # (StudyLock is built first: it checks the driver)


class StudyLock:
    """One lock for every process on a study, wherever it runs.

    It serialises the steps whose check-then-act would race between workers:
    creating the study (and an RDB's tables), recovering interrupted trials,
    seeding, and claiming a trial slot (count the trials, then ``ask``). With the
    claim serialised, ``search.trials`` is exact for any number of workers.

    * journal file (default): a file lock in the run folder, whose journal it guards;
    * ``sqlite:///FILE``: a file lock beside the database (SQLite is one machine's storage);
    * ``postgresql://``: a session-level advisory lock keyed by the study name, so
      workers on several machines, each with its own run folder, share it;
      PostgreSQL releases it when the holder's connection dies.

    A lock rather than a rule applied after ``ask`` (tell the trials numbered past
    the budget FAIL as surplus and filter them out): the lock also covers
    creating the tables and seeding, which race between machines started together,
    and no surplus trial ever reaches the study, its sampler, counts or records.
    """

    def __init__(self, exp: Experiment, run: RunFolder):
        url, kind = exp.search.optuna.storage, storage_kind(exp)
        self.engine = self.path = None
        if kind == "journal":
            self.path = run.path / CLAIM_LOCK
        elif kind == "sqlite":
            db = Path(make_url(url).database).resolve()
            self.path = db.with_name(db.name + CLAIM_LOCK)
        else:
            # NullPool: the lock's connection is closed after each hold, which releases it for sure.
            self.engine = _rdb_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
            digest = hashlib.sha256(f"shufflenas:{exp.name}".encode()).digest()
            self.key = int.from_bytes(digest[:8], "big", signed=True)

    @contextmanager
    def held(self):
        if self.path is not None:
            with file_lock(self.path):
                yield
            return
        try:
            conn = self.engine.connect()
        except sqlalchemy.exc.OperationalError as exc:
            msg = str(exc.orig or exc).strip().splitlines()[0]
            raise ExperimentError(f"search.optuna.storage: cannot connect to "
                                  f"{self.engine.url.render_as_string(hide_password=True)}: {msg}") from None
        with conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})


def open_study(exp: Experiment, storage: optuna.storages.BaseStorage, *, create: bool,
               seed_offset: int = 0) -> optuna.Study:
    """The run's study. ``seed_offset`` gives each worker process, and each resumed run, its own
    sampler stream (the same seed would propose the same candidates again)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kw = dict(study_name=exp.name, storage=storage,
              sampler=make_sampler(exp.search.sampler, (exp.search.seed + seed_offset) % 2**32,
                                   exp.search.trials))
    if create:
        return optuna.create_study(directions=exp.directions, load_if_exists=True, **kw)
    return optuna.load_study(**kw)


def collect_records(study: optuna.Study) -> list[TrialRecord]:
    recs = [TrialRecord.from_dict(t.user_attrs[RECORD_ATTR]) for t in study.get_trials(deepcopy=False)
            if RECORD_ATTR in t.user_attrs]
    recs += [TrialRecord.from_dict(v) for k, v in study.user_attrs.items() if k.startswith(STUDY_ATTR_SEED)]
    return recs


def _counted(study: optuna.Study) -> int:
    """Trials that use up the budget: claimed ones, not the enqueued (WAITING) seeds still to run,
    nor those cut by a kill (their parameters are enqueued again)."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state != TrialState.WAITING and not t.user_attrs.get("interrupted"))


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _claim(study: optuna.Study, lock: StudyLock, budget: Optional[int], deadline: Optional[float]):
    with lock.held():
        if deadline is not None and time.time() >= deadline:
            return None
        if budget is not None and _counted(study) >= budget:
            return None
        trial = study.ask()
        trial.set_user_attr("owner", _owner())  # who evaluates it: see _owner_gone
        return trial


def worker_loop(exp: Experiment, run: RunFolder, breaker: Breaker, budget: Optional[int],
                deadline: Optional[float], on_records: Optional[Callable[[list[TrialRecord]], None]] = None,
                seed_offset: int = 0) -> None:
    """Claim, evaluate and tell trials until the budget, the deadline or the breaker."""
    storage = make_storage(exp, run)
    study = open_study(exp, storage, create=False, seed_offset=seed_offset)
    lock = StudyLock(exp, run)
    with SearchContext(exp, run.path) as ctx:
        while True:
            trial = _claim(study, lock, budget, deadline)
            if trial is None:
                return
            seed = trial.user_attrs.get(SEED_ATTR)
            arch = ctx.space.suggest(trial)
            rec = scored_before(study, arch, number=trial.number, trial_id=str(trial.number), seed=seed,
                                node=_owner()) \
                or evaluate_candidate(arch, ctx, number=trial.number, seed=seed, trial_id=str(trial.number))
            tell(study, trial, rec, exp)
            recs = run.rerender(lambda: collect_records(study))
            if on_records:
                on_records(recs)
            if breaker.check(recs):
                return


def _process_main(exp_json: str, run_dir: str, breaker: Breaker, budget, deadline, seed_offset: int) -> None:
    exit_with_parent()  # a driver stopped with `kill PID` must not leave its workers claiming trials
    # One thread per worker: N workers with torch's default (all cores each) oversubscribe the
    # cores, and spinning OpenMP threads then stall 5-10x (seen: 33-49 s candidates instead of 5-10 s).
    # The variable alone is too late here: torch is already imported with this module.
    torch.set_num_threads(int(os.environ.setdefault("OMP_NUM_THREADS", "1")))
    exp = Experiment.model_validate_json(exp_json)
    worker_loop(exp, RunFolder(run_dir), breaker, budget, deadline, seed_offset=seed_offset)


def _owner_gone(t: optuna.trial.FrozenTrial) -> bool:
    """Whether the process that claimed a RUNNING trial is gone: one of this machine that no
    longer exists, or no owner recorded (runs before owners were). Another machine's is never."""
    host, _, pid = str(t.user_attrs.get("owner", "")).rpartition(":")
    if not pid:
        return True
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def _recover_interrupted(study: optuna.Study, storage: optuna.storages.BaseStorage) -> int:
    """Trials left RUNNING by a dead process: mark FAIL ("interrupted"), enqueue their parameters again.
    Run under the :class:`StudyLock`, so no trial is between ``ask`` and its owner being recorded."""
    study_id = storage.get_study_id_from_name(study.study_name)
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _owner_gone(t):
            continue
        # (a running trial's attributes are set through its storage: its Trial object died with its owner)
        storage.set_trial_user_attr(storage.get_trial_id_from_study_id_trial_number(study_id, t.number),
                                    "interrupted", True)
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        attrs = {k: v for k, v in t.user_attrs.items() if k == SEED_ATTR}
        study.enqueue_trial(t.params, user_attrs=attrs, skip_if_exists=False)
        n += 1
    return n


def _next_run_offset(study: optuna.Study) -> int:
    """A sampler seed offset of its own for each run on the study (0 for the first, so a fresh run
    is reproducible): runs started together, or a resumed run, must not propose the same candidates."""
    runs = int(study.user_attrs.get("runs", 0))
    study.set_user_attr("runs", runs + 1)
    return runs * RUN_SEED_STRIDE


class OptunaBackend(SearchBackend):
    """Ask/tell on an Optuna study in this process, or in ``search.concurrency`` worker processes."""

    name = "optuna"

    def open(self) -> None:
        if self.address:
            raise ExperimentError("--address applies to the ray backend only (search.backend: ray)")
        self.lock = StudyLock(self.exp, self.run)
        self._ctx: Optional[SearchContext] = None
        with self.lock.held():  # one creator and one recovery at a time
            # an RDB storage creates its tables when constructed: processes sharing a fresh database race
            # on that (PostgreSQL: duplicate key "studydirection"), so it is built under the lock too
            self.storage = make_storage(self.exp, self.run)
            self.study = open_study(self.exp, self.storage, create=True)
            if self.resume and self.exp.search.optuna.storage is None:
                # only our own journal: a shared database's RUNNING trials may be other machines' live ones
                _recover_interrupted(self.study, self.storage)
            self.offset = _next_run_offset(self.study)

    def seed(self) -> None:
        """In-space seeds enqueued; out-of-space seeds scored here (kept as study attributes)."""
        study = self.study
        with self.lock.held():  # one seeding at a time
            if not study.user_attrs.get("seeded"):
                with SearchContext(self.exp, self.run.path) as ctx:
                    plan = SeedPlan(self.exp, ctx.space)
                    for name, params in plan.queued():
                        study.enqueue_trial(params, user_attrs={SEED_ATTR: name}, skip_if_exists=True)
                    for i, name, arch in plan.out_of_space:
                        key = f"{STUDY_ATTR_SEED}{i}"
                        if key not in study.user_attrs:
                            study.set_user_attr(key, score_seed(ctx, i, name, arch).to_dict())
                study.set_user_attr("seeded", True)
        self.on_records(self.run.rerender(lambda: collect_records(study)))

    def search(self) -> None:
        exp, run = self.exp, self.run
        deadline = time.time() + exp.search.timeout_s if exp.search.timeout_s else None
        budget = exp.search.trials
        n = exp.search.concurrency
        if n == 1:
            worker_loop(exp, run, self.breaker, budget, deadline, self.on_records, seed_offset=self.offset)
            return
        spawn = mp.get_context("spawn")
        procs = [spawn.Process(target=_process_main, daemon=False,
                               args=(exp.model_dump_json(), str(run.path), self.breaker, budget, deadline,
                                     self.offset + WORKER_SEED_STRIDE * i)) for i in range(n)]
        for p in procs:
            p.start()
        seen = -1
        while any(p.is_alive() for p in procs):
            time.sleep(1.0)
            mtime = run.trials_jsonl.stat().st_mtime_ns if run.trials_jsonl.exists() else 0
            if mtime != seen:
                seen = mtime
                self.on_records(run.read_records())
        for p in procs:
            p.join()
        bad = [p.exitcode for p in procs if p.exitcode]
        if bad:
            raise RuntimeError(f"{len(bad)} Optuna worker process(es) exited with status {bad}")
        self.on_records(run.rerender(lambda: collect_records(self.study)))

    def measure(self, arch: Architecture) -> float:
        """Measured in this process's measurement worker (started on the first call)."""
        if self._ctx is None:
            self._ctx = SearchContext(self.exp, self.run.path)
        return float(self._ctx.measure(arch).median_ms)

    def close(self) -> None:
        if getattr(self, "_ctx", None) is not None:
            self._ctx.close()
            self._ctx = None
