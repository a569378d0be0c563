"""The experiment file: everything a search needs, validated before anything runs.

An experiment is a YAML mapping (unknown keys rejected, one-line errors naming
the field)::

    name: quickstart
    space: {input_size: 16, ...}        # inline mapping, a YAML path, or a built-in name
    data: digits                        # dataset spec: digits, cifar10[:PATH], ...
    accuracy: {method: zero_cost, proxy: synflow}
    latency: {mode: measured, target: {runtime: onnxruntime, threads: 1}, budget_ms: 2.0}
    objectives: [accuracy, latency_ms]
    search: {backend: optuna, sampler: tpe, trials: 30, concurrency: 1, seed: 0,
             optuna: {storage: null}}         # or backend: ray, ray: {address: auto, ...}
    seeds: [shufflenet_v2_x0_5_cifar]
    output: runs/quickstart

Relative paths (space file, dataset path, LUT, supernet checkpoint, seed
YAMLs, output, retrain.baselines_from) resolve against the experiment
file's folder, so an experiment runs the same from any working directory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from evaluators.data import DatasetSpec
from search_space import Architecture, SearchSpace, load_space, presets
from search_space.errors import ShuffleNASError
from search_space.io import load_yaml
from search_space.validation import Frozen, one_line


class ExperimentError(ShuffleNASError):
    """An experiment file (or a run directory) that cannot be used as given."""


#: Objective metric -> Optuna direction. Accuracy is maximised, every cost minimised.
METRICS = {"accuracy": "maximize", "latency_ms": "minimize", "params": "minimize", "macs": "minimize"}


class AccuracySpec(Frozen):
    """How candidates are scored for accuracy (the expensive part of a trial)."""

    method: Literal["proxy_training", "supernet", "zero_cost"] = "zero_cost"
    #: zero_cost: proxy name (``synflow``, ``naswot``, ``grad_norm``, ...)
    proxy: str = "synflow"
    #: proxy_training: keyword arguments of ``evaluators.training.TrainConfig`` (epochs, lr, ...)
    train: dict[str, Any] = Field(default_factory=dict)
    #: proxy_training / supernet: number of training images used (None = all)
    subset: Optional[int] = Field(None, ge=10)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    #: supernet: checkpoint path; trained first (resumably) with ``supernet_train`` if absent
    checkpoint: Optional[str] = None
    #: supernet: keyword arguments of ``evaluators.supernet.SupernetConfig``
    supernet_train: dict[str, Any] = Field(default_factory=dict)
    #: extra keyword arguments passed to the evaluator's constructor
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _supernet_needs_checkpoint(self):
        if self.method == "supernet" and not self.checkpoint:
            raise ValueError("method supernet needs 'checkpoint: PATH' (trained there if absent)")
        return self


class LatencySpec(Frozen):
    """Latency on the target device: measured for every candidate, or predicted by a LUT."""

    mode: Literal["measured", "lut"] = "measured"
    #: keyword arguments of ``evaluators.latency.LatencyTarget`` (device, runtime, threads, batch, input_size, dtype)
    target: dict[str, Any] = Field(default_factory=dict)
    #: keyword arguments of ``evaluators.latency.MeasurementProtocol``
    protocol: dict[str, Any] = Field(default_factory=dict)
    #: lut: path of the lookup table (built for the space there if absent)
    lut: Optional[str] = None
    #: hard constraint: candidates slower than this are infeasible (never on the front)
    budget_ms: Optional[float] = Field(None, gt=0)
    #: re-measure the final Pareto set on the device (always done when mode is lut)
    remeasure_front: bool = True
    #: lut: refuse a table tagged with another host than the one latency is measured on (the node
    #: offering latency_device on a Ray cluster, else this machine); false = use it anyway
    lut_host_check: bool = True

    @model_validator(mode="after")
    def _lut_needs_path(self):
        if self.mode == "lut" and not self.lut:
            raise ValueError("mode lut needs 'lut: PATH' (built for the search space there if absent)")
        return self


class OptunaOptions(Frozen):
    """``search.optuna``: settings only the Optuna backend reads."""

    #: None = a JournalStorage file in the run directory; or an RDB URL (postgresql://..., sqlite:///FILE)
    storage: Optional[str] = None


class RayResources(Frozen):
    """``search.ray.resources``: what Tune reserves for one trial (fractions allowed, e.g. gpu: 0.5)."""

    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)

    @field_validator("cpu", "gpu")
    @classmethod
    def _ray_quantity(cls, v):
        if v > 1 and v != int(v):
            raise ValueError(f"Ray accepts a fraction only below 1 (got {v}); use a whole number above 1")
        return v


class RayOptions(Frozen):
    """``search.ray``: settings only the Ray Tune backend reads."""

    #: None = a private local cluster on loopback; "auto" or host:port = an existing cluster
    address: Optional[str] = None
    #: CPUs of the private local cluster (None = all)
    num_cpus: Optional[int] = Field(None, ge=1)
    #: times a trial whose worker or node died is run again before it is recorded FAIL
    #: (kept from the search's start on --resume)
    max_failures: int = Field(1, ge=0, le=100)
    #: scheduler on accuracy (asha stops weak proxy trainings early; needs proxy_training)
    scheduler: Optional[Literal["asha"]] = None
    #: resources of one trial
    resources: RayResources = RayResources()


#: keys that used to sit directly under ``search`` -> the backend section they belong to now
BACKEND_KEYS = {"storage": "optuna", "address": "ray", "num_cpus": "ray", "max_failures": "ray",
                "scheduler": "ray", "resources": "ray"}


def search_layout_error(search: Any, backend_from: str = "search.backend") -> Optional[str]:
    """Why a raw ``search`` mapping mixes up the backends' options (one line), or None.

    A flat backend option (``search.storage``) names its new place; the other backend's
    section (``search.ray`` with backend optuna) is refused rather than silently ignored.
    """
    if not isinstance(search, dict):
        return None
    for key, section in BACKEND_KEYS.items():
        if key in search:
            return f"search.{key}: moved to search.{section}.{key} (each backend's options are nested under its name)"
    backend = search.get("backend", "optuna")
    for section in ("optuna", "ray"):
        if section in search and section != backend:
            default = " (the default)" if "backend" not in search and backend_from == "search.backend" else ""
            return (f"search.{section}: options of the {section} backend, but {backend_from} is "
                    f"{backend}{default}; remove search.{section} or set search.backend: {section}")
    return None


class SearchSpec(Frozen):
    """Which backend proposes candidates, how many, and what one trial may cost.

    A trial that raises, diverges (NaN loss), or goes over ``trial_timeout_s``
    or ``trial_memory_mb`` is recorded FAIL with its reason, never enters the
    Pareto front, and the search goes on, e.g.
    ``search: {trials: 50, trial_timeout_s: 600, trial_memory_mb: 4000}``;
    unless the first ``stop_after_failures`` trials all fail alike (see there).
    Options of one backend sit under its name: ``search.optuna``, ``search.ray``.
    """

    backend: Literal["optuna", "ray"] = "optuna"
    sampler: Literal["tpe", "nsga2", "random", "gp", "qmc"] = "tpe"
    #: number of trials including seed trials; None = until ``timeout_s``
    trials: Optional[int] = Field(30, ge=1)
    timeout_s: Optional[float] = Field(None, gt=0)
    concurrency: int = Field(1, ge=1, le=256)
    seed: int = 0
    #: wall-clock limit of one trial's accuracy evaluation; over it the trial is FAIL ("timeout")
    trial_timeout_s: Optional[float] = Field(None, gt=0)
    #: memory limit (resident, MB) of the process evaluating one trial's accuracy; over it the
    #: trial is FAIL ("out of memory"). Either limit runs accuracy in a watched child process
    #: (kept across trials, restarted after a kill); None for both = in process, no overhead
    trial_memory_mb: Optional[int] = Field(None, gt=0)
    #: the breaker: when the first N trials a search (or a --resume) finishes all FAIL with the
    #: same reason, the experiment cannot run as given; the search stops with that reason and the
    #: finished trials are kept for --resume after the fix. 0 or None = never stop
    stop_after_failures: Optional[int] = Field(3, ge=0)
    optuna: OptunaOptions = OptunaOptions()
    ray: RayOptions = RayOptions()

    @model_validator(mode="before")
    @classmethod
    def _no_flat_backend_options(cls, data):
        """(The other backend's section is refused where a user's file or option comes in,
        :func:`experiment_from_dict` and :func:`override_search`: a dumped spec holds both.)"""
        if isinstance(data, dict):
            moved = [k for k in BACKEND_KEYS if k in data]
            if moved:
                raise ValueError(f"{moved[0]}: moved to search.{BACKEND_KEYS[moved[0]]}.{moved[0]}")
        return data

    @model_validator(mode="after")
    def _some_budget(self):
        if self.trials is None and self.timeout_s is None:
            raise ValueError("give 'trials' or 'timeout_s' (or both)")
        return self


def override_search(spec: SearchSpec, *, trials: Optional[int] = None, backend: Optional[str] = None) -> SearchSpec:
    """``spec`` with the command line's ``--trials`` / ``--backend``; the other backend's section is refused."""
    raw = spec.model_dump(exclude_unset=True)
    raw.update({k: v for k, v in (("trials", trials), ("backend", backend)) if v})
    err = search_layout_error(raw, "--backend" if backend else "search.backend")
    if err:
        raise ExperimentError(err)
    try:
        return SearchSpec.model_validate(raw)
    except ValidationError as exc:
        raise ExperimentError(one_line(exc, "search")) from None


DEFAULT_BASELINES = (
    "shufflenet_v2_x0_5_cifar", "shufflenet_v2_x1_0_cifar", "shufflenet_v2_x1_5_cifar",
    "shufflenet_v2_x2_0_cifar", "shufflenet_v1_g3_cifar", "shufflenet_v1_g8_cifar",
)


class RetrainSpec(Frozen):
    """The equal-budget comparison after a search (``shufflenas run`` / ``shufflenas retrain``)."""

    #: hand-designed networks trained beside the front (preset names)
    baselines: tuple[str, ...] = DEFAULT_BASELINES
    #: how many Pareto members to retrain: first the best one at or under each baseline's
    #: measured latency, then members spread evenly over the front's latency range
    candidates: int = Field(6, ge=1, le=100)
    #: keyword arguments of evaluators.training.TrainConfig, the same for every model
    train: dict[str, Any] = Field(default_factory=lambda: {"epochs": 30})
    #: models trained at a time, each in its own process with the recipe's own threads (the
    #: weights and accuracies are the same as with 1); e.g. 2 on a 2-core CPU with threads: 1
    workers: int = Field(1, ge=1, le=64)
    #: training images drawn from the official training set (None = all of it)
    subset: Optional[int] = Field(None, ge=10)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    #: also retrain, for each baseline, the best-scored searched network (front or not) whose
    #: latency lies within this fraction below the baseline's, e.g. 0.3: [0.7 t, t]. A low-fidelity
    #: accuracy proxy can cut the front short of the baselines' latencies; this checks the
    #: runner-ups there at full fidelity. None = off
    rival_band: Optional[float] = Field(None, gt=0.0, lt=1.0)
    #: how many networks per baseline the band holds at most: the best-scored ones (a proxy that
    #: ranks near-equal networks poorly leaves the final choice to the full-fidelity training)
    rivals: int = Field(1, ge=1, le=20)
    #: relative latency difference treated as a tie (the measured noise floor here is ~3%)
    latency_tolerance: float = Field(0.05, ge=0.0, lt=1.0)
    #: another run folder whose baselines are reused when they were trained with exactly this
    #: recipe (dataset, subset, split, seed, training settings); any difference retrains them
    baselines_from: Optional[str] = None

    @field_validator("baselines")
    @classmethod
    def _known_presets(cls, v):
        unknown = [b for b in v if b not in presets.PRESETS]
        if unknown:
            raise ValueError(f"unknown preset(s) {unknown}; see 'shufflenas presets'")
        return v


class Experiment(Frozen):
    name: str = Field("search", pattern=r"^[A-Za-z0-9_.-]{1,80}$")
    space: Union[str, dict[str, Any]]
    data: str = "digits"
    accuracy: AccuracySpec = AccuracySpec()
    latency: LatencySpec = LatencySpec()
    objectives: tuple[str, ...] = ("accuracy", "latency_ms")
    #: hypervolume reference point per objective (worst values); missing ones are derived from the data
    reference_point: dict[str, float] = Field(default_factory=dict)
    search: SearchSpec = SearchSpec()
    #: known architectures evaluated first: preset names or architecture YAML paths
    seeds: tuple[str, ...] = ()
    #: equal-budget retraining of the front and the baselines after the search (shufflenas run)
    retrain: Optional[RetrainSpec] = None
    output: str = "runs/search"
    #: folder of the experiment file (relative paths were resolved against it)
    base_dir: Optional[str] = None

    @field_validator("data")
    @classmethod
    def _known_dataset(cls, v):
        DatasetSpec.parse(v)  # a typo fails here, not as one failed trial after another
        return v

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v):
        unknown = [m for m in v if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown objective(s) {unknown}; choose from {list(METRICS)}")
        if len(v) < 2 or v[0] != "accuracy" or len(set(v)) != len(v):
            raise ValueError("objectives must start with accuracy, then at least one cost "
                             "(latency_ms, params, macs), without repeats")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        bad = set(self.reference_point) - set(self.objectives)
        if bad:
            raise ValueError(f"reference_point names {sorted(bad)}, which are not objectives")
        if self.search.ray.scheduler == "asha" and self.accuracy.method != "proxy_training":
            raise ValueError("search.ray.scheduler asha needs accuracy.method proxy_training "
                             "(it stops trainings by their per-epoch accuracy)")
        return self

    # ---- derived ------------------------------------------------------------
    @property
    def directions(self) -> list[str]:
        return [METRICS[m] for m in self.objectives]

    def load_space(self) -> SearchSpace:
        if isinstance(self.space, dict):
            return SearchSpace.from_dict(self.space, source=f"{self.name}: space")
        return load_space(self.space)

    def seed_architectures(self) -> list[tuple[str, Architecture]]:
        out = []
        for s in self.seeds:
            if s in presets.PRESETS:
                out.append((s, presets.get(s)))
            elif Path(s).suffix in (".yaml", ".yml"):
                arch = Architecture.from_yaml(s)
                out.append((arch.name or Path(s).stem, arch))
            else:
                raise ExperimentError(f"seeds: {s!r} is neither a preset nor an architecture "
                                      f"YAML file; presets: {', '.join(presets.PRESETS)}")
        return out

    def fingerprint(self) -> str:
        """Hash of what decides the search: resuming checks it. The output folder, the cluster
        address, the budget (trials, time, concurrency), the per-trial limits and the breaker
        may change, e.g. to extend a run."""
        d = self.model_dump(mode="json", exclude={"output", "base_dir", "retrain"})
        for k in ("trials", "timeout_s", "concurrency", "trial_timeout_s", "trial_memory_mb",
                  "stop_after_failures"):
            d["search"].pop(k, None)
        for k in ("address", "max_failures"):
            d["search"]["ray"].pop(k, None)
        d["latency"].pop("lut_host_check", None)  # the override of a check, not what is searched
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _resolve_paths(data: dict, base: Path) -> dict:
    """Make every path in the raw mapping absolute, relative to the experiment's folder."""
    d = dict(data)
    sp = d.get("space")
    if isinstance(sp, str) and (sp.endswith((".yaml", ".yml")) or "/" in sp):
        d["space"] = _resolve(base, sp)
    spec = d.get("data")
    if isinstance(spec, str) and ":" in spec:
        kind, _, path = spec.partition(":")
        if path:
            d["data"] = f"{kind}:{_resolve(base, path)}"
    for section, keys in (("accuracy", ("checkpoint",)), ("latency", ("lut",))):
        if isinstance(d.get(section), dict):
            d[section] = {k: (_resolve(base, v) if k in keys and isinstance(v, str) else v)
                          for k, v in d[section].items()}
    if isinstance(d.get("seeds"), list):
        d["seeds"] = [_resolve(base, s) if isinstance(s, str) and s.endswith((".yaml", ".yml")) else s
                      for s in d["seeds"]]
    if isinstance(d.get("retrain"), dict) and isinstance(d["retrain"].get("baselines_from"), str):
        d["retrain"] = {**d["retrain"], "baselines_from": _resolve(base, d["retrain"]["baselines_from"])}
    if isinstance(d.get("output"), str):
        d["output"] = _resolve(base, d["output"])
    d["base_dir"] = str(base)
    return d


def upgrade_search_layout(data: dict) -> dict:
    """``data`` (an experiment mapping) with flat backend options moved into their section.

    Only for experiments this tool itself stored in a run folder before the options were
    nested (``experiment.json``), so that such runs still report, export and resume; a user's
    file with flat options is refused with the new place instead.
    """
    search = data.get("search")
    if not isinstance(search, dict) or not any(k in search for k in BACKEND_KEYS):
        return data
    search = dict(search)
    moved = {"optuna": {}, "ray": {}}
    for key, section in BACKEND_KEYS.items():
        if key in search:
            moved[section][key] = search.pop(key)
    backend = search.get("backend", "optuna")
    search[backend] = {**moved[backend], **search.get(backend, {})}  # the other backend's defaults go
    return {**data, "search": search}


def experiment_from_dict(data: Any, source: str = "experiment", base_dir: str | Path = ".") -> Experiment:
    if not isinstance(data, dict):
        raise ExperimentError(f"{source}: expected a mapping with keys space, data, accuracy, latency, "
                              f"search, ... (got {type(data).__name__})")
    if "base_dir" in data:
        raise ExperimentError(f"{source}: base_dir: unknown key")
    layout = search_layout_error(data.get("search"))
    if layout:
        raise ExperimentError(f"{source}: {layout}")
    try:
        exp = Experiment.model_validate(_resolve_paths(data, Path(base_dir).resolve()))
    except ValidationError as exc:
        raise ExperimentError(one_line(exc, source)) from None
    exp.load_space()  # a bad space fails now, with its own one-line error
    exp.seed_architectures()
    return exp


def load_experiment(path: str | Path) -> Experiment:
    """Load and validate an experiment file; relative paths resolve against its folder."""
    p = Path(path)
    return experiment_from_dict(load_yaml(p), str(p), p.resolve().parent)
