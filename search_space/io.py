"""Safe YAML/JSON loading and atomic writes, shared by every layer.

YAML is only ever safe-loaded (no Python object tags), and every file the
tool writes goes through a temporary file + ``os.replace`` so that a killed
process never leaves a half-written result behind.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import yaml

from .errors import FileFormatError


def load_yaml(path: str | os.PathLike) -> Any:
    """Safe-load a YAML (or JSON) file; raise a one-line :class:`FileFormatError`."""
    p = Path(path)
    if not p.is_file():
        raise FileFormatError(f"{p}: file not found (expected a YAML file)")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{p}: cannot read as UTF-8 text ({exc.__class__.__name__})") from None
    return parse_yaml(text, source=str(p))


def parse_yaml(text: str, source: str = "<string>") -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise FileFormatError(f"{source}: malformed YAML{where}: {problem}") from None


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return p


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of an append-only JSONL file (one JSON object per line).

    Appending one ``json.dumps(row) + "\\n"`` per finished item and reading with this is how a
    killed run resumes. A kill in the middle of an append leaves a final line without its
    newline that does not parse: that one line is skipped with a warning (the item is simply
    done again). Any other line that is not a JSON object is damage, not a kill, and raises a
    :class:`FileFormatError` naming the file and the line number. Blank lines are ignored.
    """
    p = Path(path)
    if not p.is_file():
        return []
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{p}: cannot read as UTF-8 text ({exc.__class__.__name__})") from None
    lines = text.split("\n")  # the last element is "" when the file ends with a newline
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # no newline after it: cut by a kill mid-write
                warnings.warn(f"{p}: line {number} is incomplete (a write cut short); skipped", stacklevel=2)
                continue
            raise FileFormatError(f"{p}: line {number} is not valid JSON ({exc.msg}); "
                                  f"repair or remove that line") from None
        if not isinstance(row, dict):
            raise FileFormatError(f"{p}: line {number} is a JSON {type(row).__name__}, not an object; "
                                  f"repair or remove that line")
        rows.append(row)
    return rows
