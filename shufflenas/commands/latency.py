"""``latency`` (measure or predict one architecture) and ``lut build`` / ``lut validate``."""

from __future__ import annotations

from pathlib import Path

import click

from evaluators.latency import LatencyTarget, MeasurementProtocol, measure

from ..output import arch_options, emit, resolve_arch, table


def target_options(f):
    """``--device --runtime --threads --batch --input-size --dtype``; unset options stay None."""
    for opt in reversed([
        click.option("--device", type=click.Choice(["cpu", "cuda"]), help="target device [cpu]"),
        click.option("--runtime", type=click.Choice(["onnxruntime", "eager", "torchscript", "compile"]),
                     help="inference runtime [onnxruntime]"),
        click.option("--threads", type=click.IntRange(1, 256), help="intra-op threads [1]"),
        click.option("--batch", type=click.IntRange(1, 4096), help="batch size [1]"),
        click.option("--input-size", type=click.IntRange(8, 4096), help="input resolution [the architecture's]"),
        click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), help="[float32]"),
    ]):
        f = opt(f)
    return f


def target_fields(device, runtime, threads, batch, input_size, dtype) -> dict:
    given = dict(device=device, runtime=runtime, threads=threads, batch=batch, input_size=input_size, dtype=dtype)
    return {k: v for k, v in given.items() if v is not None}


def protocol_option(f):
    return click.option("--min-time", type=click.FloatRange(0.0, 600.0), metavar="SECONDS",
                        help="time each network for at least this long [1.0]")(f)


def make_protocol(min_time: float | None, quick: bool = False) -> MeasurementProtocol:
    p = MeasurementProtocol.quick() if quick else MeasurementProtocol()
    return p if min_time is None else p.model_copy(update={"min_seconds": min_time})


def _result_row(name, r) -> dict:
    return {"name": name or "-", "median ms": round(r.median_ms, 4), "p90 ms": round(r.p90_ms, 4),
            "IQR/median": round(r.iqr_rel, 4), "runs": r.runs, "attempts": r.attempts,
            "flagged": "FLAGGED" if r.flagged else "", "source": r.source}


@click.command()
@arch_options
@target_options
@protocol_option
@click.option("--lut", "lut_path", type=click.Path(dir_okay=False, path_type=Path),
              help="predict from this lookup table instead of measuring")
@click.option("--blocks", "show_blocks", is_flag=True, help="with --lut: per-block breakdown")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def latency(preset, arch_file, device, runtime, threads, batch, input_size, dtype, min_time, lut_path,
            show_blocks, as_json):
    """Latency of an architecture on the target: measured in a fresh worker process, or from a LUT."""
    arch = resolve_arch(preset, arch_file)
    given = target_fields(device, runtime, threads, batch, input_size, dtype)
    if lut_path is not None:
        from evaluators.latency.lut import LatencyLUT

        lut = LatencyLUT.load(lut_path, target=given or None)
        r = lut.latency(arch)
        out = r.to_dict()
        text = table([_result_row(arch.name, r)]) + f"\ntarget: {lut.target.describe()} (LUT {lut_path})"
        if show_blocks:
            out["blocks"] = lut.breakdown(arch)
            text += "\n\n" + table([{"block": k, "ms": round(v, 4)} for k, v in out["blocks"].items()])
        emit(out, as_json, text)
        return
    target = LatencyTarget.make(**given)
    r = measure(arch, target, make_protocol(min_time))
    text = table([_result_row(arch.name, r)]) + f"\ntarget: {target.describe()}"
    if r.flagged:
        text += (f"\nwarning: spread IQR/median {r.iqr_rel:.1%} stayed above the threshold after "
                 f"{r.attempts} attempts (load average {r.extra.get('loadavg')}); the machine is busy")
    emit(r.to_dict(), as_json, text)


COMMANDS = [latency]
