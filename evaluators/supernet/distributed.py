"""Supernet training on several workers with Ray Train (``TorchTrainer``; gloo on CPU, nccl on GPU).

Each worker runs the same :class:`~evaluators.supernet.train.SupernetRun` as the
single-process trainer with its rank: it draws the same paths at every step
(generators seeded by the step), trains on its shard of the same global batch,
and gradients are averaged with one all-reduce per step (why not DDP's hooks:
see :class:`SupernetRun`). One worker therefore computes exactly what
``train_supernet`` does, bit for bit on the CPU (``tests/test_supernet_ray.py``).

Checkpoints: after every epoch worker 0 reports the checkpoint (the same file
format as ``--out``) to Ray Train, which keeps it under ``storage`` (default:
``.<out name>.ray/`` beside ``--out``). A run that is killed resumes, when the
same command is run again, from the later of that checkpoint and ``--out``
(Ray Train V2 restores a run of the same name and storage path). When training
ends the checkpoint is written to ``--out`` and the storage folder removed.
On a multi-node cluster ``storage`` must be a folder every node can reach
(NFS, or a URI such as ``s3://...``), as Ray Train requires.

Requests beyond what the cluster offers (workers x CPUs, GPUs) are refused in
one line before anything trains.

Progress: worker 0 sends each epoch's record (loss, train accuracy, images/s) to
a small queue actor, and the driver prints one line per epoch to its stderr as it
arrives (workers' own output does not reach the driver: Ray runs with
``log_to_driver=False``), then a summary line at the end.

Written against Ray 2.60's Train API (Train V2, its default: ``ray.train.torch.TorchTrainer``,
``RunConfig(worker_runtime_env=...)``, ``ray.train.TrainingFailedError`` with ``worker_failures``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional

import torch

from evaluators.ray_cluster import start_private_cluster
from search_space import SearchSpace
from search_space.errors import ShuffleNASError

from .checkpoint import read_checkpoint
from .config import RUNTIME_FIELDS, SupernetConfig
from .data import load_data
from .network import SupernetError
from .train import SupernetRun, check_resumable

RUN_NAME = "supernet"
CHECKPOINT_FILE = "supernet.pt"


def default_storage(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.ray"


def check_resources(offered: dict, workers: int, cpus_per_worker: float, gpus_per_worker: float,
                    where: str) -> None:
    """One-line SupernetError if ``workers`` x (CPUs, GPUs) exceed what ``offered`` (Ray's totals) holds."""
    for kind, each, flag in (("CPU", cpus_per_worker, "--threads"), ("GPU", gpus_per_worker, "--gpus-per-worker")):
        need, have = workers * each, float(offered.get(kind, 0))
        if need > have + 1e-9:
            raise SupernetError(f"--workers {workers} with {each:g} {kind}(s) each needs {need:g} {kind}(s); "
                                f"{where} offers {have:g}; lower --workers or {flag}")


def _worker_loop(cfg: dict) -> None:
    """Body of every Ray Train worker: train to the end, reporting a checkpoint after each epoch."""
    import ray
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    config = SupernetConfig.from_dict(cfg["config"])
    torch.set_num_threads(config.threads)
    space = SearchSpace.from_dict(cfg["space"], source="supernet space")
    data = cfg["data"] if isinstance(cfg["data"], str) else ray.get(cfg["data"])
    data = load_data(data, space, config)
    device = ray.train.torch.get_device() if cfg["gpus_per_worker"] > 0 else torch.device("cpu")
    run = SupernetRun(space, data, config, rank=rank, world=world, device=device)
    state = None
    reported = ray.train.get_checkpoint()
    if reported is not None:
        with reported.as_directory() as d:
            state = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    if cfg["initial"] is not None:
        initial = torch.load(io.BytesIO(ray.get(cfg["initial"])), map_location="cpu", weights_only=True)
        if state is None or initial["epoch"] > state["epoch"]:
            state = initial
    if state is not None:
        run.load_state(state, cfg["out"])
    while run.epoch < config.epochs:
        record = run.train_epoch()
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                run.save(Path(d) / CHECKPOINT_FILE)
                ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(d))
            if cfg["progress"] is not None:
                cfg["progress"].put({**record, "epochs": config.epochs})
        else:
            ray.train.report(record)


def epoch_line(record: dict) -> str:
    """One epoch of a distributed run, as the driver prints it."""
    skipped = f", {record['skipped_images']} unreadable images skipped" if record.get("skipped_images") else ""
    return (f"supernet epoch {record['epoch']}/{record['epochs']}: loss {record['train_loss']:.3f}, "
            f"train acc {record['train_acc']:.3f}, {record['images_per_s']:.0f} images/s on "
            f"{record['workers']} workers{skipped}")


def summary_line(history: list[dict]) -> str:
    """The whole run (every epoch in the checkpoint, resumed ones included) in one line."""
    if not history:
        return "supernet: no epoch trained"
    last, seconds = history[-1], sum(h["seconds"] for h in history)
    images = sum(h["images"] for h in history)
    return (f"supernet: {last['epoch']} epochs, {seconds:.0f} s of training, {images / max(seconds, 1e-9):.0f} "
            f"images/s on {last['workers']} workers; final loss {last['train_loss']:.3f}, "
            f"train acc {last['train_acc']:.3f}")


def _print_progress(queue, stop: threading.Event) -> None:
    """Print the epochs worker 0 sends until ``stop`` is set and the queue is empty."""
    from ray.util.queue import Empty

    while True:
        try:
            record = queue.get(timeout=0.5)
        except Empty:
            if stop.is_set():
                return
            continue
        except Exception:  # the queue's actor is gone (the cluster went down): nothing more will come
            return
        print(epoch_line(record), file=sys.stderr, flush=True)


def _user_error(exc: BaseException) -> Optional[SupernetError]:
    """The one-line error a worker raised for bad input (a ShuffleNASError), out of Ray Train's wrapping."""
    failures = getattr(exc, "worker_failures", None) or {}
    for failure in failures.values():
        seen = failure
        while seen is not None:
            if isinstance(seen, ShuffleNASError):
                return SupernetError(str(seen).strip().splitlines()[-1])
            seen = seen.__cause__
    return None


def _connect(address: Optional[str], workers: int, cpus: float, gpus: float) -> bool:
    """Attach to ``address`` (or the Ray this process already runs), or start a private loopback one.

    Returns whether this call started or attached Ray (and so must shut it down).
    Resources are checked first: for a private cluster before it starts.
    """
    import ray

    if ray.is_initialized():
        check_resources(ray.cluster_resources(), workers, cpus, gpus, "the running Ray cluster")
        return False
    if address:
        ray.init(address=address, logging_level="error", log_to_driver=False)
        try:
            check_resources(ray.cluster_resources(), workers, cpus, gpus, f"the Ray cluster at {address}")
        except SupernetError:
            ray.shutdown()
            raise
        return True
    offered = {"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}
    check_resources(offered, workers, cpus, gpus, "this machine")
    start_private_cluster(num_cpus=offered["CPU"], num_gpus=offered["GPU"])
    return True


def _run_identity(space: SearchSpace, config: SupernetConfig, data_name: str) -> dict:
    d = config.to_dict()
    for k in RUNTIME_FIELDS:
        d.pop(k)
    return {"space": space.to_dict(), "config": d, "data": data_name}


def train_supernet_distributed(space: SearchSpace, data, config: SupernetConfig = SupernetConfig(), *,
                               out: str | Path, workers: int, gpus_per_worker: float = 0.0,
                               address: Optional[str] = None, storage: str | Path | None = None,
                               max_failures: int = 0, progress: bool = True) -> Path:
    """Train a supernet of ``space`` on ``workers`` Ray Train workers; the checkpoint ends at ``out``.

    ``data`` is a dataset spec (each worker loads it; ``folder:PATH`` is streamed, each worker
    reading only its share of every batch) or DataSplits (sent once through the object store).
    ``config.threads`` CPUs and ``gpus_per_worker`` GPUs (fractions allowed) are reserved per
    worker. ``max_failures``: worker group restarts Ray Train may make from the last checkpoint.
    ``progress``: one line per epoch and a summary on stderr.
    """
    if workers < 1 or gpus_per_worker < 0:
        raise SupernetError("--workers must be >= 1 and --gpus-per-worker >= 0")
    if config.batch_size % workers:
        raise SupernetError(f"batch size {config.batch_size} does not split evenly over {workers} workers; "
                            f"use a multiple of {workers}")
    if gpus_per_worker > 0 and config.device not in ("auto", "cuda") and not config.device.startswith("cuda"):
        raise SupernetError(f"--gpus-per-worker {gpus_per_worker:g} with device {config.device!r}; "
                            f"use --device cuda (or auto)")
    out = Path(out)
    data_name = data if isinstance(data, str) else data.name
    initial = None
    if out.exists():
        state = read_checkpoint(out)
        check_resumable(state, space, config, data_name, str(out))
        if state["epoch"] >= config.epochs:
            if progress:
                print(summary_line(state["history"]), file=sys.stderr, flush=True)
            return out
        initial = out.read_bytes()
    storage = Path(storage) if storage is not None else default_storage(out)
    ident = _run_identity(space, config, data_name)
    ident_file = storage / "run.json"
    if ident_file.is_file() and json.loads(ident_file.read_text()) != ident:
        raise SupernetError(f"{storage} holds the checkpoints of another supernet run; delete it or choose "
                            f"another --out")
    started = _connect(address, workers, config.threads, gpus_per_worker)
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    queue = printer = None
    stop = threading.Event()
    try:
        queue = Queue(actor_options={"num_cpus": 0}) if progress else None
        if queue is not None:
            printer = threading.Thread(target=_print_progress, args=(queue, stop), daemon=True)
            printer.start()
        storage.mkdir(parents=True, exist_ok=True)
        ident_file.write_text(json.dumps(ident))
        loopback = all(n["NodeManagerAddress"].startswith("127.") for n in ray.nodes() if n.get("Alive"))
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={
                "space": space.to_dict(), "config": config.to_dict(), "out": str(out),
                "data": data if isinstance(data, str) else ray.put(data),
                "initial": None if initial is None else ray.put(initial), "gpus_per_worker": gpus_per_worker,
                "progress": queue},
            torch_config=TorchConfig(backend="nccl" if gpus_per_worker > 0 else "gloo"),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0,
                                         resources_per_worker={"CPU": config.threads, "GPU": gpus_per_worker}),
            run_config=RunConfig(
                name=RUN_NAME, storage_path=str(storage.resolve()),
                failure_config=FailureConfig(max_failures=max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                # gloo picks its interface from the host name; a private cluster stays on loopback
                worker_runtime_env={"env_vars": {"GLOO_SOCKET_IFNAME": "lo"}} if loopback else None),
        )
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as exc:
            raise _user_error(exc) or exc
        with result.checkpoint.as_directory() as d:
            tmp = out.with_name(f".{out.name}.tmp")
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(d) / CHECKPOINT_FILE, tmp)
            os.replace(tmp, out)
    finally:
        stop.set()
        if printer is not None:
            printer.join()  # every epoch reported is printed before the summary (and before Ray stops)
        if queue is not None:
            queue.shutdown(force=True)  # its items are all printed
        if started:
            ray.shutdown()
    shutil.rmtree(storage, ignore_errors=True)
    if progress:
        print(summary_line(read_checkpoint(out)["history"]), file=sys.stderr, flush=True)
    return out
