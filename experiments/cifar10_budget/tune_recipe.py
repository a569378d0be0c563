"""Choose the final training recipe of the CIFAR-10 comparison on validation data only.

Trains one baseline on the full training split (45,000 train / 5,000 validation images,
the split of the comparison itself) with a candidate recipe and records validation
accuracy after every epoch. The test split is never loaded. Resumes after a kill
(per-epoch state next to the output file).

    python experiments/cifar10_budget/tune_recipe.py --name adamw --epochs 5 \
        --optimizer adamw --lr 0.01 --weight-decay 0.05 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from evaluators.data import load_dataset
from evaluators.training import TrainConfig, train
from search_space import presets

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1].parent / "shared" / "data" / "cifar10" / "cifar-10-python.tar.gz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True, help="recipe name (output file stem)")
    ap.add_argument("--preset", default="shufflenet_v2_x1_0_cifar")
    ap.add_argument("--data", default=f"cifar10:{DATA}")
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--optimizer", choices=["adamw", "sgd"], required=True)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--weight-decay", type=float, required=True)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--warmup", type=float, default=0.05)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "recipe"))
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    arch = presets.get(a.preset)
    data = load_dataset(a.data, input_size=arch.input_size, val_fraction=0.1, seed=0)
    cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, momentum=a.momentum,
                      weight_decay=a.weight_decay, warmup=a.warmup, label_smoothing=a.label_smoothing,
                      optimizer=a.optimizer, threads=a.threads, seed=0, augment=True)

    def show(epoch: int, acc: float) -> None:
        print(f"{a.name}: epoch {epoch}/{a.epochs} val {acc:.4f} (load {os.getloadavg()[0]:.2f})", flush=True)

    t0 = time.time()
    res = train(arch, data, cfg, callback=show, state=out / f"{a.name}.state.pt")
    row = {"name": a.name, "preset": a.preset, "train_images": len(data.train), "val_images": len(data.val),
           "config": cfg.to_dict(), "val_acc": res.accuracy, "history": res.extra["history"],
           "train_seconds": round(res.seconds, 1), "load_average_at_end": os.getloadavg(),
           "wall_seconds_this_process": round(time.time() - t0, 1)}
    (out / f"{a.name}.json").write_text(json.dumps(row, indent=1))
    (out / f"{a.name}.state.pt").unlink(missing_ok=True)
    print(json.dumps({k: row[k] for k in ("name", "val_acc", "train_seconds")}))


if __name__ == "__main__":
    main()
