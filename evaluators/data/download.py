"""Official archives: where they are cached and how they are fetched and verified.

A download happens only when the user gave no path and the file is not in
the cache directory (``$SHUFFLENAS_CACHE`` or ``~/.cache/shufflenas``). The
file is written to a temporary name, its md5 checked, then renamed, so a
broken download never poses as a dataset.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Optional

from .errors import DataError


def cache_dir(root: Optional[str | os.PathLike] = None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get("SHUFFLENAS_CACHE", Path.home() / ".cache" / "shufflenas")).expanduser()


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: Path, md5: str, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` unless present; verify ``md5`` of what was downloaded."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    shutil.copyfileobj(resp, out, 1 << 20)
            except OSError as exc:  # URLError, timeouts and refused connections are all OSErrors
                raise DataError(f"cannot download {url} to {dest} ({exc}); download it by hand "
                                f"and pass its path in the dataset spec") from None
        got = md5sum(Path(tmp))
        if got != md5:
            raise DataError(f"download of {url} is corrupt: md5 {got}, expected {md5}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest
