"""After a search: retrain the front and the hand-designed baselines the same way, test once, compare.

This is how a searched front earns trust: every model -- the Pareto members
picked from the run and the published baselines -- is trained from scratch
with the *same* recipe on the *same* train/validation split, evaluated once
on the test split, and its latency is re-measured in one measurement session
with the search's target. Results go to ``RUN_DIR/retrain/``:

    candidates.json   the picked front members, with the latencies measured to pick them
    results.jsonl     one line per trained model (appended as each finishes: a killed run resumes;
                      with ``retrain.baselines_from``, baselines another run trained with the
                      very same recipe are copied here instead of being trained again)
    latency.json      the re-measurement of every model, one session
    table.md          the table (architecture, params, MFLOPs, latency, test accuracy, time)
    front.png         test accuracy vs latency: searched front against the baselines
    summary.json      everything above plus, per baseline, the best searched model at or
                      under its latency (within the measured noise) and whether it wins

Then every trained model goes to ``RUN_DIR/deploy/`` with its weights, an ONNX
file checked against PyTorch, its test accuracy and latency (:mod:`nas.deploy`).

Parallel training (``retrain.workers: N``, or ``--workers N``): up to N models
train at a time, each in its own process (multiprocessing, spawn) with the
recipe's own ``threads``; the largest (multiply-adds) start first, so that the
last ones end close together. Each process loads the data once and keeps it
for every model it trains (CIFAR-10: 60k uint8 images, 184 MB a process). Only
this process writes ``results.jsonl``, one whole line per model as it finishes.
A process ends with
its parent (Ctrl-C or a kill of the run leaves no training behind), and every
training saves its state after each epoch (``retrain/NAME/weights.state.pt``,
removed once its row is written), so a rerun resumes each unfinished model from
its last finished epoch. On the CPU a model gets the same weights and accuracies,
bit for bit, whatever N (each training seeds itself and runs on the recipe's
thread count; tested with 1 and 2 workers at 1 thread). A training error in a
process stops the others and is raised here as it was raised there (one line
for bad input). Why: on this 2-core machine one training reads about 280
images/s on 1 thread and 380 on 2 (shufflenet_v2_x0_5_cifar, shared/NOTES.md),
so ``workers: 2`` with ``threads: 1`` should train more images per second than
one training on 2 threads (two at once not measured yet).

Latency on a Ray cluster: when the experiment's search ran on one
(``search.backend: ray`` with ``search.ray.address``, or ``--address``), the
models are measured by the latency actor on the node that offers
``latency_device`` (:class:`evaluators.latency.ray_actor.LatencyActorHandle`),
as the search measured them, not on this machine; the rivals are picked with
those measurements too. Otherwise (a local run, or Ray's private local
cluster, which is this machine) a measurement worker here measures them.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import signal
import time
import traceback
from contextlib import contextmanager
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from evaluators.base import LatencyResult
from evaluators.data import load_dataset
from evaluators.latency import LatencyTarget, MeasurementProtocol, MeasurementWorker
from evaluators.latency.ray_actor import DeviceNodeLost, LatencyActorHandle, offering_nodes
from evaluators.latency.target import describe_host
from evaluators.training import TrainConfig, evaluate, train
from search_space import Architecture, build_model, presets, profile
from search_space.errors import ShuffleNASError
from search_space.io import atomic_write_json, atomic_write_text, read_jsonl

from . import records as R
from .deploy import deploy
from .experiment import Experiment, ExperimentError, RetrainSpec
from .objective import arch_key
from .run_folder import RunFolder
from .trial_worker import exit_with_parent


class RetrainError(ShuffleNASError):
    """Retraining could not go on (a training process died, the latency device left the cluster);
    rerunning the command resumes it."""


def pick_candidates(front: list[R.TrialRecord], n: int, latency: dict[int, float] | None = None,
                    targets: tuple[float, ...] = (), more: list[list[R.TrialRecord]] = ()) -> list[R.TrialRecord]:
    """The Pareto members to retrain.

    First, for each latency in ``targets`` (the baselines' measured latencies), the
    member with the best search accuracy at or under it: the rival the comparison
    needs. Then members spread evenly over the front's latency range, up to ``n``
    in all. If the front has fewer than ``n`` members, the next non-dominated layers
    (``more``, in order) fill the rest the same way: a search score is a noisy
    estimate, and a runner-up may retrain better. ``latency`` maps trial numbers to
    measured latencies (the search's own estimate when absent: a LUT prediction can
    sit on the wrong side of a baseline).
    """
    lat = (lambda r: latency[r.number]) if latency else (lambda r: r.latency_ms)
    chosen: list[R.TrialRecord] = []
    members = sorted(front, key=lat)
    for t in sorted(targets):
        under = [m for m in members if lat(m) <= t]
        best = max(under, key=lambda m: m.accuracy, default=None)
        if best is not None and best not in chosen:
            chosen.append(best)
    for layer in (front, *more):
        spread = n - len(chosen)
        rest = [m for m in sorted(layer, key=lat) if m not in chosen]
        if spread <= 0 or not rest:
            continue
        if len(rest) <= spread:
            chosen += rest
        else:
            idx = {round(i * (len(rest) - 1) / (spread - 1)) for i in range(spread)} if spread > 1 \
                else {len(rest) - 1}
            chosen += [rest[i] for i in sorted(idx)]
    return sorted(chosen, key=lat)


def near_baselines(records: list[R.TrialRecord], chosen: list[R.TrialRecord], targets: dict[str, float],
                   band: float, scale: float = 1.0, k: int = 1) -> list[R.TrialRecord]:
    """For each baseline latency in ``targets``, the ``k`` best-scored usable records (one per
    architecture) whose latency, times ``scale`` (the search's estimate mapped to the device), lies in
    ``[(1 - band) t, t]``; those already ``chosen`` (or picked for another baseline) count towards ``k``."""
    pool, seen = [], set()
    for r in sorted(records, key=lambda r: r.number):
        if r.usable and r.arch_key not in seen:
            seen.add(r.arch_key)
            pool.append(r)
    picked: list[R.TrialRecord] = []
    for t in sorted(targets.values()):
        lo = (1 - band) * t
        there = {c.arch_key for c in chosen + picked if lo <= c.latency_ms * scale <= t}
        inside = [r for r in pool if lo <= r.latency_ms * scale <= t and r.arch_key not in there]
        picked += sorted(inside, key=lambda r: r.accuracy, reverse=True)[:max(0, k - len(there))]
    return picked


def _models(run_dir: Path, exp: Experiment, spec: RetrainSpec, *, address: Optional[str] = None,
            log=print) -> list[tuple[str, str, Architecture]]:
    """The searched members and the baselines; the pick is saved once (``candidates.json``),
    so a resumed run retrains the same models."""
    out = RunFolder(run_dir).retrain
    saved = out / "candidates.json"
    baselines = [(name, "baseline", presets.get(name)) for name in spec.baselines]
    if saved.is_file():
        picked = json.loads(saved.read_text())
        if (picked.get("candidates", spec.candidates), picked.get("rival_band"), picked.get("rivals", 1)) \
                == (spec.candidates, spec.rival_band, spec.rivals):
            return [(m["name"], "searched", Architecture.from_dict(m["arch"])) for m in picked["searched"]] \
                + baselines
        log(f"retrain: retrain.candidates / rival_band / rivals changed; picking again "
            f"(models already trained are kept)")
    records = RunFolder(run_dir).read_records()
    layers = _layers(records, exp.objectives, spec.candidates + len(baselines))
    if not layers:
        raise ExperimentError(f"{run_dir}: the run has no feasible completed trial to retrain")
    layers, records, twins = without_baselines(layers, records, baselines, spec.candidates)
    same_as_baseline = {f"trial{n}": b for n, b in twins}
    if twins:
        log("retrain: " + ", ".join(f"trial{n} is {b}" for n, b in twins)
            + ": trained once, as the baseline")
    if not layers:
        log("retrain: every searched network to retrain is a baseline; only the baselines are trained")
        atomic_write_json(saved, {"candidates": spec.candidates, "rival_band": spec.rival_band,
                                  "rivals": spec.rivals, "searched": [],
                                  "same_as_baseline": same_as_baseline})
        return baselines
    front, more = layers[0], layers[1:]
    members = [r for layer in layers for r in layer]
    with latency_session(exp, address) as (measure, where):
        log(f"retrain: measuring {len(members)} searched networks ({len(front)} on the front) and "
            f"{len(baselines)} baselines on {where} to pick the rivals ...")
        base_ms = {name: measure(arch).median_ms for name, _, arch in baselines}
        searched_ms = {r.number: measure(Architecture.from_dict(r.arch)).median_ms for r in members}
        picks = pick_candidates(front, spec.candidates, searched_ms, tuple(base_ms.values()), more)
        if spec.rival_band:
            # the search's latencies (a LUT's, say) mapped to this device by the members just measured
            scale = float(np.median([searched_ms[r.number] / r.latency_ms for r in members]))
            extra = near_baselines(records, picks, base_ms, spec.rival_band, scale, spec.rivals)
            log(f"retrain: {len(extra)} more (up to {spec.rivals} per baseline) within {spec.rival_band:.0%} "
                f"below a baseline's latency "
                f"(search latency x {scale:.2f})")
            for r in extra:
                searched_ms[r.number] = measure(Architecture.from_dict(r.arch)).median_ms
            picks = sorted(picks + extra, key=lambda r: searched_ms[r.number])
    layer_of = {r.number: i + 1 for i, layer in enumerate(layers) for r in layer}
    searched = [{"name": f"trial{r.number}", "trial": r.number, "search_accuracy": r.accuracy,
                 "search_latency_ms": r.latency_ms, "measured_ms": searched_ms[r.number],
                 "pareto_layer": layer_of.get(r.number), "arch": r.arch} for r in picks]
    atomic_write_json(saved, {"candidates": spec.candidates, "rival_band": spec.rival_band, "rivals": spec.rivals,
                              "searched": searched, "same_as_baseline": same_as_baseline,
                              "baselines_ms": base_ms,
                              "searched_ms": {str(k): v for k, v in searched_ms.items()}})
    return [(m["name"], "searched", Architecture.from_dict(m["arch"])) for m in searched] + baselines


def without_baselines(layers: list[list[R.TrialRecord]], records: list[R.TrialRecord], baselines, n: int):
    """The layers (cut again to hold ``n`` architectures) and records without the searched networks
    that equal a baseline (a seed, say): such a network is trained once, as that baseline. Also
    returns ``[(trial number, baseline name)]`` of those that were in the layers."""
    names = {arch_key(arch): name for name, _, arch in baselines}
    twins = sorted({(r.number, names[r.arch_key]) for layer in layers for r in layer if r.arch_key in names})
    kept, count = [], 0
    for layer in layers:
        rest = [r for r in layer if r.arch_key not in names]
        if rest and count < n:
            kept.append(rest)
            count += len(rest)
    return kept, [r for r in records if r.arch_key not in names], twins


def _layers(records, objectives, n: int) -> list[list[R.TrialRecord]]:
    """Non-dominated layers, as many as it takes to hold ``n`` architectures (at most n layers)."""
    layers = R.fronts(records, objectives, n)
    out, count = [], 0
    for layer in layers:
        if count >= n:
            break
        out.append(layer)
        count += len(layer)
    return out


def _target_and_protocol(exp: Experiment):
    target = LatencyTarget(**exp.latency.target)
    return target, (MeasurementProtocol(**exp.latency.protocol) if exp.latency.protocol else None)


def cluster_address(exp: Experiment, address: Optional[str] = None) -> Optional[str]:
    """The Ray cluster whose ``latency_device`` node measures the models: ``address`` (the command
    line's) or ``search.ray.address``, for an experiment on the ray backend; None = this machine
    (Ray's private local cluster is this machine too)."""
    if address and exp.search.backend != "ray":
        raise ExperimentError("--address: applies to the ray backend only (search.backend: ray); "
                              "this run's latency is measured on this machine")
    return (address or exp.search.ray.address) if exp.search.backend == "ray" else None


@contextmanager
def latency_session(exp: Experiment, address: Optional[str] = None
                    ) -> Iterator[tuple[Callable[[Architecture], LatencyResult], str]]:
    """``(measure, where)``: ``measure(arch)`` is the latency of ``arch`` on the experiment's target,
    all in one measurement session; ``where`` says where (for the log).

    On a Ray cluster (:func:`cluster_address`) the latency actor on the node offering
    ``latency_device`` measures, joined as the search joined it (:func:`nas.backends.ray.init_ray`);
    otherwise a measurement worker on this machine.
    """
    target, protocol = _target_and_protocol(exp)
    address = cluster_address(exp, address)
    if address is None:
        with MeasurementWorker(target, protocol) as worker:
            yield worker.latency, "this machine"
        return
    import ray

    from .backends.ray import LATENCY_RESOURCE, init_ray

    try:
        joined = init_ray(address, exp)  # False: this process was connected already
    except ConnectionError as exc:
        raise RetrainError(f"retrain: cannot join the Ray cluster at {address} ({' '.join(str(exc).split())}); "
                           f"start it or pass another --address") from None
    try:
        if not offering_nodes(LATENCY_RESOURCE):
            raise RetrainError(f"retrain: no node of the Ray cluster at {address} offers the '{LATENCY_RESOURCE}' "
                               f"resource; start the target device's node with "
                               f"--resources='{{\"{LATENCY_RESOURCE}\": 1}}'")
        handle = LatencyActorHandle(target, LATENCY_RESOURCE, protocol)

        def call(method: str, *args):
            try:
                return handle.call(method, *args)
            except DeviceNodeLost as exc:
                raise RetrainError(f"retrain: latency: {exc}; then rerun the command (trained models are kept)") \
                    from None

        def measure(arch: Architecture) -> LatencyResult:
            return LatencyResult(**call("latency", arch.to_dict()))

        yield measure, f"{describe_host(call('host'))} (the Ray node offering '{LATENCY_RESOURCE}' at {address})"
    finally:
        if joined:
            ray.shutdown()


def _recipe(exp: Experiment, spec: RetrainSpec, config: dict) -> dict:
    """Everything that decides a retrained model's accuracy besides its architecture."""
    return {"data": exp.data, "subset": spec.subset, "val_fraction": spec.val_fraction,
            "seed": exp.search.seed, "train": config}


def _done(path: Path, recipe: dict, log=print) -> dict[str, dict]:
    """Models already trained with ``recipe`` (a line cut by a kill: that model is trained again).

    A row of an older recipe (the retrain section was edited before resuming) is not reused.
    Rows written before recipes were recorded are matched on their training settings.
    """
    done = {}
    for row in read_jsonl(path):
        same = row.get("recipe", {**recipe, "train": row.get("config")}) == recipe
        if same:
            done[row["name"]] = row
        else:
            log(f"retrain: {row['name']} was trained with another recipe; it is trained again")
    return done


def _reuse_baselines(spec: RetrainSpec, recipe: dict, names: set[str], log=print) -> list[dict]:
    """Baselines of ``spec.baselines_from`` trained with exactly ``recipe`` (others are trained here)."""
    src = RunFolder(spec.baselines_from)
    if not src.is_run():
        log(f"retrain: retrain.baselines_from {src.path} holds no run; the baselines are trained here")
        return []
    theirs = src.read_experiment()
    their_spec = theirs.retrain or RetrainSpec()
    rows = []
    for row in read_jsonl(src.retrain / "results.jsonl"):
        if row.get("kind") != "baseline" or row["name"] not in names:
            continue
        their_recipe = row.get("recipe") or _recipe(theirs, their_spec, row.get("config"))
        if their_recipe == recipe:
            rows.append({**row, "recipe": recipe, "reused_from": str(src.path)})
        else:
            diff = sorted(k for k in recipe if their_recipe.get(k) != recipe[k])
            log(f"retrain: {row['name']} in {src.path} differs in {', '.join(diff)}; it is trained here")
    return rows


def recipe_data(exp: Experiment, spec: RetrainSpec, arch: Architecture):
    """The retraining data for ``arch``: the experiment's dataset at its input, the recipe's subset
    and the search's train/validation split."""
    return load_dataset(exp.data, input_size=arch.input_size, in_channels=arch.in_channels,
                        subset=spec.subset, val_fraction=spec.val_fraction, seed=exp.search.seed)


def train_and_test(arch: Architecture, data, config, checkpoint: Path, *, keep_state: bool = False):
    """Train ``arch`` with ``config``, save the weights after the last epoch to ``checkpoint`` and
    test those weights once (no model is picked by its test accuracy, nor by an epoch's validation
    accuracy). Returns the training result, test accuracy and test loss.

    The training's per-epoch state (``checkpoint`` with suffix ``.state.pt``) is removed at the
    end unless ``keep_state``: then a kill before the caller has recorded the result costs no
    epoch (the rerun finds every epoch done and only tests again); the caller removes it."""
    state = state_path(checkpoint)  # per-epoch resume point of a long training
    res = train(arch, data, config, checkpoint=checkpoint, state=state)
    if not keep_state:
        state.unlink(missing_ok=True)
    model = build_model(arch)
    model.load_state_dict(torch.load(res.checkpoint, map_location="cpu", weights_only=True))
    test_acc, test_loss = evaluate(model, data.test, data.mean, data.std, device=config.placement(),
                                   workers=config.loader_workers)  # on the training's device
    return res, test_acc, test_loss


def state_path(checkpoint: Path) -> Path:
    return Path(checkpoint).with_suffix(".state.pt")


def append_row(path: Path, row: dict) -> None:
    """Append ``row`` to a JSONL file as one whole line (written and flushed at once).

    A final line cut short by an earlier kill (which :func:`read_jsonl` skips) is dropped
    first, so that the new row does not join it into one unreadable line."""
    with open(path, "a+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":
                fh.seek(0)
                fh.truncate(fh.read().rfind(b"\n") + 1)
        fh.write((json.dumps(row) + "\n").encode())
        fh.flush()
        os.fsync(fh.fileno())


#: ``on_start(name, kind, train_images)``: a model's training begins (its data loaded)
OnStart = Callable[[str, str, int], None]
#: ``on_done(name, kind, arch, result, test_acc, test_loss, train_images)``: a model is trained and tested
OnDone = Callable[..., None]


#: one training: ``(name, kind, arch, config)``; it writes ``out/NAME/weights.pt`` (and its per-epoch state)
Job = tuple[str, str, Architecture, TrainConfig]


def train_jobs(todo: list[Job], exp: Experiment, spec: RetrainSpec, out: Path, workers: int, data_for,
               on_start: OnStart, on_done: OnDone) -> None:
    """Train and test every job, ``workers`` at a time (a process each, largest first) or, with one
    worker, here one after the other; each resumes from its last finished epoch. ``data_for(arch)``
    gives the data here; the processes load theirs with :func:`recipe_data`."""
    if min(workers, len(todo)) > 1:
        _train_in_pool(todo, exp, spec, out, workers, on_start, on_done)
    else:
        _train_here(todo, out, data_for, on_start, on_done)


def _train_here(todo: list[Job], out: Path, data_for, on_start: OnStart, on_done: OnDone) -> None:
    """Train ``todo`` one after the other in this process."""
    for name, kind, arch, config in todo:
        data = data_for(arch)
        on_start(name, kind, len(data.train))
        res, test_acc, test_loss = train_and_test(arch, data, config, out / name / "weights.pt", keep_state=True)
        on_done(name, kind, arch, res, test_acc, test_loss, len(data.train))


class _WorkerTraceback(Exception):
    """The traceback of an error raised in a training process: the cause of the error re-raised here."""

    def __str__(self) -> str:
        return self.args[0]


def _train_worker(conn, exp: Experiment, spec: RetrainSpec, out: str) -> None:
    """A training process: trains the models it is sent, one at a time, until it is sent None.

    It loads each input size's data once and keeps it. It ends when its parent does
    (:func:`~nas.trial_worker.exit_with_parent`); Ctrl-C reaches the parent, which stops it.
    Replies: ``("start", train_images)``, then ``("done", result, test_acc, test_loss,
    train_images)`` or ``("error", exception, traceback)`` (after which it exits).
    """
    exit_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    data_for = cached_recipe_data(exp, spec)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        name, arch, config = job[0], Architecture.from_dict(job[1]), job[2]
        try:
            data = data_for(arch)
            conn.send(("start", len(data.train)))
            res, test_acc, test_loss = train_and_test(arch, data, config, Path(out) / name / "weights.pt",
                                                      keep_state=True)
        except BaseException as exc:  # noqa: BLE001 -- every failure goes back to the parent, which raises it
            tb = "".join(traceback.format_exception(exc))[-4000:]
            try:
                pickle.loads(pickle.dumps(exc))
            except Exception:  # noqa: BLE001 -- an exception that does not survive pickling goes as text
                exc = RuntimeError(f"{type(exc).__name__}: {exc}")
            conn.send(("error", exc, tb))
            return
        conn.send(("done", res, test_acc, test_loss, len(data.train)))


class _Slot:
    """One training process and the model it is training (None: idle)."""

    def __init__(self, proc, conn):
        self.proc, self.conn = proc, conn
        self.job: Optional[Job] = None

    def give(self, job) -> None:
        self.job = job
        try:
            self.conn.send(None if job is None else (job[0], job[2].to_dict(), job[3]))
        except OSError:  # it died since it last answered; noticed by the caller's wait
            pass

    def died(self) -> RetrainError:
        self.proc.join(timeout=10)
        code = self.proc.exitcode
        if code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
            if -code == signal.SIGKILL:
                how += " (the kernel's out-of-memory killer sends SIGKILL)"
        else:
            how = f"exited with status {code}"
        return RetrainError(f"retrain: the process training {self.job[0]} {how}; rerun the command to resume "
                            f"(finished models are kept, unfinished ones resume from their last finished epoch)")


def largest_first(todo: list[Job]) -> list[Job]:
    """``todo`` by decreasing multiply-adds (every model trains for the same epochs on the same images),
    so that the last trainings of a pool end close together."""
    return sorted(todo, key=lambda m: profile(m[2]).mflops, reverse=True)


def _train_in_pool(todo: list[Job], exp: Experiment, spec: RetrainSpec, out: Path, workers: int,
                   on_start: OnStart, on_done: OnDone) -> None:
    """Train ``todo`` in ``workers`` processes (spawned, each ending with this one), largest first;
    ``on_start`` / ``on_done`` run here, in this process, as the processes report."""
    ctx = multiprocessing.get_context("spawn")
    queue = largest_first(todo)
    slots: list[_Slot] = []
    try:
        for _ in range(min(workers, len(queue))):
            mine, theirs = ctx.Pipe()
            # not a daemon: a training may start processes of its own (a streamed dataset's loader workers)
            proc = ctx.Process(target=_train_worker, args=(theirs, exp, spec, str(out)),
                               name="shufflenas-retrain")
            proc.start()
            theirs.close()
            slots.append(_Slot(proc, mine))
        for slot in slots:
            slot.give(queue.pop(0))
        while any(s.job for s in slots):
            busy = [s for s in slots if s.job]
            ready = wait([s.conn for s in busy] + [s.proc.sentinel for s in busy])
            for slot in busy:
                if slot.conn in ready or slot.conn.poll():
                    try:
                        msg = slot.conn.recv()
                    except (EOFError, OSError):
                        raise slot.died() from None
                elif slot.proc.sentinel in ready:
                    raise slot.died()
                else:
                    continue
                name, kind, arch, _ = slot.job
                if msg[0] == "start":
                    on_start(name, kind, msg[1])
                elif msg[0] == "done":
                    on_done(name, kind, arch, *msg[1:])
                    slot.give(queue.pop(0) if queue else None)
                else:  # "error": raised here as it was raised there
                    raise msg[1] from _WorkerTraceback(f"in the process training {name}:\n{msg[2]}")
    finally:
        for slot in slots:  # after the last model they are exiting; after an error or Ctrl-C they are stopped
            if slot.job is not None and slot.proc.is_alive():
                slot.proc.terminate()
            slot.proc.join(timeout=10)
            if slot.proc.is_alive():
                slot.proc.kill()
                slot.proc.join()
            slot.conn.close()


def cached_recipe_data(exp: Experiment, spec: RetrainSpec) -> Callable[[Architecture], Any]:
    """:func:`recipe_data`, loaded once per input size and channels."""
    cache: dict[tuple[int, int], Any] = {}

    def data_for(arch: Architecture):
        key = (arch.input_size, arch.in_channels)
        if key not in cache:
            cache[key] = recipe_data(exp, spec, arch)
        return cache[key]

    return data_for


def _train_models(out: Path, exp: Experiment, spec: RetrainSpec, models: list[tuple[str, str, Architecture]],
                  data_for, log=print) -> dict[str, dict]:
    """Train and test every model of ``models`` not yet in ``out/results.jsonl`` with this recipe
    (baselines of ``retrain.baselines_from`` are copied instead); the rows of all, by name."""
    results_path = out / "results.jsonl"
    config = TrainConfig(**{"seed": exp.search.seed, **spec.train})
    recipe = _recipe(exp, spec, config.to_dict())
    done = _done(results_path, recipe, log)
    if spec.baselines_from:
        todo = {name for name, kind, _ in models if kind == "baseline" and name not in done}
        for row in _reuse_baselines(spec, recipe, todo, log):
            append_row(results_path, row)
            done[row["name"]] = row
            log(f"retrain: {row['name']} reused from {row['reused_from']} (same recipe): "
                f"{row['test_acc']:.4f} test")
    todo = []
    for name, kind, arch in models:
        if name in done:
            state_path(out / name / "weights.pt").unlink(missing_ok=True)  # left by a kill after its row
            log(f"retrain: {name} already trained ({done[name]['test_acc']:.4f} test), skipped")
        else:
            todo.append((name, kind, arch, config))
    started: dict[str, float] = {}

    def on_start(name: str, kind: str, train_images: int) -> None:
        started[name] = time.perf_counter()
        saved = state_path(out / name / "weights.pt").is_file()  # a killed training: it resumes there
        log(f"retrain: {name} ({kind}) for {config.epochs} epochs on {train_images} images"
            f"{', resuming after its last finished epoch' if saved else ''} ...")

    def on_done(name, kind, arch, res, test_acc, test_loss, train_images) -> None:
        p = profile(arch)
        row = {"name": name, "kind": kind, "arch": arch.to_dict(), "params": p.params,
               "mflops": round(p.mflops, 3), "val_acc": res.accuracy, "test_acc": test_acc,
               "test_loss": test_loss, "train_seconds": round(res.seconds, 1),
               "epochs": res.epochs, "train_images": train_images, "config": config.to_dict(),
               "recipe": recipe}
        (out / name).mkdir(exist_ok=True)
        arch.to_yaml(out / name / "architecture.yaml")
        append_row(results_path, row)  # one whole line per finished model, written here only
        state_path(out / name / "weights.pt").unlink(missing_ok=True)
        done[name] = row
        log(f"retrain: {name}: test accuracy {test_acc:.4f} in {time.perf_counter() - started[name]:.0f} s")

    workers = min(spec.workers, len(todo))
    if workers > 1:
        cores = os.cpu_count() or 1
        log(f"retrain: {len(todo)} models, {workers} at a time (a process each, {config.threads} thread(s) "
            f"each), largest first" + (f"; that is more threads than this machine's {cores} cores"
                                       if workers * config.threads > cores else ""))
    train_jobs(todo, exp, spec, out, workers, data_for, on_start, on_done)

    return done


def train_baselines(run_dir: str | Path, exp: Experiment, spec: RetrainSpec, *, log=print) -> dict[str, dict]:
    """Train and test only the baselines, into ``RUN_DIR/retrain/`` as :func:`retrain` would.

    They do not depend on the search, so a long comparison can train them first (before the
    search or beside it on other machines): :func:`retrain` later finds them trained with the
    same recipe and skips them. Resumable like :func:`retrain`. Returns their rows by name."""
    out = RunFolder(run_dir).retrain
    out.mkdir(parents=True, exist_ok=True)
    models = [(name, "baseline", presets.get(name)) for name in spec.baselines]
    done = _train_models(out, exp, spec, models, cached_recipe_data(exp, spec), log)
    return {name: done[name] for name, _, _ in models}


def retrain(run_dir: str | Path, exp: Experiment, spec: RetrainSpec, *, address: Optional[str] = None,
            progress: bool = True, log=print) -> dict:
    """Train, test and re-measure every model; resumable (finished models are skipped).

    ``address`` (the command line's ``--address``) overrides ``search.ray.address``: where the
    latency device is (:func:`latency_session`). ``spec.workers`` models train at a time."""
    run_dir = Path(run_dir)
    out = RunFolder(run_dir).retrain
    out.mkdir(parents=True, exist_ok=True)
    cluster_address(exp, address)  # a wrong --address fails before any work
    models = _models(run_dir, exp, spec, address=address, log=log)
    data_for = cached_recipe_data(exp, spec)
    done = _train_models(out, exp, spec, models, data_for, log)

    target, _ = _target_and_protocol(exp)
    latency = {}
    with latency_session(exp, address) as (measure, where):
        log(f"retrain: re-measuring {len(models)} models in one session ({target.runtime}, "
            f"{target.threads} thread(s)) on {where} ...")
        for name, _, arch in models:
            latency[name] = measure(arch).to_dict()
    atomic_write_json(out / "latency.json", latency)
    rows = [done[n] for n, _, _ in models]
    summary = summarise(out, rows, latency, spec, measured_on=where)
    summary["deploy"] = str(deploy(run_dir, rows, latency, data_for, log=log))
    return summary


def summarise(out: Path, rows: list[dict], latency: dict, spec: RetrainSpec, *,
              measured_on: Optional[str] = None) -> dict:
    for r in rows:
        lat = latency[r["name"]]
        r["latency_ms"], r["latency_iqr_rel"] = lat["median_ms"], lat["iqr_rel"]
        r["latency_flagged"] = lat.get("flagged", False)
    searched = [r for r in rows if r["kind"] == "searched"]
    verdicts = []
    for b in (r for r in rows if r["kind"] == "baseline"):
        limit = b["latency_ms"] * (1 + spec.latency_tolerance)
        rivals = [s for s in searched if s["latency_ms"] <= limit]
        # chosen by validation accuracy: picking the best of several by their test accuracy
        # would report the luckiest draw on the test set, not a model one could have chosen
        best = max(rivals, key=lambda s: s["val_acc"], default=None)
        verdicts.append({
            "baseline": b["name"], "baseline_latency_ms": b["latency_ms"], "baseline_test_acc": b["test_acc"],
            "best_searched": best["name"] if best else None,
            "searched_latency_ms": best["latency_ms"] if best else None,
            "searched_test_acc": best["test_acc"] if best else None,
            "wins": bool(best and best["test_acc"] > b["test_acc"]),
        })
    summary = {"models": rows, "comparison": verdicts, "latency_tolerance": spec.latency_tolerance,
               **({"latency_measured_on": measured_on} if measured_on else {})}
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "table.md", markdown_table(rows, verdicts))
    plot(rows, out / "front.png")
    return summary


def markdown_table(rows: list[dict], verdicts: list[dict]) -> str:
    head = ("| model | kind | params | MFLOPs | latency ms (median, IQR/med) | test acc | val acc | train s |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|\n")
    body = "".join(
        f"| {r['name']}{' (reused)' if r.get('reused_from') else ''} | {r['kind']} | {r['params']:,} | {r['mflops']:.1f} | "
        f"{r['latency_ms']:.3f} ({100 * r['latency_iqr_rel']:.1f}%){' flagged' if r['latency_flagged'] else ''} | "
        f"{100 * r['test_acc']:.2f}% | {100 * r['val_acc']:.2f}% | {r['train_seconds']:.0f} |\n"
        for r in sorted(rows, key=lambda r: r["latency_ms"]))
    comp = ("\n| baseline | its latency | its test acc | best searched at <= latency (by val acc) | latency | test acc "
            "| wins |\n"
            "|---|---:|---:|---|---:|---:|---|\n")
    comp += "".join(
        f"| {v['baseline']} | {v['baseline_latency_ms']:.3f} | {100 * v['baseline_test_acc']:.2f}% | "
        f"{v['best_searched'] or '(none)'} | "
        + (f"{v['searched_latency_ms']:.3f} | {100 * v['searched_test_acc']:.2f}%" if v['best_searched'] else "- | -")
        + f" | {'yes' if v['wins'] else 'no'} |\n" for v in verdicts)
    return head + body + comp


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for kind, style in (("searched", dict(c="tab:blue", marker="o")), ("baseline", dict(c="tab:red", marker="s"))):
        pts = sorted((r["latency_ms"], 100 * r["test_acc"], r["name"]) for r in rows if r["kind"] == kind)
        if not pts:
            continue
        xs, ys, names = zip(*pts)
        ax.plot(xs, ys, linestyle="-" if kind == "searched" else "none", label=kind, **style)
        for x, y, n in pts:
            ax.annotate(n.replace("shufflenet_", "").replace("_cifar", ""), (x, y), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("latency (ms, median, re-measured in one session)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Retrained at equal budget: searched vs hand-designed")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
