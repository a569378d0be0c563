"""Self-contained HTML report and static PNG of a run's Pareto front.

The HTML inlines plotly.js (opens offline) and fills ``templates/report.html``;
every string that came from the user or a record is HTML-escaped. The PNG is
drawn with matplotlib's Agg backend.
"""

from __future__ import annotations

import html
import io
import json
import math
from pathlib import Path
from string import Template

from search_space.io import atomic_write_bytes, atomic_write_text

from . import records as R
from .run_folder import DEPLOY, PARETO, RunFolder

TEMPLATE = Path(__file__).parent / "templates" / "report.html"


def _arch_summary(arch: dict) -> str:
    st = " ".join(f"{s['unit']}/{s['channels']}x{s['depth']}/k{s['kernel']}"
                  + (f"/g{s['groups']}" if s.get("groups", 1) > 1 else "")
                  + ("/se" if s.get("se") else "") + ("/hs" if s.get("act") == "hswish" else "")
                  for s in arch["stages"])
    return f"stem {arch['stem']['channels']} | {st} | head {arch.get('head_channels')}"


def _hover(r: R.TrialRecord) -> str:
    lines = [f"trial {r.number}" + (f" (seed {r.seed})" if r.seed else ""),
             f"accuracy {r.accuracy:.4g}, latency {r.latency_ms:.4g} ms",
             f"params {r.params:,}, MFLOPs {r.macs / 1e6:.2f}", _arch_summary(r.arch)]
    if r.state != "COMPLETE":
        lines.append(f"{r.state}: {r.reason}")
    return "<br>".join(html.escape(x) for x in lines)  # plotly renders <br>; the rest is escaped


def _fmt(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return f"{v:.{digits}g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)


def _figures(exp, recs, front, ref):
    import plotly.graph_objects as go

    fig = go.Figure()
    groups = [("feasible", lambda r: r.usable and not r.seed, dict(color="#1f77b4", size=8, opacity=0.6)),
              ("infeasible (over budget)", lambda r: r.state == "COMPLETE" and not r.feasible and not r.seed,
               dict(color="#aaaaaa", size=7, symbol="x")),
              ("pruned", lambda r: r.state == "PRUNED" and math.isfinite(r.latency_ms),
               dict(color="#ff7f0e", size=6, symbol="circle-open")),
              ("seeded presets", lambda r: r.seed is not None and r.state == "COMPLETE",
               dict(color="#d62728", size=12, symbol="diamond", line=dict(color="black", width=1)))]
    for name, pick, marker in groups:
        sel = [r for r in recs if pick(r) and math.isfinite(r.accuracy)]
        if sel:
            fig.add_trace(go.Scatter(x=[r.latency_ms for r in sel], y=[r.accuracy for r in sel], mode="markers",
                                     name=name, marker=marker, text=[_hover(r) for r in sel],
                                     hovertemplate="%{text}<extra></extra>"))
    fs = sorted(front, key=lambda r: r.latency_ms)
    if fs:
        fig.add_trace(go.Scatter(x=[r.latency_ms for r in fs], y=[r.accuracy for r in fs], mode="lines+markers",
                                 name="Pareto front", line=dict(color="#2ca02c", width=2, shape="hv"),
                                 marker=dict(size=11, color="#2ca02c"), text=[_hover(r) for r in fs],
                                 hovertemplate="%{text}<extra></extra>"))
    if exp.latency.budget_ms is not None:
        fig.add_vline(x=exp.latency.budget_ms, line_dash="dash", line_color="#d62728",
                      annotation_text=f"budget {exp.latency.budget_ms:g} ms")
    if _log_x(recs):
        fig.update_xaxes(type="log")
    fig.update_layout(xaxis_title=f"latency (ms, {html.escape(_target_text(exp))})",
                      yaxis_title=_accuracy_label(exp), height=520, margin=dict(l=60, r=20, t=30, b=50),
                      template="plotly_white")
    hist = R.hypervolume_history(recs, exp.objectives, ref)
    hv = go.Figure(go.Scatter(x=[h[0] for h in hist], y=[h[1] for h in hist], mode="lines+markers",
                              name="hypervolume"))
    hv.update_layout(xaxis_title="trials finished", yaxis_title="hypervolume", height=320,
                     margin=dict(l=60, r=20, t=20, b=50), template="plotly_white")
    return fig, hv


def _log_x(recs) -> bool:
    """Latencies spanning more than 5x (e.g. a large seeded preset) read better on a log axis."""
    lat = [r.latency_ms for r in recs if math.isfinite(r.latency_ms) and r.latency_ms > 0]
    return bool(lat) and max(lat) > 5 * min(lat)


def _accuracy_label(exp) -> str:
    if exp.accuracy.method == "zero_cost":
        return f"zero-cost score ({html.escape(exp.accuracy.proxy)}, higher is better)"
    return f"validation accuracy ({html.escape(exp.accuracy.method)})"


def _target_text(exp) -> str:
    t = {"device": "cpu", "runtime": "onnxruntime", "threads": 1, "batch": 1, **exp.latency.target}
    src = "LUT-predicted" if exp.latency.mode == "lut" else "measured"
    return f"{src}, {t['device']}/{t['runtime']}, {t['threads']} thread(s), batch {t['batch']}"


def _front_table(exp, front) -> str:
    cols = ["trial", "seed", "accuracy", "latency ms", "measured ms", "params", "MFLOPs", "architecture"]
    rows = ["<tr>" + "".join(f'<th class="{"l" if c in ("seed", "architecture") else ""}">{c}</th>'
                             for c in cols) + "</tr>"]
    for r in sorted(front, key=lambda r: r.latency_ms):
        cells = [_fmt(r.number), r.seed or "", _fmt(r.accuracy), _fmt(r.latency_ms),
                 _fmt(r.latency_measured_ms), _fmt(r.params), _fmt(r.macs / 1e6, 3), _arch_summary(r.arch)]
        rows.append("<tr>" + "".join(f'<td class="{"l" if i in (1, 7) else ""}">{html.escape(str(c))}</td>'
                                     for i, c in enumerate(cells)) + "</tr>")
    return "\n".join(rows)


def _png(exp, recs, front, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    feas = [r for r in recs if r.usable and not r.seed]
    infeas = [r for r in recs if r.state == "COMPLETE" and not r.feasible and not r.seed]
    seeds = [r for r in recs if r.seed and r.state == "COMPLETE"]
    ax.scatter([r.latency_ms for r in feas], [r.accuracy for r in feas], s=18, alpha=0.6, label="feasible")
    if infeas:
        ax.scatter([r.latency_ms for r in infeas], [r.accuracy for r in infeas], s=18, c="#aaaaaa", marker="x",
                   label="over budget")
    if seeds:
        ax.scatter([r.latency_ms for r in seeds], [r.accuracy for r in seeds], s=60, c="#d62728", marker="D",
                   edgecolors="black", label="seeded presets")
    fs = sorted(front, key=lambda r: r.latency_ms)
    if fs:
        ax.step([r.latency_ms for r in fs], [r.accuracy for r in fs], where="post", c="#2ca02c", lw=2)
        ax.scatter([r.latency_ms for r in fs], [r.accuracy for r in fs], s=40, c="#2ca02c", label="Pareto front",
                   zorder=3)
    if exp.latency.budget_ms is not None:
        ax.axvline(exp.latency.budget_ms, ls="--", c="#d62728", lw=1, label="latency budget")
    if _log_x(recs):
        ax.set_xscale("log")
    ax.set_xlabel(f"latency (ms, {_target_text(exp)})")
    ax.set_ylabel(_accuracy_label(exp))
    ax.set_title(f"{exp.name}: {len(recs)} trials, {len(front)} on the front")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _exported_text(run: RunFolder) -> str:
    """What the run hands over and whether its weights are trained (a search exports at most proxy-trained ones)."""
    parts = []
    if run.front_json.is_file():
        members = json.loads(run.front_json.read_text())["members"]
        kinds = sorted({m.get("weights", "untrained") for m in members})
        parts.append(f"{PARETO}/: {len(members)}, weights {' / '.join(kinds) or '-'}")
    index = run.path / DEPLOY / "deploy.json"
    if index.is_file():
        parts.append(f"{DEPLOY}/: {len(json.loads(index.read_text())['models'])}, weights trained (deploy.md)")
    elif parts:
        parts.append(f"trained ones: 'shufflenas retrain {run.path}' puts them in {DEPLOY}/")
    return "; ".join(parts) or "none yet ('shufflenas export')"


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``RUN_DIR/report.html`` and ``RUN_DIR/front.png``; returns both paths."""
    run = RunFolder(run_dir)
    exp = run.read_experiment()
    recs = run.read_records()
    front = R.front(recs, exp.objectives)
    ref = R.fixed_reference_point(exp, recs)
    fig, hv = _figures(exp, recs, front, ref)
    counts = R.summary_counts(recs)
    meta = {
        "dataset": exp.data, "accuracy evaluator": exp.accuracy.method
        + (f" ({exp.accuracy.proxy})" if exp.accuracy.method == "zero_cost" else ""),
        "latency": _target_text(exp),
        "latency budget": f"{exp.latency.budget_ms:g} ms" if exp.latency.budget_ms else "none",
        "objectives": ", ".join(exp.objectives),
        "backend / sampler": f"{exp.search.backend} / {exp.search.sampler}",
        "trials": ", ".join(f"{v} {k.lower()}" for k, v in counts.items()),
        "hypervolume": f"{R.hypervolume(recs, exp.objectives, ref):.6g}",
        "exported networks": _exported_text(run),
    }
    page = Template(TEMPLATE.read_text()).substitute(
        title=html.escape(exp.name),
        meta="\n".join(f"<tr><th class=\"l\">{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in meta.items()),
        front_plot=fig.to_html(full_html=False, include_plotlyjs=True, div_id="front-plot"),
        hv_plot=hv.to_html(full_html=False, include_plotlyjs=False, div_id="hv-plot"),
        refpoint=html.escape(json.dumps(ref)),
        front_table=_front_table(exp, front),
    )
    out = atomic_write_text(run.report_html, page)
    png = run.front_png
    _png(exp, recs, front, png)
    return out, png
