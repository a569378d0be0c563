"""Export of the Pareto-optimal architectures of a run, block by block.

``RUN_DIR/pareto/`` gets ``front.json`` (members, reference point,
hypervolume, knee) and one folder per member, fastest first::

    00_trial12/architecture.yaml   loadable with Architecture.from_yaml
    00_trial12/candidate.yaml      scores, per-block breakdown, files, rebuild snippet
    00_trial12/model.onnx          checked to run in ONNX Runtime
    00_trial12/weights.pt          trained weights, when the evaluator produced them

The folder is built beside the old one and swapped in, so a killed export
leaves the previous one intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from search_space import Architecture, build_model, profile
from search_space.blocks import block_dict, iter_blocks
from search_space.io import atomic_write_json, atomic_write_text, dump_yaml

from . import pareto
from . import records as R
from .experiment import METRICS, Experiment
from .run_folder import FRONT_JSON, RunFolder


def _lut_breakdown(exp: Experiment, arch: Architecture) -> dict | None:
    if exp.latency.mode != "lut":
        return None
    from .objective import load_or_build_lut

    lut = load_or_build_lut(exp, exp.load_space())
    return lut.breakdown(arch)


def _load_weights(model, checkpoint: str) -> bool:
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    model.load_state_dict(state)
    return True


def export_onnx(model, arch: Architecture, path: Path) -> dict:
    """ONNX file of ``model`` (legacy exporter), then one run in ONNX Runtime compared with torch."""
    import onnxruntime as ort
    import torch

    model.eval()
    x = torch.randn(1, arch.in_channels, arch.input_size, arch.input_size,
                    generator=torch.Generator().manual_seed(0))
    tmp = path.with_name(f".{path.name}.tmp")
    with torch.no_grad():
        torch.onnx.export(model, (x,), str(tmp), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17)
        ref = model(x).numpy()
    os.replace(tmp, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x.numpy()})[0]
    return {"output_shape": list(out.shape), "max_abs_diff_vs_torch": float(np.abs(out - ref).max())}


def export_candidate(rec: R.TrialRecord, exp: Experiment, folder: Path, *, onnx: bool = True) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    arch = Architecture.from_dict(rec.arch)
    if not arch.name:
        arch = arch.replace(name=f"{exp.name}_trial{rec.number}")
    arch.to_yaml(folder / "architecture.yaml")
    prof = profile(arch)
    lut = _lut_breakdown(exp, arch)
    blocks = []
    for path, block in iter_blocks(arch):
        b = {"block": path, **block_dict(block), "key": prof.blocks[path]["key"],
             "params": prof.blocks[path]["params"], "macs": prof.blocks[path]["macs"]}
        if lut is not None:
            b["lut_ms"] = lut.get(path)
        blocks.append(b)
    model = build_model(arch)
    files = {"architecture": "architecture.yaml"}
    if rec.checkpoint and Path(rec.checkpoint).is_file():
        _load_weights(model, rec.checkpoint)
        shutil.copyfile(rec.checkpoint, folder / "weights.pt")
        files["weights"] = "weights.pt"
    check = None
    if onnx:
        check = export_onnx(model, arch, folder / "model.onnx")
        files["onnx"] = "model.onnx"
    built_params = sum(p.numel() for p in model.parameters())
    doc = {
        "trial": rec.number, "seed": rec.seed, "in_space": rec.in_space,
        "scores": {"accuracy": rec.accuracy, "latency_ms": rec.latency_ms, "latency_source": rec.latency_source,
                   "latency_measured_ms": None if rec.latency_measured_ms != rec.latency_measured_ms
                   else rec.latency_measured_ms, "params": rec.params, "macs": rec.macs,
                   "built_params": built_params},
        "evaluator": exp.accuracy.method, "dataset": exp.data,
        "files": files, "onnx_check": check,
        "rebuild": f'from search_space import Architecture, build_model; '
                   f'm = build_model(Architecture.from_yaml("{(folder / "architecture.yaml").resolve()}"))',
        "blocks": blocks,
    }
    atomic_write_text(folder / "candidate.yaml", dump_yaml(doc))
    return doc


def export_front(run_dir: str | Path, *, onnx: bool = True) -> Path:
    """Export the front of ``run_dir`` to ``run_dir/pareto`` (replacing an older export)."""
    run = RunFolder(run_dir)
    run_dir = run.path
    exp = run.read_experiment()
    recs = run.read_records()
    members = sorted(R.front(recs, exp.objectives), key=lambda r: (r.latency_ms, -r.accuracy))
    ref = R.fixed_reference_point(exp, recs)
    final = run.pareto
    new, old = final.with_name(final.name + ".new"), final.with_name(final.name + ".old")
    for p in (new, old):
        shutil.rmtree(p, ignore_errors=True)
    new.mkdir()
    knee = None
    if members:
        pts = pareto.to_minimization([r.values(exp.objectives) for r in members],
                                     [METRICS[m] for m in exp.objectives])
        knee = pareto.knee_point(pts)
    index = []
    for i, r in enumerate(members):
        name = f"{i:02d}_" + (f"seed_{r.seed}" if r.seed else f"trial{r.number}")
        doc = export_candidate(r, exp, new / name, onnx=onnx)
        index.append({"folder": name, "trial": r.number, "seed": r.seed, "arch_key": r.arch_key,
                      "knee": i == knee, **{k: doc["scores"][k] for k in ("accuracy", "latency_ms",
                                                                           "latency_measured_ms", "params", "macs")}})
    atomic_write_json(new / FRONT_JSON, {
        "objectives": list(exp.objectives), "directions": exp.directions,
        "latency_budget_ms": exp.latency.budget_ms, "reference_point": ref,
        "hypervolume": R.hypervolume(recs, exp.objectives, ref),
        "knee": index[knee]["folder"] if knee is not None else None, "members": index})
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def exported_keys(run_dir: str | Path) -> set[str]:
    data = json.loads(RunFolder(run_dir).front_json.read_text())
    return {m["arch_key"] for m in data["members"]}
