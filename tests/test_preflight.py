"""Preflight: an experiment that is valid as a file but cannot run here is refused before its first trial,
with one line naming the field, and nothing is created; one that can run passes in seconds.

The command-line view of the same (exit 2, no run folder) is in tests/test_bad_inputs.py.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import shlex
import shutil
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import TINY_SPACE

CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


# ---- tiny files in the official formats (also used by tests/test_bad_inputs.py) --------------------


def fake_cifar(tmp: Path, name: str = "cifar-10-python.tar.gz", skip: str | None = None) -> Path:
    """A CIFAR-10 archive in the official layout with 4 images per batch (``skip``: one batch left out)."""
    p = tmp / name
    rng = np.random.default_rng(0)
    with tarfile.open(p, "w:gz") as tar:
        for batch in CIFAR_BATCHES:
            if batch == skip:
                continue
            raw = pickle.dumps({"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]},
                               protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{batch}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return p


def truncated(path: Path, keep: float = 0.6) -> Path:
    """``path`` cut to ``keep`` of its length, as a broken download or copy leaves it."""
    data = path.read_bytes()
    out = path.with_name("cut_" + path.name)
    out.write_bytes(data[:int(len(data) * keep)])
    return out


def fake_idx(folder: Path, n: int = 6) -> Path:
    """The four Fashion-MNIST idx files (.gz), ``n`` 28x28 images per split."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        images = struct.pack(">IIII", 2051, n, 28, 28) + bytes(n * 28 * 28)
        labels = struct.pack(">II", 2049, n) + bytes(i % 10 for i in range(n))
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    return folder


def fake_lut(tmp: Path, *, threads: int = 1, drop: int = 0, complete: bool = True, host: str | dict | None = None,
             name: str = "lut.json") -> Path:
    """A lookup table for TINY_SPACE (made-up times) built for ``threads``, ``drop`` entries left out,
    marked ``complete`` or not (a killed build); tagged with ``host``: None (an untagged, older table),
    "here" (this machine's identity for its target) or a host_identity dict."""
    from evaluators.latency import LatencyLUT, LatencyTarget
    from evaluators.latency.lut import space_blocks
    from evaluators.latency.target import host_identity
    from search_space import SearchSpace

    space = SearchSpace.from_yaml(TINY_SPACE)
    keys = list(space_blocks(space))
    target = LatencyTarget(threads=threads)
    lut = LatencyLUT(target, {k: {"median_ms": 0.01} for k in keys[drop:]},
                     space=space.to_dict(), meta={"space_name": "tiny", "blocks_in_space": len(keys),
                                                  "complete": complete},
                     host=host_identity(target) if host == "here" else host)
    return lut.save(tmp / name)


def elsewhere(threads: int = 1) -> dict:
    """The host identity of another machine (same processor and runtime, another hostname)."""
    from evaluators.latency import LatencyTarget
    from evaluators.latency.target import host_identity

    return {**host_identity(LatencyTarget(threads=threads)), "hostname": "elsewhere-7"}


def fake_supernet(tmp: Path, space_yaml: str = TINY_SPACE, data: str = "digits", epochs: int = 1,
                  name: str = "supernet.pt") -> Path:
    """An (untrained) supernet checkpoint of ``space_yaml`` saved as trained for ``epochs`` on ``data``."""
    from evaluators.supernet import Supernet, SupernetConfig, save_checkpoint
    from search_space import SearchSpace

    return save_checkpoint(tmp / name, Supernet(SearchSpace.from_yaml(space_yaml)), SupernetConfig(epochs=epochs),
                           epoch=epochs, data=data)


def raw_experiment(tmp: Path, **changes) -> dict:
    exp = {"name": "pre", "space": yaml.safe_load(TINY_SPACE), "data": "digits", "search": {"trials": 2},
           "output": str(tmp / "new_run")}
    exp.update(changes)
    return exp


def check(tmp: Path, *, resume: bool = False, address: str | None = None, **changes):
    """preflight() on TINY_SPACE with ``changes``; asserts the run folder was not created."""
    from nas.experiment import experiment_from_dict
    from nas.preflight import preflight

    exp = experiment_from_dict(raw_experiment(tmp, **changes), base_dir=tmp)
    existed = Path(exp.output).exists()
    try:
        preflight(exp, resume=resume, address=address)
    finally:
        assert Path(exp.output).exists() == existed, "preflight created the run folder"


def refused(tmp: Path, field: str, *words: str, **kw) -> str:
    from nas.preflight import PreflightError

    with pytest.raises(PreflightError) as info:
        check(tmp, **kw)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(field), msg
    for w in words:
        assert w in msg, f"{msg!r} lacks {w!r}"
    return msg


# ---- what passes -------------------------------------------------------------------------------------


def test_a_runnable_experiment_passes_and_creates_nothing(tmp_path):
    check(tmp_path, accuracy={"method": "proxy_training", "train": {"epochs": 1}}, seeds=["shufflenet_v2_x0_5_cifar"],
          retrain={"baselines": ["shufflenet_v2_x0_5_cifar"], "train": {"epochs": 1}})
    assert list(tmp_path.iterdir()) == []


def test_the_quickstart_passes():
    from nas.experiment import load_experiment
    from nas.preflight import preflight

    exp = load_experiment(Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml")
    before = Path(exp.output).exists()
    preflight(exp, resume=False, address=None)
    assert Path(exp.output).exists() == before


# ---- data ----------------------------------------------------------------------------------------------


def test_cifar_archive_whole_passes_truncated_or_incomplete_refused(tmp_path):
    from nas.preflight import check_data

    good = fake_cifar(tmp_path)
    assert check_data(f"cifar10:{good}") == 10
    assert check_data(f"cifar10:{tmp_path}") == 10  # a folder holding the archive
    refused(tmp_path, "data:", "corrupt or truncated", data=f"cifar10:{truncated(good)}")
    refused(tmp_path, "data:", "missing data_batch_3", data=f"cifar10:{fake_cifar(tmp_path, 'x.tar.gz', 'data_batch_3')}")
    refused(tmp_path, "data:", "not found", data=f"cifar10:{tmp_path / 'nonexistent' / 'x.tar.gz'}")


def test_cifar_archive_with_a_flipped_byte_fails_its_checksum(tmp_path):
    good = fake_cifar(tmp_path)
    data = bytearray(good.read_bytes())
    data[-12] ^= 0xFF  # inside the deflate stream's end or the CRC trailer: only a full read notices
    bad = tmp_path / "flipped.tar.gz"
    bad.write_bytes(bytes(data))
    refused(tmp_path, "data:", "flipped.tar.gz", data=f"cifar10:{bad}")


def test_extracted_cifar_folder_is_checked_too(tmp_path):
    from nas.preflight import check_data

    with tarfile.open(fake_cifar(tmp_path)) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    assert check_data(f"cifar10:{tmp_path / 'x'}") == 10
    (tmp_path / "x" / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    refused(tmp_path, "data:", "test_batch", "not a CIFAR-10 batch", data=f"cifar10:{tmp_path / 'x'}")


def test_idx_files_are_read_whole(tmp_path):
    from nas.preflight import check_data

    folder = fake_idx(tmp_path / "fm")
    assert check_data(f"fashion-mnist:{folder}") == 10
    img = folder / "t10k-images-idx3-ubyte.gz"
    img.write_bytes(gzip.compress(gzip.decompress(img.read_bytes())[:-100]))  # a cut image file
    refused(tmp_path, "data:", "truncated idx file", data=f"fashion-mnist:{folder}")
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    refused(tmp_path, "data:", "missing train-labels", data=f"fashion-mnist:{folder}")


def test_image_folder_needs_the_imagenet_layout_and_two_classes(tmp_path):
    from PIL import Image

    from nas.preflight import check_data

    root = tmp_path / "imgs"
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(root / split / cls / "a.png")
    assert check_data(f"folder:{root}") == 2
    refused(tmp_path, "data:", "no train/", data=f"folder:{root / 'train'}")  # class folders, no splits
    for split in ("train", "val"):
        shutil.rmtree(root / split / "dog")
    refused(tmp_path, "data:", "1 class folder", data=f"folder:{root}")


def test_classes_of_the_space_must_match_the_data_when_training(tmp_path):
    space = {**yaml.safe_load(TINY_SPACE), "num_classes": 100}
    refused(tmp_path, "space.num_classes", "100", "10 classes", space=space,
            accuracy={"method": "proxy_training"})
    check(tmp_path, space=space, accuracy={"method": "proxy_training", "options": {"adapt_classes": True}})
    check(tmp_path, space=space)  # zero-cost scores need no matching classifier


# ---- accuracy settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("train,words", [
    ({"epochs": 0}, ["accuracy.train", "epochs=0"]),
    ({"lr": -0.1}, ["accuracy.train", "lr=-0.1"]),
    ({"optimizer": "adam"}, ["accuracy.train", "optimizer='adam'"]),
    ({"epoch": 2}, ["accuracy.train.epoch", "unknown setting", "epochs"]),
])
def test_training_settings_are_those_the_trainer_accepts(tmp_path, train, words):
    refused(tmp_path, words[0], *words[1:], accuracy={"method": "proxy_training", "train": train})


def test_evaluator_options_and_proxy_names(tmp_path):
    refused(tmp_path, "accuracy.proxy", "snipp", "synflow", accuracy={"method": "zero_cost", "proxy": "snipp"})
    refused(tmp_path, "accuracy.options.batchsize", "unknown option", "batch_size",
            accuracy={"method": "zero_cost", "options": {"batchsize": 8}})
    refused(tmp_path, "accuracy.options.seed", "set by the experiment",
            accuracy={"method": "proxy_training", "options": {"seed": 3}})
    check(tmp_path, accuracy={"method": "zero_cost", "options": {"batch_size": 8}})


def test_supernet_checkpoint_must_hold_the_space_and_dataset(tmp_path):
    check(tmp_path, accuracy={"method": "supernet", "checkpoint": str(fake_supernet(tmp_path))})
    smaller = TINY_SPACE.replace("channels: [16, 24]", "channels: [16]")
    refused(tmp_path, "accuracy.checkpoint", "does not contain", "stages.0.channels [24]",
            accuracy={"method": "supernet", "checkpoint": str(fake_supernet(tmp_path, smaller, name="s.pt"))})
    refused(tmp_path, "accuracy.checkpoint", "trained on fashion-mnist",
            accuracy={"method": "supernet",
                      "checkpoint": str(fake_supernet(tmp_path, data="fashion-mnist", name="f.pt"))})
    (tmp_path / "junk.pt").write_bytes(b"junk")
    refused(tmp_path, "accuracy.checkpoint", "junk.pt", accuracy={"method": "supernet",
                                                                  "checkpoint": str(tmp_path / "junk.pt")})
    # a checkpoint whose training resumes must be of this very space, trained with these settings
    refused(tmp_path, "accuracy.supernet_train", "other settings",
            accuracy={"method": "supernet", "checkpoint": str(fake_supernet(tmp_path)),
                      "supernet_train": {"epochs": 3, "lr": 0.5}})
    refused(tmp_path, "accuracy.supernet_train", "epochs", accuracy={
        "method": "supernet", "checkpoint": str(tmp_path / "absent.pt"), "supernet_train": {"epochs": 0}})


# ---- latency ---------------------------------------------------------------------------------------------


def test_cuda_target_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    refused(tmp_path, "latency.target", "CUDA is not available", latency={"target": {"device": "cuda"}})


def test_runtime_must_be_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    refused(tmp_path, "latency.target.runtime", "pip install onnxruntime")
    check(tmp_path, latency={"target": {"runtime": "eager"}})
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CXX", raising=False)
    refused(tmp_path, "latency.target.runtime", "C++ compiler", latency={"target": {"runtime": "compile"}})


def test_target_and_protocol_settings(tmp_path):
    refused(tmp_path, "latency.target", "devise", latency={"target": {"devise": "cpu"}})
    refused(tmp_path, "latency.target", "threads", latency={"target": {"threads": 4096}})
    refused(tmp_path, "latency.target", "clock cpu", latency={"target": {"threads": 2}, "protocol": {"clock": "cpu"}})


def test_lut_must_match_target_and_cover_space_and_seeds(tmp_path):
    lat = {"mode": "lut", "target": {"threads": 1}}
    check(tmp_path, latency={**lat, "lut": str(fake_lut(tmp_path))})
    refused(tmp_path, "latency.lut", "another target", "threads=1",
            latency={**lat, "lut": str(fake_lut(tmp_path, threads=2, name="t2.json"))})
    refused(tmp_path, "latency.lut", "is complete but lacks 3 of the",
            latency={**lat, "lut": str(fake_lut(tmp_path, drop=3, name="short.json"))})
    refused(tmp_path, "seeds: shufflenet_v2_x0_5_cifar", "lookup table lacks",
            latency={**lat, "lut": str(fake_lut(tmp_path))}, seeds=["shufflenet_v2_x0_5_cifar"])
    # no table yet: it will be built for the space, which the seed is outside of
    refused(tmp_path, "seeds: shufflenet_v2_x0_5_cifar", "lookup table lacks",
            latency={**lat, "lut": str(tmp_path / "later.json")}, seeds=["shufflenet_v2_x0_5_cifar"])


def test_a_partial_table_is_resumed_so_it_passes_and_seeds_are_judged_by_the_space(tmp_path):
    """A killed build leaves complete: false; the search resumes it for the space, so preflight takes it,
    and a seed is judged by the blocks the finished table will have, not by those measured so far."""
    from search_space import SearchSpace

    lat = {"mode": "lut", "target": {"threads": 1}}
    part = str(fake_lut(tmp_path, drop=3, complete=False, host="here", name="part.json"))
    check(tmp_path, latency={**lat, "lut": part})
    empty = str(fake_lut(tmp_path, drop=10 ** 6, complete=False, host="here", name="empty.json"))
    inside = tmp_path / "inside.yaml"
    inside.write_text(SearchSpace.from_yaml(TINY_SPACE).sample(seed=0).to_yaml())
    check(tmp_path, latency={**lat, "lut": empty}, seeds=[str(inside)])
    refused(tmp_path, "seeds: shufflenet_v2_x0_5_cifar", "lookup table lacks",
            latency={**lat, "lut": empty}, seeds=["shufflenet_v2_x0_5_cifar"])


def test_lut_from_another_host_is_refused_before_the_run_folder_exists(tmp_path):
    import warnings

    from evaluators.latency.target import LUTHostWarning
    from nas.experiment import experiment_from_dict
    from nas.preflight import PreflightError
    from nas.search import run_search

    lat = {"mode": "lut", "target": {"threads": 1}}
    check(tmp_path, latency={**lat, "lut": str(fake_lut(tmp_path, host="here", name="here.json"))})
    foreign = str(fake_lut(tmp_path, host=elsewhere(), name="foreign.json"))
    msg = refused(tmp_path, "latency.lut", "foreign.json", "built on elsewhere-7", "hostname differ",
                  "latency.lut_host_check: false", latency={**lat, "lut": foreign})
    assert msg.count("elsewhere-7") == 1
    check(tmp_path, latency={**lat, "lut": foreign, "lut_host_check": False})
    # a partial table of another host is not resumed either (entries of two hosts are not one table)
    refused(tmp_path, "latency.lut", "built on elsewhere-7", latency={
        **lat, "lut": str(fake_lut(tmp_path, drop=3, complete=False, host=elsewhere(), name="fpart.json"))})
    # an untagged (older) table cannot be checked: it passes, and the search warns when it loads it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check(tmp_path, latency={**lat, "lut": str(fake_lut(tmp_path, name="untagged.json"))})
    assert not [w for w in caught if issubclass(w.category, LUTHostWarning)]
    # the whole search: refused by preflight, so no run folder (prepare() used to refuse it inside one)
    exp = experiment_from_dict(raw_experiment(tmp_path, latency={**lat, "lut": foreign}), base_dir=tmp_path)
    with pytest.raises(PreflightError, match="^latency.lut: .*built on elsewhere-7"):
        run_search(exp, progress=False)
    assert not Path(exp.output).exists()


def test_on_a_ray_cluster_latency_is_checked_on_the_device_node_not_here(tmp_path, monkeypatch):
    """With an address the latency target's device, threads, compiler and LUT host belong to the node
    offering latency_device: only the cluster check (stubbed here; real in the slow test below) sees them."""
    import nas.preflight

    joined = []
    monkeypatch.setattr(nas.preflight, "_check_cluster", lambda exp, address, want: joined.append(address))
    ray_search = {"trials": 2, "backend": "ray"}
    many = {"target": {"threads": 64}}
    refused(tmp_path, "latency.target", "threads 64 exceeds", latency=many, search=ray_search)  # private cluster
    check(tmp_path, latency=many, search=ray_search, address="127.0.0.1:6379")
    check(tmp_path, latency=many, search={**ray_search, "ray": {"address": "127.0.0.1:6380"}})
    assert joined == ["127.0.0.1:6379", "127.0.0.1:6380"]  # the cluster itself is still checked
    if not torch.cuda.is_available():
        refused(tmp_path, "latency.target", "CUDA is not available", latency={"target": {"device": "cuda"}},
                search=ray_search)
        check(tmp_path, latency={"target": {"device": "cuda", "runtime": "eager"}}, search=ray_search,
              address="127.0.0.1:6379")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CXX", raising=False)
    check(tmp_path, latency={"target": {"runtime": "compile"}}, search=ray_search, address="127.0.0.1:6379")
    # what no machine can measure is refused wherever it would run
    refused(tmp_path, "latency.target", "clock cpu", latency={"target": {"threads": 2}, "protocol": {"clock": "cpu"}},
            search=ray_search, address="127.0.0.1:6379")
    # the table is checked against the host where it is used, the device node: not against this one
    lut = {"mode": "lut", "lut": str(fake_lut(tmp_path, host=elsewhere(), name="foreign.json"))}
    check(tmp_path, latency=lut, search=ray_search, address="127.0.0.1:6379")
    refused(tmp_path, "latency.lut", "elsewhere-7", latency=lut, search=ray_search)  # private cluster: this host


# ---- seeds and retraining ----------------------------------------------------------------------------------


def test_seeds_must_fit_the_data_and_the_supernet(tmp_path):
    refused(tmp_path, "seeds: shufflenet_v2_x0_5", "num_classes 1000", seeds=["shufflenet_v2_x0_5"],
            accuracy={"method": "proxy_training"})
    refused(tmp_path, "seeds: shufflenet_v2_x0_5_cifar", "outside the supernet's space",
            seeds=["shufflenet_v2_x0_5_cifar"],
            accuracy={"method": "supernet", "checkpoint": str(fake_supernet(tmp_path))})
    check(tmp_path, seeds=["shufflenet_v2_x0_5"])  # zero-cost: any seed can be scored


def test_retrain_settings(tmp_path):
    refused(tmp_path, "retrain.train", "epochs=0", retrain={"train": {"epochs": 0}})
    refused(tmp_path, "retrain.baselines: shufflenet_v2_x0_5", "num_classes 1000",
            retrain={"baselines": ["shufflenet_v2_x0_5"]})


# ---- run folder, storage, limits, Ray ---------------------------------------------------------------------


def test_output_must_be_a_creatable_folder(tmp_path):
    (tmp_path / "afile").write_text("x")
    refused(tmp_path, "output", "is a file", output=str(tmp_path / "afile"))
    refused(tmp_path, "output", "afile is a file", output=str(tmp_path / "afile" / "run"))


def test_storage_must_be_reachable(tmp_path):
    msg = refused(tmp_path, "search.optuna.storage", "cannot connect", "127.0.0.1:1",
                  search={"trials": 2, "optuna": {"storage": "postgresql+psycopg2://me:secret@127.0.0.1:1/db"}})
    assert "secret" not in msg
    refused(tmp_path, "search.optuna.storage", "does not exist or is not writable",
            search={"trials": 2, "optuna": {"storage": f"sqlite:///{tmp_path}/nope/s.db"}})
    (tmp_path / "text.db").write_text("hello, not a database")
    refused(tmp_path, "search.optuna.storage", "not a SQLite database",
            search={"trials": 2, "optuna": {"storage": f"sqlite:///{tmp_path}/text.db"}})
    check(tmp_path, search={"trials": 2, "optuna": {"storage": f"sqlite:///{tmp_path}/s.db"}})
    assert not (tmp_path / "s.db").exists()  # checked, not created


def test_an_unsupported_storage_scheme_is_named_before_a_missing_driver(tmp_path):
    """mysql:// and oracle:// have no driver here either; the user must hear that the search cannot use
    them at all (no lock keeps the budget exact there), not be sent to install a driver; no password shown."""
    for url in ("mysql://me:secret@127.0.0.1/db", "oracle+cx_oracle://me:secret@127.0.0.1/db"):
        msg = refused(tmp_path, "search.optuna.storage", "is not a postgresql:// or sqlite:/// URL", url.split(":")[0],
                      search={"trials": 2, "optuna": {"storage": url}})
        assert "no database driver" not in msg and "secret" not in msg


def test_memory_limit_needs_proc(tmp_path, monkeypatch):
    import nas.preflight

    monkeypatch.setattr(nas.preflight, "memory_limit_supported", lambda: False)
    refused(tmp_path, "search.trial_memory_mb", "/proc", search={"trials": 2, "trial_memory_mb": 500})


def test_address_is_for_the_ray_backend_and_must_be_reachable(tmp_path):
    refused(tmp_path, "--address", "ray backend only", address="127.0.0.1:6379")
    refused(tmp_path, "--address", "cannot reach", "127.0.0.1:1", address="127.0.0.1:1",
            search={"trials": 2, "backend": "ray"})


def test_private_ray_cluster_has_the_gpus_trials_ask_for(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    refused(tmp_path, "search.ray.resources.gpu", "1 GPU", "has 0",
            search={"trials": 2, "backend": "ray", "ray": {"resources": {"cpu": 1, "gpu": 1}}})
    refused(tmp_path, "search.ray.resources.cpu", "64 CPU",
            search={"trials": 2, "backend": "ray", "ray": {"resources": {"cpu": 64}, "num_cpus": 2}})
    check(tmp_path, search={"trials": 2, "backend": "ray", "ray": {"resources": {"cpu": 1}}})


CLUSTER_SCRIPT = """
import json, sys
from nas.experiment import experiment_from_dict
from nas.preflight import PreflightError, preflight

out = {}
for name, raw in json.loads(open(sys.argv[2]).read()).items():
    try:
        preflight(experiment_from_dict(raw, base_dir=sys.argv[3]), resume=False, address=sys.argv[1])
        out[name] = "ok"
    except PreflightError as exc:
        out[name] = str(exc)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_cluster_offers_the_latency_device_and_the_trials_resources(tmp_path):
    """A real Ray cluster on loopback (tests/loopback_cluster.py): a head offering 1 CPU, no GPU and no
    ``latency_device``, then also a device node. Every latency mode needs that node (measured: the
    measurements; lut: the table is loaded or built there, and the front re-measured); trials asking
    for a GPU cannot be placed; the target's threads are the device node's business, not this machine's."""
    from loopback_cluster import LoopbackCluster, namespaces_work, node_options

    if namespaces_work() is not None:
        pytest.skip(namespaces_work())
    ray_search = {"trials": 2, "backend": "ray"}
    lut = {"mode": "lut", "lut": str(fake_lut(tmp_path)), "remeasure_front": False}
    before = {"measured": raw_experiment(tmp_path, search=ray_search),
              "lut": raw_experiment(tmp_path, latency=lut, search=ray_search)}
    after = {"gpu": raw_experiment(tmp_path, latency=lut, search={**ray_search, "ray": {"resources": {"gpu": 1}}}),
             "fits": raw_experiment(tmp_path, latency=lut, search=ray_search),
             "threads": raw_experiment(tmp_path, latency={"target": {"threads": 64}}, search=ray_search),
             "cuda": raw_experiment(tmp_path, latency={"target": {"device": "cuda", "runtime": "eager"}},
                                    search=ray_search)}
    (tmp_path / "before.json").write_text(json.dumps(before))
    (tmp_path / "after.json").write_text(json.dumps(after))
    (tmp_path / "check.py").write_text(CLUSTER_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    run = f"PYTHONPATH={shlex.quote(str(root))} {sys.executable} check.py $ADDRESS"
    device = shlex.quote(node_options({"cpus": 0, "resources": {"latency_device": 1}}))
    command = (f"{run} before.json {shlex.quote(str(tmp_path))} >before_result.json 2>check.log && "
               f"start_worker device {device} && wait_nodes 2 && "
               f"{run} after.json {shlex.quote(str(tmp_path))} >after_result.json 2>>check.log")
    rc, out = LoopbackCluster(tmp_path, command, head={"cpus": 1}, workers=[]).run()
    assert rc == 0, out + (tmp_path / "check.log").read_text()[-2000:]
    got = {**json.loads((tmp_path / "before_result.json").read_text()),
           **json.loads((tmp_path / "after_result.json").read_text())}
    for mode in ("measured", "lut"):
        assert got[mode].startswith("--address: no node of the Ray cluster") and "latency_device" in got[mode]
    assert got["gpu"].startswith("search.ray.resources: no alive node") and "GPU 1" in got["gpu"]
    assert got["fits"] == "ok" and got["threads"] == "ok"
    if not torch.cuda.is_available():  # (where the nodes see a GPU, the device node offers one)
        assert got["cuda"].startswith("latency.target.device: cuda, but no node offering 'latency_device'")


def test_training_device_must_exist_here(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    refused(tmp_path, "accuracy.train", "device cuda", "CUDA is not available",
            accuracy={"method": "proxy_training", "train": {"device": "cuda"}})
    refused(tmp_path, "retrain.train", "device cuda:1", retrain={"train": {"device": "cuda:1"}})
    refused(tmp_path, "accuracy.supernet_train", "device cuda", accuracy={
        "method": "supernet", "checkpoint": str(tmp_path / "absent.pt"), "supernet_train": {"device": "cuda"}})
    check(tmp_path, accuracy={"method": "proxy_training", "train": {"device": "auto"}})
