"""Any image-folder tree: one sub-folder per class (pillow decodes the files).

``PATH/train/<class>/*`` and ``PATH/test/<class>/*`` (or ``val/``) are used as
the splits when present; otherwise ``PATH/<class>/*`` is one pool from which a
fixed, seeded test share is held out (like ``digits``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .tensors import RawDataset, TensorData

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
TEST_FRACTION = 0.2
TEST_SEED = 20180101


def _classes(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_tree(root: Path, classes: list[str], size: int, mode: str) -> TensorData:
    from PIL import Image, UnidentifiedImageError

    xs, ys = [], []
    for label, cls in enumerate(classes):
        folder = root / cls
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() not in EXTENSIONS:
                continue
            try:
                with Image.open(f) as im:
                    im = im.convert(mode).resize((size, size), Image.BILINEAR)
                    xs.append(np.asarray(im, dtype=np.uint8).reshape(size, size, -1))
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise DataError(f"{f}: not a readable image ({exc.__class__.__name__}); "
                                f"expected {', '.join(sorted(EXTENSIONS))}") from None
            ys.append(label)
    if not xs:
        return TensorData(torch.zeros((0, 3 if mode == "RGB" else 1, size, size), dtype=torch.uint8),
                          torch.zeros(0, dtype=torch.int64), flip=True)
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous()
    return TensorData(x, torch.tensor(ys), flip=True)


def load_folder(path: Path, input_size: int, in_channels: int) -> RawDataset:
    """Images are decoded straight at ``input_size`` (they may all differ in size)."""
    try:
        import PIL  # noqa: F401  (a matplotlib dependency, so normally present)
    except ImportError:
        raise DataError("folder datasets need pillow: pip install pillow") from None
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory; expected a folder with one sub-folder of images per class")
    mode = "L" if in_channels == 1 else "RGB"
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        classes = _classes(root / "train")
        train, test = _read_tree(root / "train", classes, input_size, mode), \
            _read_tree(test_dir, classes, input_size, mode)
        extra = sorted(set(_classes(test_dir)) - set(classes))
        if extra:
            raise DataError(f"{test_dir}: classes {extra} are not in {root / 'train'}")
    else:
        classes = _classes(root)
        pool = _read_tree(root, classes, input_size, mode)
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(TEST_SEED))
        n_test = round(len(pool) * TEST_FRACTION)
        train, test = pool.subset(order[n_test:]), pool.subset(order[:n_test])
    if len(classes) < 2 or len(train) == 0:
        raise DataError(f"{root}: found {len(classes)} class folder(s) and {len(train)} training images; "
                        f"expected at least 2 sub-folders (one per class) holding images")
    return RawDataset(f"folder:{root.name}", train, test, classes)
