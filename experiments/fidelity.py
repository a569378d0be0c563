"""Fidelity benchmark: how well does each cheap evaluator rank architectures like real training does?

Ground truth: N networks (default 20) of a space, picked to spread evenly over
its latency range (predicted by ``--lut``; multiply-adds without one), each
trained with one recipe (``--truth-epochs``, ``--recipe KEY=VALUE`` for any
``TrainConfig`` field) on a seeded split of the data (``--subset`` images,
``--val-fraction`` of them held out). Its trustworthiness is reported as the
spread of accuracy across the networks against two noises: the same networks
retrained with another seed (``repeat``) and the binomial standard error of an
accuracy on that many validation images (goal: spread >= 3x each).

Networks trained elsewhere with the same recipe count toward the N and are not
trained again: ``--truth-from RUN_DIR`` imports the rows of a ``shufflenas run``
folder's ``retrain/results.jsonl`` (the realistic-budget CIFAR-10 comparison,
issue 17) whose recipe -- dataset, split (``--subset``, ``--val-fraction``,
``--seed``) and training settings (``--truth-epochs``, ``--recipe``) -- is this
ground truth's, and whose architecture lies in ``--space`` (the supernet can
score only those). A run trained with another recipe is refused in one line.
The rows are read once, when ``--out`` is first used (``imported.json``), take
the first indices and each the free point of the latency (or MAC) range nearest
its cost; the sampled networks fill the other points. Their validation accuracy
is imported; they have no early-epoch score.

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
from evaluators.supernet.data import dataset_identity  # noqa: E402
from evaluators.supernet.fidelity import checkpoint_digest  # noqa: E402
from evaluators.training import PLACEMENT_DEFAULTS, TrainConfig, train  # noqa: E402
from evaluators.zero_cost import PROXIES, ZeroCostEvaluator  # noqa: E402
from nas.run_folder import RunFolder  # noqa: E402
from search_space import Architecture, SearchSpace, load_space, profile  # noqa: E402
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
    return {"space": space_of(args.space).to_dict(), "data": args.data, "n": args.n, "seed": args.seed,
            "subset": args.subset, "val_fraction": args.val_fraction, "truth_epochs": args.truth_epochs,
            "recipe": dict(sorted(args.recipe.items())), "lut": str(args.lut) if args.lut else None,
            "pool": args.pool, "truth_from": str(args.truth_from.resolve()) if args.truth_from else None}


def space_of(path) -> SearchSpace:
    """``--space``: a built-in space, a space file, or an experiment file (its search space: the
    CIFAR-10 comparison's, whose retrained networks ``--truth-from`` imports)."""
    p = Path(path)
    if p.is_file() and p.suffix in (".yaml", ".yml"):
        import yaml

        raw = yaml.safe_load(p.read_text())
        if isinstance(raw, dict) and "space" in raw and "stages" not in raw:
            from nas.experiment import load_experiment

            return load_experiment(p).load_space()
    return load_space(path)


def check_settings(args) -> None:
    path = args.out / "settings.json"
    if args.phase == "report" and path.is_file():  # report what is there, with the settings it was made with
        stored = json.loads(path.read_text())
        for k in ("data", "n", "seed", "subset", "val_fraction", "truth_epochs", "recipe", "lut", "pool"):
            setattr(args, k, stored[k])
        args.truth_from = Path(stored["truth_from"]) if stored.get("truth_from") else None
        args.space_name = stored["space"].get("name") or "space"
        return
    mine = settings_of(args)
    args.space_name = mine["space"].get("name") or "space"
    if path.is_file():
        theirs = json.loads(path.read_text())
        diff = [k for k in mine if mine[k] != theirs.get(k)]  # (truth_from: None where an older file lacks it)
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
        self.space = space_of(args.space)
        self.data = load_dataset(args.data, input_size=self.space.spec.input_size,
                                 in_channels=self.space.spec.in_channels, subset=args.subset,
                                 val_fraction=args.val_fraction, seed=args.seed)
        self.cost_name, cost = "macs", lambda a: float(profile(a).macs)
        if args.lut:
            from evaluators.latency import LatencyLUT

            self.cost_name, cost = "latency_ms", LatencyLUT.load(args.lut).predict
        self.imported = read_imported(args)
        fixed = [Architecture.from_dict(r["arch"]) for r in self.imported]
        self.archs, self.costs = spread_over_range(self.space, args.n, args.pool, args.seed, cost, fixed)
        self.record_imported()

    def record_imported(self) -> None:
        """The imported networks' ground-truth rows (indices 0..k-1), appended once to truth.jsonl."""
        path = self.args.out / "truth.jsonl"
        have = {r["i"] for r in read_jsonl(path)}
        for i, row in enumerate(self.imported):
            if i not in have:
                append(path, {**truth_row(i, self.archs[i], self.cost_name, self.costs[i], row["val_acc"],
                                          row["train_seconds"], len(self.data.val)),
                              "acc_1ep": None, "seconds_1ep": None, "history": None,
                              "imported_from": f"{row['run']}: {row['name']}"})

    def recipe(self, seed: int) -> TrainConfig:
        return TrainConfig(**{"epochs": self.args.truth_epochs, "threads": self.args.threads, "seed": seed,
                              **self.args.recipe})


def arch_key(arch: Architecture) -> str:
    """The network, whatever its name."""
    return arch.model_copy(update={"name": None}).to_json()


def spread_over_range(space, n: int, pool: int, seed: int, cost,
                      fixed: list[Architecture] = ()) -> tuple[list[Architecture], list[float]]:
    """``n`` distinct architectures whose costs lie closest to ``n`` evenly spaced points of the range
    that a seeded pool of ``pool`` samples covers (between its 1st and 99th percentile).

    ``fixed`` architectures (imported ground truth) come first, all of them, each taking the free
    point nearest its cost; pool samples fill the points left."""
    import numpy as np

    cands = space.sample(pool, seed=seed)
    costs = np.array([cost(a) for a in cands])
    lo, hi = np.percentile(costs, [1, 99])
    targets = list(lo + (np.arange(n) + 0.5) * (hi - lo) / n)
    fixed_costs = [float(cost(a)) for a in fixed]
    for c in fixed_costs:
        if targets:
            targets.pop(int(np.argmin([abs(t - c) for t in targets])))
    chosen, seen = [], {arch_key(a) for a in fixed}
    for t in targets:
        for j in np.argsort(np.abs(costs - t), kind="stable"):
            key = arch_key(cands[j])
            if key not in seen:
                seen.add(key)
                chosen.append(int(j))
                break
    return [*fixed, *(cands[j] for j in chosen)], [*fixed_costs, *(float(costs[j]) for j in chosen)]


def depth_of(arch: Architecture) -> int:
    return sum(s.depth for s in arch.stages)


def truth_row(i: int, arch: Architecture, spread_by: str, spread_cost: float, accuracy: float, seconds: float,
              val_images: int) -> dict:
    pr = profile(arch)
    return {"i": i, "arch": arch.to_dict(), "macs": pr.macs, "params": pr.params, "spread_by": spread_by,
            "spread_cost": spread_cost, "depth": depth_of(arch), "width": width_of(arch), "accuracy": accuracy,
            "seconds": seconds, "val_images": val_images}


# ---- ground truth trained elsewhere (--truth-from) --------------------------------------------

#: training settings that decide how a network is computed, not what it learns
RUNTIME_TRAIN_FIELDS = ("threads", *PLACEMENT_DEFAULTS)


def truth_recipe(args) -> dict:
    """This ground truth's recipe in the form ``nas.retrain`` records it (results.jsonl's ``recipe``)."""
    return {"data": args.data, "subset": args.subset, "val_fraction": args.val_fraction, "seed": args.seed,
            "train": TrainConfig(**{"epochs": args.truth_epochs, "threads": args.threads, "seed": args.seed,
                                    **args.recipe}).to_dict()}


def recipe_differences(mine: dict, theirs: dict) -> list[str]:
    """``field VALUE (run: VALUE)`` for what makes recipe ``theirs`` another one than ``mine``: the
    dataset (the same family or folder from any path), the split and every training setting but
    where and how fast it runs (threads, device, amp, channels_last, loader workers)."""
    out = []
    if dataset_identity(str(theirs.get("data"))) != dataset_identity(mine["data"]):
        out.append(f"data {mine['data']} (run: {theirs.get('data')})")
    out += [f"{k} {mine[k]} (run: {theirs.get(k)})" for k in ("subset", "val_fraction", "seed")
            if theirs.get(k) != mine[k]]

    def train(d) -> dict:
        try:
            full = TrainConfig(**d).to_dict(full=True)
        except Exception as exc:  # settings of another version: a difference, named
            return {"(unreadable)": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
        return {k: v for k, v in full.items() if k not in RUNTIME_TRAIN_FIELDS}

    a, b = train(mine["train"]), train(theirs.get("train") or {})
    out += [f"train.{k} {a.get(k)} (run: {b.get(k)})" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return out


def select_imports(args) -> list[dict] | None:
    """The networks ``--truth-from`` contributes (None: nothing to do, none asked for or already pinned).

    Every row of the run's ``retrain/results.jsonl`` trained with this recipe, whose network lies
    in the space, is kept (the last row of a name; one row per network). A run with none is refused
    in one line: another recipe (naming the differences), or no network of the space. Nothing is
    written here: a refusal leaves ``--out`` as it was.
    """
    if not args.truth_from or (args.out / "imported.json").is_file():
        return None
    results = RunFolder(args.truth_from).retrain / "results.jsonl"
    if not results.is_file():
        sys.exit(f"fidelity: --truth-from {args.truth_from}: no {results.relative_to(args.truth_from)}; "
                 f"name the folder of a `shufflenas run` whose retraining has finished networks")
    space, mine = space_of(args.space), truth_recipe(args)
    rows = {r["name"]: r for r in read_jsonl(results)}  # a name retrained later (another recipe) counts last
    other, outside, kept, keys = [], [], [], set()
    for name, r in rows.items():
        diff = recipe_differences(mine, r.get("recipe") or {})
        arch = Architecture.from_dict(r["arch"])
        if diff:
            other.append((name, diff))
        elif not space.contains(arch):
            outside.append(name)
        elif arch_key(arch) not in keys:
            keys.add(arch_key(arch))
            kept.append({"run": str(args.truth_from), "name": name, "kind": r.get("kind"), "arch": r["arch"],
                         "val_acc": r["val_acc"], "train_seconds": r["train_seconds"], "recipe": r["recipe"]})
    if not kept:
        if other and not outside:
            sys.exit(f"fidelity: --truth-from {args.truth_from}: its networks were trained with another recipe "
                     f"than this ground truth's: {'; '.join(other[0][1][:4])}; match --data, --subset, "
                     f"--val-fraction, --seed, --truth-epochs and --recipe to it, or leave --truth-from out")
        sys.exit(f"fidelity: --truth-from {args.truth_from}: none of its {len(rows)} retrained networks "
                 f"lies in space {space.name!r} with this recipe ({len(outside)} outside the space, "
                 f"{len(other)} of another recipe); pass that run's space with --space, or leave --truth-from out")
    notes = [f"{len(outside)} outside space {space.name!r} ({', '.join(outside[:4])})" if outside else "",
             f"{len(other)} of another recipe ({', '.join(n for n, _ in other[:4])})" if other else ""]
    note = "; ".join(n for n in notes if n)
    print(f"fidelity: {len(kept)} ground-truth networks imported from {args.truth_from} "
          f"({', '.join(r['name'] for r in kept)})" + (f"; left out: {note}" if note else ""), flush=True)
    return kept


def read_imported(args) -> list[dict]:
    path = args.out / "imported.json"
    return json.loads(path.read_text()) if path.is_file() else []


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
        append(path, {**truth_row(i, arch, s.cost_name, s.costs[i], r.accuracy, r.seconds, len(s.data.val)),
                      "acc_1ep": h[0]["val_acc"], "seconds_1ep": h[0]["seconds"], "history": h})
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
    imported = read_imported(args)
    expected = max(args.n, len(imported))  # the imported networks count toward --n; all of them are kept
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

    early = [i for i in ids if truth[i].get("acc_1ep") is not None]  # imported networks have none
    add("early epoch (val acc after epoch 1)", {i: truth[i]["acc_1ep"] for i in early},
        {i: truth[i]["seconds_1ep"] for i in early})
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
            if row["evaluator"] == f"supernet {variant}, BN {bn} images" and len(common) == len(ids) == expected:
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
        f"{'latency' if args.lut else 'multiply-add'} range" + (
            f"; {len(imported)} of them trained with the same recipe by {imported[0]['run']} and imported "
            f"({', '.join(r['name'] for r in imported)}), not retrained" if imported else "") + ".",
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


def subset_arg(text: str) -> int | None:
    if text == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of images, or 'all'") from None
    if n < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 2 images")
    return n


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
    ap.add_argument("--space", default=str(SPACE),
                    help="a built-in space, a space file, or an experiment file (its space)")
    ap.add_argument("--data", default=f"cifar10:{CIFAR}")
    ap.add_argument("--n", type=int, default=20, help="ground-truth networks")
    ap.add_argument("--pool", type=int, default=2000, help="samples the n networks are picked from")
    ap.add_argument("--lut", type=Path, help="latency lookup table: spread the networks over latency, not MACs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subset", type=subset_arg, default=10_000,
                    help="images drawn from the training set ('all': the whole of it)")
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
    ap.add_argument("--truth-from", type=Path, metavar="RUN_DIR",
                    help="import the ground truth a `shufflenas run` folder retrained with this very recipe "
                         "(retrain/results.jsonl): those networks count toward --n and are not trained again")
    args = ap.parse_args(argv)
    args.recipe = parse_recipe(args.recipe)
    args.variant = args.variant or list(VARIANTS)
    args.bn_images = [int(b) for b in args.bn_images.split(",")]
    imports = select_imports(args) if args.phase != "report" else None
    check_settings(args)
    if imports is not None:  # pinned once: every later phase ranks the same networks
        atomic_write_json(args.out / "imported.json", imports)
    phases = {"truth": [phase_truth], "repeat": [phase_repeat], "proxies": [phase_proxies],
              "supernet": [phase_supernet], "report": [],
              "all": [phase_truth, phase_repeat, phase_proxies, phase_supernet]}[args.phase]
    for phase in phases:
        phase(args)
    print(report(args))


if __name__ == "__main__":
    main()
