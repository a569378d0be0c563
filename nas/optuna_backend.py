"""Optuna backend: a multi-objective study driven by ask/tell, resumable from its storage.

* Architectures are sampled define-by-run (``SearchSpace.suggest(trial)``).
* The latency budget is a constraint (``trial.set_constraint``, <= 0 feasible);
  every Optuna 5 sampler reads it from the trial.
* Storage: a JournalStorage file in the run directory by default (no server,
  safe for several processes); an RDB URL (``postgresql://...``) for workers on
  several machines, each running ``shufflenas search EXP --resume``.
* The study is the source of truth: each finished trial carries its
  :class:`TrialRecord` as a user attribute, and ``trials.jsonl``/``.csv`` are
  re-rendered from it after every trial under a file lock. On ``--resume`` the
  trials left RUNNING by a killed process are marked FAIL ("interrupted") and
  their parameters enqueued again, so no finished trial is lost or repeated.
* ``concurrency > 1`` runs that many worker processes on the same storage; a
  trial slot is claimed under a file lock so the trial budget is exact.
"""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

from .experiment import Experiment, ExperimentError
from .objective import SearchContext, evaluate_candidate
from .records import TrialRecord, write_records

STUDY_ATTR_SEED = "seed_record:"


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


def make_storage(exp: Experiment, run_dir: Path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    url = exp.search.storage
    if url is None:
        return JournalStorage(JournalFileBackend(str(run_dir / "optuna.journal")))
    if url.startswith(("sqlite:", "postgresql", "mysql")):
        return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180,
                                          failed_trial_callback=None)
    raise ExperimentError(f"search.storage: {url!r} is not an RDB URL (postgresql://, mysql://, sqlite:///)")


def open_study(exp: Experiment, run_dir: Path, *, create: bool, seed_offset: int = 0):
    """The run's study. ``seed_offset`` gives each worker process, and each resumed run, its own
    sampler stream (the same seed would propose the same candidates again)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kw = dict(study_name=exp.name, storage=make_storage(exp, run_dir),
              sampler=make_sampler(exp.search.sampler, exp.search.seed + seed_offset, exp.search.trials))
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
    return sum(1 for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("interrupted"))


def _claim(study, run_dir: Path, budget: Optional[int], deadline: Optional[float]):
    with file_lock(run_dir / ".claim.lock"):
        if deadline is not None and time.time() >= deadline:
            return None
        if budget is not None and _counted(study) >= budget:
            return None
        return study.ask()


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
    with SearchContext(exp, run_dir) as ctx:
        while True:
            trial = _claim(study, run_dir, budget, deadline)
            if trial is None:
                return
            seed = trial.user_attrs.get("seed")
            arch = ctx.space.suggest(trial)
            rec = evaluate_candidate(arch, ctx, number=trial.number, seed=seed, trial_id=str(trial.number))
            tell(study, trial, rec, exp)
            recs = render(study, run_dir)
            if on_records:
                on_records(recs)


def _process_main(exp_json: str, run_dir: str, budget, deadline, seed_offset: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    exp = Experiment.model_validate_json(exp_json)
    worker_loop(exp, Path(run_dir), budget, deadline, seed_offset=seed_offset)


def _recover_interrupted(study) -> int:
    """Trials left RUNNING by a killed run: mark FAIL ("interrupted") and enqueue their parameters again."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        attrs = {k: v for k, v in t.user_attrs.items() if k == "seed"}
        study.enqueue_trial(t.params, user_attrs=attrs, skip_if_exists=False)
        n += 1
    return n


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
    study = open_study(exp, run_dir, create=True)
    if resume and exp.search.storage is None:
        _recover_interrupted(study)  # only our own journal: on a shared RDB others may be running
    if not study.user_attrs.get("seeded"):
        with SearchContext(exp, run_dir) as ctx:
            seed_study(study, ctx, exp, run_dir)
        study.set_user_attr("seeded", True)
    recs = render(study, run_dir)
    if on_records:
        on_records(recs)
    deadline = time.time() + exp.search.timeout_s if exp.search.timeout_s else None
    budget = exp.search.trials
    n = exp.search.concurrency
    offset = len(study.get_trials(deepcopy=False))  # 0 on a fresh run: the seed alone decides it
    if n == 1:
        worker_loop(exp, run_dir, budget, deadline, on_records, seed_offset=offset)
    else:
        ctx_mp = mp.get_context("spawn")
        procs = [ctx_mp.Process(target=_process_main, args=(exp.model_dump_json(), str(run_dir), budget, deadline,
                                                                    offset + 100_003 * i),
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
