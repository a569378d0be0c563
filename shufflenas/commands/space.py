"""``profile``, ``space`` and ``presets``: the design space without running anything."""

from __future__ import annotations

import click

from search_space import load_space, presets, profile as cost_profile

from ..output import arch_options, emit, resolve_arch, table


@click.command()
@arch_options
@click.option("--input-size", type=click.IntRange(8, 4096), help="override the input resolution")
@click.option("--blocks", "show_blocks", is_flag=True, help="also list the cost of every block")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def profile(preset, arch_file, input_size, show_blocks, as_json):
    """Cost model of an architecture: params, multiply-adds, MAC, peak activations."""
    arch = resolve_arch(preset, arch_file)
    p = cost_profile(arch, input_size)
    out = {"name": arch.name, **p.summary()}
    if preset and preset in presets.PUBLISHED:
        out["published"] = presets.PUBLISHED[preset]
    if show_blocks or as_json:
        out["blocks"] = p.blocks
    text = table([{"name": arch.name or "-", "input": p.input_size, "params": p.params,
                   "MFLOPs": round(p.mflops, 2), "MAC (M elem)": round(p.mac / 1e6, 2),
                   "peak act (MiB)": round(p.peak_activation_bytes / 2**20, 2)}])
    if show_blocks:
        text += "\n\n" + table([{"block": k, **v} for k, v in p.blocks.items()])
    emit(out, as_json, text)


@click.command()
@click.argument("space_file", metavar="SPACE.yaml|NAME")
@click.option("--sample", "n", type=click.IntRange(0, 100_000), default=0, help="draw N architectures")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def space(space_file, n, seed, as_json):
    """Size and dimensions of a search space; optionally sample from it."""
    sp = load_space(space_file)
    samples = sp.sample(n, seed=seed) if n else []
    costs = [cost_profile(a) for a in samples]
    out = {"name": sp.name, "size": sp.size(),
           "dimensions": {d.name: list(d.choices) for d in sp.open_dimensions},
           "samples": [dict(a.to_dict(), **c.summary()) for a, c in zip(samples, costs)]}
    lines = [f"space {sp.name}: {sp.size():,} architectures, {len(sp.open_dimensions)} open dimensions"]
    lines += [f"  {d.name}: {list(d.choices)}" for d in sp.open_dimensions]
    if samples:
        lines.append("")
        title = "stages (unit/ch/depth/k" + (
            ", or ch/depth:unit+k per unit)" if any(s.units for a in samples for s in a.stages) else ")")
        lines.append(table([{"#": i, title: " ".join(map(_stage_text, a.stages)), "params": c.params,
                             "MFLOPs": round(c.mflops, 2)} for i, (a, c) in enumerate(zip(samples, costs))]))
    emit(out, as_json, "\n".join(lines))


def _stage_text(s) -> str:
    """``v2/116/4/3``; a stage whose units differ: ``64/4:v2k7,v2k5,v2k3,xceptionk3``."""
    if s.units is None:
        return f"{s.unit}/{s.channels}/{s.depth}/{s.kernel}"
    return f"{s.channels}/{s.depth}:" + ",".join(f"{u.unit}k{u.kernel}" for u in s.unit_list())


@click.command(name="presets")
@click.option("--json", "as_json", is_flag=True)
def presets_cmd(as_json):
    """List the published networks available as presets."""
    rows = []
    for name, arch in presets.PRESETS.items():
        p = cost_profile(arch)
        rows.append({"name": name, "input": arch.input_size, "classes": arch.num_classes,
                     "params": p.params, "MFLOPs": round(p.mflops, 2),
                     "paper MFLOPs": presets.PUBLISHED.get(name, {}).get("mflops")})
    emit(rows, as_json, table(rows))


COMMANDS = [profile, space, presets_cmd]
