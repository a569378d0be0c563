"""Streaming throughput of an image folder against the in-memory path (issue 16, "Measure").

Generates an ImageNet-layout folder of ``--n`` JPEGs (default 20,000 of 32x32, 10 classes;
``val/`` gets a fiftieth as many) under a temporary directory (or ``--dir``), then reports:

* the time to build the file index (first start) and to start again from the cached index;
* images/s of one pass over the training split as training reads it (shuffled, augmented:
  random-resized crop and flip, normalised, at ``--input-size``), streamed from the files with
  0, 1 and 2 DataLoader worker processes (``--workers``);
* the same pass over the same images decoded once into memory (uint8 tensors, the path of
  digits / MNIST / CIFAR-10: padded random crop and flip), and each streamed figure's ratio to it;

with the load average before and after each pass. Nothing is asserted; run it on a quiet
machine::

    python experiments/bench_streaming.py --out experiments/results/bench_streaming.txt
    python experiments/bench_streaming.py --n 400 --images 200   # a smoke run of a few seconds
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_folder(root: Path, n: int, size: int, classes: int, seed: int = 0) -> None:
    """``n`` training JPEGs (and n/50 for val/) of smooth random colour fields, ``size`` x ``size``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("val", max(classes, n // 50))):
        for c in range(classes):
            (root / split / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            c = i % classes
            small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)  # upsampled: JPEG-like content
            img = Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR)
            img.save(root / split / f"class{c:03d}" / f"{i:07d}.jpg", quality=90)


def one_pass(split, args, mean, std, workers=None) -> tuple[float, int]:
    """images/s of one shuffled, augmented pass (at most ``--images`` images)."""
    import torch

    from evaluators.data import batches

    cap = args.images or len(split)
    seen, t = 0, time.perf_counter()
    for _, y in batches(split, args.batch, shuffle=True, augment=True, generator=torch.Generator().manual_seed(0),
                        mean=mean, std=std, device=args.device, workers=workers):
        seen += len(y)
        if seen >= cap:
            break
    if args.device != "cpu":
        from evaluators.device import placement

        placement(args.device).synchronize()
    return seen / (time.perf_counter() - t), seen


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="training JPEGs to generate")
    ap.add_argument("--size", type=int, default=32, help="side of the generated JPEGs")
    ap.add_argument("--input-size", type=int, default=32, help="the architecture's input size")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--images", type=int, default=0, help="images per pass (0 = the whole training split)")
    ap.add_argument("--device", default="cpu", help="where batches land (cuda: through pinned memory)")
    ap.add_argument("--dir", type=Path, help="generate (or reuse) the folder here and keep it")
    ap.add_argument("--out", type=Path, help="also write the table here (e.g. experiments/results/NAME.txt)")
    args = ap.parse_args(argv)

    import torch

    from evaluators.data import TensorData, load_dataset
    from evaluators.data.folder import INDEX_FILE

    torch.set_num_threads(1)
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    say(f"# {' '.join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:]))}")
    say(f"# {os.cpu_count()} cores, torch {torch.__version__}, {args.n} JPEGs of {args.size}x{args.size}, "
        f"{args.classes} classes, input {args.input_size}, batch {args.batch}, device {args.device}, "
        f"torch threads 1 in the training process")
    root = args.dir or Path(tempfile.mkdtemp(prefix="shufflenas-bench-"))
    try:
        if not (root / "train").is_dir():
            t = time.perf_counter()
            make_folder(root, args.n, args.size, args.classes)
            say(f"generated {args.n} training JPEGs in {time.perf_counter() - t:.1f} s under {root}")
        (root / INDEX_FILE).unlink(missing_ok=True)
        spec = f"folder:{root}"
        t = time.perf_counter()
        data = load_dataset(spec, input_size=args.input_size, val_fraction=0.0)
        first = time.perf_counter() - t
        t = time.perf_counter()
        data = load_dataset(spec, input_size=args.input_size, val_fraction=0.0)
        say(f"index: first start {first:.2f} s (lists the folder, samples channel statistics), second start "
            f"{time.perf_counter() - t:.3f} s (cached index)")

        t = time.perf_counter()
        images = torch.stack([torch.from_numpy(data.train.load(i, augment=False, seed=None)).permute(2, 0, 1)
                              for i in range(len(data.train))])
        memory = TensorData(images, data.train.y, flip=True)
        say(f"in-memory copy: {len(memory)} images decoded in {time.perf_counter() - t:.1f} s, "
            f"{memory.nbytes / 2**20:.0f} MiB")

        rows = []
        load0 = os.getloadavg()[0]
        base, n_mem = one_pass(memory, args, data.mean, data.std)
        rows.append(("in-memory", "-", base, n_mem, load0, os.getloadavg()[0]))
        for w in args.workers:
            load0 = os.getloadavg()[0]
            ips, n = one_pass(data.train, args, data.mean, data.std, workers=w)
            rows.append(("streamed", str(w), ips, n, load0, os.getloadavg()[0]))
        say(f"{'path':<10} {'workers':>7} {'images':>7} {'images/s':>10} {'vs memory':>9}  {'load before':>11} "
            f"{'load after':>10}")
        for path, w, ips, n, l0, l1 in rows:
            say(f"{path:<10} {w:>7} {n:>7} {ips:>10.0f} {ips / base:>9.2f}  {l0:>11.2f} {l1:>10.2f}")
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
        print(f"# written to {args.out}")


if __name__ == "__main__":
    main()
