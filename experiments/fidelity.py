"""Fidelity benchmark: how well does each cheap evaluator rank architectures?

Ground truth is proxy training with the default CIFAR-10 proxy budget
(``evaluators.training.PROXY_BUDGETS["cifar10"]``: 3 epochs on a 10k-image
subset, 9k train / 1k validation) of N architectures sampled uniformly from
``experiments/spaces/fidelity.yaml`` (a narrow corner of the ``cifar`` space
that trains in ~3 minutes per network on one core). Cheaper evaluators:

* ``train_1ep`` -- validation accuracy after epoch 1 of the same runs (what an
  ASHA/successive-halving rung sees); cost = time to that point.
* ``supernet`` -- SPOS supernet trained once on the same 9k images, then each
  candidate scored with inherited weights after BN recalibration; cost per
  candidate = scoring time (+ training time amortised over N, shown apart).
* ``zero_cost:<proxy>`` -- each proxy of ``evaluators.zero_cost`` on a batch
  of training images; ``macs`` and ``params`` as the no-cost baselines.

Phases can run in separate processes (1 thread each) and resume: every
result is appended to a JSONL file as soon as it exists, and finished
entries are skipped on restart::

    python experiments/fidelity.py truth &        # ground truth + train_1ep
    python experiments/fidelity.py cheap &        # zero-cost, then supernet
    python experiments/fidelity.py repeat         # noise: first archs retrained, seed+1
    python experiments/fidelity.py report         # table of whatever finished
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "experiments" / "spaces" / "fidelity.yaml"
RESULTS = ROOT / "experiments" / "results" / "fidelity"
CIFAR = os.environ.get("SHUFFLENAS_CIFAR10",
                       str(ROOT.parent / "shared" / "data" / "cifar10" / "cifar-10-python.tar.gz"))

PUBLISHED = (
    "Published points of comparison: Abdelfattah et al. 2021 (ICLR, abstract) report Spearman 0.82 between "
    "final validation accuracy and their best zero-cost proxy on NAS-Bench-201, against 0.61 for EcoNAS "
    "reduced training; ZiCo (Li et al., ICLR 2023) finds that no earlier zero-shot proxy beats #params "
    "consistently; supernet-vs-stand-alone rank correlations in weight-sharing studies (Yu et al. 2020, "
    "'How to train your super-net'; Ning et al. 2020, 'A surgery of the neural architecture evaluators') "
    "depend strongly on the training heuristics, with Kendall tau of roughly 0.2-0.6 (the range issue #4 cites)."
)


def append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def done(path: Path, key: str = "i") -> set:
    if not path.exists():
        return set()
    out = set()
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        out.add(rec[key] if key == "i" else (rec["i"], rec[key]))
    return out


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def setup(args):
    import torch

    from evaluators.data import load_dataset
    from evaluators.training import PROXY_BUDGETS
    from search_space import load_space

    torch.set_num_threads(args.threads)
    space = load_space(SPACE)
    archs = space.sample(args.n, seed=args.seed)
    budget = PROXY_BUDGETS["cifar10"]
    data = load_dataset(f"cifar10:{CIFAR}", input_size=space.spec.input_size, subset=budget["subset"],
                        seed=args.seed)
    return space, archs, data, budget


def phase_truth(args) -> None:
    from evaluators.training import TrainConfig, train
    from search_space import profile

    space, archs, data, budget = setup(args)
    path = args.out / "fidelity_truth.jsonl"
    config = TrainConfig(epochs=budget["epochs"], threads=args.threads, seed=args.seed)
    order = [*range(args.start, len(archs)), *range(args.start)]
    if args.reverse:
        order.reverse()
    for i in order:
        if i in done(path):  # re-read: a second worker may run the other way
            continue
        arch = archs[i]
        r = train(arch, data, config)
        h = r.extra["history"]
        pr = profile(arch)
        append(path, {"i": i, "arch": arch.to_dict(), "macs": pr.macs, "params": pr.params,
                      "accuracy": r.accuracy, "seconds": r.seconds,
                      "acc_1ep": h[0]["val_acc"], "seconds_1ep": h[0]["seconds"], "history": h})
        print(f"truth {i}: acc {r.accuracy:.4f} (1 ep {h[0]['val_acc']:.4f}) {r.seconds:.0f}s", flush=True)


def phase_cheap(args) -> None:
    from evaluators.supernet import SupernetConfig, SupernetEvaluator, load_supernet, train_supernet
    from evaluators.zero_cost import PROXIES, ZeroCostEvaluator

    space, archs, data, budget = setup(args)
    zpath = args.out / "fidelity_zero_cost.jsonl"
    have = done(zpath, "proxy")
    for proxy in PROXIES:
        ev = ZeroCostEvaluator(proxy, data, seed=args.seed, threads=args.threads)
        for i, arch in enumerate(archs):
            if (i, proxy) in have:
                continue
            r = ev.evaluate(arch)
            append(zpath, {"i": i, "proxy": proxy, "score": r.accuracy, "seconds": r.seconds})
        print(f"zero-cost {proxy}: done", flush=True)

    ckpt = args.out / "fidelity_supernet.pt"
    cfg = SupernetConfig(epochs=args.supernet_epochs, lr=args.supernet_lr, threads=args.threads,
                         seed=args.seed, subset=budget["subset"])
    if not args.score_only:
        t0 = time.perf_counter()
        train_supernet(space, data, cfg, out=ckpt, progress=not args.quiet)
        print(f"supernet trained/resumed in {time.perf_counter() - t0:.0f}s this run", flush=True)
    net = load_supernet(ckpt)
    train_seconds = sum(h["seconds"] for h in net.history)
    spath = args.out / "fidelity_supernet.jsonl"
    have = done(spath)
    ev = SupernetEvaluator(net, data, bn_batches=args.bn_batches, seed=args.seed, threads=args.threads)
    for i, arch in enumerate(archs):
        if i in have:
            continue
        r = ev.evaluate(arch)
        append(spath, {"i": i, "accuracy": r.accuracy, "seconds": r.seconds,
                       "supernet_epochs": net.epoch, "supernet_planned_epochs": net.config.epochs,
                       "supernet_train_seconds": train_seconds,
                       "bn_batches": args.bn_batches})
        print(f"supernet {i}: acc {r.accuracy:.4f} {r.seconds:.1f}s", flush=True)


def phase_repeat(args) -> None:
    """Ground-truth noise: retrain the first architectures with seed + 1."""
    from evaluators.training import TrainConfig, train

    space, archs, data, budget = setup(args)
    path = args.out / "fidelity_repeat.jsonl"
    config = TrainConfig(epochs=budget["epochs"], threads=args.threads, seed=args.seed + 1)
    for i in range(args.repeats):
        if i in done(path):
            continue
        r = train(archs[i], data, config)
        append(path, {"i": i, "seed": args.seed + 1, "accuracy": r.accuracy, "seconds": r.seconds})
        print(f"repeat {i}: acc {r.accuracy:.4f} {r.seconds:.0f}s", flush=True)


def report(args) -> str:
    import numpy as np
    from scipy.stats import kendalltau, spearmanr

    truth = {r["i"]: r for r in load(args.out / "fidelity_truth.jsonl")}
    rows: dict[str, dict[int, tuple[float, float]]] = {
        "train_1ep": {i: (r["acc_1ep"], r["seconds_1ep"]) for i, r in truth.items()},
        "macs": {i: (r["macs"], 0.0) for i, r in truth.items()},
        "params": {i: (r["params"], 0.0) for i, r in truth.items()},
    }
    for r in load(args.out / "fidelity_zero_cost.jsonl"):
        rows.setdefault(f"zero_cost:{r['proxy']}", {})[r["i"]] = (r["score"], r["seconds"])
    sup = load(args.out / "fidelity_supernet.jsonl")
    for r in sup:
        rows.setdefault("supernet", {})[r["i"]] = (r["accuracy"], r["seconds"])
    lines = [f"Ground truth: proxy training, {len(truth)} architectures finished "
             f"(mean {np.mean([r['seconds'] for r in truth.values()]) if truth else float('nan'):.0f} s each, "
             f"val acc {min((r['accuracy'] for r in truth.values()), default=float('nan')):.3f}.."
             f"{max((r['accuracy'] for r in truth.values()), default=float('nan')):.3f})", "",
             "| evaluator | n | Kendall tau | p (tau = 0) | Spearman rho | seconds / candidate | vs ground truth cost |",
             "|---|---|---|---|---|---|---|"]
    if truth:  # how much of the ground truth's spread is measurement noise (binomial, on n_val images)
        accs = np.array([r["accuracy"] for r in truth.values()])
        se = float(np.sqrt(accs.mean() * (1 - accs.mean()) / 1000))
        noise = [f"Spread of ground-truth accuracy across architectures: std "
                 f"{accs.std(ddof=1) if len(accs) > 1 else 0:.4f}; binomial standard error of one accuracy on "
                 f"1000 validation images: {se:.4f}."]
        rep = [r for r in load(args.out / "fidelity_repeat.jsonl") if r["i"] in truth]
        if rep:
            diffs = [abs(r["accuracy"] - truth[r["i"]]["accuracy"]) for r in rep]
            noise.append(f"Same architecture retrained with another seed ({len(rep)} architectures): "
                         f"|accuracy difference| {', '.join(f'{d:.4f}' for d in diffs)} (mean {np.mean(diffs):.4f}).")
        lines[1:1] = [" ".join(noise), ""]
    gt_cost = np.mean([r["seconds"] for r in truth.values()]) if truth else float("nan")
    for name, vals in rows.items():
        common = sorted(set(vals) & set(truth))
        if len(common) < 3:
            lines.append(f"| {name} | {len(common)} | - | - | - | - | - |")
            continue
        gt = [truth[i]["accuracy"] for i in common]
        est = [vals[i][0] for i in common]
        cost = float(np.mean([vals[i][1] for i in common]))
        (tau, p), rho = kendalltau(gt, est), spearmanr(gt, est)[0]
        lines.append(f"| {name} | {len(common)} | {tau:.3f} | {p:.3f} | {rho:.3f} | {cost:.2f} | "
                     f"{cost / gt_cost:.4f}x |")
    if sup:
        lines += ["", f"Supernet: {sup[0]['supernet_epochs']} epochs (of {sup[0].get('supernet_planned_epochs', '?')} "
                      f"planned, cosine schedule) of one-path training took "
                      f"{sup[0]['supernet_train_seconds']:.0f} s once (= {sup[0]['supernet_train_seconds'] / gt_cost:.1f}"
                      f" ground-truth trainings; {sup[0]['supernet_train_seconds'] / max(1, len(sup)):.0f} s per "
                      f"candidate amortised over {len(sup)}); BN recalibrated on {sup[0]['bn_batches']} batches of 64."]
    lines += ["", PUBLISHED]
    text = "\n".join(lines)
    (args.out / "fidelity_report.md").write_text(text + "\n")
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("phase", choices=["truth", "cheap", "repeat", "report"])
    ap.add_argument("--n", type=int, default=20, help="architectures sampled from the fidelity space")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--supernet-epochs", type=int, default=20)
    ap.add_argument("--supernet-lr", type=float, default=0.1)
    ap.add_argument("--bn-batches", type=int, default=20)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--reverse", action="store_true",
                    help="truth: take architectures from the last one (a second worker meets the first)")
    ap.add_argument("--start", type=int, default=0, help="truth: begin at this architecture index (a third worker)")
    ap.add_argument("--repeats", type=int, default=2, help="repeat: architectures retrained with seed+1")
    ap.add_argument("--score-only", action="store_true",
                    help="cheap: score with the supernet checkpoint as it is (training stopped early for time)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.phase == "truth":
        phase_truth(args)
    elif args.phase == "cheap":
        phase_cheap(args)
    elif args.phase == "repeat":
        phase_repeat(args)
    print(report(args))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
