"""A lookup table is tagged with the host it was measured on and refused on any other (issue 14, section 7).

Fast: the tables here are written by hand (no measurement); building through the Ray
actor on the device node is in test_latency_ray.py.
"""

from __future__ import annotations

import json
import socket

import pytest
import yaml

from conftest import TINY_SPACE
from evaluators.latency import LatencyTarget
from evaluators.latency.lut import LatencyLUT, space_blocks
from evaluators.latency.target import (LUTHostError, LUTHostWarning, cpu_model, describe_host, host_differences,
                                       host_identity)
from search_space import SearchSpace
from shufflenas.cli import main

ELSEWHERE = {"hostname": "device-node-7", "cpu": "Some Other CPU 9000", "runtime": "onnxruntime",
             "runtime_version": "0.0.1", "threads": 1}


def hand_made_lut(path, host, complete=True) -> LatencyLUT:
    """A complete table for TINY_SPACE with made-up entries, tagged with ``host``, saved at ``path``."""
    sp = SearchSpace.from_yaml(TINY_SPACE)
    entries = {k: {"median_ms": 0.01, "p90_ms": 0.011, "iqr_rel": 0.01, "runs": 10, "attempts": 1, "flagged": False}
               for k in space_blocks(sp)}
    lut = LatencyLUT(LatencyTarget(), entries, space=sp.to_dict(), host=host,
                     meta={"space_name": sp.name, "complete": complete})
    lut.save(path)
    return lut


def test_host_identity_describes_this_machine():
    import onnxruntime
    import torch

    here = host_identity(LatencyTarget())
    assert here == {"hostname": socket.gethostname(), "cpu": cpu_model(), "runtime": "onnxruntime",
                    "runtime_version": onnxruntime.__version__, "threads": 1}
    eager = host_identity(LatencyTarget(runtime="eager", threads=2))
    assert eager["runtime_version"] == torch.__version__ and eager["threads"] == 2
    assert host_differences(here, eager) == ["runtime", "runtime_version", "threads"]
    assert describe_host(ELSEWHERE) == "device-node-7 (Some Other CPU 9000, onnxruntime 0.0.1, 1 thread(s))"


def test_table_from_another_host_is_refused_in_one_line(tmp_path):
    path = tmp_path / "lut.json"
    hand_made_lut(path, ELSEWHERE)
    assert json.loads(path.read_text())["host"] == ELSEWHERE  # the tag is in the file
    here = host_identity(LatencyTarget())
    with pytest.raises(LUTHostError) as ei:
        LatencyLUT.load(path, LatencyTarget(), host=here, override="do X to use it anyway")
    msg = str(ei.value)
    assert msg == (f"{path}: lookup table built on {describe_host(ELSEWHERE)}, but latency is measured on "
                   f"{describe_host(here)} (hostname, cpu, runtime_version differ); do X to use it anyway")
    assert "\n" not in msg
    assert LatencyLUT.load(path, LatencyTarget()).host == ELSEWHERE  # no host given: the override, loads
    assert LatencyLUT.load(path, host=dict(ELSEWHERE)).host == ELSEWHERE  # the same host: loads


def test_untagged_table_loads_with_a_warning(tmp_path):
    path = tmp_path / "old.json"
    hand_made_lut(path, None)
    data = json.loads(path.read_text())
    del data["host"]  # as written before tables were tagged
    path.write_text(json.dumps(data))
    with pytest.warns(LUTHostWarning, match="without a host tag") as rec:
        lut = LatencyLUT.load(path, LatencyTarget(), host=host_identity(LatencyTarget()))
    assert str(path) in str(rec[0].message) and lut.host is None and len(lut.entries) == 25


def test_resuming_a_partial_table_from_another_host_is_refused(tmp_path):
    """A killed build is resumed only on its own host: entries of two machines are not one table."""
    path = tmp_path / "partial.json"
    hand_made_lut(path, ELSEWHERE, complete=False)
    with pytest.raises(LUTHostError, match="device-node-7.*start afresh"):
        LatencyLUT.build(SearchSpace.from_yaml(TINY_SPACE), LatencyTarget(), progress=False, path=path,
                         override="move it away to start afresh")


def experiment(tmp_path, lut_path, backend="optuna", **latency):
    from nas.experiment import experiment_from_dict

    d = {"space": yaml.safe_load(TINY_SPACE), "output": str(tmp_path / "run"), "search": {"backend": backend},
         "latency": {"mode": "lut", "lut": str(lut_path), **latency}}
    return experiment_from_dict(d, base_dir=tmp_path)


def test_search_refuses_a_table_from_another_host_unless_told(tmp_path):
    from nas.objective import load_or_build_lut, prepare

    path = tmp_path / "lut.json"
    hand_made_lut(path, ELSEWHERE)
    exp = experiment(tmp_path, path)
    with pytest.raises(LUTHostError) as ei:
        prepare(exp, progress=False)
    msg = str(ei.value)
    assert msg.startswith(f"{path}: lookup table built on device-node-7 (")
    assert f"measured on {socket.gethostname()} (" in msg and msg.endswith("set latency.lut_host_check: false "
                                                                           "to use it anyway")
    allowed = experiment(tmp_path, path, lut_host_check=False)
    prepare(allowed, progress=False)  # the override: used as it is (complete, so nothing is measured)
    assert allowed.fingerprint() == exp.fingerprint()  # so a run can be resumed with the override
    # predicting from a finished run's table (export) does not measure, so it is not checked
    assert load_or_build_lut(exp, exp.load_space()).host == ELSEWHERE
    # the ray backend loads the table once it has joined the cluster, on the latency device: not here
    prepare(experiment(tmp_path, path, backend="ray"), progress=False)


def test_cli_validate_checks_the_host(tmp_path, capsys):
    path = tmp_path / "lut.json"
    hand_made_lut(path, ELSEWHERE)
    assert main(["lut", "validate", str(path), "--samples", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"shufflenas: error: {path}: lookup table built on device-node-7")
    assert err.rstrip().endswith("pass --no-host-check to validate it here anyway") and len(err.splitlines()) == 1
    # with the flag the check is passed: it gets as far as predicting (cifar has blocks this table lacks)
    assert main(["lut", "validate", str(path), "--no-host-check", "--space", "cifar", "--samples", "1"]) == 2
    assert "no entry for block" in capsys.readouterr().err
    # an untagged table: a warning line, then on
    data = json.loads(path.read_text())
    del data["host"]
    path.write_text(json.dumps(data))
    assert main(["lut", "validate", str(path), "--space", "cifar", "--samples", "1"]) == 2
    warning, error = capsys.readouterr().err.splitlines()
    assert warning.startswith(f"shufflenas: warning: {path}: lookup table without a host tag")
    assert "no entry for block" in error


def test_cli_latency_says_where_the_table_was_built(tmp_path, capsys, tiny_arch):
    path = tmp_path / "lut.json"
    hand_made_lut(path, ELSEWHERE)
    arch = tmp_path / "tiny.yaml"
    tiny_arch.to_yaml(arch)
    assert main(["latency", str(arch), "--lut", str(path)]) == 0
    assert f"built on {describe_host(ELSEWHERE)}" in capsys.readouterr().out
