"""Ray Tune backend: Tuner + OptunaSearch (multi-objective), the same objective as the Optuna backend.

What out-of-the-box OptunaSearch gets wrong, and :class:`ConstrainedOptunaSearch` fixes:
the latency constraint never reaches Optuna (set it on the Optuna trial before
``tell``), and trials stopped early by ASHA are told COMPLETE with a partial
accuracy (tell them PRUNED: only trials whose final report carries
``final=True`` are COMPLETE; failed evaluations are told FAIL).

* Cluster: ``address=None`` starts a private local cluster bound to loopback
  (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, ``address="local"``) offering the
  ``latency_device`` resource; ``"auto"`` or ``host:port`` joins an existing one.
* Latency measured on the device: through the serialised measurement actor
  placed on the node offering ``latency_device``; a LUT is loaded by the driver
  and shipped to trials in the object store.
* Cluster faults: a trial whose worker (or its node) dies is run again; after
  more than ``search.max_failures`` such losses it is recorded FAIL naming the
  lost node, and the search goes on. If the latency actor's node is lost, the actor is created
  again on another node offering ``latency_device``; if none is left, or a
  trial raises a :class:`ShuffleNASError` (a broken experiment, not a failed
  candidate), the search stops with that one-line message before Tune saves the
  failure, so ``--resume`` runs the interrupted trials again.
* Records are written by the driver (:class:`RecordsCallback`) as trials finish,
  deduplicated by Tune trial id (a trial re-run after ``Tuner.restore`` is
  recorded once). Experiment state is saved after every step
  (``TUNE_GLOBAL_CHECKPOINT_S=0``) and snapshotted at every finished trial
  (:mod:`nas.tune_state`), so ``--resume`` (``Tuner.restore``) restarts only
  unfinished trials, even after a SIGKILL in the middle of Tune's own save.
* Nothing checkpointed holds a lambda: the define-by-run space, searcher and
  callback are module-level classes (this module imports Ray at the top; the
  CLI imports it only when the ray backend runs).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Callable, Optional

from optuna.trial import TrialState
from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from evaluators.latency.ray_actor import DeviceNodeLost, LatencyActorHandle, offering_nodes
from evaluators.ray_cluster import start_private_cluster
from search_space import Architecture
from search_space.errors import ShuffleNASError

from . import tune_state
from .experiment import Experiment, ExperimentError
from .objective import SearchContext, evaluate_candidate, latency_target, load_or_build_lut
from .records import TrialRecord, read_records, write_records

LATENCY_RESOURCE = "latency_device"
NUMBER_KEY = "_optuna_number"  # the Optuna trial number, added to each trial's config


class ClusterError(ExperimentError):
    """The Ray cluster lost something every trial needs (the latency device): the search stops, resumable."""


class DefineByRun:
    """Picklable define-by-run space for OptunaSearch: ``SearchSpace.suggest`` on the Optuna trial."""

    def __init__(self, space_dict: dict):
        self.space_dict = space_dict
        self._space = None

    def __call__(self, trial):
        from search_space import SearchSpace

        if self._space is None:
            self._space = SearchSpace.from_dict(self.space_dict)
        self._space.suggest(trial)
        ot = getattr(trial, "ot_trial", trial)  # Tune wraps the Optuna trial in a captor
        return {NUMBER_KEY: ot.number}

    def __getstate__(self):
        return {"space_dict": self.space_dict, "_space": None}


class ConstrainedOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the latency constraint, PRUNED early stops and FAIL failures."""

    def __init__(self, *args, constraint_key: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.constraint_key = constraint_key

    def on_trial_complete(self, trial_id, result=None, error=False):
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        state, values = TrialState.FAIL, None
        if result and not error and result.get("final"):
            if result.get("state") == "COMPLETE":
                state = TrialState.COMPLETE
                values = [result[m] for m in self.metric]
                if self.constraint_key and result.get("constraint") is not None:
                    ot_trial.set_constraint(self.constraint_key, result["constraint"])
            elif result.get("state") == "PRUNED":
                state = TrialState.PRUNED
        elif result and not error:
            state = TrialState.PRUNED  # stopped by the scheduler before its final report
        self._ot_study.tell(ot_trial, values, state=state)
        self._completed_trials.add(trial_id)



# ---- the trainable (runs in Ray workers) ------------------------------------------------

_CTX: dict = {}


def _context(exp: Experiment, run_dir: str, lut) -> SearchContext:
    key = (exp.fingerprint(), run_dir)
    if key not in _CTX:
        latency_fn = None
        if exp.latency.mode == "measured":
            latency_fn = _ActorLatency(exp)
        _CTX.clear()
        _CTX[key] = SearchContext(exp, run_dir, latency_fn=latency_fn, lut=lut)
    return _CTX[key]


class _ActorLatency:
    """Latency measured by the serialised measurement actor on a ``latency_device`` node.

    The actor is created again elsewhere if its node is lost; when no node offers
    ``latency_device`` any more, :class:`ClusterError` stops the search.
    """

    def __init__(self, exp: Experiment):
        self.exp = exp
        self.handle = LatencyActorHandle(latency_target(exp), LATENCY_RESOURCE, _protocol(exp))

    def connect(self) -> "_ActorLatency":
        self._guarded(self.handle.actor)
        return self

    def __call__(self, arch: Architecture):
        from evaluators.base import LatencyResult

        d = self._guarded(self.handle.call, "latency", arch.to_dict())
        return LatencyResult(**d) if isinstance(d, dict) else d

    @staticmethod
    def _guarded(fn, *args):
        try:
            return fn(*args)
        except DeviceNodeLost as exc:
            raise ClusterError(f"latency: {exc} and resume with --resume") from None


def _protocol(exp):
    from .objective import latency_protocol

    return latency_protocol(exp)


def _report_epoch(epoch: int, acc: float):
    from ray import tune

    tune.report({"accuracy_epoch": float(acc), "epoch": int(epoch), "final": False})
    return None


def trainable(config: dict, exp: Experiment = None, run_dir: str = "", lut=None, seeds: int = 0):
    """One trial: decode the sampled parameters, score, report the record (``final=True``)."""
    from ray import tune

    threads = int(exp.accuracy.train.get("threads", 1)) if exp.accuracy.train else 1
    import torch

    torch.set_num_threads(max(1, threads))
    import ray

    ctx = _context(exp, run_dir, lut)
    ctx.node = ray.get_runtime_context().get_node_id()
    ctx_trial = tune.get_context()
    trial_id = ctx_trial.get_trial_id()
    config = dict(config)
    number = int(config.pop(NUMBER_KEY))
    seed_archs = exp.seed_architectures()
    in_space = [(n, a) for n, a in seed_archs if ctx.space.contains(a)]
    seed = in_space[number][0] if number < len(in_space) else None
    arch = ctx.space.decode(config)
    cb = _report_epoch if exp.search.ray.scheduler == "asha" else None
    rec = evaluate_candidate(arch, ctx, number=number, seed=seed, trial_id=trial_id, callback=cb)
    tune.report({"final": True, "state": rec.state, "accuracy": rec.accuracy, "accuracy_epoch": rec.accuracy, "latency_ms": rec.latency_ms,
                 "params": rec.params, "macs": rec.macs,
                 "constraint": None if rec.constraint != rec.constraint else rec.constraint,
                 "record": rec.to_dict()})


def _seed_task(exp_json: str, run_dir: str, lut, index: int, name: str, arch_dict: dict) -> dict:
    exp = Experiment.model_validate_json(exp_json)
    ctx = _context(exp, run_dir, lut)
    rec = evaluate_candidate(Architecture.from_dict(arch_dict), ctx, number=-(index + 1), seed=name,
                             in_space=False, trial_id=f"seed-{index}")
    return rec.to_dict()


# ---- driver side ------------------------------------------------------------------------

class RecordsCallback(Callback):
    """Writes trials.jsonl/.csv on the driver as trials finish (one record per Tune trial id)."""

    def __init__(self, run_dir: str, tune_dir: str):
        self.run_dir = run_dir
        self.tune_dir = tune_dir
        self.on_records = None  # set by the driver after construction/restore; not pickled
        self.stop_error: Optional[ShuffleNASError] = None  # why a trial stopped the search

    def _write(self, rec: TrialRecord):
        recs = {r.trial_id: r for r in read_records(self.run_dir)}
        if rec.trial_id in recs:
            return
        if rec.number >= 0 and any(r.number == rec.number for r in recs.values()):
            # The same Optuna trial run again under a new Tune trial id: after a SIGKILL the restored
            # searcher can be one suggestion behind the restored trials and propose that number again
            # (seen once in 10 kills by experiments/fault_injection.py). The first result stands.
            return
        recs[rec.trial_id] = rec
        write_records(self.run_dir, list(recs.values()))
        if self.on_records:
            self.on_records(list(recs.values()))

    def _snapshot(self, trial):
        """Keep a complete copy of Tune's last saved state (see :mod:`nas.tune_state`)."""
        tune_state.snapshot(trial.storage.experiment_driver_staging_path, self.tune_dir)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._snapshot(trial)
        res = trial.last_result or {}
        if res.get("final") and res.get("record"):
            rec = TrialRecord.from_dict(res["record"])
            retries = _failures(trial)
            if retries and not rec.reason:
                rec.reason = f"retried {retries}x after a trial error: {_failure(trial)[0]}"
            self._write(rec)
        else:  # stopped by the scheduler before its final report
            self._write(_stopped_record(trial, res, "PRUNED", "stopped early by the scheduler"))

    def _stop_if_broken(self, trial) -> None:
        """End ``Tuner.fit`` (before Tune saves this failure) if the trial failed with a
        :class:`ShuffleNASError`: a broken experiment or a lost latency device fails every trial alike."""
        cause = getattr(_trial_exception(trial), "cause", None)  # RayTaskError wraps what the trainable raised
        if isinstance(cause, ShuffleNASError):
            self.stop_error = cause.with_traceback(None)
            raise self.stop_error  # Tune wraps it in a TuneError; run() raises stop_error itself

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._stop_if_broken(trial)  # otherwise Tune runs the trial again (search.max_failures)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._stop_if_broken(trial)
        self._snapshot(trial)
        why, node = _failure(trial)
        tries = _failures(trial)
        rec = _stopped_record(trial, trial.last_result or {}, "FAIL",
                              f"trial error: {why}" + (f" (failed {tries} times)" if tries > 1 else ""))
        rec.node = node or rec.node
        self._write(rec)

    def __getstate__(self):
        return {"run_dir": self.run_dir, "tune_dir": self.tune_dir, "on_records": None, "stop_error": None}


def _trial_exception(trial):
    """The exception of ``trial``'s latest failure (pickled by Tune next to its error.txt), or None."""
    import cloudpickle

    try:
        with open(trial.pickled_error_file, "rb") as f:
            return cloudpickle.load(f)
    except Exception:  # noqa: BLE001 -- no pickled error (or an unpicklable one): fall back to the text
        return None


def _failures(trial) -> int:
    """How many times ``trial`` failed, one death of its worker counted once.

    Tune can count one death twice (the running task and the actor each report
    it; seen when a node died just as a trial started), so it is allowed
    ``2 * search.max_failures`` failures: every trial survives at least
    ``max_failures`` lost workers. Here failures of the same actor are one.
    """
    path = trial.error_file
    if not path or not os.path.isfile(path):
        return trial.run_metadata.num_failures
    blocks = re.split(r"^Failure # \d+ ", Path(path).read_text(), flags=re.M)[1:]
    return len({(m[1] if (m := re.search(r"actor_id: ([0-9a-f]+)", b)) else i) for i, b in enumerate(blocks)})


def _failure(trial) -> tuple[str, str]:
    """(one-line reason, lost node id or "") of ``trial``'s latest failure."""
    exc = _trial_exception(trial)
    text = str(exc) if exc is not None else ""
    if not text and trial.error_file and os.path.isfile(trial.error_file):
        text = Path(trial.error_file).read_text()
    node = re.search(r"node has died\. Node Id: ([0-9a-f]+)", text)
    if node:
        return f"its node {node[1]} left the Ray cluster (the trial's worker died with it)", node[1]
    unavailable = re.search(r"actor ([0-9a-f]+) is unavailable", text)
    if unavailable and (lost := _dead_node_of(unavailable[1])):
        return f"its node {lost} left the Ray cluster (the trial's worker died with it)", lost
    lines = [" ".join(x.split()) for x in text.splitlines() if x.strip()]
    return (lines[-1] if lines else "unknown error")[:300], ""


def _dead_node_of(actor_id: str, wait_s: float = 30.0) -> str:
    """The node of ``actor_id`` if that node is dead (waiting up to ``wait_s`` for Ray to decide), else "".

    On a loaded machine a trial whose node was killed can fail with "actor ... is unavailable"
    (the connection dropped) before Ray's health check has declared the node dead, so the
    error does not name the node; the actor table does.
    """
    import ray

    try:
        from ray._private.state import actors  # the GCS actor table (no dashboard needed)

        node = actors(actor_id=actor_id)["Address"]["NodeID"]
    except Exception:  # noqa: BLE001 -- an internal API: without it the error text is reported as is
        return ""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        alive = {n["NodeID"]: n.get("Alive") for n in ray.nodes()}
        if not alive.get(node, False):
            return node
        time.sleep(1.0)
    return ""


def _stopped_record(trial, res: dict, state: str, reason: str) -> TrialRecord:
    from search_space import SearchSpace

    from .objective import new_record

    config = dict(trial.config)
    number = int(config.pop(NUMBER_KEY))
    arch = SearchSpace.from_dict(_DRIVER["space"]).decode(config)
    rec = new_record(arch, number, trial_id=trial.trial_id)
    rec.state, rec.reason = state, reason
    rec.accuracy = float(res.get("accuracy_epoch", float("nan")))
    rec.epochs = int(res.get("epoch", 0) or 0)
    rec.stopped_early = state == "PRUNED"
    rec.finished = time.time()
    rec.started = rec.finished - float(res.get("time_total_s", 0.0) or 0.0)
    return rec


_DRIVER: dict = {}


def _cluster_errors_to_stderr() -> None:
    """Ray's driver prints the cluster's error messages (e.g. "Raylet is terminated" when a node is
    killed) to stdout, which must stay clean for ``--json``: send them to stderr instead."""
    from ray._private import worker

    print_to_stdstream = worker.print_to_stdstream
    if getattr(print_to_stdstream, "to_stderr", False):
        return

    def to_stderr(data, ignore_prefix):
        return print_to_stdstream({**data, "is_err": True}, ignore_prefix)

    to_stderr.to_stderr = True
    worker.print_to_stdstream = to_stderr


def init_ray(address: Optional[str], exp: Experiment) -> bool:
    """Connect to ``address`` or start a private loopback-only cluster; returns True if we started Ray."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    _cluster_errors_to_stderr()
    if address:
        ray.init(address=address, logging_level="error", log_to_driver=False)
        if not offering_nodes(LATENCY_RESOURCE) and exp.latency.mode == "measured":
            ray.shutdown()
            raise ExperimentError(f"no node of the Ray cluster at {address} offers the '{LATENCY_RESOURCE}' "
                                  f"resource; start the target device's node with "
                                  f"--resources='{{\"{LATENCY_RESOURCE}\": 1}}'")
        return True
    start_private_cluster(exp.search.ray.num_cpus, {LATENCY_RESOURCE: 1})  # loopback only
    return True


def run(exp: Experiment, run_dir: Path, *, resume: bool, address: Optional[str] = None,
        on_records: Optional[Callable[[list[TrialRecord]], None]] = None) -> list[TrialRecord]:
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "0"  # save experiment state after every step
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # per-epoch reports (for ASHA) carry only accuracy_epoch; the objectives come with the final one
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the new output engine prints to stdout even at verbose=0
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # each failure's reason is in its record
    import optuna
    import ray
    from ray import tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    from .optuna_backend import make_sampler

    run_dir = Path(run_dir).resolve()
    space = exp.load_space()
    _DRIVER.update(exp=exp, space=space.to_dict())
    started = init_ray(address, exp)
    try:
        lut = load_or_build_lut(exp, space) if exp.latency.mode == "lut" else None
        measure = _ActorLatency(exp)
        if exp.latency.mode == "measured" or exp.latency.remeasure_front:
            measure.connect()  # created by the driver so that it lives as long as the search
        storage, name = str(run_dir / "ray"), "tune"
        path = os.path.join(storage, name)
        # out-of-space seeds: evaluated as Ray tasks before the search (not told to the sampler)
        done = {r.trial_id for r in read_records(run_dir)}
        seed_recs = []
        res = exp.search.ray.resources
        remote = ray.remote(_seed_task).options(num_cpus=res.cpu, num_gpus=res.gpu)
        for i, (nm, arch) in enumerate(exp.seed_architectures()):
            if not space.contains(arch) and f"seed-{i}" not in done:
                seed_recs.append(remote.remote(exp.model_dump_json(), str(run_dir), lut, i, nm, arch.to_dict()))
        if seed_recs:
            try:
                done_seeds = ray.get(seed_recs)
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, ShuffleNASError):
                    raise exc.cause.with_traceback(None) from None
                raise
            recs = read_records(run_dir) + [TrialRecord.from_dict(d) for d in done_seeds]
            write_records(run_dir, recs)
        if on_records:
            on_records(read_records(run_dir))

        fn = tune.with_parameters(trainable, exp=exp, run_dir=str(run_dir), lut=lut)
        fn = tune.with_resources(fn, {"cpu": res.cpu, "gpu": res.gpu})
        cb_cls = RecordsCallback
        if resume and Path(path).is_dir():
            tune_state.repair(path)
        if resume and tune.Tuner.can_restore(path):
            tuner = tune.Tuner.restore(path, trainable=fn, resume_unfinished=True, resume_errored=False,
                                       restart_errored=False)
            callback = next((c for c in tuner._local_tuner._run_config.callbacks or [] if isinstance(c, cb_cls)), None)
        else:
            callback = cb_cls(str(run_dir), path)
            searcher = ConstrainedOptunaSearch(
                space=DefineByRun(space.to_dict()), metric=list(exp.objectives),
                mode=["max" if d == "maximize" else "min" for d in exp.directions],
                points_to_evaluate=[space.params_of(a) for _, a in exp.seed_architectures() if space.contains(a)],
                sampler=make_sampler(exp.search.sampler, exp.search.seed, exp.search.trials),
                constraint_key="latency_ms" if exp.latency.budget_ms is not None else None)
            scheduler = None
            if exp.search.ray.scheduler == "asha":
                from ray.tune.schedulers import ASHAScheduler

                epochs = int(exp.accuracy.train.get("epochs", 1))
                scheduler = ASHAScheduler(metric="accuracy_epoch", mode="max", time_attr="training_iteration",
                                          max_t=epochs + 1, grace_period=1, reduction_factor=2)
            tuner = tune.Tuner(
                fn,
                tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                            num_samples=exp.search.trials or -1,
                                            max_concurrent_trials=exp.search.concurrency,
                                            time_budget_s=exp.search.timeout_s, reuse_actors=True),
                run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0, callbacks=[callback],
                                          failure_config=tune.FailureConfig(max_failures=2 * exp.search.ray.max_failures)),
            )
        if callback is not None:
            callback.on_records = on_records
        try:
            tuner.fit()
        except Exception:
            if getattr(callback, "stop_error", None) is not None:
                raise callback.stop_error from None
            raise
        if exp.latency.mode == "lut" or exp.latency.remeasure_front:
            from .search import remeasure_front

            with SearchContext(exp, run_dir, measure_fn=measure) as ctx:  # on the device's node
                remeasure_front(exp, run_dir, ctx)
    finally:
        for ctx in _CTX.values():
            ctx.close()
        _CTX.clear()
        if started:
            ray.shutdown()
    return read_records(run_dir)
