"""Keep Ray Tune's experiment state restorable when the driver is killed (SIGKILL) at any moment.

Tune writes ``experiment_state-*.json``, ``search_gen_state-*.json`` and
``searcher-state-*.pkl`` to a staging folder on the driver and copies them to
the run folder in a background thread, not atomically and throttled: after a
kill the copy in the run folder can be empty, or older than trials that
already finished -- ``Tuner.restore`` would then start over, or sample new
trials under numbers already used.

:func:`snapshot` copies the staging files (complete: Tune writes them on the
driver thread, between callbacks) atomically into ``RUN/ray/tune/.snapshot``
each time a trial finishes; :func:`repair` puts that snapshot in place before
``Tuner.restore``. The snapshot holds every finished trial (the one finishing
at that moment as still running: it is run again under the same Tune trial id,
and the records keep its first result).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from search_space.io import atomic_write_bytes

PATTERNS = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl")
SNAP = ".snapshot"


def _state_files(path: Path) -> list[Path]:
    return sorted(p for pat in PATTERNS for p in path.glob(pat))


def snapshot(staging: str | Path, tune_dir: str | Path) -> bool:
    """Copy the state files of ``staging`` into ``tune_dir/.snapshot`` (manifest written last)."""
    files = _state_files(Path(staging))
    if not files or not all(p.stat().st_size for p in files):
        return False
    snap = Path(tune_dir) / SNAP
    snap.mkdir(parents=True, exist_ok=True)
    for p in files:
        atomic_write_bytes(snap / p.name, p.read_bytes())
    atomic_write_bytes(snap / "manifest.json", json.dumps([p.name for p in files]).encode())
    return True


def repair(tune_dir: str | Path) -> str:
    """Before ``Tuner.restore``: the snapshot replaces the state files ("snapshot"); without one,
    no trial had finished and the state is removed so the search starts afresh ("fresh")."""
    tune_dir = Path(tune_dir)
    manifest = tune_dir / SNAP / "manifest.json"
    if not manifest.is_file():
        shutil.rmtree(tune_dir, ignore_errors=True)
        return "fresh"
    for p in _state_files(tune_dir):
        p.unlink()
    for name in json.loads(manifest.read_text()):
        shutil.copyfile(tune_dir / SNAP / name, tune_dir / f".{name}.tmp")
        os.replace(tune_dir / f".{name}.tmp", tune_dir / name)
    return "snapshot"
