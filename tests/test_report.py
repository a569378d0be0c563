"""The HTML report: self-contained, escaped, and rendered by a real headless browser."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import TINY_SPACE

EVIL = '<script>alert("x")</script>&'
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory with records of a tiny space (scores made up: this tests rendering only)."""
    from nas.experiment import experiment_from_dict
    from nas.objective import new_record
    from nas.run_folder import RunFolder
    from search_space import SearchSpace

    tmp = tmp_path_factory.mktemp("report")
    exp = experiment_from_dict({"name": "report-test", "space": yaml.safe_load(TINY_SPACE),
                                "latency": {"budget_ms": 0.3}, "output": str(tmp / "run")}, base_dir=tmp)
    RunFolder(exp.output).prepare(exp, resume=False)
    space = SearchSpace.from_yaml(TINY_SPACE)
    rng = np.random.default_rng(0)
    recs = []
    for i, arch in enumerate(space.sample(12, seed=1)):
        r = new_record(arch, i, seed=EVIL if i == 0 else None)
        r.latency_ms, r.accuracy = float(rng.uniform(0.05, 0.4)), float(rng.uniform(0.5, 0.95))
        r.latency_source, r.started, r.finished = "measured", 1000.0 + i, 1000.5 + i
        r.constraint = r.latency_ms - 0.3
        r.feasible = r.constraint <= 0
        if i == 5:
            r.state, r.reason = "FAIL", EVIL
        recs.append(r)
    RunFolder(exp.output).write_records(recs)
    from nas.report import write_report

    html_path, png = write_report(exp.output)
    return Path(exp.output), html_path, png


def test_report_is_self_contained_and_escaped(run_dir):
    _, html_path, png = run_dir
    page = html_path.read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    assert 'src="http' not in page and "cdn.plot.ly" not in page.split("</script>")[-1]
    assert "Pareto front" in page and "seeded presets" in page and "Hypervolume over trials" in page
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    _, html_path, _ = run_dir
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr",
             "--v=0", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
             "--window-size=1200,1600"]
    shot = tmp_path / "shot.png"
    r = subprocess.run(flags + [f"--screenshot={shot}", html_path.as_uri()], capture_output=True, text=True,
                       timeout=120)
    assert shot.exists(), r.stderr[-2000:]
    console = [line for line in r.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not [c for c in console if "rror" in c or "Uncaught" in c], console
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)[..., :3]
    non_white = (img < 0.95).any(axis=2).mean()
    assert non_white > 0.02, f"screenshot nearly blank ({non_white:.3%} non-white pixels)"
    # after the scripts ran, the plot's SVG and the front trace exist in the DOM
    dom = subprocess.run(flags + ["--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=120)
    assert 'class="main-svg"' in dom.stdout and "Pareto front" in dom.stdout
    assert dom.stdout.count('class="scatterlayer') >= 2  # front plot and hypervolume plot
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def test_report_says_what_the_exported_weights_are(run_dir, tmp_path):
    """A search's export holds untrained or proxy-trained weights, the deploy folder trained ones:
    the report says which the run has."""
    import html
    import json

    from nas.report import write_report

    run = tmp_path / "run"
    shutil.copytree(run_dir[0], run)
    assert "none yet (&#x27;shufflenas export&#x27;)" in write_report(run)[0].read_text()
    (run / "pareto").mkdir()
    (run / "pareto" / "front.json").write_text(json.dumps({"members": [{"weights": "untrained"}] * 2}))
    page = write_report(run)[0].read_text()
    assert "pareto/: 2, weights untrained" in page and html.escape(f"'shufflenas retrain {run}'") in page
    (run / "deploy").mkdir()
    (run / "deploy" / "deploy.json").write_text(json.dumps({"models": [{"name": "trial3"}]}))
    assert "deploy/: 1, weights trained (deploy.md)" in write_report(run)[0].read_text()
