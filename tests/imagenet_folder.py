"""A tiny image folder in ImageNet's layout, written with Pillow, for tests that stream ``folder:PATH``.

``PATH/train/<wnid>/*.JPEG`` and ``PATH/val/<wnid>/*.JPEG`` with ImageNet-style class names
(``n00000000``, ...). Each class has its own colour plus seeded noise, so the images differ and a
network can tell the classes apart; sizes vary a little and are not square, as ImageNet's are, so
the random-resized crop and the resize + centre crop have something to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image


def make_imagenet_folder(root: Path, *, classes: int = 3, train_per_class: int = 12, val_per_class: int = 4,
                         val_classes: Optional[int] = None, size: tuple[int, int] = (40, 30),
                         seed: int = 0) -> Path:
    """Write the folder under ``root`` and return ``root``.

    ``val_classes`` (default: all) gives only the first N classes a ``val/`` folder: ImageNet's
    layout allows a test split that holds a subset of the classes. ``size`` is (width, height) of
    the largest image; others are up to 25% smaller in each direction.
    """
    if classes < 2 or train_per_class < 1 or val_per_class < 1:
        raise ValueError("need at least 2 classes and 1 image per class in each split")
    rng = np.random.default_rng(seed)
    root = Path(root)
    wnids = [f"n{i:08d}" for i in range(classes)]
    palette = rng.integers(0, 256, size=(classes, 3))
    splits = {"train": (wnids, train_per_class), "val": (wnids[:val_classes or classes], val_per_class)}
    for split, (names, per_class) in splits.items():
        for c, wnid in enumerate(names):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                w = int(size[0] * rng.uniform(0.75, 1.0))
                h = int(size[1] * rng.uniform(0.75, 1.0))
                noise = rng.integers(-40, 41, size=(h, w, 3))
                img = np.clip(palette[c] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{wnid}_{split}_{i}.JPEG", quality=90)
    return root
