"""Preflight: everything an experiment needs that can be checked before its first trial, in seconds.

An experiment can be valid YAML with a valid schema and still be unable to
run: a dataset path that does not exist or holds a truncated archive, a
latency target on a device this machine lacks, a training setting the
trainer refuses (``epochs: 0``), a lookup table built for another target.
Without this check each trial fails the same way and the search ends with
every trial FAIL and an empty front. :func:`preflight` runs in the driver
before the run folder is created; the first problem found raises
:class:`PreflightError`, one line that starts with the field to fix. It
writes nothing into the run folder and creates nothing there (an official
dataset archive that is missing from the download cache is downloaded, as
the first trial would have done).

What it checks:

* ``data``: the spec resolves, the files exist and pass their format check
  (:func:`evaluators.data.check_dataset`, which finds and reads the files
  with the loaders' own code: CIFAR-10 archives are read through once to
  check that the gzip stream is whole, the batches are there and one of
  them decodes (4.2-5.5 s for the 170 MB archive here, at a load of 5-6 on
  the 2 cores); the idx files of MNIST / Fashion-MNIST are read in full; a
  ``folder:`` tree is in the ImageNet layout with 2 or more classes, read
  from its file index, which is built here if absent);
* the class count of the data against the space, the seeds and the
  retrain baselines, where training needs them to agree;
* ``accuracy``: the training / supernet settings construct (``epochs: 0``,
  an unknown key, ``lr <= 0``), the zero-cost proxy exists, ``options``
  are keywords the evaluator takes, a supernet checkpoint holds a supernet
  whose space contains the search space, trained on the same dataset;
* ``latency``: the target and protocol construct, the device and runtime
  exist here (CUDA, threads, onnxruntime, a C++ compiler for ``compile``;
  on an existing Ray cluster latency is measured on the node offering
  ``latency_device``, so only CUDA is checked, there, with the cluster); a
  given lookup table was built for this target and, unless on such a
  cluster (where that node checks it) or ``latency.lut_host_check`` is
  false, on this host; a complete one covers every block of the space and
  of the seeds, a partial one (a killed build) is resumed by the search;
* ``seeds``: each one fits (classes; inside the supernet's space);
* ``retrain``: its training settings construct;
* the run folder can be created, the Optuna storage is one the search can
  lock (a journal, ``sqlite:///`` or ``postgresql://``: an unsupported scheme
  is named before a missing driver) and is reachable (an RDB URL connects; a
  SQLite or journal file's folder is writable);
* Ray: the resources a trial asks for exist (on the private local cluster:
  CPUs and GPUs of this machine; on a cluster given by ``address``: a node
  that offers them, and a node that offers ``latency_device``, which every
  latency mode needs there).
"""

from __future__ import annotations

import inspect
import os
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from pydantic import ValidationError

from evaluators.data import DataError, DatasetSpec, check_dataset
from evaluators.device import placement
from evaluators.latency import LatencyError, LatencyLUT, LatencyTarget, MeasurementProtocol, check_available
from evaluators.latency import space_blocks
from evaluators.latency.target import LUTHostWarning, check_settings, host_identity
from evaluators.latency.ray_actor import DEFAULT_RESOURCE as LATENCY_RESOURCE
from evaluators.supernet import SupernetConfig, SupernetEvaluator
from evaluators.supernet.checkpoint import read_checkpoint
from evaluators.training import ProxyTrainingEvaluator, TrainConfig
from evaluators.zero_cost import PROXIES, ZeroCostEvaluator
from search_space import SearchSpace, presets
from search_space.blocks import iter_blocks
from search_space.errors import ShuffleNASError
from search_space.validation import one_line

from .backends.optuna import storage_kind
from .experiment import Experiment, ExperimentError
from .objective import LUT_HOST_OVERRIDE
from .run_folder import RunFolder
from .trial_worker import memory_limit_supported


class PreflightError(ExperimentError):
    """An experiment that is valid as a file but cannot run here; the message starts with the field."""


def preflight(exp: Experiment, *, resume: bool, address: str | None) -> None:
    """Raise :class:`PreflightError` on the first thing that would make every trial (or the run) fail.

    ``address`` is the ``--address`` given on the command line (it overrides the
    experiment's Ray address). Nothing is written into the run folder.
    """
    space = exp.load_space()
    _check_backend_flags(exp, address)
    _check_output(exp, resume)
    classes = check_data(exp.data)
    ckpt_space = _check_accuracy(exp, space, classes, address)
    target, lut = _check_latency(exp, space, address)
    _check_seeds(exp, space, classes, ckpt_space, target, lut)
    _check_retrain(exp, classes)
    _check_storage(exp, resume)
    _check_ray(exp, address)


# ---- helpers ------------------------------------------------------------------------------------


def _fail(field: str, message: str) -> PreflightError:
    return PreflightError(f"{field}: {' '.join(str(message).split())}")


def _construct(field: str, factory: Callable, **kwargs) -> Any:
    """``factory(**kwargs)`` with every refusal turned into one line naming ``field``."""
    try:
        return factory(**kwargs)
    except TypeError as exc:  # an unknown keyword
        known = [p for p in inspect.signature(factory).parameters if p != "self"]
        bad = next((k for k in kwargs if k not in known), None)
        if bad is None:
            raise _fail(field, exc) from None
        raise _fail(f"{field}.{bad}", f"unknown setting; known: {', '.join(known)}") from None
    except ValidationError as exc:
        raise PreflightError(one_line(exc, field)) from None
    except ShuffleNASError as exc:
        raise _fail(field, exc) from None


def _check_keywords(field: str, cls, options: dict, taken: tuple[str, ...] = ()) -> None:
    """``options`` are keywords ``cls`` accepts (and not ones the experiment sets itself)."""
    params = inspect.signature(cls).parameters
    for k in options:
        if k in taken:
            raise _fail(f"{field}.{k}", "is set by the experiment itself; remove it from options")
        if k not in params or params[k].kind not in (inspect.Parameter.KEYWORD_ONLY,
                                                     inspect.Parameter.POSITIONAL_OR_KEYWORD):
            known = [p for p, v in params.items() if p not in taken and v.kind in
                     (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            raise _fail(f"{field}.{k}", f"unknown option of {cls.__name__}; known: {', '.join(known)}")


# ---- run folder and flags -----------------------------------------------------------------------


def _check_backend_flags(exp: Experiment, address: str | None) -> None:
    if address and exp.search.backend != "ray":
        raise _fail("--address", "applies to the ray backend only (search.backend: ray, or --backend ray)")


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_output(exp: Experiment, resume: bool) -> None:
    out = Path(exp.output)
    if out.exists() and not out.is_dir():
        raise _fail("output", f"{out} is a file; the run folder must be a directory")
    base = _nearest_existing(out)
    if not base.is_dir():
        raise _fail("output", f"cannot create {out}: {base} is a file")
    if not os.access(base, os.W_OK | os.X_OK):
        raise _fail("output", f"cannot create or write {out}: {base} is not writable")


# ---- data ---------------------------------------------------------------------------------------


def check_data(spec: str) -> int:
    """Check that the dataset ``spec`` names can be loaded (:func:`evaluators.data.check_dataset`);
    returns its number of classes.

    Official archives missing from the cache are downloaded (md5-checked) here,
    once, instead of by every trial.
    """
    try:
        return check_dataset(spec).num_classes
    except DataError as exc:
        raise _fail("data", exc) from None


# ---- accuracy -----------------------------------------------------------------------------------


def _check_classes(field: str, what: str, num_classes: int, classes: int, fix: str) -> None:
    if num_classes != classes:
        raise _fail(field, f"{what} has num_classes {num_classes} but the dataset has {classes} classes; {fix}")


def _check_accuracy(exp: Experiment, space: SearchSpace, classes: int, address: str | None) -> Optional[SearchSpace]:
    """Returns the space the supernet checkpoint holds (supernet method with a checkpoint), else None."""
    a = exp.accuracy
    if a.method == "zero_cost":
        if a.proxy not in PROXIES:
            raise _fail("accuracy.proxy", f"unknown zero-cost proxy {a.proxy!r}; choose from {', '.join(PROXIES)}")
        _check_keywords("accuracy.options", ZeroCostEvaluator, a.options, ("proxy", "data", "seed"))
        return None
    if a.method == "proxy_training":
        cfg = _construct("accuracy.train", TrainConfig, **{"seed": exp.search.seed, **a.train})
        _check_device("accuracy.train", cfg, exp, address)
        _check_keywords("accuracy.options", ProxyTrainingEvaluator, a.options,
                        ("data", "config", "subset", "val_fraction", "seed", "checkpoint_dir"))
        if not a.options.get("adapt_classes"):
            _check_classes("space.num_classes", "the space", space.spec.num_classes, classes,
                           "set num_classes to the dataset's (or accuracy.options.adapt_classes: true)")
        return None
    # supernet
    _check_keywords("accuracy.options", SupernetEvaluator, a.options, ("checkpoint", "data", "seed"))
    cfg = _construct("accuracy.supernet_train", SupernetConfig, **a.supernet_train)
    _check_device("accuracy.supernet_train", cfg, exp, None)  # (trained by the driver, here)
    path = Path(a.checkpoint)
    if not path.is_file():  # trained by the search before its first trial
        _check_classes("space.num_classes", "the space", space.spec.num_classes, classes,
                       "set num_classes to the dataset's")
        return None
    try:
        state = read_checkpoint(path)
        stored = SearchSpace.from_dict(state["space"], source=f"{path} (stored space)")
        trained_with = SupernetConfig.from_dict(state["config"])
    except ShuffleNASError as exc:
        raise _fail("accuracy.checkpoint", exc) from None
    if a.supernet_train and state["epoch"] < cfg.epochs:  # training resumes before the search
        if state["space"] != space.to_dict():
            raise _fail("accuracy.checkpoint", f"{path} holds a supernet of another space, so its training "
                                               f"cannot resume for this one; choose another path or delete it")
        if not cfg.same_run(trained_with):
            raise _fail("accuracy.supernet_train", f"{path} was trained with other settings "
                                                   f"({state['config']}); match them, or choose another checkpoint")
    why = _not_within(space, stored)
    if why:
        raise _fail("accuracy.checkpoint", f"{path} holds a supernet whose space does not contain the search "
                                           f"space ({why}); train one for this space")
    if state.get("data"):
        theirs, ours = DatasetSpec.parse(state["data"]).name, DatasetSpec.parse(exp.data).name
        if theirs != ours:
            raise _fail("accuracy.checkpoint", f"{path} was trained on {theirs}, the experiment uses {ours}")
    _check_classes("accuracy.checkpoint", f"the supernet in {path}", stored.spec.num_classes, classes,
                   "train one on this dataset")
    return stored


def _not_within(space: SearchSpace, outer: SearchSpace) -> str:
    """Why ``space`` is not a subspace of ``outer`` ('' if it is)."""
    a, b = space.spec, outer.spec
    for f in ("input_size", "in_channels", "num_classes"):
        if getattr(a, f) != getattr(b, f):
            return f"{f} {getattr(a, f)} vs {getattr(b, f)}"
    if len(a.stages) != len(b.stages):
        return f"{len(a.stages)} vs {len(b.stages)} stages"
    theirs = {d.name: d.choices for d in outer.dimensions}
    for d in space.dimensions:
        extra = [c for c in d.choices if c not in theirs.get(d.name, ())]
        if extra:
            return f"{d.name} {extra} not among {list(theirs.get(d.name, ()))}"
    return ""


def _on_cluster(exp: Experiment, address: str | None) -> bool:
    """Whether the search runs on an existing Ray cluster (trials and latency on its nodes, not here)."""
    return exp.search.backend == "ray" and bool(address or exp.search.ray.address)


def _check_device(field: str, config, exp: Experiment, address: str | None) -> None:
    """The training device, precision and memory format a config asks for exist on this machine (not
    checked for trials on an existing Ray cluster: they train on its nodes; GPUs there: :func:`_check_ray`)."""
    if _on_cluster(exp, address):
        return
    try:
        placement(getattr(config, "device", "auto"), getattr(config, "amp", "auto"),
                  getattr(config, "channels_last", "auto"))
    except ShuffleNASError as exc:
        raise _fail(field, exc) from None


# ---- latency ------------------------------------------------------------------------------------


def _check_latency(exp: Experiment, space: SearchSpace,
                   address: str | None) -> tuple[LatencyTarget, Optional[LatencyLUT]]:
    """The target, and the lookup table when the experiment names a complete one.

    On an existing Ray cluster latency is measured on the node offering ``latency_device``, not
    here: this machine's device, threads and compiler are not checked (:func:`_check_cluster`
    checks CUDA on that node), only what no machine could measure.
    """
    lat = exp.latency
    target = _construct("latency.target", LatencyTarget, **lat.target)
    protocol = _construct("latency.protocol", MeasurementProtocol, **lat.protocol) if lat.protocol else None
    cluster = _on_cluster(exp, address)
    try:
        (check_settings if cluster else check_available)(target, protocol)
    except LatencyError as exc:
        raise _fail("latency.target", exc) from None
    if target.runtime == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401  (optional heavy dependency)
        except ImportError:
            raise _fail("latency.target.runtime", "onnxruntime is not installed (pip install onnxruntime); "
                                                  "install it or choose runtime eager") from None
    if target.runtime == "compile" and not cluster \
            and not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("clang++")):
        raise _fail("latency.target.runtime", "compile needs a C++ compiler (g++ or clang++ on PATH, or CXX) "
                                              "for torch.compile; install one or choose runtime onnxruntime")
    if lat.mode == "lut" and Path(lat.lut).is_file():
        return target, _check_lut(exp, space, target, cluster)
    return target, None


def _check_lut(exp: Experiment, space: SearchSpace, target: LatencyTarget, cluster: bool) -> Optional[LatencyLUT]:
    """The given table is for this target and (unless on a cluster, where the device node checks it,
    or ``lut_host_check`` is off) measured on this host, as :func:`nas.objective.load_or_build_lut`
    will check it; returns it when complete. A partial table, left by a killed build, is resumed
    for the space by the search (None); a complete one must cover every block of the space."""
    lat = exp.latency
    host = host_identity(target) if lat.lut_host_check and not cluster else None
    try:
        with warnings.catch_warnings():  # an untagged table: the search warns once, when it loads it
            warnings.simplefilter("ignore", LUTHostWarning)
            lut = LatencyLUT.load(lat.lut, target, host=host, override=LUT_HOST_OVERRIDE)
    except LatencyError as exc:
        raise _fail("latency.lut", exc) from None
    if not lut.meta.get("complete", True):
        return None
    needed = space_blocks(space, target.input_size)
    missing = [k for k in needed if k not in lut.entries]
    if missing:
        raise _fail("latency.lut", f"{lat.lut} is complete but lacks {len(missing)} of the {len(needed)} blocks of "
                                   f"the space (e.g. {missing[0]}; table meta: {_lut_meta(lut)}); build a table "
                                   f"for this space with 'shufflenas lut build', or move it away and the search "
                                   f"builds one")
    return lut


def _lut_meta(lut: LatencyLUT) -> str:
    m = lut.meta
    return (f"space {m.get('space_name')!r}, {len(lut.entries)} of {m.get('blocks_in_space')} blocks, "
            f"complete {m.get('complete')}")


# ---- seeds and retraining -----------------------------------------------------------------------


def _check_seeds(exp: Experiment, space: SearchSpace, classes: int, ckpt_space: Optional[SearchSpace],
                 target: LatencyTarget, lut: Optional[LatencyLUT]) -> None:
    a = exp.accuracy
    lut_keys: Optional[set[str]] = None
    if exp.latency.mode == "lut":  # the given table, or the one the search will build for the space
        lut_keys = set(lut.entries) if lut is not None else set(space_blocks(space, target.input_size))
    for name, arch in exp.seed_architectures():
        field = f"seeds: {name}"
        if a.method in ("proxy_training", "supernet") and not a.options.get("adapt_classes"):
            _check_classes(field, "the seed", arch.num_classes, classes,
                           "use a seed with the dataset's class count (or a *_cifar preset)")
        if a.method == "supernet":
            where = ckpt_space or space
            if not where.contains(arch):
                raise _fail(field, f"is outside the supernet's space {where.name!r}, so the supernet cannot "
                                   f"score it; remove it or use accuracy.method proxy_training")
        if lut_keys is not None:
            keys = {b.key() for _, b in iter_blocks(target.apply(arch))}
            if not keys <= lut_keys:
                raise _fail(field, f"has {len(keys - lut_keys)} block(s) the lookup table lacks (it is outside "
                                   f"the space the table covers); remove it or use latency.mode measured")


def _check_retrain(exp: Experiment, classes: int) -> None:
    spec = exp.retrain
    if spec is None:
        return
    cfg = _construct("retrain.train", TrainConfig, **{"seed": exp.search.seed, **spec.train})
    _check_device("retrain.train", cfg, exp, None)
    for name in spec.baselines:
        _check_classes(f"retrain.baselines: {name}", "the baseline", presets.get(name).num_classes, classes,
                       "choose baselines with the dataset's class count")


# ---- storage ------------------------------------------------------------------------------------


def _check_storage(exp: Experiment, resume: bool) -> None:
    if exp.search.backend != "optuna":
        return
    url, field = exp.search.optuna.storage, "search.optuna.storage"
    if url is None:  # a journal file in the run folder
        journal = RunFolder(exp.output).optuna_journal
        if resume and journal.exists() and not os.access(journal, os.R_OK | os.W_OK):
            raise _fail(field, f"the journal {journal} is not readable and writable by this user")
        return
    try:  # the kind of database first: installing a driver for one the search cannot lock would not help
        storage_kind(exp)
    except ExperimentError as exc:
        raise PreflightError(str(exc)) from None
    import sqlalchemy  # (optional heavy dependency: only for RDB storages)
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise _fail(field, f"{url!r} is not a database URL ({exc})") from None
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite":
        db = Path(parsed.database or "")
        if not parsed.database or parsed.database == ":memory:":
            raise _fail(field, f"{shown}: an in-memory database cannot hold a resumable study; name a file")
        if db.exists():
            with open(db, "rb") as fh:
                head = fh.read(16)
            if head and head != b"SQLite format 3\x00":
                raise _fail(field, f"{db} exists and is not a SQLite database")
        elif not db.parent.is_dir() or not os.access(db.parent, os.W_OK | os.X_OK):
            raise _fail(field, f"cannot create {db}: its folder {db.parent} does not exist or is not writable")
        return
    try:
        connect_args = {"connect_timeout": 5} if parsed.get_backend_name() == "postgresql" else {}
        engine = sqlalchemy.create_engine(parsed, connect_args=connect_args)
    except ImportError as exc:
        raise _fail(field, f"no database driver for {shown} ({exc}); install it, or name an installed one "
                           f"in the URL, e.g. postgresql+psycopg2://") from None
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
        raise _fail(field, f"cannot connect to {shown} ({first})") from None
    finally:
        engine.dispose()


# ---- trial limits and Ray -----------------------------------------------------------------------


def _check_ray(exp: Experiment, address: str | None) -> None:
    s = exp.search
    if s.trial_memory_mb is not None and not memory_limit_supported():
        raise _fail("search.trial_memory_mb", "needs /proc (Linux) to read a trial's memory; remove it or use "
                                              "trial_timeout_s alone")
    if s.backend != "ray":
        return
    ray = s.ray
    address = address or ray.address
    want = {"CPU": float(ray.resources.cpu), "GPU": float(ray.resources.gpu)}
    if not address:  # the private local cluster: this machine's CPUs and GPUs
        offer = {"CPU": float(ray.num_cpus or os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}
        for k, v in want.items():
            if v > offer[k]:
                raise _fail(f"search.ray.resources.{k.lower()}", f"a trial asks for {v:g} {k} but the private "
                                                                 f"local Ray cluster has {offer[k]:g}; Tune would "
                                                                 f"wait for it forever")
        return
    _check_cluster(exp, address, want)


def _check_cluster(exp: Experiment, address: str, want: dict) -> None:
    """A reachable cluster with a node for the trials' resources and one offering ``latency_device``."""
    if address != "auto" and ":" in address:
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
        except (OSError, ValueError) as exc:
            raise _fail("--address", f"cannot reach a Ray cluster at {address} ({exc})") from None
    import ray  # (optional heavy dependency)

    started = not ray.is_initialized()
    try:
        if started:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            try:
                ray.init(address=address, logging_level="error", log_to_driver=False)
            except Exception as exc:  # noqa: BLE001 -- refused, timed out, wrong token: one line each
                raise _fail("--address", f"cannot join the Ray cluster at {address} "
                                         f"({str(exc).strip().splitlines()[0][:200]})") from None
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
    # every latency on a cluster comes from the actor on that node: measured candidates, the front
    # re-measured, and a lookup table (loaded there against its host, or built there)
    device_nodes = [n for n in nodes if n.get(LATENCY_RESOURCE, 0) > 0]
    if not device_nodes:
        raise _fail("--address", f"no node of the Ray cluster at {address} offers the '{LATENCY_RESOURCE}' "
                                 f"resource; start the target device's node with "
                                 f"--resources='{{\"{LATENCY_RESOURCE}\": 1}}'")
    if LatencyTarget(**exp.latency.target).device == "cuda" and not any(n.get("GPU", 0) > 0 for n in device_nodes):
        raise _fail("latency.target.device", f"cuda, but no node offering '{LATENCY_RESOURCE}' on the Ray cluster "
                                             f"at {address} has a GPU")
    if not any(all(n.get(k, 0.0) >= v for k, v in want.items() if v > 0) for n in nodes):
        asked = ", ".join(f"{k} {v:g}" for k, v in want.items() if v > 0)
        raise _fail("search.ray.resources", f"no alive node of the Ray cluster at {address} offers what a trial "
                                          f"asks for ({asked}); Tune would wait for it forever")
