"""Optuna backend: a multi-objective study driven by ask/tell, resumable from its storage.

* Architectures are sampled define-by-run (``SearchSpace.suggest(trial)``).
* The latency budget is a constraint (``trial.set_constraint``, <= 0 feasible);
  every Optuna 5 sampler reads it from the trial.
* Storage: a JournalStorage file in the run directory by default (no server,
  safe for several processes on one machine); a PostgreSQL URL for workers on
  several machines, each running ``shufflenas search EXP --resume`` with its own
  run directory (or ``sqlite:///FILE`` for processes of one machine).
* The study is the source of truth: each finished trial carries its
  :class:`TrialRecord` as a user attribute, and ``trials.jsonl``/``.csv`` are
  re-rendered from it after every trial under a file lock. On ``--resume`` the
  trials left RUNNING by a dead process of this machine are marked FAIL
  ("interrupted") and their parameters enqueued again, so no finished trial is
  lost or repeated; trials of live processes (another ``--resume`` on the same
  run directory) are left alone.
* ``concurrency > 1`` runs that many worker processes on the same storage. Every
  worker, of this run or of another process or machine on the same study, claims
  a trial slot under one :class:`StudyLock`, so the trial budget is exact.
* On a shared database each run directory's ``trials.jsonl`` is written from the
  whole study, but a worker that stops while others still evaluate their last
  trials writes what had finished by then; ``--resume`` once more (nothing left to
  claim) re-renders the complete files, export and report.
"""

from __future__ import annotations

import fcntl
import hashlib
import multiprocessing as mp
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

from .experiment import Experiment, ExperimentError
from .objective import SearchContext, arch_key, evaluate_candidate
from .records import TrialRecord, write_records

STUDY_ATTR_SEED = "seed_record:"
#: sampler seed distance between the worker processes of one run (more than the largest concurrency)
WORKER_SEED_STRIDE = 100_003
RUN_SEED_STRIDE = WORKER_SEED_STRIDE * 257


@contextmanager
def file_lock(path: Path):
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def make_sampler(name: str, seed: int, trials: Optional[int]):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "nsga2":
        # The default population (50) would keep a short search random throughout.
        pop = max(8, min(50, (trials or 100) // 5))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=pop)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    raise ExperimentError(f"search.sampler: unknown sampler {name!r}")


def _rdb_engine(url: str, **kw):
    """A SQLAlchemy engine for ``url``; a missing database driver is one line naming what to install."""
    import sqlalchemy

    try:
        return sqlalchemy.create_engine(url, **kw)
    except ImportError as exc:
        scheme = url.split(":", 1)[0]
        raise ExperimentError(f"search.storage: no database driver for {scheme}:// ({exc}); install it, "
                              f"or name an installed one in the URL, e.g. postgresql+psycopg2://") from None


def make_storage(exp: Experiment, run_dir: Path):
    """The study's storage. No RDB heartbeat: Optuna beats only inside ``Study.optimize``, not for
    ask/tell, so on a shared database a trial of a worker that died stays RUNNING (counted, never
    recovered: another machine cannot tell a dead worker from a live one there)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if storage_kind(exp) == "journal":
        return JournalStorage(JournalFileBackend(str(run_dir / "optuna.journal")))
    return optuna.storages.RDBStorage(exp.search.optuna.storage)  # (run() builds the StudyLock first: it checks the driver)


def storage_kind(exp: Experiment) -> str:
    """journal (the default), sqlite or postgresql: the storages :class:`StudyLock` can lock."""
    url = exp.search.optuna.storage
    if url is None:
        return "journal"
    for kind in ("sqlite", "postgresql"):
        if url.startswith(kind + ":") or url.startswith(kind + "+"):
            return kind
    raise ExperimentError(f"search.storage: {url!r} is not a postgresql:// or sqlite:/// URL "
                          f"(the trial budget is kept exact by a lock only these two provide here)")


class StudyLock:
    """One lock for every process on a study, wherever it runs.

    It serialises the steps whose check-then-act would race between workers:
    creating the study (and an RDB's tables), recovering interrupted trials,
    seeding, and claiming a trial slot (count the trials, then ``ask``). With the
    claim serialised, ``search.trials`` is exact for any number of workers.

    * journal file (default): a file lock in the run directory, whose journal it guards;
    * ``sqlite:///FILE``: a file lock beside the database (SQLite is one machine's storage);
    * ``postgresql://``: a session-level advisory lock keyed by the study name, so
      workers on several machines, each with its own run directory, share it;
      PostgreSQL releases it when the holder's connection dies.

    A lock rather than a rule applied after ``ask`` (tell the trials numbered past
    the budget FAIL as surplus and filter them out): the lock also covers
    creating the tables and seeding, which race between machines started together,
    and no surplus trial ever reaches the study, its sampler, counts or records.
    """

    def __init__(self, exp: Experiment, run_dir: Path):
        url, kind = exp.search.optuna.storage, storage_kind(exp)
        self.engine = self.path = None
        if kind == "journal":
            self.path = Path(run_dir) / ".claim.lock"
        elif kind == "sqlite":
            from sqlalchemy.engine import make_url

            db = Path(make_url(url).database).resolve()
            self.path = db.with_name(db.name + ".claim.lock")
        else:
            from sqlalchemy.pool import NullPool

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
        import sqlalchemy

        try:
            conn = self.engine.connect()
        except sqlalchemy.exc.OperationalError as exc:
            msg = str(exc.orig or exc).strip().splitlines()[0]
            raise ExperimentError(f"search.storage: cannot connect to "
                                  f"{self.engine.url.render_as_string(hide_password=True)}: {msg}") from None
        with conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})


def open_study(exp: Experiment, run_dir: Path, *, create: bool, seed_offset: int = 0):
    """The run's study. ``seed_offset`` gives each worker process, and each resumed run, its own
    sampler stream (the same seed would propose the same candidates again)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kw = dict(study_name=exp.name, storage=make_storage(exp, run_dir),
              sampler=make_sampler(exp.search.sampler, (exp.search.seed + seed_offset) % 2**32,
                                   exp.search.trials))
    if create:
        return optuna.create_study(directions=exp.directions, load_if_exists=True, **kw)
    return optuna.load_study(**kw)


def collect_records(study) -> list[TrialRecord]:
    recs = [TrialRecord.from_dict(t.user_attrs["record"]) for t in study.get_trials(deepcopy=False)
            if "record" in t.user_attrs]
    recs += [TrialRecord.from_dict(v) for k, v in study.user_attrs.items() if k.startswith(STUDY_ATTR_SEED)]
    return recs


def render(study, run_dir: Path) -> list[TrialRecord]:
    """Re-render the records files from the study (under the lock, so the newest view wins)."""
    with file_lock(run_dir / ".records.lock"):
        recs = collect_records(study)
        write_records(run_dir, recs)
    return recs


def _counted(study) -> int:
    """Trials that use up the budget: claimed ones, not the enqueued (WAITING) seeds still to run,
    nor those cut by a kill (their parameters are enqueued again)."""
    from optuna.trial import TrialState

    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state != TrialState.WAITING and not t.user_attrs.get("interrupted"))


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _claim(study, lock: StudyLock, budget: Optional[int], deadline: Optional[float]):
    with lock.held():
        if deadline is not None and time.time() >= deadline:
            return None
        if budget is not None and _counted(study) >= budget:
            return None
        trial = study.ask()
        trial.set_user_attr("owner", _owner())  # who evaluates it: see _owner_gone
        return trial


def tell(study, trial, rec: TrialRecord, exp: Experiment) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr("record", rec.to_dict())
    if rec.state == "COMPLETE":
        if exp.latency.budget_ms is not None:
            trial.set_constraint("latency_ms", rec.constraint)
        study.tell(trial, rec.values(exp.objectives))
    else:
        study.tell(trial, state=TrialState.PRUNED if rec.state == "PRUNED" else TrialState.FAIL)


def worker_loop(exp: Experiment, run_dir: Path, budget: Optional[int], deadline: Optional[float],
                on_records: Optional[Callable[[list[TrialRecord]], None]] = None, seed_offset: int = 0) -> None:
    """Claim, evaluate and tell trials until the budget or the deadline is reached."""
    study = open_study(exp, run_dir, create=False, seed_offset=seed_offset)
    lock = StudyLock(exp, run_dir)
    with SearchContext(exp, run_dir) as ctx:
        while True:
            trial = _claim(study, lock, budget, deadline)
            if trial is None:
                return
            seed = trial.user_attrs.get("seed")
            arch = ctx.space.suggest(trial)
            rec = _scored_before(study, arch, trial.number, seed) or \
                evaluate_candidate(arch, ctx, number=trial.number, seed=seed, trial_id=str(trial.number))
            tell(study, trial, rec, exp)
            recs = render(study, run_dir)
            if on_records:
                on_records(recs)


def _scored_before(study, arch, number: int, seed: Optional[str]) -> Optional[TrialRecord]:
    """A copy of the record of a COMPLETE trial with the same architecture, or None.

    Samplers over categorical spaces propose the same point again (TPE did in 4 of 12 trials of
    the CIFAR-10 run); every evaluator here is deterministic for a given architecture and seed,
    so scoring it again would only spend the trial's minutes. The copy is told to the sampler
    with the same values and says which trial it copies (``copy_of``).
    """
    from optuna.trial import TrialState

    key = arch_key(arch)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        old = t.user_attrs.get("record")
        if old and old.get("arch_key") == key and old.get("copy_of") is None:
            now = time.time()
            return TrialRecord.from_dict({**old, "number": number, "trial_id": str(number), "seed": seed,
                                          "copy_of": old["number"], "started": now, "finished": now,
                                          "accuracy_seconds": 0.0, "latency_seconds": 0.0,
                                          "node": _owner()})
    return None


def _process_main(exp_json: str, run_dir: str, budget, deadline, seed_offset: int) -> None:
    from .trial_worker import exit_with_parent

    exit_with_parent()  # a driver stopped with `kill PID` must not leave its workers claiming trials
    # One thread per worker: N workers with torch's default (all cores each) oversubscribe the
    # cores, and spinning OpenMP threads then stall 5-10x (seen: 33-49 s candidates instead of 5-10 s).
    # The variable alone is too late here: torch is already imported with this module.
    import torch

    torch.set_num_threads(int(os.environ.setdefault("OMP_NUM_THREADS", "1")))
    exp = Experiment.model_validate_json(exp_json)
    worker_loop(exp, Path(run_dir), budget, deadline, seed_offset=seed_offset)


def _owner_gone(t) -> bool:
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


def _recover_interrupted(study) -> int:
    """Trials left RUNNING by a dead process: mark FAIL ("interrupted"), enqueue their parameters again.
    Run under the :class:`StudyLock`, so no trial is between ``ask`` and its owner being recorded."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _owner_gone(t):
            continue
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        attrs = {k: v for k, v in t.user_attrs.items() if k == "seed"}
        study.enqueue_trial(t.params, user_attrs=attrs, skip_if_exists=False)
        n += 1
    return n


def _next_run_offset(study) -> int:
    """A sampler seed offset of its own for each run on the study (0 for the first, so a fresh run
    is reproducible): runs started together, or a resumed run, must not propose the same candidates."""
    runs = int(study.user_attrs.get("runs", 0))
    study.set_user_attr("runs", runs + 1)
    return runs * RUN_SEED_STRIDE


def seed_study(study, ctx: SearchContext, exp: Experiment, run_dir: Path) -> None:
    """Enqueue in-space seeds; evaluate out-of-space seeds here (numbered -1, -2, ...; not told to the sampler)."""
    for i, (name, arch) in enumerate(exp.seed_architectures()):
        if ctx.space.contains(arch):
            study.enqueue_trial(ctx.space.params_of(arch), user_attrs={"seed": name}, skip_if_exists=True)
        else:
            key = f"{STUDY_ATTR_SEED}{i}"
            if key in study.user_attrs:
                continue
            rec = evaluate_candidate(arch, ctx, number=-(i + 1), seed=name, in_space=False,
                                     trial_id=f"seed-{i}")
            study.set_user_attr(key, rec.to_dict())


def run(exp: Experiment, run_dir: Path, *, resume: bool,
        on_records: Optional[Callable[[list[TrialRecord]], None]] = None) -> list[TrialRecord]:
    """Run (or resume) the search in ``run_dir``; returns every trial's record."""
    run_dir = Path(run_dir)
    with StudyLock(exp, run_dir).held():  # one creator, one recovery, one seeding at a time
        study = open_study(exp, run_dir, create=True)
        if resume and exp.search.optuna.storage is None:
            # only our own journal: a shared database's RUNNING trials may be other machines' live ones
            _recover_interrupted(study)
        if not study.user_attrs.get("seeded"):
            with SearchContext(exp, run_dir) as ctx:
                seed_study(study, ctx, exp, run_dir)
            study.set_user_attr("seeded", True)
        offset = _next_run_offset(study)
    recs = render(study, run_dir)
    if on_records:
        on_records(recs)
    deadline = time.time() + exp.search.timeout_s if exp.search.timeout_s else None
    budget = exp.search.trials
    n = exp.search.concurrency
    if n == 1:
        worker_loop(exp, run_dir, budget, deadline, on_records, seed_offset=offset)
    else:
        ctx_mp = mp.get_context("spawn")
        procs = [ctx_mp.Process(target=_process_main, args=(exp.model_dump_json(), str(run_dir), budget, deadline,
                                                                    offset + WORKER_SEED_STRIDE * i),
                                daemon=False) for i in range(n)]
        for p in procs:
            p.start()
        seen = -1
        while any(p.is_alive() for p in procs):
            time.sleep(1.0)
            mtime = (run_dir / "trials.jsonl").stat().st_mtime_ns if (run_dir / "trials.jsonl").exists() else 0
            if on_records and mtime != seen:
                seen = mtime
                from .records import read_records
                on_records(read_records(run_dir))
        for p in procs:
            p.join()
        bad = [p.exitcode for p in procs if p.exitcode]
        if bad:
            raise RuntimeError(f"{len(bad)} Optuna worker process(es) exited with status {bad}")
    return render(study, run_dir)
