"""Printing results: one JSON document on stdout with ``--json``, a readable table otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import click

from search_space import Architecture, presets


def emit(obj, as_json: bool, text: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(obj, indent=None, default=str))
    else:
        click.echo(text if text is not None else json.dumps(obj, indent=2, default=str))


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "(none)"
    cols = columns or list(rows[0])
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    width = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.rjust(w) if _num(v) else v.ljust(w) for v, w in zip(vals, width))
    return "\n".join([line(cols), line(["-" * w for w in width])] + [line(r) for r in cells])


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)


def _num(s: str) -> bool:
    return s.replace(",", "").replace(".", "").replace("-", "").replace("e", "").isdigit()


def arch_options(f):
    """``--preset NAME`` or a positional ``ARCH.yaml`` (exactly one)."""
    f = click.option("--preset", metavar="NAME", help="a preset (see 'shufflenas presets')")(f)
    f = click.argument("arch_file", required=False, metavar="[ARCH.yaml]",
                       type=click.Path(dir_okay=False, path_type=Path))(f)
    return f


def resolve_arch(preset: str | None, arch_file: Path | None) -> Architecture:
    if (preset is None) == (arch_file is None):
        raise click.UsageError("give exactly one of --preset NAME or ARCH.yaml")
    return presets.get(preset) if preset else Architecture.from_yaml(arch_file)
