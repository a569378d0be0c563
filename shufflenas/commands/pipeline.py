"""``run`` and ``retrain``: the whole pipeline, search then an equal-budget comparison with the baselines."""

from __future__ import annotations

from pathlib import Path

import click

from ..output import emit

ADDRESS_HELP = ("ray backend: 'auto' or host:port of the Ray cluster whose latency_device node measures the "
                "retrained models (default: search.ray.address; without one, this machine)")
WORKERS_HELP = "models trained at a time, a process each (overrides retrain.workers; same results as 1)"


def _retrain(run_dir: Path, exp, as_json: bool, *, address=None, workers=None) -> dict:
    from nas.experiment import RetrainSpec
    from nas.retrain import retrain

    spec = exp.retrain or RetrainSpec()
    if workers:
        spec = RetrainSpec.model_validate({**spec.model_dump(), "workers": workers})  # checked as in the file
    log = (lambda *_: None) if as_json else (lambda msg: click.echo(msg, err=True))
    return retrain(run_dir, exp, spec, address=address, log=log)


def _text(out: Path, summary: dict) -> str:
    deployed = Path(summary["deploy"])
    return ((out / "table.md").read_text() + f"\nretrained models, table and plot: {out}"
            f"\n  {out / 'table.md'}\n  {out / 'front.png'}"
            f"\ntrained networks (architecture, weights, ONNX, test accuracy, latency, load line): {deployed}"
            f"\n  {deployed / 'deploy.md'}")


@click.command()
@click.argument("experiment", type=click.Path(dir_okay=False, path_type=Path), metavar="EXPERIMENT.yaml")
@click.option("--address", metavar="ADDR",
              help="ray backend: 'auto' or host:port of an existing Ray cluster, for the search and the "
                   "retrained models' latency (default: search.ray.address)")
@click.option("--workers", type=click.IntRange(1), help=WORKERS_HELP)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object (no progress bar)")
def run(experiment, address, workers, as_json):
    """Search, export, then retrain the front and the baselines at equal budget, test them once, and
    put the trained networks (weights, ONNX, test accuracy, latency) in RUN_DIR/deploy/.

    Rerun the same command after a kill: each step resumes where it stopped.
    """
    from nas.experiment import load_experiment
    from nas.run_folder import RunFolder
    from nas.search import run_search

    exp = load_experiment(experiment)
    run_dir = Path(exp.output)
    resume = RunFolder(run_dir).is_run()
    if resume and not as_json:
        click.echo(f"resuming the run in {run_dir}", err=True)
    res = run_search(exp, resume=resume, address=address, progress=not as_json)
    summary = _retrain(run_dir, exp, as_json, address=address, workers=workers)
    emit({"search": res.summary(), "retrain": summary}, as_json, _text(RunFolder(run_dir).retrain, summary))


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path), metavar="RUN_DIR")
@click.option("--address", metavar="ADDR", help=ADDRESS_HELP)
@click.option("--workers", type=click.IntRange(1), help=WORKERS_HELP)
@click.option("--json", "as_json", is_flag=True)
def retrain(run_dir, address, workers, as_json):
    """Retrain a finished run's front and the baselines (settings: the experiment's 'retrain' section);
    the trained networks go to RUN_DIR/deploy/. Rerun after a kill: it resumes."""
    from nas.run_folder import RunFolder

    exp = RunFolder(run_dir).read_experiment()
    summary = _retrain(run_dir, exp, as_json, address=address, workers=workers)
    emit(summary, as_json, _text(RunFolder(run_dir).retrain, summary))


COMMANDS = [run, retrain]
