"""``shufflenas run``: search, then the front and a baseline retrained at equal budget, tested once; resumable."""

from __future__ import annotations

import json

import yaml

from shufflenas.cli import main
from test_search_common import tiny_experiment


def test_run_searches_retrains_and_resumes(tmp_path, capsys):
    path = tiny_experiment(tmp_path, trials=4)
    exp = yaml.safe_load(path.read_text())
    exp["retrain"] = {"baselines": ["shufflenet_v2_x0_5_cifar"], "candidates": 2, "subset": 300,
                      "train": {"epochs": 1, "batch_size": 32}}
    path.write_text(yaml.safe_dump(exp))
    assert main(["run", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    out = tmp_path / "run" / "retrain"
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    kinds = sorted(r["kind"] for r in rows)
    assert kinds.count("baseline") == 1 and 1 <= kinds.count("searched") <= 2
    for r in rows:
        assert 0.0 <= r["test_acc"] <= 1.0 and r["train_images"] == 270  # same split for every model
    assert {m["name"] for m in summary["retrain"]["models"]} == {r["name"] for r in rows}
    verdict = summary["retrain"]["comparison"][0]
    assert verdict["baseline"] == "shufflenet_v2_x0_5_cifar" and isinstance(verdict["wins"], bool)
    assert (out / "table.md").read_text().startswith("| model |") and (out / "front.png").stat().st_size > 0

    # rerun: the search is complete and every model is trained, so nothing is repeated
    before = (out / "results.jsonl").read_text()
    assert main(["run", str(path), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (out / "results.jsonl").read_text() == before
    assert again["search"]["trials"] == summary["search"]["trials"]
