"""How well a supernet checkpoint ranks networks, stored beside it so that whoever scores with it can tell.

``experiments/fidelity.py`` measures rank correlation against a ground truth
and calls :func:`record_fidelity`; the file is ``<checkpoint>.fidelity.json``,
keyed by the SHA-256 of the checkpoint's bytes, so a checkpoint that trains
further (or is replaced) has no measurement until it is measured again.
:func:`describe_fidelity` is the one line a search prints.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from search_space.io import atomic_write_text

FORMAT = "shufflenas-supernet-fidelity/1"


def fidelity_path(checkpoint: str | Path) -> Path:
    p = Path(checkpoint)
    return p.with_name(p.name + ".fidelity.json")


def checkpoint_digest(checkpoint: str | Path) -> str:
    h = hashlib.sha256()
    with open(checkpoint, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"format": FORMAT, "checkpoints": {}}
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return {"format": FORMAT, "checkpoints": {}}
    return data


def record_fidelity(checkpoint: str | Path, measurement: dict) -> Path:
    """Add ``measurement`` (plain data; ``bn_images`` identifies it) for the checkpoint as it is now."""
    path = fidelity_path(checkpoint)
    data = _load(path)
    entries = data["checkpoints"].setdefault(checkpoint_digest(checkpoint), [])
    entries[:] = [e for e in entries if e.get("bn_images") != measurement.get("bn_images")] + [measurement]
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def read_fidelity(checkpoint: str | Path) -> list[dict]:
    """The measurements made on exactly this checkpoint (empty if none)."""
    path = fidelity_path(checkpoint)
    if not path.is_file() or not Path(checkpoint).is_file():
        return []
    return list(_load(path)["checkpoints"].get(checkpoint_digest(checkpoint), []))


def describe_fidelity(checkpoint: str | Path, bn_images: Optional[int] = None) -> str:
    """One line: the fidelity measured for this checkpoint (closest BN setting first), or that none was."""
    found = read_fidelity(checkpoint)
    if not found:
        return (f"supernet fidelity: none measured for {checkpoint} as it is now; its ranking of networks is "
                f"unchecked (measure it with experiments/fidelity.py)")
    if bn_images is not None:
        found.sort(key=lambda e: abs(e.get("bn_images", 0) - bn_images))
    e = found[0]
    line = (f"supernet fidelity of {checkpoint} (BN recalibrated on {e.get('bn_images')} images), "
            f"against {e.get('ground_truth', 'the ground truth')} of {e.get('n')} networks: "
            f"Kendall tau {e['kendall_tau']:.2f} (p {e['kendall_p']:.2g}), Spearman rho {e['spearman_rho']:.2f}, "
            f"top-5 overlap {e.get('top5_overlap', '?')}")
    if e.get("params_kendall_tau") is not None:
        line += f"; parameter count ranks at tau {e['params_kendall_tau']:.2f}"
    return line
