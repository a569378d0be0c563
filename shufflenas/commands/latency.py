"""``latency`` (measure or predict one architecture) and ``lut build`` / ``lut validate``."""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from evaluators.latency import LatencyTarget, MeasurementProtocol, measure
from evaluators.latency.target import LUTHostWarning, describe_host, host_identity

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
    f = click.option("--clock", type=click.Choice(["wall", "cpu"]),
                     help="wall: latency [default; for 'lut validate' the table's clock]; cpu: the worker "
                          "thread's CPU time per run (1 thread only), a load-robust proxy on a shared machine")(f)
    return click.option("--min-time", type=click.FloatRange(0.0, 600.0), metavar="SECONDS",
                        help="time each network for at least this long [1.0]")(f)


def host_check_option(what: str):
    return click.option("--no-host-check", is_flag=True,
                        help=f"{what} a table tagged with another host than this machine (hostname, processor, "
                             f"runtime and version, threads)")


def check_lut_host(lut, skip: bool, override: str) -> dict:
    """This machine's host identity; a table tagged with another is refused unless ``skip``, and an
    untagged one (built before tables were tagged) is a warning on stderr."""
    here = host_identity(lut.target)
    if not skip:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", LUTHostWarning)
            lut.check_host(here, override)
        for w in caught:
            click.echo(f"shufflenas: warning: {w.message}", err=True)
    return here


def built_on(lut) -> str:
    return describe_host(lut.host) if lut.host else "an untagged host (built before tables were tagged)"


def make_protocol(min_time: float | None, quick: bool = False, clock: str | None = None) -> MeasurementProtocol:
    clock = clock or "wall"
    p = MeasurementProtocol.quick(clock=clock) if quick else MeasurementProtocol(clock=clock)
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
def latency(preset, arch_file, device, runtime, threads, batch, input_size, dtype, min_time, clock, lut_path,
            show_blocks, as_json):
    """Latency of an architecture on the target: measured in a fresh worker process, or from a LUT."""
    arch = resolve_arch(preset, arch_file)
    given = target_fields(device, runtime, threads, batch, input_size, dtype)
    if lut_path is not None:
        from evaluators.latency.lut import LatencyLUT

        lut = LatencyLUT.load(lut_path, target=given or None)
        r = lut.latency(arch)
        out = r.to_dict()
        text = (table([_result_row(arch.name, r)]) + f"\ntarget: {lut.target.describe()} (LUT {lut_path}, "
                f"built on {built_on(lut)})")
        if show_blocks:
            out["blocks"] = lut.breakdown(arch)
            text += "\n\n" + table([{"block": k, "ms": round(v, 4)} for k, v in out["blocks"].items()])
        emit(out, as_json, text)
        return
    target = LatencyTarget.make(**given)
    r = measure(arch, target, make_protocol(min_time, clock=clock))
    text = table([_result_row(arch.name, r)]) + f"\ntarget: {target.describe()}"
    if clock == "cpu":
        text += "\nclock: CPU time of the worker thread per run (not wall-clock latency)"
    if r.flagged:
        text += (f"\nwarning: spread IQR/median {r.iqr_rel:.1%} stayed above the threshold after "
                 f"{r.attempts} attempts (load average {r.extra.get('loadavg')}, worker ran "
                 f"{r.extra.get('cpu_share', float('nan')):.0%} of the wall time); the machine is busy")
    emit(r.to_dict(), as_json, text)


@click.group()
def lut():
    """Latency lookup tables: build one for a search space on this device, validate it."""


@lut.command("build")
@click.argument("space_file", metavar="SPACE.yaml|NAME")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="where to write the table (JSON); an unfinished table there is resumed")
@target_options
@protocol_option
@click.option("--calibration", type=click.IntRange(0, 1000), default=10, show_default=True,
              help="whole networks measured to fit the per-network overhead")
@click.option("--count", "count_only", is_flag=True, help="only count the block configurations to measure")
@host_check_option("resume")
@click.option("--json", "as_json", is_flag=True)
def lut_build(space_file, out_path, device, runtime, threads, batch, input_size, dtype, min_time, clock, calibration,
              count_only, no_host_check, as_json):
    """Measure every block configuration SPACE can produce (with a progress bar)."""
    from search_space import load_space

    from evaluators.latency.lut import LatencyLUT, space_blocks

    sp = load_space(space_file)
    target = LatencyTarget.make(**target_fields(device, runtime, threads, batch, input_size, dtype))
    n = len(space_blocks(sp, target.input_size))
    if count_only:
        emit({"space": sp.name, "blocks": n, "target": target.to_dict()}, as_json,
             f"space {sp.name}: {n:,} block configurations to measure on {target.describe()}")
        return
    table_ = LatencyLUT.build(sp, target, make_protocol(min_time, quick=True, clock=clock), progress=not as_json,
                              path=out_path, calibration=calibration, host_check=not no_host_check,
                              override="move it away to start afresh, or pass --no-host-check to resume it anyway")
    o, m = table_.overhead, table_.meta
    out = {"path": str(out_path), "blocks": len(table_), "target": target.to_dict(), "host": table_.host,
           "overhead": {k: v for k, v in o.items() if k != "calibration"}, "meta": m}
    drift = m.get("drift", {})
    text = (f"{out_path}: {len(table_):,} blocks on {target.describe()} in {m.get('build_seconds')} s; "
            f"built on {built_on(table_)}; "
            f"{m.get('flagged_entries', 0)} flagged\n"
            f"network correction ({o.get('fit')}): a={o['a']:.4f} c={o.get('c_ms', 0) * 1000:.1f} us/block "
            f"b={o['b_ms'] * 1000:.1f} us; calibration MAPE {o.get('fit_mape', float('nan')):.2%} on "
            f"{len(o.get('calibration', []))} networks\n"
            f"drift of reference {drift.get('reference')}: worst ratio {drift.get('worst_ratio', 1):.3f}"
            + (" -- DRIFTED, rebuild in a quiet window" if drift.get("drifted") else ""))
    emit(out, as_json, text)


@lut.command("validate")
@click.argument("lut_path", metavar="LUT", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--samples", type=click.IntRange(1, 100_000), default=30, show_default=True,
              help="held-out random architectures to measure")
@click.option("--space", "space_file", metavar="SPACE.yaml|NAME", help="sample from this space [the table's]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--sessions", type=click.IntRange(1, 100), metavar="N",
              help="measure each network in N worker sessions and keep the median [the table's network_sessions]")
@protocol_option
@host_check_option("validate")
@click.option("--json", "as_json", is_flag=True)
def lut_validate(lut_path, samples, space_file, seed, sessions, min_time, clock, no_host_check, as_json):
    """Measure held-out architectures and compare with the table's predictions.

    The measurements are made here, so a table tagged with another host is refused
    (--no-host-check to validate it here anyway)."""
    from search_space import SearchSpace, load_space

    from evaluators.latency.lut import LatencyLUT
    from evaluators.latency.validation import ANCHORS, held_out_sample, validate_lut

    table_ = LatencyLUT.load(lut_path)
    here = check_lut_host(table_, no_host_check,
                          "validate it on that host, or pass --no-host-check to validate it here anyway")
    if space_file:
        sp = load_space(space_file)
    elif table_.space:
        sp = SearchSpace.from_dict(table_.space, source=f"{lut_path}: space")
    else:
        raise click.UsageError("this table records no space; give --space SPACE")
    archs = held_out_sample(table_, sp, samples, seed)
    clock = clock or table_.protocol.clock
    if clock != table_.protocol.clock:
        raise click.UsageError(f"the table was measured with clock {table_.protocol.clock}; validate with "
                               f"--clock {table_.protocol.clock}")
    # the table's own protocol for whole networks: same clock and reference timing as its entries
    protocol = table_.protocol.for_networks()
    protocol = protocol if min_time is None else protocol.model_copy(update={"min_seconds": min_time})
    rep = validate_lut(table_, archs, protocol, sessions=sessions, seed=seed, progress=not as_json)
    rep.update(lut_host=table_.host, host=here)
    emit(rep, as_json, format_validation(rep, ANCHORS))


def format_validation(rep: dict, anchors: dict) -> str:
    lines = [f"{rep['n']} held-out architectures, {LatencyTarget(**rep['target']).describe()}",
             f"  MAPE            {rep['mape']:.2%}",
             f"  within +/-5%    {rep['within_5']:.1%}",
             f"  within +/-10%   {rep['within_10']:.1%}"]
    lines += [f"  {k:<15s} {rep[k]:.3f}" for k in ("spearman", "kendall") if k in rep]
    lines += [f"  sessions        {rep['sessions']} per network, median kept"
              + (f" (sessions differ by a median {rep['session_spread_median']:.1%})"
                 if "session_spread_median" in rep else ""),
              f"  flagged         {rep['flagged']} (spread above threshold after repeats)",
              f"  drift           {rep['drift'].get('worst_ratio', 1.0):.3f} worst reference ratio"
              + (" -- DRIFTED" if rep["drift"].get("drifted") else "")]
    sc = rep.get("speed_corrected")
    if sc:
        sp = rep["speed"]
        lines += [f"speed-corrected (each measurement over the machine's speed then, {sp['min']:.2f}-"
                  f"{sp['max']:.2f}x the table's): MAPE {sc['mape']:.2%}, within +/-10% {sc['within_10']:.1%}, "
                  f"Spearman {sc.get('spearman', float('nan')):.3f}"]
    lines += ["published within +/-10%: " + ", ".join(f"{k} {v:.1%}" for k, v in anchors.items())]
    if "host" in rep:
        lines.append(f"measured on {describe_host(rep['host'])}; table built on "
                     + (describe_host(rep["lut_host"]) if rep.get("lut_host") else "an untagged host"))
    if not rep["same_machine"]:
        lines.append("warning: this machine differs from the one the table was built on (processor or versions)")
    return "\n".join(lines)


COMMANDS = [latency, lut]
