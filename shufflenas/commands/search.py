"""``search``, ``export`` and ``report``: run a search, hand over its Pareto set, show it."""

from __future__ import annotations

from pathlib import Path

import click

from ..output import emit, table


@click.command()
@click.argument("experiment", type=click.Path(dir_okay=False, path_type=Path), metavar="EXPERIMENT.yaml")
@click.option("--resume", is_flag=True, help="continue the run in the experiment's output folder")
@click.option("--address", metavar="ADDR",
              help="ray backend: 'auto' or host:port of an existing Ray cluster (default: a private local one)")
@click.option("--output", "output", type=click.Path(file_okay=False, path_type=Path),
              help="run folder (overrides the experiment's 'output')")
@click.option("--trials", type=click.IntRange(1), help="override search.trials")
@click.option("--backend", type=click.Choice(["optuna", "ray"]), help="override search.backend")
@click.option("--no-onnx", is_flag=True, help="export without ONNX files")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object (no progress bar)")
def search(experiment, resume, address, output, trials, backend, no_onnx, as_json):
    """Search the experiment's space for the best accuracy at each latency; export and report the front."""
    from nas.experiment import load_experiment, override_search
    from nas.search import run_search

    exp = load_experiment(experiment)
    changes = {}
    if output:
        changes["output"] = str(output.resolve())
    if trials or backend:
        changes["search"] = override_search(exp.search, trials=trials, backend=backend)
    if changes:
        exp = exp.model_copy(update=changes)
    res = run_search(exp, resume=resume, address=address, progress=not as_json, onnx=not no_onnx)
    s = res.summary()
    lines = [f"{s['trials']} trials ({', '.join(f'{v} {k.lower()}' for k, v in s['states'].items())}) "
             f"in {s['seconds']:.0f} s; {s['front_size']} on the Pareto front, hypervolume {s['hypervolume']:.4g}",
             "", table([_row(r) for r in sorted(res.front, key=lambda r: r.latency_ms)]), "",
             f"exported Pareto set: {s['export_dir']}", f"report: {s['report']}", f"front plot: {s['png']}"]
    emit(s, as_json, "\n".join(lines))


def _row(r) -> dict:
    return {"trial": r.number, "seed": r.seed or "", "accuracy": r.accuracy, "latency ms": r.latency_ms,
            "measured ms": r.latency_measured_ms, "params": r.params, "MFLOPs": round(r.macs / 1e6, 2)}


@click.command(name="export")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path), metavar="RUN_DIR")
@click.option("--no-onnx", is_flag=True, help="skip the ONNX files")
@click.option("--json", "as_json", is_flag=True)
def export_cmd(run_dir, no_onnx, as_json):
    """Export the Pareto-optimal architectures of a run (YAML, blocks, scores, weights, ONNX)."""
    import json

    from nas.export import export_front
    from nas.run_folder import FRONT_JSON

    out = export_front(run_dir, onnx=not no_onnx)
    index = json.loads((out / FRONT_JSON).read_text())
    rows = [{"folder": m["folder"], "accuracy": m["accuracy"], "latency ms": m["latency_ms"],
             "params": m["params"], "knee": "*" if m["knee"] else ""} for m in index["members"]]
    emit({"export_dir": str(out), **index}, as_json, table(rows) + f"\n\nexported Pareto set: {out}")


@click.command(name="report")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path), metavar="RUN_DIR")
@click.option("--json", "as_json", is_flag=True)
def report_cmd(run_dir, as_json):
    """Write the run's self-contained HTML report and a PNG of its front."""
    from nas.report import write_report

    page, png = write_report(run_dir)
    emit({"report": str(page), "png": str(png)}, as_json, f"report: {page}\nfront plot: {png}")


COMMANDS = [search, export_cmd, report_cmd]
