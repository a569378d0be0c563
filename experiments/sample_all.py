"""Build and run N random architectures of a space; every one must build and match the cost model.

    python experiments/sample_all.py [--space all_open] [--n 1000] [--seed 0]

The tests check 150 samples of the all-open space; this is the full run.
"""

from __future__ import annotations

import argparse
import time

import torch

from search_space import build_model, load_space, profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="all_open")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    space = load_space(args.space)
    t0 = time.perf_counter()
    archs = space.sample(args.n, seed=args.seed)
    failures, distinct = [], len(set(archs))
    for i, arch in enumerate(archs):
        try:
            model = build_model(arch).eval()
            with torch.no_grad():
                out = model(torch.randn(1, arch.in_channels, arch.input_size, arch.input_size))
            assert out.shape == (1, arch.num_classes), out.shape
            assert profile(arch).params == sum(p.numel() for p in model.parameters())
        except Exception as exc:  # report every failure, do not stop at the first
            failures.append((i, repr(exc)))
    dt = time.perf_counter() - t0
    print(f"space {space.name} (size {space.size():,}): {args.n} samples, {distinct} distinct, "
          f"{args.n - len(failures)} built and ran, {len(failures)} failed, {dt:.1f} s")
    for i, err in failures[:10]:
        print(f"  sample {i}: {err}")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
