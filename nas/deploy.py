"""The deliverable of a run: the networks trained at full budget, ready to use, in ``RUN_DIR/deploy/``.

``shufflenas run`` and ``shufflenas retrain`` end here. Every model they
trained and tested (the picked front members and the baselines) gets a
folder::

    deploy/trial26/architecture.yaml   the network (Architecture.from_yaml)
    deploy/trial26/weights.pt          its trained state_dict (torch.load(..., weights_only=True))
    deploy/trial26/model.onnx          exported from those weights; input "input", output "logits"
    deploy/trial26/model.yaml          what the weights are ("weights: trained (...)" and the recipe),
                                       test accuracy, re-measured latency, the ONNX check against
                                       PyTorch, the input preprocessing, a one-line load snippet
    deploy/deploy.json, deploy/deploy.md   the index, fastest first

The ONNX file is checked on the first test images (normalised as the
preprocessing says): the largest difference between its ONNX Runtime outputs
and PyTorch's, and on how many of them the two predict the same class. File
names inside are relative to each model's folder; the load line changes into
the folder first (:data:`nas.export.PATHS_NOTE`). The folder is rebuilt
beside the old one and swapped in, so a killed run leaves the previous one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from evaluators.data import DataSplits, batches
from search_space import Architecture, build_model
from search_space.io import atomic_write_json, atomic_write_text, dump_yaml

from .export import PATHS_NOTE, export_onnx, load_snippet
from .run_folder import DEPLOY, RunFolder

#: test images the ONNX file is compared with PyTorch on
CHECK_IMAGES = 256


def trained_weights(run_dir: Path, row: dict) -> Path:
    """Where retraining saved ``row``'s weights (in the run it was reused from, for a reused baseline)."""
    src = RunFolder(row["reused_from"]) if row.get("reused_from") else RunFolder(run_dir)
    return src.retrain / row["name"] / "weights.pt"


def recipe_text(row: dict) -> str:
    c = row.get("config") or {}
    data = (row.get("recipe") or {}).get("data", "?")
    return (f"{c.get('epochs')} epoch(s), {c.get('optimizer')}, lr {c.get('lr')}, batch {c.get('batch_size')}, "
            f"seed {c.get('seed')}, on {row.get('train_images')} training images of {data}; "
            f"the full recipe is under 'recipe'")


def preprocessing(arch: Architecture, data: DataSplits) -> dict:
    """What a caller does to an image before the network (as the training and the test did)."""
    return {"input": f"float32 N x {arch.in_channels} x {arch.input_size} x {arch.input_size}",
            "resize": f"to {arch.input_size}x{arch.input_size}, bilinear (antialiased when shrinking); grey <-> RGB "
                      f"as evaluators.data.adapt does",
            "normalise": "x = (pixel - 255 * mean[c]) / (255 * std[c]), pixel 0..255 as float32",
            "mean": list(data.mean), "std": list(data.std), "classes": list(data.classes)}


def deploy_model(row: dict, weights: Path, latency: dict, data: DataSplits, folder: Path, final: Path) -> dict:
    """Write one trained model into ``folder`` (which will end up at ``final``); returns its model.yaml."""
    arch = Architecture.from_dict(row["arch"])
    model = build_model(arch)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))  # strict: it is this network
    folder.mkdir(parents=True)
    arch.to_yaml(folder / "architecture.yaml")
    shutil.copyfile(weights, folder / "weights.pt")
    x, _ = next(batches(data.test, CHECK_IMAGES, shuffle=False, augment=False, generator=None,
                        mean=data.mean, std=data.std))
    check = export_onnx(model, arch, folder / "model.onnx", inputs=x)
    n = len(data.test)
    doc = {
        "name": row["name"], "kind": row["kind"],
        "weights": f"trained ({recipe_text(row)})",
        "test_accuracy": row["test_acc"], "test_correct": round(row["test_acc"] * n), "test_images": n,
        "val_accuracy": row["val_acc"],
        "latency_ms": {k: latency.get(k) for k in ("median_ms", "p90_ms", "iqr_rel", "flagged")},
        "latency_target": latency.get("target"),
        "params": row["params"], "mflops": row["mflops"],
        "onnx_check": {**check, "on": f"the first {check['inputs']} test images"},
        "preprocessing": preprocessing(arch, data),
        "files": {"architecture": "architecture.yaml", "weights": "weights.pt", "onnx": "model.onnx"},
        "load": load_snippet(final, weights=True),
        "recipe": row.get("recipe"),
        **({"reused_from": row["reused_from"]} if row.get("reused_from") else {}),
    }
    atomic_write_text(folder / "model.yaml", PATHS_NOTE + dump_yaml(doc))
    return doc


def deploy(run_dir: str | Path, rows: list[dict], latency: dict[str, dict],
           data_for: Callable[[Architecture], DataSplits], *, log: Callable[[str], None] = print) -> Path:
    """``RUN_DIR/deploy/``: every retrained model of ``rows`` (results.jsonl rows) with its weights,
    ONNX file and numbers; ``latency`` is the one-session re-measurement, ``data_for(arch)`` the
    retraining data (for the preprocessing and the ONNX check)."""
    run_dir = Path(run_dir)
    new, final, old = run_dir / f"{DEPLOY}.new", run_dir / DEPLOY, run_dir / f"{DEPLOY}.old"
    for p in (new, old):
        shutil.rmtree(p, ignore_errors=True)
    new.mkdir()
    index, missing = [], []
    for row in sorted(rows, key=lambda r: latency[r["name"]]["median_ms"]):
        name, weights = row["name"], trained_weights(run_dir, row)
        if not weights.is_file():
            missing.append(name)
            log(f"deploy: {name}: its trained weights are gone ({weights}); not deployed")
            continue
        doc = deploy_model(row, weights, latency[name], data_for(Architecture.from_dict(row["arch"])),
                           new / name, final / name)
        chk = doc["onnx_check"]
        log(f"deploy: {name}: test accuracy {doc['test_accuracy']:.4f} ({doc['test_correct']}/{doc['test_images']}), "
            f"{doc['latency_ms']['median_ms']:.3f} ms; ONNX vs PyTorch max abs diff {chk['max_abs_diff_vs_torch']:.2g}, "
            f"same class on {chk['same_prediction']}/{chk['inputs']} test images")
        index.append({"name": name, "kind": row["kind"], "folder": name, "weights": "trained",
                      "test_accuracy": doc["test_accuracy"], "test_correct": doc["test_correct"],
                      "test_images": doc["test_images"], "latency_ms": doc["latency_ms"]["median_ms"],
                      "params": doc["params"], "mflops": doc["mflops"],
                      "onnx_max_abs_diff": chk["max_abs_diff_vs_torch"], "load": doc["load"]})
    atomic_write_json(new / "deploy.json", {"models": index, "not_deployed": missing,
                                            "recipe": rows[0].get("recipe") if rows else None})
    atomic_write_text(new / "deploy.md", markdown(index, missing))
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)
    log(f"deploy: {len(index)} trained network(s) with weights and ONNX in {final} (index: deploy.md)")
    return final


def markdown(index: list[dict], missing: list[str]) -> str:
    head = ("# Trained networks\n\nEach folder holds `architecture.yaml`, the trained `weights.pt`, `model.onnx` "
            "exported from them and `model.yaml` (recipe, test accuracy, latency, ONNX check, preprocessing). "
            "Run a folder's `load` line (in its `model.yaml`) to get the PyTorch model.\n\n"
            "| model | kind | latency ms | test accuracy | params | MFLOPs | ONNX max abs diff |\n"
            "|---|---|---:|---:|---:|---:|---:|\n")
    body = "".join(f"| [{m['name']}]({m['folder']}/model.yaml) | {m['kind']} | {m['latency_ms']:.3f} | "
                   f"{100 * m['test_accuracy']:.2f}% ({m['test_correct']}/{m['test_images']}) | {m['params']:,} | "
                   f"{m['mflops']:.1f} | {m['onnx_max_abs_diff']:.2g} |\n" for m in index)
    tail = f"\nNot deployed (trained weights missing): {', '.join(missing)}\n" if missing else ""
    return head + body + tail
