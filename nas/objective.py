"""The one objective both backends call: score a candidate, return a :class:`TrialRecord`.

:class:`SearchContext` builds the evaluators an experiment names, lazily and
once per process (a Ray worker builds its own). :func:`evaluate_candidate`
measures latency first (cheap, decides feasibility), then accuracy with a
per-epoch callback, and never raises for a failed evaluation: the record says
FAIL and why, and the search goes on.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import sys
import json
import math
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

from pydantic import ValidationError

from evaluators.base import AccuracyResult, LatencyResult
from evaluators.latency import LatencyLUT, LatencyTarget, MeasurementProtocol, MeasurementWorker, ray_actor
from evaluators.latency.target import host_identity
from evaluators.supernet import SupernetConfig, SupernetEvaluator, describe_fidelity, train_supernet
from evaluators.supernet.checkpoint import read_checkpoint
from evaluators.training import ProxyTrainingEvaluator, TrainConfig
from evaluators.zero_cost import ZeroCostEvaluator
from search_space import Architecture, SearchSpace, profile
from search_space.errors import ShuffleNASError
from search_space.validation import one_line

from .experiment import Experiment, ExperimentError
from .records import TrialRecord
from .run_folder import RunFolder
from .trial_worker import TrialWorker, describe_failure, memory_limit_supported


def arch_key(arch: Architecture) -> str:
    """Identity of an architecture's network (its name does not count)."""
    d = arch.to_dict()
    d.pop("name", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _construct(factory, where: str, *args, **kwargs):
    try:
        return factory(*args, **kwargs)
    except TypeError as exc:  # an unknown keyword from the experiment file
        raise ExperimentError(f"{where}: {exc}") from None
    except ShuffleNASError:
        raise
    except ValueError as exc:  # pydantic ValidationError is a ValueError
        msg = one_line(exc, where) if isinstance(exc, ValidationError) else f"{where}: {exc}"
        raise ExperimentError(msg) from None


def latency_target(exp: Experiment):
    return _construct(LatencyTarget, "latency.target", **exp.latency.target)


def latency_protocol(exp: Experiment):
    return _construct(MeasurementProtocol, "latency.protocol", **exp.latency.protocol) \
        if exp.latency.protocol else None


#: what to do about a lookup table tagged with another host (said in the error that refuses it)
LUT_HOST_OVERRIDE = ("move it away and the search builds one on that host, or set latency.lut_host_check: false "
                     "to use it anyway")


def load_or_build_lut(exp: Experiment, space: SearchSpace, progress: bool = False, check_host: bool = False,
                      device=None):
    """The experiment's LUT: loaded (checked against the target) or built there, resumably.

    In a process connected to the Ray cluster of a ray-backend search it is built on the node
    offering ``latency_device``, through the latency actor (``device``, a ``LatencyActorHandle``;
    by default a new handle, whose actor lives as long as it does), and checked against that
    node's host; otherwise here, and ``check_host`` checks it against this machine. A table
    tagged with another host is refused unless ``latency.lut_host_check`` is false; an
    untagged one warns.
    """
    target = latency_target(exp)
    path = Path(exp.latency.lut)
    host_check = exp.latency.lut_host_check
    if exp.search.backend == "ray":
        if device is not None or ray_actor.ray_connected():
            handle = device or ray_actor.LatencyActorHandle(target, ray_actor.DEFAULT_RESOURCE, latency_protocol(exp))
            return ray_actor.load_or_build_on_device(handle, space, path, latency_protocol(exp), progress=progress,
                                                     host_check=host_check, override=LUT_HOST_OVERRIDE)
    host = host_identity(target) if check_host and host_check else None
    if path.is_file():
        lut = LatencyLUT.load(path, target, host=host, override=LUT_HOST_OVERRIDE)
        if lut.meta.get("complete", True):
            return lut  # (a partial one, left by a killed build, is resumed below)
    lut = LatencyLUT.build(space, target, protocol=latency_protocol(exp), progress=progress, path=path,
                           host_check=host_check, override=LUT_HOST_OVERRIDE)
    lut.save(path)
    return lut


def prepare(exp: Experiment, progress: bool = True) -> None:
    """One-off preparation in the driver before trials run: build the LUT / train the supernet if absent.

    The ray backend loads or builds the LUT itself once it has joined the cluster, on the node
    offering ``latency_device`` (:func:`load_or_build_lut`), not here on the driver's machine.
    """
    space = exp.load_space()
    if exp.latency.mode == "lut" and exp.search.backend != "ray":
        load_or_build_lut(exp, space, progress=progress, check_host=True)
    acc = exp.accuracy
    if acc.method == "supernet" and supernet_unfinished(exp):
        cfg = _construct(SupernetConfig, "accuracy.supernet_train", **acc.supernet_train)
        train_supernet(space, exp.data, cfg, out=acc.checkpoint, progress=progress)
    if acc.method == "supernet":  # how far its ranking can be trusted, as measured (or that it was not)
        print(describe_fidelity(acc.checkpoint), file=sys.stderr, flush=True)


def supernet_unfinished(exp: Experiment) -> bool:
    """Whether the experiment's supernet checkpoint is missing or has fewer epochs than asked for.

    A checkpoint is saved after every epoch, so after a kill it exists but is
    not finished: training must resume before any candidate is scored with it.
    """
    path = Path(exp.accuracy.checkpoint)
    if not path.is_file():
        return True
    if not exp.accuracy.supernet_train:
        return False  # a checkpoint trained elsewhere, used as it is
    wanted = exp.accuracy.supernet_train.get("epochs", SupernetConfig.epochs)
    return read_checkpoint(path)["epoch"] < wanted


def build_accuracy_evaluator(exp: Experiment, run_dir: str | Path):
    """The accuracy evaluator ``exp.accuracy`` names (in the search process or in a trial worker)."""
    a = exp.accuracy
    if a.method == "zero_cost":
        kw = {"data": exp.data, "seed": exp.search.seed, **a.options}
        return _construct(ZeroCostEvaluator, "accuracy", proxy=a.proxy, **kw)
    if a.method == "proxy_training":
        cfg = _construct(TrainConfig, "accuracy.train", **{"seed": exp.search.seed, **a.train})
        return _construct(ProxyTrainingEvaluator, "accuracy", exp.data, cfg, subset=a.subset,
                          val_fraction=a.val_fraction, seed=exp.search.seed,
                          checkpoint_dir=str(RunFolder(run_dir).checkpoints), **a.options)
    if not Path(a.checkpoint).is_file():
        raise ExperimentError(f"accuracy.checkpoint: {a.checkpoint} not found "
                              f"(run the search from the driver to train it first)")
    return _construct(SupernetEvaluator, "accuracy", a.checkpoint, exp.data, seed=exp.search.seed, **a.options)


class SearchContext:
    """Evaluators of one experiment, built on first use in the process that scores candidates.

    ``latency_fn`` replaces the local latency estimator and ``measure_fn`` the
    local measurement worker (the Ray backend sends measurements to the
    serialised measurement actor on the device's node instead).
    """

    def __init__(self, exp: Experiment, run_dir: str | Path, *,
                 latency_fn: Optional[Callable[[Architecture], LatencyResult]] = None, lut=None,
                 measure_fn: Optional[Callable[[Architecture], LatencyResult]] = None):
        self.exp = exp
        self.run_dir = Path(run_dir)
        self.space = exp.load_space()
        self._latency_fn = latency_fn
        self._measure_fn = measure_fn
        self._lut = lut
        self._accuracy = None
        self._trial_worker = None  # accuracy under per-trial limits (search.trial_timeout_s / trial_memory_mb)
        self._latency = None
        self._worker = None
        self._lock = threading.Lock()  # one measurement at a time, whatever the concurrency
        self.node = ""  # set by a backend that knows better than host:pid (Ray node id)

    # ---- evaluators -------------------------------------------------------
    def accuracy_evaluator(self):
        """The experiment's accuracy evaluator in this process (built on first use)."""
        if self._accuracy is None:
            self._accuracy = build_accuracy_evaluator(self.exp, self.run_dir)
        return self._accuracy

    def evaluate_accuracy(self, arch: Architecture, callback=None) -> AccuracyResult:
        """Accuracy of ``arch``: in this process, or in the trial worker when the search sets limits."""
        s = self.exp.search
        if s.trial_timeout_s is None and s.trial_memory_mb is None:
            return self.accuracy_evaluator().evaluate(arch, callback=callback)
        return self.trial_worker().evaluate(arch, callback=callback)

    def trial_worker(self):
        """The child process scoring accuracy under ``search.trial_timeout_s`` / ``trial_memory_mb``."""
        if self._trial_worker is None:
            s = self.exp.search
            if s.trial_memory_mb is not None and not memory_limit_supported():
                raise ExperimentError("search.trial_memory_mb needs /proc (Linux) to read a trial's memory; "
                                      "remove it or use trial_timeout_s alone")
            self._trial_worker = TrialWorker(functools.partial(build_accuracy_evaluator, self.exp, str(self.run_dir)),
                                             timeout_s=s.trial_timeout_s, memory_mb=s.trial_memory_mb)
        return self._trial_worker

    def latency(self, arch: Architecture) -> LatencyResult:
        if self._latency_fn is not None:
            return self._latency_fn(arch)
        if self.exp.latency.mode == "lut":
            if self._lut is None:
                self._lut = load_or_build_lut(self.exp, self.space)
            return self._lut.latency(arch)
        with self._lock:
            return self.measurement_worker().latency(arch)

    def measurement_worker(self):
        """The long-lived serialised measurement process (started on first use)."""
        if self._worker is None:
            self._worker = MeasurementWorker(latency_target(self.exp), latency_protocol(self.exp))
            self._worker.__enter__()
        return self._worker

    def measure(self, arch: Architecture) -> LatencyResult:
        """A real measurement on the device, whatever the search's latency mode."""
        if self._measure_fn is not None:
            return self._measure_fn(arch)
        with self._lock:
            return self.measurement_worker().latency(arch)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.__exit__(None, None, None)
            self._worker = None
        if self._trial_worker is not None:
            self._trial_worker.close()
            self._trial_worker = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def new_record(arch: Architecture, number: int, *, seed: str | None = None,
               in_space: bool = True, trial_id: str = "") -> TrialRecord:
    p = profile(arch)
    return TrialRecord(number=number, arch=arch.to_dict(), arch_key=arch_key(arch), seed=seed,
                       in_space=in_space, params=p.params, macs=p.macs, trial_id=trial_id or str(number))


def evaluate_candidate(arch: Architecture, ctx: SearchContext, *, number: int, seed: str | None = None,
                       in_space: bool = True, trial_id: str = "",
                       callback=None) -> TrialRecord:
    """Score ``arch``: latency (constraint), then accuracy. Failures become FAIL records, never raise."""
    rec = new_record(arch, number, seed=seed, in_space=in_space, trial_id=trial_id)
    rec.node = ctx.node or f"{socket.gethostname()}:{os.getpid()}"
    rec.started = time.time()
    stage = "latency"
    try:
        t = time.perf_counter()
        lat = ctx.latency(arch)
        rec.latency_seconds = time.perf_counter() - t
        if isinstance(lat, dict):
            lat = LatencyResult(**lat)
        rec.latency_ms = float(lat.median_ms)
        rec.latency_source = lat.source
        rec.latency_extra = {"p90_ms": lat.p90_ms, "iqr_rel": lat.iqr_rel, "runs": lat.runs,
                             "flagged": lat.flagged, **(lat.extra or {})}
        budget = ctx.exp.latency.budget_ms
        if budget is not None:
            rec.constraint = rec.latency_ms - budget
            rec.feasible = rec.constraint <= 0
        if not math.isfinite(rec.latency_ms):
            raise ValueError(f"latency is {rec.latency_ms}")
        stage = "accuracy"
        t = time.perf_counter()
        res: AccuracyResult = ctx.evaluate_accuracy(arch, callback=callback)
        rec.accuracy_seconds = time.perf_counter() - t
        rec.accuracy = float(res.accuracy)
        rec.epochs, rec.stopped_early, rec.checkpoint = res.epochs, res.stopped_early, res.checkpoint
        rec.accuracy_extra = {"loss": res.loss, "seconds": res.seconds, **(res.extra or {})}
        if not math.isfinite(rec.accuracy):
            raise ValueError(f"accuracy is {rec.accuracy}")
        if res.stopped_early:
            rec.state, rec.reason = "PRUNED", "stopped early by the scheduler"
    except ExperimentError:
        raise  # a broken experiment is not a failed candidate: stop the search with its message
    except Exception as exc:  # noqa: BLE001 -- any failed evaluation is recorded, the search goes on
        rec.state = "FAIL"
        rec.reason = f"{stage}: {describe_failure(exc)}"[:500]
        rec.accuracy_extra["traceback"] = traceback.format_exc(limit=3)[-2000:]
    rec.finished = time.time()
    return rec
