"""Export of the Pareto-optimal architectures of a run, block by block.

``RUN_DIR/pareto/`` gets ``front.json`` (members, reference point,
hypervolume, knee) and one folder per member, fastest first::

    00_trial12/architecture.yaml   loadable with Architecture.from_yaml
    00_trial12/candidate.yaml      scores, per-block breakdown, files, rebuild snippet
    00_trial12/model.onnx          checked to run in ONNX Runtime
    00_trial12/weights.pt          the weights the search trained, when the evaluator produced them

Every path written into these files is relative to the member's folder, so
the export can be moved or shared; the ``rebuild`` line changes into the
folder (its final place, never the staging folder) before it runs. What the
weights are is said in ``candidate.yaml`` and ``front.json`` (``weights:
untrained | proxy-trained (...)``) and on the console: a search scores
candidates cheaply, so an exported network is at most proxy-trained; the
trained networks are those ``shufflenas run`` / ``retrain`` put in
``RUN_DIR/deploy/`` (:mod:`nas.deploy`).

The folder is built beside the old one and swapped in, so a killed export
leaves the previous one intact.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from search_space import Architecture, build_model, profile
from search_space.blocks import block_dict, iter_blocks
from search_space.io import atomic_write_json, atomic_write_text, dump_yaml

from . import pareto
from . import records as R
from .experiment import METRICS, Experiment
from .objective import load_or_build_lut
from .run_folder import DEPLOY, FRONT_JSON, RunFolder


def _lut_breakdown(exp: Experiment, arch: Architecture) -> dict | None:
    if exp.latency.mode != "lut":
        return None
    lut = load_or_build_lut(exp, exp.load_space())
    return lut.breakdown(arch)


def _load_weights(model, checkpoint: str) -> bool:
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    model.load_state_dict(state)
    return True


def export_onnx(model, arch: Architecture, path: Path, inputs=None) -> dict:
    """ONNX file of ``model`` (legacy exporter), then ``inputs`` (a float batch; default one seeded
    random image) run in ONNX Runtime and in torch: the largest difference of their outputs, and on how
    many inputs the two predict the same class."""
    import onnxruntime as ort
    import torch

    model.eval()
    x = inputs if inputs is not None else torch.randn(1, arch.in_channels, arch.input_size, arch.input_size,
                                                      generator=torch.Generator().manual_seed(0))
    tmp = path.with_name(f".{path.name}.tmp")
    with torch.no_grad():
        torch.onnx.export(model, (x[:1],), str(tmp), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17)
        ref = model(x).numpy()
    os.replace(tmp, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x.numpy()})[0]
    return {"output_shape": list(out.shape), "max_abs_diff_vs_torch": float(np.abs(out - ref).max()),
            "same_prediction": int((out.argmax(1) == ref.argmax(1)).sum()), "inputs": len(x)}


#: the first line of every exported YAML: how its paths are meant
PATHS_NOTE = ("# File names in this file are relative to its folder. The rebuild/load line changes into the\n"
              "# folder first, so it runs from any directory; after moving the folder, run the part after '&&'\n"
              "# inside it.\n")


def load_snippet(folder: Path, weights: bool) -> str:
    """One shell line that builds the network of ``folder`` (and loads ``weights.pt`` into it).

    ``folder`` is where the files will finally be: the line changes into it, then names the files
    relative to it, so the Python part also runs inside the folder wherever it was moved.
    """
    code = ('from search_space import Architecture, build_model; '
            'm = build_model(Architecture.from_yaml("architecture.yaml"))')
    if weights:
        code = f'import torch; {code}; m.load_state_dict(torch.load("weights.pt", weights_only=True)); m.eval()'
    return f"cd {shlex.quote(str(Path(folder).resolve()))} && python -c {shlex.quote(code)}"


def weights_status(rec: R.TrialRecord, exp: Experiment, has_weights: bool) -> str:
    """``untrained (...)`` or ``proxy-trained (...)``: what the exported weights of a search member are."""
    retrain = "train it with 'shufflenas retrain RUN_DIR' (or 'shufflenas run'): RUN_DIR/deploy/"
    if has_weights:
        return (f"proxy-trained ({rec.epochs} epoch(s) of the search's proxy training on {exp.data}, "
                f"validation accuracy {rec.accuracy:.4g}: a score, not a deployable training; {retrain})")
    why = {"zero_cost": "zero-cost scoring trains nothing",
           "supernet": "the supernet's inherited weights are not exported",
           "proxy_training": "the trial's checkpoint is not in this run folder"}[exp.accuracy.method]
    return f"untrained (initial weights, {why}: model.onnx runs but its outputs mean nothing; {retrain})"


def export_candidate(rec: R.TrialRecord, exp: Experiment, folder: Path, *, onnx: bool = True,
                     final: Optional[Path] = None) -> dict:
    """Write one member into ``folder``; ``final`` is where the folder will end up (default: ``folder``)."""
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
        "weights": weights_status(rec, exp, "weights" in files),
        "files": files, "onnx_check": check,
        "rebuild": load_snippet(final or folder, "weights" in files),
        "blocks": blocks,
    }
    atomic_write_text(folder / "candidate.yaml", PATHS_NOTE + dump_yaml(doc))
    return doc


def export_front(run_dir: str | Path, *, onnx: bool = True, log: Optional[Callable[[str], None]] = None) -> Path:
    """Export the front of ``run_dir`` to ``run_dir/pareto`` (replacing an older export).

    ``log`` gets one line when the exported weights are untrained or only proxy-trained
    (default: stderr)."""
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
        doc = export_candidate(r, exp, new / name, onnx=onnx, final=final / name)
        index.append({"folder": name, "trial": r.number, "seed": r.seed, "arch_key": r.arch_key,
                      "knee": i == knee, "weights": doc["weights"].split(" ", 1)[0],
                      **{k: doc["scores"][k] for k in ("accuracy", "latency_ms", "latency_measured_ms", "params",
                                                       "macs")}})
    atomic_write_json(new / FRONT_JSON, {
        "objectives": list(exp.objectives), "directions": exp.directions,
        "latency_budget_ms": exp.latency.budget_ms, "reference_point": ref,
        "hypervolume": R.hypervolume(recs, exp.objectives, ref),
        "knee": index[knee]["folder"] if knee is not None else None, "members": index})
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)
    kinds = sorted({m["weights"] for m in index})
    if kinds:
        (log or (lambda msg: print(msg, file=sys.stderr)))(
            f"export: the weights in {final} are {' / '.join(kinds)} (the search's scores, not a training); "
            f"'shufflenas retrain {run_dir}' trains the front and puts it in {run_dir / DEPLOY}")
    return final


def exported_keys(run_dir: str | Path) -> set[str]:
    data = json.loads(RunFolder(run_dir).front_json.read_text())
    return {m["arch_key"] for m in data["members"]}
