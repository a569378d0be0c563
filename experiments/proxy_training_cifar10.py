"""Default proxy budget on the real CIFAR-10: accuracy above chance, and what it costs on this machine.

    python experiments/proxy_training_cifar10.py [--data cifar10:PATH] [--preset NAME] [--threads T]

Trains a CIFAR-size ShuffleNetV2 from scratch with the default proxy budget
(``evaluators.training.PROXY_BUDGETS["cifar10"]``: a seeded 10k-image subset,
9k train / 1k validation) and, for comparison, with SGD + Nesterov at the same
budget. Prints validation accuracy per epoch, wall time and the machine's load
average (other jobs share the cores), then the default recipe's accuracy on
the official 10k test split. Chance is 10%.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from evaluators.data import load_dataset
from evaluators.training import evaluate, proxy_budget, proxy_config, train
from search_space import build_model, presets, profile

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar-10-python.tar.gz"
RECIPES = {"default (AdamW)": {}, "SGD+Nesterov": {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4}}


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=f"cifar10:{SHARED}")
    ap.add_argument("--preset", default="shufflenet_v2_x0_5_cifar")
    ap.add_argument("--threads", type=int, default=1, help="1 = the CLI default (2 threads under load is far slower)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    budget = proxy_budget(args.data)
    arch = presets.get(args.preset)
    p = profile(arch)
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  torch {torch.__version__}  cores {os.cpu_count()}  "
          f"threads {args.threads}  load avg (1/5/15 min) {load()}")
    t = time.perf_counter()
    data = load_dataset(args.data, input_size=arch.input_size, subset=budget["subset"], seed=args.seed)
    print(f"# data {data.summary()}  loaded in {time.perf_counter() - t:.1f} s")
    print(f"# {args.preset}: {p.params:,} params, {p.mflops:.1f} MFLOPs; budget {budget}; chance = 0.100")
    for label, overrides in RECIPES.items():
        config = proxy_config(args.data, threads=args.threads, seed=args.seed, **overrides)
        print(f"\n## {label}: {config.to_dict()}\nload avg before: {load()}", flush=True)
        torch.manual_seed(config.seed)
        model = build_model(arch)
        r = train(arch, data, config, model=model, callback=lambda e, acc: print(
            f"epoch {e}: val acc {acc:.4f}  (load avg {load()})", flush=True))
        print(f"RESULT {label}: val acc {r.accuracy:.4f} ({r.accuracy / 0.1:.1f}x chance), val loss {r.loss:.3f}, "
              f"{r.epochs} epochs x {r.extra['train_images']} images in {r.seconds:.1f} s "
              f"(elapsed after each epoch: {[h['seconds'] for h in r.extra['history']]}); load avg after: {load()}",
              flush=True)
        if label.startswith("default"):
            torch.set_num_threads(config.threads)
            t = time.perf_counter()
            acc, _ = evaluate(model, data.test, data.mean, data.std)
            print(f"RESULT {label}: test acc {acc:.4f} on {len(data.test)} official test images "
                  f"({time.perf_counter() - t:.1f} s to evaluate)", flush=True)


if __name__ == "__main__":
    main()
