"""ImageNet-layout image folders, streamed from disk: ``folder:PATH``.

Layout: ``PATH/train/<class>/*.jpg`` and ``PATH/val/<class>/*.jpg`` (``test/`` is accepted in
place of ``val/``). The classes are the sub-folders of ``train/``, sorted by name; ``val/`` may
hold a subset of them. Any format Pillow reads is taken (see ``EXTENSIONS``).

Splits: ``val/`` is the **test** split (ImageNet's validation set is where accuracies are
reported); the validation split that a search scores candidates on is held out of ``train/``
(``load_dataset``'s ``subset`` and ``val_fraction``, seeded, as for every dataset).

The file list is built once and cached: :func:`file_index` lists both splits (names and
labels, packed into numpy arrays, so loader workers share it without copying) and measures the
per-channel mean/std on a seeded sample of training images; the result is saved as
``PATH/.shufflenas-index.npz``, or, where the folder is not writable, under the cache directory
(``$SHUFFLENAS_CACHE`` or ``~/.cache/shufflenas``)``/folder-index/``. It is rebuilt when the
folder's resolved path or the modification time of ``train/``, ``val/`` or any class folder
changes (adding, removing or renaming a file changes its folder's time), so a second start on a
folder of 1.28 M files reads one file instead of listing 2,000 directories.

Images are never held in memory: :func:`stream_batches` decodes each batch in a torch
``DataLoader`` (worker processes; pinned memory when the batches go to a CUDA device) with the
standard transforms (:mod:`.transforms`) at the architecture's input size, and normalises on the
target device. The order and every random crop and flip come from the caller's seeded generator
(one seed per image), so a seed gives the same batches with any number of workers.

A file that cannot be decoded in the middle of an epoch is **skipped and counted**: it is left
out of its batch, and its path and the reason are kept in :attr:`ImageFiles.skipped` (training
reports them as ``skipped_images``). When more than ``max(10, 1%)`` of a split is unreadable the
folder is probably not what was meant, and a :class:`DataError` names the first such file. Any
other error in a loader worker is re-raised in the training process by the DataLoader (never a
hang).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from search_space.io import atomic_write_bytes

from ..device import ray_assigned_cpus
from .download import cache_dir
from .errors import DataError
from .tensors import RawDataset
from .transforms import decode_image

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
LAYOUT = "PATH/train/<class>/*.jpg and PATH/val/<class>/*.jpg"
INDEX_FILE = ".shufflenas-index.npz"
INDEX_VERSION = 1
#: mean/std are measured on this many training images (seeded), decoded at STATS_SIZE
STATS_SAMPLE, STATS_SIZE, STATS_SEED = 256, 32, 0
#: unreadable images are skipped until more than max(MAX_SKIPPED, MAX_SKIPPED_SHARE x split size)
MAX_SKIPPED, MAX_SKIPPED_SHARE = 10, 0.01
#: what Pillow raises for a file it cannot decode (a missing file is an OSError too)
UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


# ---- the index --------------------------------------------------------------------------------
def split_dirs(root: Path) -> tuple[Path, Path]:
    """``(PATH/train, PATH/val)``; a one-line DataError when the layout is not ImageNet's."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory; expected an image folder in the ImageNet layout {LAYOUT}")
    train = root / "train"
    test = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if train.is_dir() and test is not None:
        return train, test
    missing = " and ".join(n for n, ok in (("train/", train.is_dir()), ("val/", test is not None)) if not ok)
    hint = ""
    if not train.is_dir() and set(_class_names(root)) - {"val", "test"}:
        hint = "; its class folders belong in PATH/train/ (and some of their images in PATH/val/)"
    raise DataError(f"{root}: no {missing} folder; expected the ImageNet layout {LAYOUT}{hint}")


def _class_names(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _signature(train: Path, test: Path, train_classes: list[str], test_classes: list[str]) -> str:
    parts = [f"v{INDEX_VERSION}", str(train.parent.resolve()), test.name]
    for d in [train, test] + [train / c for c in train_classes] + [test / c for c in test_classes]:
        parts.append(f"{d.name}:{d.stat().st_mtime_ns}")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()


def _list_split(split: Path, classes: Sequence[str], only: Optional[set] = None):
    """(names as one uint8 blob, offsets into it, labels) of the image files under ``split``."""
    names: list[bytes] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        d = split / cls
        if (only is not None and cls not in only) or not d.is_dir():
            continue
        files = sorted(e.name for e in os.scandir(d) if not e.name.startswith(".")
                       and os.path.splitext(e.name)[1].lower() in EXTENSIONS and e.is_file())
        names += [os.fsencode(f) for f in files]
        labels += [label] * len(files)
    offsets = np.zeros(len(names) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in names], out=offsets[1:])
    return np.frombuffer(b"".join(names), dtype=np.uint8).copy(), offsets, np.asarray(labels, dtype=np.int64)


def _cache_paths(root: Path) -> list[Path]:
    key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return [root / INDEX_FILE, cache_dir() / "folder-index" / f"{key}.npz"]


def _read_index(paths: list[Path], signature: str) -> Optional[dict]:
    for p in paths:
        try:
            with np.load(p, allow_pickle=False) as z:
                if str(z["signature"]) == signature:
                    return {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            continue  # absent, unreadable or of another format: try the next, else rebuild
    return None


def _write_index(paths: list[Path], index: dict) -> Optional[Path]:
    buf = io.BytesIO()
    np.savez(buf, **index)
    for p in paths:  # the folder itself if writable, else the cache directory
        try:
            return atomic_write_bytes(p, buf.getvalue())
        except OSError:
            continue
    return None  # nowhere writable: the index is rebuilt on the next start


def file_index(root: str | os.PathLike) -> dict:
    """The cached index of an ImageNet-layout folder (built on first use; see the module docstring).

    Keys: ``classes`` (json bytes), ``{train,test}_{names,offsets,labels}``, ``mean_rgb``,
    ``std_rgb``, ``mean_l``, ``std_l``, ``signature``; ``cached_at`` is added (where it was
    read from or written to, or None).
    """
    root = Path(root).expanduser()
    train, test = split_dirs(root)
    classes, test_classes = _class_names(train), _class_names(test)
    extra = sorted(set(test_classes) - set(classes))
    if extra:
        raise DataError(f"{test}: classes {extra[:5]} are not in {train}; every class of "
                        f"{test.name}/ needs a folder in train/")
    signature = _signature(train, test, classes, test_classes)
    paths = _cache_paths(root)
    index = _read_index(paths, signature)
    if index is not None:
        index["cached_at"] = next((str(p) for p in paths if p.is_file()), None)
        return index
    tr_names, tr_off, tr_lab = _list_split(train, classes)
    if len(classes) < 2 or len(tr_lab) == 0:
        raise DataError(f"{train}: found {len(classes)} class folder(s) and {len(tr_lab)} images; expected "
                        f"at least 2 class folders holding images ({', '.join(sorted(EXTENSIONS))})")
    te_names, te_off, te_lab = _list_split(test, classes, only=set(test_classes))
    if len(te_lab) == 0:
        raise DataError(f"{test}: no images in class folders; expected {test.name}/<class>/*.jpg "
                        f"with the class names of train/")
    index = {"signature": np.asarray(signature), "classes": np.frombuffer(json.dumps(classes).encode(), np.uint8),
             "train_names": tr_names, "train_offsets": tr_off, "train_labels": tr_lab,
             "test_names": te_names, "test_offsets": te_off, "test_labels": te_lab}
    index.update(_sample_stats(ImageFiles(train, classes, tr_names, tr_off, tr_lab, input_size=STATS_SIZE)))
    written = _write_index(paths, index)
    index["cached_at"] = str(written) if written else None
    return index


def _sample_stats(files: "ImageFiles") -> dict:
    """Per-channel mean/std (0-1 scale) over a seeded sample, in RGB and grayscale."""
    rng = np.random.default_rng(STATS_SEED)
    rows = rng.choice(len(files), size=min(STATS_SAMPLE, len(files)), replace=False)
    pixels, first_bad = [], None
    for r in sorted(rows.tolist()):
        try:
            pixels.append(decode_image(files.path(r), STATS_SIZE, "RGB", augment=False, flip=False, seed=None))
        except UNREADABLE as exc:
            first_bad = first_bad or f"{files.path(r)}: {type(exc).__name__}: {exc}"
    if not pixels:
        raise DataError(f"none of {len(rows)} sampled images under {files.split_dir} could be read "
                        f"(first: {first_bad})")
    rgb = np.stack(pixels).reshape(-1, 3).astype(np.float64) / 255.0
    grey = rgb @ np.array([0.299, 0.587, 0.114])
    floor = 0.001  # as channel_stats: a constant channel must not divide by zero
    return {"mean_rgb": rgb.mean(0), "std_rgb": np.maximum(rgb.std(0), floor),
            "mean_l": grey.mean(keepdims=True), "std_l": np.maximum(grey.std(keepdims=True), floor)}


def folder_summary(root: str | os.PathLike) -> dict:
    """Classes and image counts of an ImageNet-layout folder, from its cached index (a check that
    takes seconds even for 1.28 M files once the index exists; DataError as ``load_dataset``)."""
    index = file_index(root)
    return {"classes": json.loads(index["classes"].tobytes()), "train_images": len(index["train_labels"]),
            "test_images": len(index["test_labels"]), "index": index["cached_at"]}


# ---- a split ----------------------------------------------------------------------------------
class ImageFiles:
    """One split of an image folder, read from disk per batch (the streamed counterpart of TensorData).

    Holds the file list only (names packed in one numpy buffer, shared with loader workers
    without copying); ``rows`` selects the images of this split (a subset shares the buffers).
    """

    flip = True  # photos: horizontal flips keep the label

    def __init__(self, split_dir: Path, classes: Sequence[str], names: np.ndarray, offsets: np.ndarray,
                 labels: np.ndarray, rows: Optional[np.ndarray] = None, *, input_size: int, in_channels: int = 3):
        if in_channels not in (1, 3):
            raise DataError(f"image folders are decoded as RGB or grayscale; in_channels must be 3 or 1 "
                            f"(got {in_channels})")
        self.split_dir, self.classes = Path(split_dir), tuple(classes)
        self.names, self.offsets, self.labels = names, offsets, labels
        self.rows = np.arange(len(labels), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.input_size, self.in_channels = int(input_size), int(in_channels)
        self.skipped: dict[str, str] = {}  # path -> reason, for files that could not be decoded

    @property
    def mode(self) -> str:
        return "L" if self.in_channels == 1 else "RGB"

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"ImageFiles({self.split_dir}, {len(self)} images, {len(self.classes)} classes, {self.input_size}px)"

    @property
    def y(self) -> torch.Tensor:
        return torch.from_numpy(self.labels[self.rows])

    def path(self, i: int) -> str:
        r = self.rows[i]
        name = os.fsdecode(self.names[self.offsets[r]:self.offsets[r + 1]].tobytes())
        return os.path.join(self.split_dir, self.classes[self.labels[r]], name)

    def subset(self, index) -> "ImageFiles":
        index = index.cpu().numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
        return ImageFiles(self.split_dir, self.classes, self.names, self.offsets, self.labels, self.rows[index],
                          input_size=self.input_size, in_channels=self.in_channels)

    def load(self, i: int, *, augment: bool, seed: Optional[int]) -> np.ndarray:
        """Image ``i`` transformed (H x W x C uint8); raises one of UNREADABLE for a bad file."""
        return decode_image(self.path(i), self.input_size, self.mode, augment=augment, flip=self.flip, seed=seed)


def load_folder(path: Path, input_size: int, in_channels: int) -> RawDataset:
    """Train and test (``val/``) splits of an ImageNet-layout folder, streamed at ``input_size``."""
    index = file_index(path)
    classes = json.loads(index["classes"].tobytes())
    train_dir, test_dir = split_dirs(Path(path).expanduser())
    kw = {"input_size": input_size, "in_channels": in_channels}
    train = ImageFiles(train_dir, classes, index["train_names"], index["train_offsets"], index["train_labels"], **kw)
    test = ImageFiles(test_dir, classes, index["test_names"], index["test_offsets"], index["test_labels"], **kw)
    stats = ("mean_l", "std_l") if in_channels == 1 else ("mean_rgb", "std_rgb")
    return RawDataset(f"folder:{Path(path).name}", train, test, classes,
                      stats=tuple(tuple(float(v) for v in index[k]) for k in stats))


# ---- streaming ----------------------------------------------------------------------------------
def default_workers() -> int:
    """Loader worker processes when not set: one per core but the training process's, at most 8;
    in a Ray worker, one per CPU Ray assigned to it but one (a trial given 1 CPU decodes in process)."""
    assigned = ray_assigned_cpus()
    if assigned is not None:
        cores = int(assigned)
    else:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
    return max(0, min(8, cores - 1))


class _Decode(Dataset):
    """Item ``(position, seed, augment)`` -> (CHW uint8 tensor or None, label, None or (path, reason))."""

    def __init__(self, files: ImageFiles):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item):
        pos, seed, augment = item
        label = int(self.files.labels[self.files.rows[pos]])
        try:
            img = self.files.load(pos, augment=augment, seed=seed)
        except UNREADABLE as exc:
            return None, label, (self.files.path(pos), f"{type(exc).__name__}: {exc}")
        return torch.from_numpy(img).permute(2, 0, 1), label, None


def _collate(items):
    good = [(x, y) for x, y, bad in items if bad is None]
    bad = [b for _, _, b in items if b is not None]
    if not good:
        return torch.zeros((0,), dtype=torch.uint8), torch.zeros((0,), dtype=torch.int64), bad
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good], dtype=torch.int64), bad


class _Plan:
    """The batches of one pass over a split: lists of (position, seed, augment)."""

    def __init__(self, order: torch.Tensor, seeds: Optional[torch.Tensor], augment: bool, batch_size: int,
                 stop: int):
        self.order, self.seeds, self.augment, self.batch_size, self.stop = order, seeds, augment, batch_size, stop

    def __len__(self) -> int:
        return math.ceil(self.stop / self.batch_size)

    def __iter__(self):
        for i in range(0, self.stop, self.batch_size):
            pos = self.order[i:i + self.batch_size].tolist()
            seeds = self.seeds[i:i + self.batch_size].tolist() if self.seeds is not None else [None] * len(pos)
            yield [(p, s, self.augment) for p, s in zip(pos, seeds)]


def stream_batches(files: ImageFiles, batch_size: int, *, shuffle: bool, augment: bool,
                   generator: Optional[torch.Generator], mean: Sequence[float], std: Sequence[float],
                   drop_last: bool = False, device: torch.device | str | None = None,
                   workers: Optional[int] = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(normalised float images, int64 labels)`` on ``device`` (default CPU), decoded from disk.

    ``workers`` loader processes (None = :func:`default_workers`, 0 = in this process).
    A batch may be shorter than ``batch_size`` by the unreadable images it had.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1 (got {batch_size})")
    n = len(files)
    dev = torch.device("cpu") if device is None else torch.device(device)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    seeds = torch.randint(0, 2 ** 62, (n,), generator=generator) if augment else None
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    workers = default_workers() if workers is None else workers
    loader = DataLoader(_Decode(files), batch_sampler=_Plan(order, seeds, augment, batch_size, stop),
                        num_workers=workers, collate_fn=_collate, pin_memory=dev.type == "cuda")
    m = (torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0).to(dev)
    s = (torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0).to(dev)
    limit = max(MAX_SKIPPED, MAX_SKIPPED_SHARE * n)
    it = iter(loader)
    try:
        for x, y, bad in it:
            for path, reason in bad:
                files.skipped.setdefault(path, reason)
            if len(files.skipped) > limit:
                first = next(iter(files.skipped.items()))
                raise DataError(f"{len(files.skipped)} of {n} images under {files.split_dir} could not be read "
                                f"(first: {first[0]}: {first[1]}); at most max({MAX_SKIPPED}, "
                                f"{MAX_SKIPPED_SHARE:.0%}) are skipped")
            if len(y) == 0:
                continue
            if dev.type != "cpu":
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            yield (x.float() - m) / s, y
    finally:
        del it  # shuts the worker processes down now, also when the consumer stopped early
