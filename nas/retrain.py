"""After a search: retrain the front and the hand-designed baselines the same way, test once, compare.

This is how a searched front earns trust: every model -- the Pareto members
picked from the run and the published baselines -- is trained from scratch
with the *same* recipe on the *same* train/validation split, evaluated once
on the test split, and its latency is re-measured in one measurement session
with the search's target. Results go to ``RUN_DIR/retrain/``:

    candidates.json   the picked front members, with the latencies measured to pick them
    results.jsonl     one line per trained model (appended as each finishes: a killed run resumes;
                      with ``retrain.baselines_from``, baselines another run trained with the
                      very same recipe are copied here instead of being trained again)
    latency.json      the re-measurement of every model, one session
    table.md          the table (architecture, params, MFLOPs, latency, test accuracy, time)
    front.png         test accuracy vs latency: searched front against the baselines
    summary.json      everything above plus, per baseline, the best searched model at or
                      under its latency (within the measured noise) and whether it wins

Then every trained model goes to ``RUN_DIR/deploy/`` with its weights, an ONNX
file checked against PyTorch, its test accuracy and latency (:mod:`nas.deploy`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from search_space import Architecture, build_model, presets, profile
from search_space.io import atomic_write_json, atomic_write_text, read_jsonl

from . import records as R
from .deploy import deploy
from .experiment import Experiment, ExperimentError, RetrainSpec
from .run_folder import RunFolder

def pick_candidates(front: list[R.TrialRecord], n: int, latency: dict[int, float] | None = None,
                    targets: tuple[float, ...] = (), more: list[list[R.TrialRecord]] = ()) -> list[R.TrialRecord]:
    """The Pareto members to retrain.

    First, for each latency in ``targets`` (the baselines' measured latencies), the
    member with the best search accuracy at or under it: the rival the comparison
    needs. Then members spread evenly over the front's latency range, up to ``n``
    in all. If the front has fewer than ``n`` members, the next non-dominated layers
    (``more``, in order) fill the rest the same way: a search score is a noisy
    estimate, and a runner-up may retrain better. ``latency`` maps trial numbers to
    measured latencies (the search's own estimate when absent: a LUT prediction can
    sit on the wrong side of a baseline).
    """
    lat = (lambda r: latency[r.number]) if latency else (lambda r: r.latency_ms)
    chosen: list[R.TrialRecord] = []
    members = sorted(front, key=lat)
    for t in sorted(targets):
        under = [m for m in members if lat(m) <= t]
        best = max(under, key=lambda m: m.accuracy, default=None)
        if best is not None and best not in chosen:
            chosen.append(best)
    for layer in (front, *more):
        spread = n - len(chosen)
        rest = [m for m in sorted(layer, key=lat) if m not in chosen]
        if spread <= 0 or not rest:
            continue
        if len(rest) <= spread:
            chosen += rest
        else:
            idx = {round(i * (len(rest) - 1) / (spread - 1)) for i in range(spread)} if spread > 1 \
                else {len(rest) - 1}
            chosen += [rest[i] for i in sorted(idx)]
    return sorted(chosen, key=lat)


def near_baselines(records: list[R.TrialRecord], chosen: list[R.TrialRecord], targets: dict[str, float],
                   band: float, scale: float = 1.0, k: int = 1) -> list[R.TrialRecord]:
    """For each baseline latency in ``targets``, the ``k`` best-scored usable records (one per
    architecture) whose latency, times ``scale`` (the search's estimate mapped to the device), lies in
    ``[(1 - band) t, t]``; those already ``chosen`` (or picked for another baseline) count towards ``k``."""
    pool, seen = [], set()
    for r in sorted(records, key=lambda r: r.number):
        if r.usable and r.arch_key not in seen:
            seen.add(r.arch_key)
            pool.append(r)
    picked: list[R.TrialRecord] = []
    for t in sorted(targets.values()):
        lo = (1 - band) * t
        there = {c.arch_key for c in chosen + picked if lo <= c.latency_ms * scale <= t}
        inside = [r for r in pool if lo <= r.latency_ms * scale <= t and r.arch_key not in there]
        picked += sorted(inside, key=lambda r: r.accuracy, reverse=True)[:max(0, k - len(there))]
    return picked


def _models(run_dir: Path, exp: Experiment, spec: RetrainSpec, *, log=print) -> list[tuple[str, str, Architecture]]:
    """The searched members and the baselines; the pick is saved once (``candidates.json``),
    so a resumed run retrains the same models."""
    out = RunFolder(run_dir).retrain
    saved = out / "candidates.json"
    baselines = [(name, "baseline", presets.get(name)) for name in spec.baselines]
    if saved.is_file():
        picked = json.loads(saved.read_text())
        if (picked.get("candidates", spec.candidates), picked.get("rival_band"), picked.get("rivals", 1)) \
                == (spec.candidates, spec.rival_band, spec.rivals):
            return [(m["name"], "searched", Architecture.from_dict(m["arch"])) for m in picked["searched"]] \
                + baselines
        log(f"retrain: retrain.candidates / rival_band / rivals changed; picking again "
            f"(models already trained are kept)")
    records = RunFolder(run_dir).read_records()
    layers = _layers(records, exp.objectives, spec.candidates)
    if not layers:
        raise ExperimentError(f"{run_dir}: the run has no feasible completed trial to retrain")
    front, more = layers[0], layers[1:]
    from evaluators.latency import MeasurementWorker

    members = [r for layer in layers for r in layer]
    log(f"retrain: measuring {len(members)} searched networks ({len(front)} on the front) and "
        f"{len(baselines)} baselines to pick the rivals ...")
    with MeasurementWorker(*_target_and_protocol(exp)) as worker:
        base_ms = {name: worker.latency(arch).median_ms for name, _, arch in baselines}
        searched_ms = {r.number: worker.latency(Architecture.from_dict(r.arch)).median_ms for r in members}
        picks = pick_candidates(front, spec.candidates, searched_ms, tuple(base_ms.values()), more)
        if spec.rival_band:
            # the search's latencies (a LUT's, say) mapped to this device by the members just measured
            scale = float(np.median([searched_ms[r.number] / r.latency_ms for r in members]))
            extra = near_baselines(records, picks, base_ms, spec.rival_band, scale, spec.rivals)
            log(f"retrain: {len(extra)} more (up to {spec.rivals} per baseline) within {spec.rival_band:.0%} "
                f"below a baseline's latency "
                f"(search latency x {scale:.2f})")
            for r in extra:
                searched_ms[r.number] = worker.latency(Architecture.from_dict(r.arch)).median_ms
            picks = sorted(picks + extra, key=lambda r: searched_ms[r.number])
    layer_of = {r.number: i + 1 for i, layer in enumerate(layers) for r in layer}
    searched = [{"name": f"trial{r.number}", "trial": r.number, "search_accuracy": r.accuracy,
                 "search_latency_ms": r.latency_ms, "measured_ms": searched_ms[r.number],
                 "pareto_layer": layer_of.get(r.number), "arch": r.arch} for r in picks]
    atomic_write_json(saved, {"candidates": spec.candidates, "rival_band": spec.rival_band, "rivals": spec.rivals,
                              "searched": searched, "baselines_ms": base_ms,
                              "searched_ms": {str(k): v for k, v in searched_ms.items()}})
    return [(m["name"], "searched", Architecture.from_dict(m["arch"])) for m in searched] + baselines


def _layers(records, objectives, n: int) -> list[list[R.TrialRecord]]:
    """Non-dominated layers, as many as it takes to hold ``n`` architectures (at most n layers)."""
    layers = R.fronts(records, objectives, n)
    out, count = [], 0
    for layer in layers:
        if count >= n:
            break
        out.append(layer)
        count += len(layer)
    return out


def _target_and_protocol(exp: Experiment):
    from evaluators.latency import LatencyTarget, MeasurementProtocol

    target = LatencyTarget(**exp.latency.target)
    return target, (MeasurementProtocol(**exp.latency.protocol) if exp.latency.protocol else None)


def _recipe(exp: Experiment, spec: RetrainSpec, config: dict) -> dict:
    """Everything that decides a retrained model's accuracy besides its architecture."""
    return {"data": exp.data, "subset": spec.subset, "val_fraction": spec.val_fraction,
            "seed": exp.search.seed, "train": config}


def _done(path: Path, recipe: dict, log=print) -> dict[str, dict]:
    """Models already trained with ``recipe`` (a line cut by a kill: that model is trained again).

    A row of an older recipe (the retrain section was edited before resuming) is not reused.
    Rows written before recipes were recorded are matched on their training settings.
    """
    done = {}
    for row in read_jsonl(path):
        same = row.get("recipe", {**recipe, "train": row.get("config")}) == recipe
        if same:
            done[row["name"]] = row
        else:
            log(f"retrain: {row['name']} was trained with another recipe; it is trained again")
    return done


def _reuse_baselines(spec: RetrainSpec, recipe: dict, names: set[str], log=print) -> list[dict]:
    """Baselines of ``spec.baselines_from`` trained with exactly ``recipe`` (others are trained here)."""
    src = RunFolder(spec.baselines_from)
    if not src.is_run():
        log(f"retrain: retrain.baselines_from {src.path} holds no run; the baselines are trained here")
        return []
    theirs = src.read_experiment()
    their_spec = theirs.retrain or RetrainSpec()
    rows = []
    for row in read_jsonl(src.retrain / "results.jsonl"):
        if row.get("kind") != "baseline" or row["name"] not in names:
            continue
        their_recipe = row.get("recipe") or _recipe(theirs, their_spec, row.get("config"))
        if their_recipe == recipe:
            rows.append({**row, "recipe": recipe, "reused_from": str(src.path)})
        else:
            diff = sorted(k for k in recipe if their_recipe.get(k) != recipe[k])
            log(f"retrain: {row['name']} in {src.path} differs in {', '.join(diff)}; it is trained here")
    return rows


def recipe_data(exp: Experiment, spec: RetrainSpec, arch: Architecture):
    """The retraining data for ``arch``: the experiment's dataset at its input, the recipe's subset
    and the search's train/validation split."""
    from evaluators.data import load_dataset

    return load_dataset(exp.data, input_size=arch.input_size, in_channels=arch.in_channels,
                        subset=spec.subset, val_fraction=spec.val_fraction, seed=exp.search.seed)


def train_and_test(arch: Architecture, data, config, checkpoint: Path):
    """Train ``arch`` with ``config``, save the weights after the last epoch to ``checkpoint`` and
    test those weights once (no model is picked by its test accuracy, nor by an epoch's validation
    accuracy). Returns the training result, test accuracy and test loss."""
    import torch

    from evaluators.training import evaluate, train

    state = Path(checkpoint).with_suffix(".state.pt")  # per-epoch resume point of a long training
    res = train(arch, data, config, checkpoint=checkpoint, state=state)
    state.unlink(missing_ok=True)
    model = build_model(arch)
    model.load_state_dict(torch.load(res.checkpoint, map_location="cpu", weights_only=True))
    test_acc, test_loss = evaluate(model, data.test, data.mean, data.std, device=config.placement(),
                                   workers=config.loader_workers)  # on the training's device
    return res, test_acc, test_loss


def retrain(run_dir: str | Path, exp: Experiment, spec: RetrainSpec, *, progress: bool = True,
            log=print) -> dict:
    """Train, test and re-measure every model; resumable (finished models are skipped)."""
    from evaluators.latency import MeasurementWorker
    from evaluators.training import TrainConfig

    run_dir = Path(run_dir)
    out = RunFolder(run_dir).retrain
    out.mkdir(parents=True, exist_ok=True)
    models = _models(run_dir, exp, spec, log=log)
    results_path = out / "results.jsonl"
    config = TrainConfig(**{"seed": exp.search.seed, **spec.train})
    recipe = _recipe(exp, spec, config.to_dict())
    done = _done(results_path, recipe, log)
    if spec.baselines_from:
        todo = {name for name, kind, _ in models if kind == "baseline" and name not in done}
        for row in _reuse_baselines(spec, recipe, todo, log):
            with results_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            done[row["name"]] = row
            log(f"retrain: {row['name']} reused from {row['reused_from']} (same recipe): "
                f"{row['test_acc']:.4f} test")
    data_cache: dict[int, Any] = {}

    def data_for(arch: Architecture):
        if arch.input_size not in data_cache:
            data_cache[arch.input_size] = recipe_data(exp, spec, arch)
        return data_cache[arch.input_size]

    for name, kind, arch in models:
        if name in done:
            log(f"retrain: {name} already trained ({done[name]['test_acc']:.4f} test), skipped")
            continue
        data = data_for(arch)
        log(f"retrain: {name} ({kind}) for {config.epochs} epochs on {len(data.train)} images ...")
        t0 = time.perf_counter()
        res, test_acc, test_loss = train_and_test(arch, data, config, out / name / "weights.pt")
        p = profile(arch)
        row = {"name": name, "kind": kind, "arch": arch.to_dict(), "params": p.params,
               "mflops": round(p.mflops, 3), "val_acc": res.accuracy, "test_acc": test_acc,
               "test_loss": test_loss, "train_seconds": round(res.seconds, 1),
               "epochs": res.epochs, "train_images": len(data.train), "config": config.to_dict(),
               "recipe": recipe}
        (out / name).mkdir(exist_ok=True)
        arch.to_yaml(out / name / "architecture.yaml")
        with results_path.open("a") as fh:  # one whole line per finished model
            fh.write(json.dumps(row) + "\n")
        done[name] = row
        log(f"retrain: {name}: test accuracy {test_acc:.4f} in {time.perf_counter() - t0:.0f} s")

    target, protocol = _target_and_protocol(exp)
    log(f"retrain: re-measuring {len(models)} models in one session ({target.runtime}, "
        f"{target.threads} thread(s)) ...")
    latency = {}
    with MeasurementWorker(target, protocol) as worker:
        for name, _, arch in models:
            latency[name] = worker.latency(arch).to_dict()
    atomic_write_json(out / "latency.json", latency)
    rows = [done[n] for n, _, _ in models]
    summary = summarise(out, rows, latency, spec)
    summary["deploy"] = str(deploy(run_dir, rows, latency, data_for, log=log))
    return summary


def summarise(out: Path, rows: list[dict], latency: dict, spec: RetrainSpec) -> dict:
    for r in rows:
        lat = latency[r["name"]]
        r["latency_ms"], r["latency_iqr_rel"] = lat["median_ms"], lat["iqr_rel"]
        r["latency_flagged"] = lat.get("flagged", False)
    searched = [r for r in rows if r["kind"] == "searched"]
    verdicts = []
    for b in (r for r in rows if r["kind"] == "baseline"):
        limit = b["latency_ms"] * (1 + spec.latency_tolerance)
        rivals = [s for s in searched if s["latency_ms"] <= limit]
        # chosen by validation accuracy: picking the best of several by their test accuracy
        # would report the luckiest draw on the test set, not a model one could have chosen
        best = max(rivals, key=lambda s: s["val_acc"], default=None)
        verdicts.append({
            "baseline": b["name"], "baseline_latency_ms": b["latency_ms"], "baseline_test_acc": b["test_acc"],
            "best_searched": best["name"] if best else None,
            "searched_latency_ms": best["latency_ms"] if best else None,
            "searched_test_acc": best["test_acc"] if best else None,
            "wins": bool(best and best["test_acc"] > b["test_acc"]),
        })
    summary = {"models": rows, "comparison": verdicts, "latency_tolerance": spec.latency_tolerance}
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "table.md", markdown_table(rows, verdicts))
    plot(rows, out / "front.png")
    return summary


def markdown_table(rows: list[dict], verdicts: list[dict]) -> str:
    head = ("| model | kind | params | MFLOPs | latency ms (median, IQR/med) | test acc | val acc | train s |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|\n")
    body = "".join(
        f"| {r['name']}{' (reused)' if r.get('reused_from') else ''} | {r['kind']} | {r['params']:,} | {r['mflops']:.1f} | "
        f"{r['latency_ms']:.3f} ({100 * r['latency_iqr_rel']:.1f}%){' flagged' if r['latency_flagged'] else ''} | "
        f"{100 * r['test_acc']:.2f}% | {100 * r['val_acc']:.2f}% | {r['train_seconds']:.0f} |\n"
        for r in sorted(rows, key=lambda r: r["latency_ms"]))
    comp = ("\n| baseline | its latency | its test acc | best searched at <= latency (by val acc) | latency | test acc "
            "| wins |\n"
            "|---|---:|---:|---|---:|---:|---|\n")
    comp += "".join(
        f"| {v['baseline']} | {v['baseline_latency_ms']:.3f} | {100 * v['baseline_test_acc']:.2f}% | "
        f"{v['best_searched'] or '(none)'} | "
        + (f"{v['searched_latency_ms']:.3f} | {100 * v['searched_test_acc']:.2f}%" if v['best_searched'] else "- | -")
        + f" | {'yes' if v['wins'] else 'no'} |\n" for v in verdicts)
    return head + body + comp


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for kind, style in (("searched", dict(c="tab:blue", marker="o")), ("baseline", dict(c="tab:red", marker="s"))):
        pts = sorted((r["latency_ms"], 100 * r["test_acc"], r["name"]) for r in rows if r["kind"] == kind)
        if not pts:
            continue
        xs, ys, names = zip(*pts)
        ax.plot(xs, ys, linestyle="-" if kind == "searched" else "none", label=kind, **style)
        for x, y, n in pts:
            ax.annotate(n.replace("shufflenet_", "").replace("_cifar", ""), (x, y), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("latency (ms, median, re-measured in one session)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Retrained at equal budget: searched vs hand-designed")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
