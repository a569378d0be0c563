"""Ray Tune backend: trials as Tune trials, proposed by an Optuna study, scored by the one objective.

* Sampling: :class:`StudySearcher`, a Tune ``Searcher`` over an Optuna study
  driven by ask/tell exactly as the Optuna backend drives one (:mod:`nas.backends.study`):
  define-by-run space, in-space seeds queued first, the latency budget told as a
  constraint, trials stopped early by ASHA told PRUNED (not COMPLETE with a
  partial accuracy), failures FAIL, an architecture scored before copied.
* Cluster (``search.ray.address``): None starts a private local cluster bound to
  loopback offering the ``latency_device`` resource; ``"auto"`` or ``host:port``
  joins an existing one. A trial asks Tune for ``search.ray.resources`` (cpu, gpu).
* Latency measured on the device: through the serialised measurement actor
  placed on the node offering ``latency_device``; a LUT is loaded (or built on
  that node) by the driver and shipped to trials in the object store.
* Cluster faults: a trial whose worker (or its node) dies is run again; after
  more than ``search.ray.max_failures`` such losses it is recorded FAIL naming the
  lost node, and the search goes on. If the latency actor's node is lost, the actor
  is created again on another node offering ``latency_device``; if none is left, or
  a trial raises a :class:`ShuffleNASError` (a broken experiment, not a failed
  candidate), the search stops with that one-line message before Tune saves the
  failure, so ``--resume`` runs the interrupted trials again.
* Records are written by the driver (:class:`RecordsCallback`) as trials finish, one per
  Tune trial id (a trial re-run after ``Tuner.restore`` is recorded once). Experiment
  state is saved after every step and snapshotted at every finished trial
  (:mod:`nas.backends.tune_state`), so ``--resume`` (``Tuner.restore``) restarts only
  unfinished trials, even after a SIGKILL in the middle of Tune's own save.
* Nothing checkpointed holds a lambda; the Ray internals used are in :mod:`nas.ray_adapter`.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import time
from contextlib import ExitStack
from typing import Optional

import optuna
import ray
import torch
from optuna.trial import TrialState
from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher

from evaluators.base import LatencyResult
from evaluators.latency.ray_actor import DeviceNodeLost, LatencyActorHandle, offering_nodes
from evaluators.ray_cluster import start_private_cluster
from search_space import Architecture, SearchSpace
from search_space.errors import ShuffleNASError

from .. import ray_adapter
from ..experiment import Experiment, ExperimentError
from ..objective import (SearchContext, evaluate_candidate, latency_protocol, latency_target, load_or_build_lut,
                         new_record)
from ..records import TrialRecord
from ..run_folder import RunFolder
from . import tune_state
from .base import Breaker, OnRecords, SearchBackend, SearchStopped, SeedPlan, score_seed
from .study import SEED_ATTR, make_sampler, scored_before, tell

LATENCY_RESOURCE = "latency_device"
#: keys of a trial's Tune config (set by StudySearcher.suggest)
NUMBER_KEY, PARAMS_KEY, SEED_KEY, COPY_KEY = "number", "params", "seed", "copy"


class ClusterError(ExperimentError):
    """The Ray cluster lost something every trial needs (the latency device): the search stops, resumable."""


# ---- proposing (on the driver, inside Tune) ----------------------------------------------

class StudySearcher(Searcher):
    """A Tune searcher over an in-memory Optuna study: ask on ``suggest``, tell on ``on_trial_complete``.

    Tune pickles it with the experiment state (:meth:`save` / :meth:`restore`), the study
    and its sampler with it.
    """

    def __init__(self, exp: Experiment, space: SearchSpace, queued: list[tuple[str, dict]]):
        super().__init__()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.exp = exp
        self.space_dict = space.to_dict()
        self.study = optuna.create_study(directions=exp.directions, sampler=make_sampler(
            exp.search.sampler, exp.search.seed, exp.search.trials))
        for name, params in queued:
            self.study.enqueue_trial(params, user_attrs={SEED_ATTR: name})
        self.trials: dict[str, optuna.Trial] = {}  # Tune trial id -> the Optuna trial it scores
        self._space: Optional[SearchSpace] = None

    @property
    def space(self) -> SearchSpace:
        if self._space is None:
            self._space = SearchSpace.from_dict(self.space_dict)
        return self._space

    def suggest(self, trial_id: str) -> dict:
        trial = self.study.ask()
        self.trials[trial_id] = trial
        arch = self.space.suggest(trial)
        seed = trial.user_attrs.get(SEED_ATTR)
        config = {NUMBER_KEY: trial.number, PARAMS_KEY: dict(trial.params), SEED_KEY: seed}
        copy = scored_before(self.study, arch, number=trial.number, trial_id=trial_id, seed=seed,
                             node=f"{socket.gethostname()}:{os.getpid()}")
        if copy is not None:
            config[COPY_KEY] = json.dumps(copy.to_dict())
        return config

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        trial = self.trials.pop(trial_id, None)
        if trial is None:
            return
        rec = final_record(result) if result and not error else None
        if rec is not None:
            tell(self.study, trial, rec, self.exp)
        else:  # stopped by the scheduler before its final report (PRUNED), or the trial errored
            self.study.tell(trial, state=TrialState.PRUNED if result and not error else TrialState.FAIL)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({k: v for k, v in self.__dict__.items() if k != "_space"}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        self._space = None

    def __getstate__(self):
        return {**self.__dict__, "_space": None}


# ---- scoring (in Ray workers) --------------------------------------------------------------

class ActorLatency:
    """Latency measured by the serialised measurement actor on a ``latency_device`` node.

    The actor is created again elsewhere if its node is lost; when no node offers
    ``latency_device`` any more, :class:`ClusterError` stops the search.
    """

    def __init__(self, exp: Experiment):
        self.handle = LatencyActorHandle(latency_target(exp), LATENCY_RESOURCE, latency_protocol(exp))

    def connect(self) -> "ActorLatency":
        self._guarded(self.handle.actor)
        return self

    def __call__(self, arch: Architecture) -> LatencyResult:
        d = self._guarded(self.handle.call, "latency", arch.to_dict())
        return LatencyResult(**d) if isinstance(d, dict) else d

    @staticmethod
    def _guarded(fn, *args):
        try:
            return fn(*args)
        except DeviceNodeLost as exc:
            raise ClusterError(f"latency: {exc} and resume with --resume") from None


def worker_context(exp: Experiment, run_dir: str, lut) -> SearchContext:
    """Evaluators of a Ray worker: latency through the device's actor, or from the shipped LUT."""
    latency_fn = ActorLatency(exp) if exp.latency.mode == "measured" else None
    return SearchContext(exp, run_dir, latency_fn=latency_fn, lut=lut)


def final_record(result: dict) -> Optional[TrialRecord]:
    """The record a trial reported with its final result (a JSON string: Tune flattens nested
    results for searchers), or None for a trial that ended before it."""
    if result.get("final") and result.get("record"):
        return TrialRecord.from_dict(json.loads(result["record"]))
    return None


def _report_epoch(epoch: int, acc: float):
    tune.report({"accuracy_epoch": float(acc), "epoch": int(epoch), "final": False})


class TrialRunner:
    """The trainable: scores one trial per call, reports its record (``final=True``).

    Called by Tune in a worker process that runs trial after trial (``reuse_actors``);
    the evaluators are built there once and kept by this object, which Ray deserialises
    once per worker process.
    """

    def __init__(self):
        self._ctx: Optional[SearchContext] = None
        self._key = None

    def __getstate__(self):
        return {"_ctx": None, "_key": None}

    def context(self, exp: Experiment, run_dir: str, lut) -> SearchContext:
        key = (exp.fingerprint(), run_dir)
        if self._key != key:
            if self._ctx is not None:
                self._ctx.close()
            self._ctx, self._key = worker_context(exp, run_dir, lut), key
        return self._ctx

    def __call__(self, config: dict, exp: Optional[Experiment] = None, run_dir: str = "", lut=None) -> None:
        torch.set_num_threads(max(1, int(exp.accuracy.train.get("threads", 1))))
        ctx = self.context(exp, run_dir, lut)
        ctx.node = ray.get_runtime_context().get_node_id()
        trial_id = tune.get_context().get_trial_id()
        if config.get(COPY_KEY):
            rec = TrialRecord.from_dict({**json.loads(config[COPY_KEY]), "node": ctx.node})
        else:
            arch = ctx.space.decode(config[PARAMS_KEY])
            cb = _report_epoch if exp.search.ray.scheduler == "asha" else None
            rec = evaluate_candidate(arch, ctx, number=int(config[NUMBER_KEY]), seed=config.get(SEED_KEY),
                                     trial_id=trial_id, callback=cb)
        tune.report({"final": True, "state": rec.state, "accuracy_epoch": rec.accuracy,
                     "record": json.dumps(rec.to_dict())})


def _score_seed_task(exp_json: str, run_dir: str, lut, index: int, name: str, arch_dict: dict) -> dict:
    exp = Experiment.model_validate_json(exp_json)
    with worker_context(exp, run_dir, lut) as ctx:
        return score_seed(ctx, index, name, Architecture.from_dict(arch_dict)).to_dict()


# ---- recording (on the driver, inside Tune) -------------------------------------------------

class RecordsCallback(Callback):
    """Writes each finished trial's record on the driver; stops ``Tuner.fit`` for a broken experiment.

    What the driver hands over (:meth:`attach`: the breaker, the progress) is not pickled:
    Tune restores this callback from its first start, and the driver attaches again.
    """

    def __init__(self, run_dir: str, space_dict: dict):
        self.run_dir = run_dir
        self.space_dict = space_dict
        self.attach(Breaker(0), None)

    def attach(self, breaker: Breaker, on_records: Optional[OnRecords]) -> None:
        self.breaker = breaker
        self.on_records = on_records
        self.stop_error: Optional[ShuffleNASError] = None  # why the search stopped

    def __getstate__(self):
        return {"run_dir": self.run_dir, "space_dict": self.space_dict}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.attach(Breaker(0), None)

    def _write(self, rec: TrialRecord) -> None:
        if self.stop_error is not None:
            return  # trials Tune stops while the search ends are unfinished (resumed), not recorded
        recs = RunFolder(self.run_dir).add_record(rec)
        if recs is None:
            return
        if self.on_records:
            self.on_records(recs)
        reason = self.breaker.check(recs)
        if reason:
            self.stop_error = SearchStopped(reason)  # raised at the end of this step (on_step_end)

    def on_step_end(self, iteration, trials, **info):
        """Stop ``Tuner.fit`` once the breaker tripped: here, after Tune saved this step's state
        (an exception raised while Tune stops a trial is only logged). Tune wraps it;
        :meth:`RayBackend.search` raises ``stop_error`` itself."""
        if self.stop_error is not None:
            raise self.stop_error

    def _snapshot(self, trial) -> None:
        """Keep a complete copy of Tune's last saved state (see :mod:`nas.backends.tune_state`)."""
        tune_state.snapshot(ray_adapter.staging_dir(trial), RunFolder(self.run_dir).tune_dir)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._snapshot(trial)
        res = trial.last_result or {}
        rec = final_record(res)
        if rec is not None:
            retries = ray_adapter.failure_count(trial)
            if retries and not rec.reason:
                rec.reason = f"retried {retries}x after a trial error: {ray_adapter.trial_failure(trial)[0]}"
            self._write(rec)
        else:  # stopped by the scheduler before its final report
            self._write(self._unfinished(trial, res, "PRUNED", "stopped early by the scheduler"))

    def _stop_if_broken(self, trial) -> None:
        """End ``Tuner.fit`` (before Tune saves this failure) if the trial failed with a
        :class:`ShuffleNASError`: a broken experiment or a lost latency device fails every trial alike."""
        cause = getattr(ray_adapter.trial_exception(trial), "cause", None)  # RayTaskError wraps what was raised
        if isinstance(cause, ShuffleNASError):
            self.stop_error = cause.with_traceback(None)
            raise self.stop_error

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._stop_if_broken(trial)  # otherwise Tune runs the trial again (search.ray.max_failures)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._stop_if_broken(trial)
        self._snapshot(trial)
        why, node = ray_adapter.trial_failure(trial)
        tries = ray_adapter.failure_count(trial)
        rec = self._unfinished(trial, trial.last_result or {}, "FAIL",
                               f"trial error: {why}" + (f" (failed {tries} times)" if tries > 1 else ""))
        rec.node = node or rec.node
        self._write(rec)

    def _unfinished(self, trial, res: dict, state: str, reason: str) -> TrialRecord:
        """The record of a trial that ended without its final report."""
        config = trial.config
        arch = SearchSpace.from_dict(self.space_dict).decode(config[PARAMS_KEY])
        rec = new_record(arch, int(config[NUMBER_KEY]), seed=config.get(SEED_KEY), trial_id=trial.trial_id)
        rec.state, rec.reason = state, reason
        rec.accuracy = float(res.get("accuracy_epoch", float("nan")))
        rec.epochs = int(res.get("epoch", 0) or 0)
        rec.stopped_early = state == "PRUNED"
        rec.finished = time.time()
        rec.started = rec.finished - float(res.get("time_total_s", 0.0) or 0.0)
        return rec


# ---- the backend ----------------------------------------------------------------------------

def init_ray(address: Optional[str], exp: Experiment) -> bool:
    """Connect to ``address`` or start a private loopback-only cluster; returns True if we started Ray."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, logging_level="error", log_to_driver=False)
        # every latency mode needs the device node: measured candidates, a lookup table loaded or
        # built through its actor, the front re-measured there (as nas.preflight checks)
        if not offering_nodes(LATENCY_RESOURCE):
            ray.shutdown()
            raise ExperimentError(f"no node of the Ray cluster at {address} offers the '{LATENCY_RESOURCE}' "
                                  f"resource; start the target device's node with "
                                  f"--resources='{{\"{LATENCY_RESOURCE}\": 1}}'")
        return True
    start_private_cluster(exp.search.ray.num_cpus, {LATENCY_RESOURCE: 1})  # loopback only
    return True


class RayBackend(SearchBackend):
    """Tune trials on a Ray cluster (a private local one by default)."""

    name = "ray"

    def open(self) -> None:
        self._stack = ExitStack()
        self._stack.enter_context(ray_adapter.tune_environment())
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = self.exp.load_space()
        if init_ray(self.address or self.exp.search.ray.address, self.exp):
            self._stack.callback(ray.shutdown)
        # One actor, created through this handle by the driver so that it lives as long as the search,
        # loads or builds the table (progress shown on the device node's build) and measures.
        self.latency = ActorLatency(self.exp)
        self.lut = load_or_build_lut(self.exp, self.space, progress=self.progress, device=self.latency.handle) \
            if self.exp.latency.mode == "lut" else None
        if self.exp.latency.mode == "measured" or self.exp.latency.remeasure_front:
            self.latency.connect()

    def seed(self) -> None:
        """Out-of-space seeds scored as Ray tasks before the search (in-space ones: the searcher's queue)."""
        exp, res = self.exp, self.exp.search.ray.resources
        plan = SeedPlan(exp, self.space)
        remote = ray.remote(_score_seed_task).options(num_cpus=res.cpu, num_gpus=res.gpu)
        tasks = [remote.remote(exp.model_dump_json(), str(self.run.path), self.lut, i, name, arch.to_dict())
                 for i, name, arch in plan.todo({r.trial_id for r in self.run.read_records()})]
        try:
            for d in ray.get(tasks):
                self.run.add_record(TrialRecord.from_dict(d))
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, ShuffleNASError):
                raise exc.cause.with_traceback(None) from None
            raise
        self.on_records(self.run.read_records())

    def search(self) -> None:
        exp, run = self.exp, self.run
        res = exp.search.ray.resources
        fn = tune.with_resources(tune.with_parameters(TrialRunner(), exp=exp, run_dir=str(run.path), lut=self.lut),
                                 {"cpu": res.cpu, "gpu": res.gpu})
        path = str(run.tune_dir)
        if self.resume and run.tune_dir.is_dir():
            tune_state.repair(run.tune_dir)
        if self.resume and tune.Tuner.can_restore(path):
            tuner = tune.Tuner.restore(path, trainable=fn, resume_unfinished=True, resume_errored=False,
                                       restart_errored=False)
            callback = next(c for c in ray_adapter.restored_callbacks(tuner) if isinstance(c, RecordsCallback))
        else:
            callback = RecordsCallback(str(run.path), self.space.to_dict())
            scheduler = None
            if exp.search.ray.scheduler == "asha":
                epochs = int(exp.accuracy.train.get("epochs", 1))
                scheduler = ASHAScheduler(metric="accuracy_epoch", mode="max", time_attr="training_iteration",
                                          max_t=epochs + 1, grace_period=1, reduction_factor=2)
            searcher = StudySearcher(exp, self.space, SeedPlan(exp, self.space).queued())
            tuner = tune.Tuner(
                fn,
                tune_config=tune.TuneConfig(search_alg=searcher,
                                            scheduler=scheduler, num_samples=exp.search.trials or -1,
                                            max_concurrent_trials=exp.search.concurrency,
                                            time_budget_s=exp.search.timeout_s, reuse_actors=True),
                run_config=tune.RunConfig(name=run.tune_dir.name, storage_path=str(run.tune_dir.parent), verbose=0,
                                          callbacks=[callback],
                                          failure_config=tune.FailureConfig(
                                              # Tune can count one lost worker twice (see ray_adapter.failure_count)
                                              max_failures=2 * exp.search.ray.max_failures)),
            )
        callback.attach(self.breaker, self.on_records)
        try:
            tuner.fit()
        except Exception:
            if callback.stop_error is not None:
                raise callback.stop_error from None
            raise

    def measure(self, arch: Architecture) -> float:
        """Measured by the latency actor, on the device's node."""
        return float(self.latency(arch).median_ms)

    def close(self) -> None:
        if getattr(self, "_stack", None) is not None:
            self._stack.close()
            self._stack = None
