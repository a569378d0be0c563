"""Fidelity benchmark: how well does each cheap evaluator rank architectures like real training does?

Ground truth: N networks (default 20) of a space, picked to spread evenly over
its latency range (predicted by ``--lut``; multiply-adds without one), each
trained with one recipe (``--truth-epochs``, ``--recipe KEY=VALUE`` for any
``TrainConfig`` field) on a seeded split of the data (``--subset`` images,
``--val-fraction`` of them held out). Its trustworthiness is reported as the
spread of accuracy across the networks against two noises: the same networks
retrained with another seed (``repeat``) and the binomial standard error of an
accuracy on that many validation images (goal: spread >= 3x each).

Evaluators ranked against it, each with Kendall tau and Spearman rho (with
p-values), top-5 overlap, cost per candidate and one-off cost:

* every supernet variant of ``evaluators.supernet.VARIANTS`` asked for
  (``--variant``; trained once on the same training split, resumable per
  epoch), scored after BN recalibration on each of ``--bn-images`` (a sweep
  that shows how many images are enough; 0 keeps the trained statistics);
* the early-epoch score: validation accuracy after the ground truth's first
  epoch (what a successive-halving rung sees), costing that epoch;
* every zero-cost proxy, parameter count, multiply-adds, and depth and width
  (the supernet's score is also correlated with depth and width, to show
  whether it favours shallow or narrow paths).

After scoring, each supernet checkpoint gets a ``<ckpt>.fidelity.json`` record
(:mod:`evaluators.supernet.fidelity`), which a search scoring with it prints.

Every result is appended to a JSONL file in ``--out`` as soon as it exists; a
killed run resumes where it stopped (a network in training resumes from its
last epoch, a supernet from its last epoch). ``settings.json`` pins what the
cached results were made with: other settings for the same ``--out`` are
refused. Phases can run in separate processes, one thread each::

    python experiments/fidelity.py truth &             # ground truth (+ early-epoch score)
    python experiments/fidelity.py truth --reverse &   # a second worker from the other end
    python experiments/fidelity.py repeat              # seed-to-seed noise on the first --repeats networks
    python experiments/fidelity.py proxies             # zero-cost proxies
    python experiments/fidelity.py supernet --variant spos --variant sandwich
    python experiments/fidelity.py report              # table of whatever has finished
    python experiments/fidelity.py all ...             # all of the above, in order
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from evaluators.data import load_dataset  # noqa: E402
from evaluators.supernet import (VARIANTS, SupernetConfig, SupernetEvaluator, load_supernet,  # noqa: E402
                                 record_fidelity, train_supernet)
from evaluators.supernet.fidelity import checkpoint_digest  # noqa: E402
from evaluators.training import TrainConfig, train  # noqa: E402
from evaluators.zero_cost import PROXIES, ZeroCostEvaluator  # noqa: E402
from search_space import Architecture, load_space, profile  # noqa: E402
from search_space.io import atomic_write_json, atomic_write_text, read_jsonl  # noqa: E402

SPACE = ROOT / "experiments" / "spaces" / "fidelity.yaml"
RESULTS = ROOT / "experiments" / "results" / "fidelity"
CIFAR = os.environ.get("SHUFFLENAS_CIFAR10",
                       str(ROOT.parent / "shared" / "data" / "cifar10" / "cifar-10-python.tar.gz"))
TOP_K = 5

PUBLISHED = (
    "Published points of comparison (read, not measured here): Yu et al. 2020 ('How to train your super-net') "
    "raised sparse Kendall tau from 0.22 to 0.46 on NAS-Bench-101 by fixing training heuristics; few-shot NAS "
    "reaches about 0.63; re-estimating BN statistics alone gave Spearman 0.46-0.71 (about 3x without). "
    "Abdelfattah et al. 2021 report Spearman 0.82 for their best zero-cost vote on NAS-Bench-201; ZiCo (2023) "
    "finds no earlier zero-shot proxy beating #params consistently."
)


# ---- files ------------------------------------------------------------------------------------

def append(path: Path, record: dict) -> None:
    """One finished result, durably (a kill mid-write leaves a cut last line that read_jsonl skips)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def settings_of(args) -> dict:
    """What the cached ground truth depends on (the supernet's settings live in its checkpoint)."""
    return {"space": load_space(args.space).to_dict(), "data": args.data, "n": args.n, "seed": args.seed,
            "subset": args.subset, "val_fraction": args.val_fraction, "truth_epochs": args.truth_epochs,
            "recipe": dict(sorted(args.recipe.items())), "lut": str(args.lut) if args.lut else None,
            "pool": args.pool}


def check_settings(args) -> None:
    path = args.out / "settings.json"
    if args.phase == "report" and path.is_file():  # report what is there, with the settings it was made with
        stored = json.loads(path.read_text())
        for k in ("data", "n", "seed", "subset", "val_fraction", "truth_epochs", "recipe", "lut", "pool"):
            setattr(args, k, stored[k])
        args.space_name = stored["space"].get("name") or "space"
        return
    mine = settings_of(args)
    args.space_name = mine["space"].get("name") or "space"
    if path.is_file():
        theirs = json.loads(path.read_text())
        diff = [k for k in mine if mine[k] != theirs.get(k)]
        if diff:
            sys.exit(f"fidelity: {args.out} holds results made with other settings ({', '.join(diff)}); "
                     f"use the same settings or another --out")
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, mine)


# ---- what is ranked ---------------------------------------------------------------------------

class Setup:
    """The space, the data split and the N ground-truth architectures, identical in every phase."""

    def __init__(self, args):
        import torch

        torch.set_num_threads(args.threads)
        self.args = args
        self.space = load_space(args.space)
        self.data = load_dataset(args.data, input_size=self.space.spec.input_size,
                                 in_channels=self.space.spec.in_channels, subset=args.subset,
                                 val_fraction=args.val_fraction, seed=args.seed)
        self.cost_name, cost = "macs", lambda a: float(profile(a).macs)
        if args.lut:
            from evaluators.latency import LatencyLUT

            self.cost_name, cost = "latency_ms", LatencyLUT.load(args.lut).predict
        self.archs, self.costs = spread_over_range(self.space, args.n, args.pool, args.seed, cost)

    def recipe(self, seed: int) -> TrainConfig:
        return TrainConfig(**{"epochs": self.args.truth_epochs, "threads": self.args.threads, "seed": seed,
                              **self.args.recipe})


def spread_over_range(space, n: int, pool: int, seed: int, cost) -> tuple[list[Architecture], list[float]]:
    """``n`` distinct architectures whose costs lie closest to ``n`` evenly spaced points of the range
    that a seeded pool of ``pool`` samples covers (between its 1st and 99th percentile)."""
    import numpy as np

    cands = space.sample(pool, seed=seed)
    costs = np.array([cost(a) for a in cands])
    lo, hi = np.percentile(costs, [1, 99])
    targets = lo + (np.arange(n) + 0.5) * (hi - lo) / n
    chosen, seen = [], set()
    for t in targets:
        for j in np.argsort(np.abs(costs - t), kind="stable"):
            key = cands[j].to_json()
            if key not in seen:
                seen.add(key)
                chosen.append(int(j))
                break
    return [cands[j] for j in chosen], [float(costs[j]) for j in chosen]


def depth_of(arch: Architecture) -> int:
    return sum(s.depth for s in arch.stages)


def width_of(arch: Architecture) -> int:
    return sum(s.channels for s in arch.stages)


# ---- phases -----------------------------------------------------------------------------------

def phase_truth(args) -> None:
    s = Setup(args)
    path = args.out / "truth.jsonl"
    states = args.out / "truth_state"
    states.mkdir(exist_ok=True)
    order = [*range(args.start, len(s.archs)), *range(args.start)]
    if args.reverse:
        order.reverse()
    for i in order:
        if i in {r["i"] for r in read_jsonl(path)}:  # re-read: a second worker may run the other way
            continue
        arch = s.archs[i]
        r = train(arch, s.data, s.recipe(args.seed), state=states / f"{i}.pt")
        h = r.extra["history"]
        pr = profile(arch)
        append(path, {"i": i, "arch": arch.to_dict(), "macs": pr.macs, "params": pr.params,
                      "spread_by": s.cost_name, "spread_cost": s.costs[i], "depth": depth_of(arch), "width": width_of(arch),
                      "accuracy": r.accuracy, "seconds": r.seconds, "acc_1ep": h[0]["val_acc"],
                      "seconds_1ep": h[0]["seconds"], "val_images": len(s.data.val), "history": h})
        print(f"truth {i}: acc {r.accuracy:.4f} (epoch 1: {h[0]['val_acc']:.4f}) {r.seconds:.0f} s", flush=True)


def phase_repeat(args) -> None:
    """Seed-to-seed noise: the first ``--repeats`` networks retrained with seed + 1."""
    s = Setup(args)
    path = args.out / "repeat.jsonl"
    for i in range(min(args.repeats, len(s.archs))):
        if i in {r["i"] for r in read_jsonl(path)}:
            continue
        r = train(s.archs[i], s.data, s.recipe(args.seed + 1), state=args.out / "truth_state" / f"repeat{i}.pt")
        append(path, {"i": i, "seed": args.seed + 1, "accuracy": r.accuracy, "seconds": r.seconds})
        print(f"repeat {i}: acc {r.accuracy:.4f} {r.seconds:.0f} s", flush=True)


def phase_proxies(args) -> None:
    s = Setup(args)
    path = args.out / "proxies.jsonl"
    have = {(r["i"], r["proxy"]) for r in read_jsonl(path)}
    for proxy in PROXIES:
        ev = ZeroCostEvaluator(proxy, s.data, seed=args.seed, threads=args.threads, device=args.device)
        for i, arch in enumerate(s.archs):
            if (i, proxy) not in have:
                r = ev.evaluate(arch)
                append(path, {"i": i, "proxy": proxy, "score": r.accuracy, "seconds": r.seconds})
        print(f"zero-cost {proxy}: done", flush=True)


def variant_checkpoint(args, variant: str) -> Path:
    return args.out / "supernet" / f"{variant}.pt"


def variant_config(args, variant: str) -> SupernetConfig:
    return SupernetConfig.variant(variant, epochs=args.supernet_epochs, seed=args.seed, threads=args.threads,
                                  subset=args.subset, val_fraction=args.val_fraction, device=args.device)


def phase_supernet(args) -> None:
    s = Setup(args)
    path = args.out / "supernet_scores.jsonl"
    for variant in args.variant:
        ckpt = variant_checkpoint(args, variant)
        ckpt.parent.mkdir(exist_ok=True)
        t0 = time.perf_counter()
        train_supernet(s.space, s.data, variant_config(args, variant), out=ckpt, progress=not args.quiet)
        net = load_supernet(ckpt)
        print(f"supernet {variant}: {net.epoch} epochs, {sum(h['seconds'] for h in net.history):.0f} s of "
              f"training in all ({time.perf_counter() - t0:.0f} s this run)", flush=True)
        digest = checkpoint_digest(ckpt)
        for bn in args.bn_images:
            have = {r["i"] for r in read_jsonl(path)
                    if (r["variant"], r["bn_images"], r["checkpoint"]) == (variant, bn, digest)}
            ev = SupernetEvaluator(net, s.data, bn_images=bn, seed=args.seed, threads=args.threads,
                                   device=args.device)
            for i, arch in enumerate(s.archs):
                if i not in have:
                    r = ev.evaluate(arch)
                    append(path, {"variant": variant, "bn_images": bn, "checkpoint": digest, "i": i,
                                  "accuracy": r.accuracy, "seconds": r.seconds})
            print(f"supernet {variant}, BN on {bn} images: scored", flush=True)


# ---- report -----------------------------------------------------------------------------------

def rank_stats(truth: list[float], est: list[float]) -> dict:
    """Kendall tau and Spearman rho with p-values, and how many of the true top-k the estimate's top-k holds."""
    import numpy as np
    from scipy.stats import kendalltau, spearmanr

    with warnings.catch_warnings():  # a constant estimate (e.g. equal depths) has no rank: nan, reported as such
        warnings.simplefilter("ignore")
        tau, tp = kendalltau(truth, est)
        rho, rp = spearmanr(truth, est)
    k = min(TOP_K, len(truth))
    top = lambda v: set(np.argsort(-np.asarray(v), kind="stable")[:k].tolist())
    return {"n": len(truth), "kendall_tau": float(tau), "kendall_p": float(tp), "spearman_rho": float(rho),
            "spearman_p": float(rp), "top5_overlap": f"{len(top(truth) & top(est))}/{k}"}


def noise_summary(truth: dict, repeats: list[dict]) -> dict:
    """Spread across architectures vs seed-to-seed and binomial noise (each as a ratio, goal >= 3)."""
    import numpy as np

    acc = np.array([r["accuracy"] for r in truth.values()])
    n_val = np.mean([r["val_images"] for r in truth.values()])
    out = {"spread_std": float(acc.std(ddof=1)) if len(acc) > 1 else float("nan"),
           "binomial_se": float(np.sqrt(acc.mean() * (1 - acc.mean()) / n_val)), "val_images": int(n_val)}
    out["spread_over_binomial"] = out["spread_std"] / out["binomial_se"] if out["binomial_se"] else float("nan")
    pairs = [(r["accuracy"], truth[r["i"]]["accuracy"]) for r in repeats if r["i"] in truth]
    if pairs:  # std of one run's accuracy from the paired difference of two seeds: sqrt(mean(d^2) / 2)
        d = np.array([a - b for a, b in pairs])
        out["seed_std"] = float(np.sqrt(np.mean(d ** 2) / 2))
        out["seed_pairs"] = len(pairs)
        out["spread_over_seed"] = out["spread_std"] / out["seed_std"] if out["seed_std"] else float("inf")
    return out


def report(args) -> str:
    import numpy as np

    truth = {r["i"]: r for r in read_jsonl(args.out / "truth.jsonl")}
    if len(truth) < 3:
        return f"fidelity: {len(truth)} ground-truth networks finished in {args.out}; need 3 to rank"
    ids = sorted(truth)
    gt = [truth[i]["accuracy"] for i in ids]
    gt_cost = float(np.mean([truth[i]["seconds"] for i in ids]))
    gt_total = gt_cost * len(ids)
    rows = []  # (evaluator, stats, seconds per candidate, one-off seconds)

    def add(name, scores: dict, seconds: dict | float, one_off: float = 0.0, extra: dict | None = None):
        common = [i for i in ids if i in scores]
        if len(common) < 3:
            return
        st = rank_stats([truth[i]["accuracy"] for i in common], [scores[i] for i in common])
        per = float(np.mean([seconds[i] for i in common])) if isinstance(seconds, dict) else seconds
        rows.append({"evaluator": name, **st, "seconds_per_candidate": per, "one_off_seconds": one_off,
                     "cost_vs_truth": (one_off + per * len(ids)) / gt_total, **(extra or {})})

    add("early epoch (val acc after epoch 1)", {i: truth[i]["acc_1ep"] for i in ids},
        {i: truth[i]["seconds_1ep"] for i in ids})
    for key in ("params", "macs", "depth", "width"):
        add(key, {i: truth[i][key] for i in ids}, 0.0)
    zc: dict[str, dict] = {}
    for r in read_jsonl(args.out / "proxies.jsonl"):
        zc.setdefault(r["proxy"], {})[r["i"]] = r
    for proxy, recs in zc.items():
        add(f"zero-cost {proxy}", {i: r["score"] for i, r in recs.items()}, {i: r["seconds"] for i, r in recs.items()})
    params_tau = next((r["kendall_tau"] for r in rows if r["evaluator"] == "params"), None)
    supernet_lines = []
    scores = read_jsonl(args.out / "supernet_scores.jsonl")
    for variant in sorted({r["variant"] for r in scores}):
        ckpt = variant_checkpoint(args, variant)
        if not ckpt.is_file():
            continue
        digest, net = checkpoint_digest(ckpt), load_supernet(ckpt)
        trained = sum(h["seconds"] for h in net.history)
        for bn in sorted({r["bn_images"] for r in scores if r["variant"] == variant}):
            recs = {r["i"]: r for r in scores if (r["variant"], r["bn_images"], r["checkpoint"]) == (variant, bn, digest)}
            if len(recs) < 3:
                continue
            est = {i: r["accuracy"] for i, r in recs.items()}
            common = [i for i in ids if i in est]
            bias = {f"tau_vs_{k}": rank_stats([truth[i][k] for i in common], [est[i] for i in common])["kendall_tau"]
                    for k in ("depth", "width")}
            add(f"supernet {variant}, BN {bn} images", est, {i: r["seconds"] for i, r in recs.items()},
                one_off=trained, extra=bias)
            row = rows[-1]
            if row["evaluator"] == f"supernet {variant}, BN {bn} images" and len(common) == len(ids) == args.n:
                record_fidelity(ckpt, {
                    **{k: row[k] for k in ("n", "kendall_tau", "kendall_p", "spearman_rho", "spearman_p",
                                           "top5_overlap")},
                    "bn_images": bn, "params_kendall_tau": params_tau, "seconds_per_candidate": row["seconds_per_candidate"],
                    "training_seconds": trained, "epochs": net.epoch, **bias,
                    "ground_truth": (f"{args.truth_epochs}-epoch training on {args.data} "
                                     f"({truth[ids[0]]['val_images']} validation images)"),
                    "measured_at": time.strftime("%Y-%m-%d %H:%M")})
        supernet_lines.append(f"- {variant}: {net.epoch}/{net.config.epochs} epochs, {trained:.0f} s of training "
                              f"({trained / gt_cost:.1f} ground-truth trainings); final train loss "
                              f"{net.history[-1]['train_loss']:.3f}, sampled-path train acc "
                              f"{net.history[-1]['train_acc']:.3f}; recipe {json.dumps(VARIANTS.get(variant, {}))}")
    noise = noise_summary(truth, read_jsonl(args.out / "repeat.jsonl"))
    truth_depth = rank_stats(gt, [truth[i]["depth"] for i in ids])["kendall_tau"]
    truth_width = rank_stats(gt, [truth[i]["width"] for i in ids])["kendall_tau"]
    lines = [
        f"# Fidelity: {len(ids)} networks of space {args.space_name!r} on {args.data}", "",
        f"Ground truth: {args.truth_epochs}-epoch training (recipe {json.dumps(args.recipe) if args.recipe else 'default'}), "
        f"mean {gt_cost:.0f} s per network ({gt_total:.0f} s in all); validation accuracy {min(gt):.3f}..{max(gt):.3f} "
        f"on {noise['val_images']} images; networks picked evenly over {len(ids)} points of the "
        f"{'latency' if args.lut else 'multiply-add'} range.",
        f"Noise: spread across architectures (std) {noise['spread_std']:.4f}; binomial standard error "
        f"{noise['binomial_se']:.4f} (ratio {noise['spread_over_binomial']:.1f}x)" + (
            f"; seed-to-seed std {noise['seed_std']:.4f} from {noise['seed_pairs']} retrained networks "
            f"(ratio {noise['spread_over_seed']:.1f}x)" if "seed_std" in noise else "; seed-to-seed: not measured yet "
                                                                                  "(phase repeat)") +
        ". Goal: both ratios >= 3.",
        f"Ground truth against depth: Kendall tau {truth_depth:.2f}; against width: {truth_width:.2f}.", "",
        "| evaluator | n | Kendall tau | p | Spearman rho | p | top-5 overlap | s / candidate | one-off s | "
        "total cost vs ground truth | tau vs depth | tau vs width |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['evaluator']} | {r['n']} | {r['kendall_tau']:.3f} | {r['kendall_p']:.3g} | "
                     f"{r['spearman_rho']:.3f} | {r['spearman_p']:.3g} | {r['top5_overlap']} | "
                     f"{r['seconds_per_candidate']:.2f} | {r['one_off_seconds']:.0f} | {r['cost_vs_truth']:.3f} | "
                     f"{r.get('tau_vs_depth', float('nan')):.2f} | {r.get('tau_vs_width', float('nan')):.2f} |")
    if supernet_lines:
        lines += ["", "Supernets:", *supernet_lines]
    lines += ["", PUBLISHED]
    text = "\n".join(lines)
    atomic_write_text(args.out / "report.md", text + "\n")
    atomic_write_json(args.out / "report.json", {"noise": noise, "rows": rows, "truth_tau_vs_depth": truth_depth,
                                                 "truth_tau_vs_width": truth_width})
    return text


def parse_recipe(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"--recipe {item!r}: expected KEY=VALUE (a TrainConfig field)")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("phase", choices=["truth", "repeat", "proxies", "supernet", "report", "all"])
    ap.add_argument("--space", default=str(SPACE))
    ap.add_argument("--data", default=f"cifar10:{CIFAR}")
    ap.add_argument("--n", type=int, default=20, help="ground-truth networks")
    ap.add_argument("--pool", type=int, default=2000, help="samples the n networks are picked from")
    ap.add_argument("--lut", type=Path, help="latency lookup table: spread the networks over latency, not MACs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subset", type=int, default=10_000, help="images drawn from the training set")
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--truth-epochs", type=int, default=3)
    ap.add_argument("--recipe", action="append", metavar="KEY=VALUE", default=[],
                    help="ground-truth TrainConfig field, e.g. --recipe optimizer=sgd --recipe batch_size=64")
    ap.add_argument("--repeats", type=int, default=5, help="repeat: networks retrained with seed + 1")
    ap.add_argument("--variant", action="append", choices=sorted(VARIANTS),
                    help="supernet recipe(s) to train and score (default: all)")
    ap.add_argument("--supernet-epochs", type=int, default=20)
    ap.add_argument("--bn-images", default="0,256,1024,4096", help="BN recalibration sizes to score with")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--reverse", action="store_true", help="truth: from the last network (a second worker)")
    ap.add_argument("--start", type=int, default=0, help="truth: begin at this network (a third worker)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    args.recipe = parse_recipe(args.recipe)
    args.variant = args.variant or list(VARIANTS)
    args.bn_images = [int(b) for b in args.bn_images.split(",")]
    check_settings(args)
    phases = {"truth": [phase_truth], "repeat": [phase_repeat], "proxies": [phase_proxies],
              "supernet": [phase_supernet], "report": [],
              "all": [phase_truth, phase_repeat, phase_proxies, phase_supernet]}[args.phase]
    for phase in phases:
        phase(args)
    print(report(args))


if __name__ == "__main__":
    main()
