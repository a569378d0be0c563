"""The space-level CLI: profile, space, presets; JSON output; bad input -> one line, exit 2."""

import json

import pytest

from shufflenas.cli import main


def run(capsys, *args):
    rc = main(list(map(str, args)))
    out, err = capsys.readouterr()
    return rc, out, err


def test_presets_json(capsys):
    rc, out, _ = run(capsys, "presets", "--json")
    rows = json.loads(out)
    assert rc == 0 and {r["name"] for r in rows} >= {"shufflenet_v2_x1_0", "shufflenet_v1_g8_cifar"}


def test_profile_preset_json(capsys):
    rc, out, _ = run(capsys, "profile", "--preset", "shufflenet_v2_x1_0", "--json")
    data = json.loads(out)
    assert rc == 0 and data["params"] == 2_278_604 and data["published"]["mflops"] == 146
    assert "stage3.7" in data["blocks"]


def test_profile_yaml_file_and_input_size(capsys, tmp_path):
    from search_space import presets

    path = tmp_path / "a.yaml"
    presets.get("shufflenet_v1_g3").to_yaml(path)
    rc, out, _ = run(capsys, "profile", path, "--input-size", "112", "--json")
    assert rc == 0 and json.loads(out)["input_size"] == 112


def test_space_sample_json(capsys, tiny_space_file):
    rc, out, _ = run(capsys, "space", tiny_space_file, "--sample", "3", "--seed", "1", "--json")
    data = json.loads(out)
    assert rc == 0 and data["size"] == 128 and len(data["samples"]) == 3


def test_console_script_entry_point(cli):
    res = cli("profile", "--preset", "shufflenet_v2_x0_5")
    assert res.returncode == 0 and "1,366,792" in res.stdout


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


BAD_CLI = [
    ("unknown preset", lambda t: ["profile", "--preset", "resnet50"], "unknown preset"),
    ("preset and file", lambda t: ["profile", "--preset", "shufflenet_v2_x0_5", _write(t, "a.yaml", "x: 1")],
     "exactly one"),
    ("neither preset nor file", lambda t: ["profile"], "exactly one"),
    ("missing file", lambda t: ["profile", t / "missing.yaml"], "not found"),
    ("malformed YAML", lambda t: ["profile", _write(t, "b.yaml", "stages: [\n")], "malformed YAML"),
    ("YAML list instead of mapping", lambda t: ["profile", _write(t, "c.yaml", "- 1\n")], "expected a mapping"),
    ("unknown key", lambda t: ["profile", _write(t, "d.yaml", "stages: [{channels: 48, depth: 2}]\nfoo: 1\n")],
     "unknown key"),
    ("wrong type", lambda t: ["profile", _write(t, "e.yaml", "stages: [{channels: lots, depth: 2}]\n")],
     "stages[0].channels"),
    ("impossible groups", lambda t: ["profile", _write(
        t, "f.yaml", "stages: [{channels: 48, depth: 2, groups: 5}]\n")], "groups 5"),
    ("empty branch split", lambda t: ["profile", _write(
        t, "g.yaml", "stages: [{channels: 48, depth: 2, split: 0.999}]\n")], "empty branch"),
    ("odd channels", lambda t: ["profile", _write(t, "h.yaml", "stages: [{channels: 47, depth: 2}]\n")], "odd"),
    ("negative depth", lambda t: ["profile", _write(t, "i.yaml", "stages: [{channels: 48, depth: -2}]\n")],
     "depth"),
    ("input size too small", lambda t: ["profile", "--preset", "shufflenet_v2_x1_0", "--input-size", "3"],
     "input-size"),
    ("unknown option", lambda t: ["profile", "--bogus"], "No such option"),
    ("unknown command", lambda t: ["frobnicate"], "No such command"),
    ("empty space", lambda t: ["space", _write(t, "s.yaml", "stages: []\n")], "stages"),
    ("space with empty choices", lambda t: ["space", _write(t, "s2.yaml", "stages: [{channels: [], depth: 2}]\n")],
     "empty list"),
    ("impossible space", lambda t: ["space", _write(
        t, "s3.yaml", "stages: [{channels: [48, 50], depth: 2, groups: [1, 4]}]\n")], "impossible"),
    ("unknown space", lambda t: ["space", "no_such_space"], "not a built-in space"),
    ("negative sample count", lambda t: ["space", "cifar", "--sample", "-1"], "--sample"),
    ("empty YAML file", lambda t: ["profile", _write(t, "empty.yaml", "")], "expected a mapping"),
]


@pytest.mark.parametrize("desc,argv,words", BAD_CLI, ids=[b[0] for b in BAD_CLI])
def test_bad_input_gives_one_line_and_status_2(desc, argv, words, tmp_path, capsys):
    rc, out, err = run(capsys, *argv(tmp_path))
    assert rc == 2, f"{desc}: rc={rc} err={err!r}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shufflenas: error:"), err
    assert words in err, f"{desc}: {err!r} lacks {words!r}"
    assert "Traceback" not in err and out == ""
