"""Keep Ray Tune's experiment state restorable when the driver is killed mid-write.

Tune rewrites ``experiment_state-*.json``, ``search_gen_state-*.json`` and
``searcher-state-*.pkl`` in place (open + dump, not atomically): a SIGKILL
during a save leaves empty files, and ``Tuner.restore`` then starts over as if
nothing had run. :func:`snapshot` copies the complete set atomically into
``.snapshot/`` each time a trial finishes (on the driver thread, between two
saves, so the files are consistent); :func:`repair` puts the snapshot back
when the live files are damaged. A snapshot is at most one save old: trials
it shows as running are run again under the same Tune trial id, and the
records keep their first result.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

from search_space.io import atomic_write_bytes

PATTERNS = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl")
SNAP = ".snapshot"


def _state_files(path: Path) -> list[Path]:
    return sorted(p for pat in PATTERNS for p in path.glob(pat))


def _valid(p: Path) -> bool:
    try:
        data = p.read_bytes()
        if not data:
            return False
        if p.suffix == ".json" and data[:1] in (b"{", b"["):
            json.loads(data)
        else:  # searcher-state and (despite its name) search_gen_state are pickles of this run's driver
            pickle.loads(data)
        return True
    except Exception:  # noqa: BLE001 -- any unreadable file is damaged
        return False


def snapshot(path: str | Path) -> bool:
    """Copy the current state files into ``path/.snapshot`` if all of them are complete."""
    path = Path(path)
    files = _state_files(path)
    if not files or not all(_valid(p) for p in files):
        return False
    snap = path / SNAP
    snap.mkdir(exist_ok=True)
    for p in files:
        atomic_write_bytes(snap / p.name, p.read_bytes())
    atomic_write_bytes(snap / "manifest.json", json.dumps([p.name for p in files]).encode())
    return True


def repair(path: str | Path) -> bool:
    """If any live state file is damaged, put the last snapshot back (or remove the unusable
    state if there is none). True if something was repaired."""
    path = Path(path)
    files = _state_files(path)
    if all(_valid(p) for p in files):
        return False
    manifest = path / SNAP / "manifest.json"
    if not manifest.is_file():  # killed before any trial finished: nothing to keep, start afresh
        shutil.rmtree(path)
        return True
    for p in files:
        p.unlink()
    if manifest.is_file():
        for name in json.loads(manifest.read_text()):
            shutil.copyfile(path / SNAP / name, path / f".{name}.tmp")
            os.replace(path / f".{name}.tmp", path / name)
    return True
