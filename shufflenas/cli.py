"""The ``shufflenas`` command.

Sub-commands live in :mod:`shufflenas.commands`, one module per concern, each
exporting ``COMMANDS`` (a list of click commands/groups). Any bad input --
a :class:`~search_space.ShuffleNASError` or a usage error -- ends in one line
on stderr and exit status 2; a traceback means a bug.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click
from pydantic import ValidationError

from search_space.errors import ShuffleNASError
from search_space.validation import one_line

from . import __version__, commands


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="shufflenas")
def cli() -> None:
    """Hardware-aware NAS over the ShuffleNet design space."""


for _mod in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
    for _cmd in importlib.import_module(f"{commands.__name__}.{_mod}").COMMANDS:
        cli.add_command(_cmd)


def fail(message: str) -> int:
    click.echo(f"shufflenas: error: {' '.join(str(message).split())}", err=True)
    return 2


def main(argv: list[str] | None = None) -> int:
    try:
        rv = cli.main(args=argv, prog_name="shufflenas", standalone_mode=False)
    except click.UsageError as exc:
        ctx = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        return fail(exc.format_message() + ctx)
    except click.ClickException as exc:
        return fail(exc.format_message())
    except ShuffleNASError as exc:
        return fail(str(exc))
    except ValidationError as exc:
        return fail(one_line(exc))
    except (click.Abort, KeyboardInterrupt):
        click.echo("shufflenas: interrupted", err=True)
        return 130
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
