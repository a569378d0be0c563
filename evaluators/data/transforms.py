"""The standard ImageNet transforms for one image file, with Pillow only (torchvision does not
import beside the CPU torch build this project pins).

* training: random-resized crop (area 8-100% of the image, aspect ratio 3/4-4/3, as
  torchvision's ``RandomResizedCrop``) to ``size`` x ``size``, and a horizontal flip with
  probability 1/2;
* evaluation: resize the shorter side to ``size / 0.875`` (256 for 224) and take the central
  ``size`` x ``size`` crop (torchvision's ``Resize`` + ``CenterCrop``).

Both are done as one ``Image.resize(..., box=crop)`` (bilinear, antialiased when shrinking),
and JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still gives the crop at
least ``size`` pixels (``Image.draft``), so a 500x375 ImageNet photo decoded for a 64x64 input
costs a fraction of a full decode. Random draws come from a ``random.Random`` seeded per image,
so the result depends on the seed only, not on which loader worker decodes it.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

#: evaluation resize: the shorter side becomes size / CROP_FRACTION before the central crop
CROP_FRACTION = 0.875
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)

Box = tuple[float, float, float, float]  # left, top, right, bottom in source pixels


def random_resized_crop_box(width: int, height: int, rng: random.Random, scale=SCALE, ratio=RATIO) -> Box:
    """torchvision's RandomResizedCrop parameters: ten tries at a random area and aspect ratio,
    then the central crop at the nearest allowed aspect ratio."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def center_crop_box(width: int, height: int, size: int, crop_fraction: float = CROP_FRACTION) -> Box:
    """The source region that resize-shorter-side-to-``size/crop_fraction`` + centre crop keeps."""
    resized_short = int(size / crop_fraction)
    side = size * min(width, height) / resized_short  # the crop's side in source pixels
    side_w, side_h = min(side, width), min(side, height)
    left, top = (width - side_w) / 2, (height - side_h) / 2
    return left, top, left + side_w, top + side_h


def decode_image(path: str | Path, size: int, mode: str, *, augment: bool, flip: bool,
                 seed: Optional[int]) -> np.ndarray:
    """``path`` as a ``size`` x ``size`` uint8 array (H x W x C; C = 3 for mode RGB, 1 for L).

    Raises what Pillow raises for a file it cannot read (OSError, SyntaxError, ValueError, ...).
    """
    rng = random.Random(seed)
    with Image.open(path) as im:
        w0, h0 = im.size
        box = random_resized_crop_box(w0, h0, rng) if augment else center_crop_box(w0, h0, size)
        bw, bh = box[2] - box[0], box[3] - box[1]
        if im.format == "JPEG":
            # decode at a reduced scale where the crop still spans >= size pixels
            im.draft(mode, (math.ceil(w0 * size / bw), math.ceil(h0 * size / bh)))
            if im.size != (w0, h0):
                fx, fy = im.size[0] / w0, im.size[1] / h0
                box = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
        if im.mode != mode:
            im = im.convert(mode)
        out = im.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if augment and flip and rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.array(out, dtype=np.uint8).reshape(size, size, -1)  # a writable copy (torch.from_numpy)
