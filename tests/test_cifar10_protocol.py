"""The pre-registered comparison protocol (experiments/cifar10_budget/protocol.py) on a tiny experiment.

The protocol is a script, so it runs here as a subprocess on a tiny digits experiment committed to a
throw-away git repository: the registration must name that commit, precede the first trial, refuse an
experiment changed afterwards, and the fidelity of the search signal must be what scipy computes from
the run's own files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_search_common import tiny_experiment

PROTOCOL = Path(__file__).resolve().parents[1] / "experiments" / "cifar10_budget" / "protocol.py"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def _protocol(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROTOCOL), "--experiment", str(path)], capture_output=True,
                          text=True, timeout=900)


@pytest.mark.slow  # a whole `shufflenas run` with retraining
@pytest.mark.timeout(1500)
def test_protocol_registers_before_the_run_and_refuses_a_changed_experiment(tmp_path):
    from scipy import stats

    from nas.run_folder import RunFolder

    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    path = tiny_experiment(repo, trials=4, seeds=("shufflenet_v2_x0_5_cifar",),
                           accuracy={"method": "proxy_training", "subset": 300, "train": {"epochs": 1}})
    exp = yaml.safe_load(path.read_text())
    exp["retrain"] = {"baselines": ["shufflenet_v2_x0_5_cifar"], "candidates": 2, "subset": 300,
                      "train": {"epochs": 1, "batch_size": 32}}
    path.write_text(yaml.safe_dump(exp))

    unregistered = _protocol(path)  # not committed yet: nothing runs
    assert unregistered.returncode != 0 and "commit the pre-registered file first" in unregistered.stderr
    assert not (repo / "run").exists()

    _git(repo, "add", path.name)
    _git(repo, "commit", "-q", "-m", "pre-register")
    commit = _git(repo, "rev-parse", "HEAD")
    done = _protocol(path)
    assert done.returncode == 0, done.stderr[-2000:]

    run = repo / "run"
    proto = json.loads((run / "protocol.json").read_text())
    assert proto["experiment_commit"] == commit and proto["experiment"] == path.name
    assert all(proto["steps"][s]["done"] for s in ("baselines", "run", "seeds", "fidelity", "report"))
    # the baseline was trained before the search (first row) and only once: the run's retraining reused it
    rows = [json.loads(line) for line in (run / "retrain" / "results.jsonl").read_text().splitlines()]
    assert rows[0]["kind"] == "baseline" and [r["name"] for r in rows].count(rows[0]["name"]) == 1
    assert proto["steps"]["baselines"]["attempts"][0]["start"] <= proto["steps"]["run"]["attempts"][0]["start"]
    first_trial = min(r.started for r in RunFolder(run).read_records())
    committed = float(_git(repo, "log", "-1", "--format=%ct", commit))
    assert committed <= first_trial

    # fidelity: the search's score of every retrained network it scored against its final validation accuracy
    picked = {m["name"]: m["search_accuracy"] for m in json.loads((run / "retrain" / "candidates.json").read_text())["searched"]}
    seeded = {r.seed: r.accuracy for r in RunFolder(run).read_records() if r.seed and r.usable}
    final = {r["name"]: r["val_acc"] for r in map(json.loads, (run / "retrain" / "results.jsonl").read_text().splitlines())}
    score = {**seeded, **picked}
    names = sorted(n for n in score if n in final)
    fid = json.loads((run / "fidelity.json").read_text())
    assert fid["networks"] == len(names) >= 2
    tau = stats.kendalltau([score[n] for n in names], [final[n] for n in names])[0]
    assert fid["kendall_tau"] == pytest.approx(tau, nan_ok=True)
    report = (repo / "results" / "report.md").read_text()
    assert report.startswith("reproduce: python experiments/cifar10_budget/protocol.py") and commit[:10] in report

    # a changed pre-registered experiment is refused, and the run is left as it was
    before = (run / "protocol.json").read_text()
    exp["retrain"]["train"]["epochs"] = 2
    path.write_text(yaml.safe_dump(exp))
    _git(repo, "commit", "-q", "-am", "changed after the run started")
    refused = _protocol(path)
    assert refused.returncode != 0 and "changed since the run was registered" in refused.stderr
    assert (run / "protocol.json").read_text() == before


def test_a_killed_step_keeps_its_wall_time_up_to_the_last_heartbeat(tmp_path):
    """A session's end SIGKILLs the step; its time so far must still be in protocol.json."""
    script = f"""
import os, signal, sys, time
sys.path.insert(0, {str(PROTOCOL.parent)!r})
import protocol
protocol.HEARTBEAT_S = 0.05
from pathlib import Path
run = Path({str(tmp_path)!r})
proto = {{"steps": {{}}}}
def work():
    time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGKILL)
protocol.timed(run, proto, "baselines", work, "abc")
"""
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    step = json.loads((tmp_path / "protocol.json").read_text())["steps"]["baselines"]
    assert not step.get("done")
    (attempt,) = step["attempts"]
    assert attempt["code_commit"] == "abc" and "last_seen" in attempt
    assert 0.0 < attempt["seconds"] <= step["seconds"]  # the start saves 0.0; only a beat saves more
