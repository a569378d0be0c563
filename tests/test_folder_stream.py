"""Streamed ImageNet-layout folders (``folder:PATH``): layout checks, the cached index, the transforms,
seeded batches with any number of loader workers, unreadable images, worker errors, training on them."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image

import evaluators.data.folder as folder
from evaluators.data import DataError, ImageFiles, batches, load_dataset, load_raw
from evaluators.data.transforms import center_crop_box, decode_image, random_resized_crop_box
from evaluators.training import TrainConfig, evaluate, train
from search_space import build_model

CLASSES = ("cat", "dog", "emu")


def jpeg_tree(root, classes=CLASSES, train=8, val=2, seed=0):
    """PATH/train/<class>/*.jpg and PATH/val/<class>/*.jpg of small random JPEGs of varied sizes;
    each class has its own mean colour, so a network can tell them apart."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = 18 + (i % 5) * 3, 24 + (i % 3) * 4
                base = np.full((h, w, 3), 40 + 80 * k, dtype=np.int64)
                img = np.clip(base + rng.integers(-30, 30, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / c / f"{c}_{i}.jpg", quality=90)
    return root


@pytest.fixture
def tree(tmp_path):
    return jpeg_tree(tmp_path / "imgs")


# ---- layout ---------------------------------------------------------------------------------------
def test_streamed_splits_val_is_test_and_validation_is_held_out_of_train(tree):
    d = load_dataset(f"folder:{tree}", input_size=16, val_fraction=0.25, seed=0)
    assert d.streamed and isinstance(d.train, ImageFiles) and isinstance(d.test, ImageFiles)
    assert d.classes == list(CLASSES) and d.num_classes == 3 and (d.input_size, d.in_channels) == (16, 3)
    assert (len(d.train), len(d.val), len(d.test)) == (18, 6, 6)  # 24 train/ images split 3:1, val/ is the test set
    train_paths = {d.train.path(i) for i in range(len(d.train))}
    val_paths = {d.val.path(i) for i in range(len(d.val))}
    test_paths = {d.test.path(i) for i in range(len(d.test))}
    assert not train_paths & val_paths and all("/train/" in p for p in train_paths | val_paths)
    assert all("/val/" in p for p in test_paths)
    assert sorted(d.test.y.tolist()) == [0, 0, 1, 1, 2, 2]
    assert all(0.1 < m < 0.9 for m in d.mean) and all(0 < s < 0.5 for s in d.std)
    grey = load_dataset(f"folder:{tree}", input_size=8, in_channels=1)
    assert grey.in_channels == 1 and len(grey.mean) == 1
    x, _ = next(batches(grey.train, 4, shuffle=False, augment=False, generator=None, mean=grey.mean,
                        std=grey.std, workers=0))
    assert x.shape == (4, 1, 8, 8)
    # a Ray worker receives the splits pickled: the same files, the same batches
    shipped = pickle.loads(pickle.dumps(d))
    assert [shipped.train.path(i) for i in range(3)] == [d.train.path(i) for i in range(3)]


@pytest.mark.parametrize("make,needle", [
    (lambda t: t / "absent", "not a directory"),
    (lambda t: (t / "flat" / "cat").mkdir(parents=True) or t / "flat",
     "no train/ and val/ folder.*belong in PATH/train"),
    (lambda t: (t / "notest" / "train" / "cat").mkdir(parents=True) or t / "notest", "no val/ folder"),
    (lambda t: [(t / "empty" / s / "cat").mkdir(parents=True) for s in ("train", "val")] and t / "empty",
     "found 1 class folder.* and 0 images"),
])
def test_layout_errors_are_one_line(tmp_path, make, needle):
    with pytest.raises(DataError, match=needle) as err:
        load_raw(f"folder:{make(tmp_path)}")
    assert "\n" not in str(err.value)


def test_val_without_images_or_with_unknown_classes(tree):
    for f in (tree / "val").rglob("*.jpg"):
        f.unlink()
    with pytest.raises(DataError, match="val: no images in class folders"):
        load_raw(f"folder:{tree}")
    (tree / "val" / "yak").mkdir()
    with pytest.raises(DataError, match=r"classes \['yak'\] are not in"):
        load_raw(f"folder:{tree}")


def test_cli_bad_folders_exit_2_with_one_line(tmp_path, capsys):
    from shufflenas.cli import main

    (tmp_path / "flat" / "cat").mkdir(parents=True)
    (tmp_path / "flat" / "dog").mkdir()
    for spec, needle in ((tmp_path / "nowhere", "not a directory"), (tmp_path / "flat", "no train/ and val/"),):
        assert main(["train", "--preset", "shufflenet_v2_x0_5_cifar", "--data", f"folder:{spec}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("shufflenas: error: ") and err.count("\n") == 1 and needle in err


# ---- the index --------------------------------------------------------------------------------------
def test_index_is_built_once_cached_in_the_folder_and_rebuilt_when_files_change(tree, monkeypatch):
    first = folder.file_index(tree)
    assert first["cached_at"] == str(tree / folder.INDEX_FILE) and (tree / folder.INDEX_FILE).is_file()

    def no_listing(*a, **k):
        raise AssertionError("the folder was listed again")

    monkeypatch.setattr(folder, "_list_split", no_listing)
    again = folder.file_index(tree)  # from the cache: nothing listed
    assert np.array_equal(again["train_labels"], first["train_labels"])
    assert np.array_equal(again["mean_rgb"], first["mean_rgb"])
    monkeypatch.undo()

    new = tree / "train" / "dog" / "zzz.jpg"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(new)
    os.utime(new.parent, ns=(1, 1))  # the class folder's time changes (set explicitly: clocks can be coarse)
    grown = folder.file_index(tree)
    assert len(grown["train_labels"]) == len(first["train_labels"]) + 1


def test_index_goes_to_the_cache_dir_when_the_folder_is_not_writable(tree, tmp_path, monkeypatch):
    monkeypatch.setenv("SHUFFLENAS_CACHE", str(tmp_path / "cache"))
    real = folder.atomic_write_bytes

    def read_only_folder(path, data):
        if str(path).startswith(str(tree)):
            raise PermissionError(f"{path}: read-only file system")
        return real(path, data)

    monkeypatch.setattr(folder, "atomic_write_bytes", read_only_folder)
    index = folder.file_index(tree)
    cached = list((tmp_path / "cache" / "folder-index").glob("*.npz"))
    assert len(cached) == 1 and index["cached_at"] == str(cached[0]) and not (tree / folder.INDEX_FILE).exists()
    assert folder.file_index(tree)["cached_at"] == str(cached[0])  # and is read from there


# ---- transforms ---------------------------------------------------------------------------------
def test_crop_boxes():
    assert center_crop_box(500, 375, 224) == pytest.approx((250 - 164.0625, 187.5 - 164.0625,
                                                            250 + 164.0625, 187.5 + 164.0625))  # 224 of 256
    rng = random.Random(0)
    for _ in range(200):
        left, top, right, bottom = random_resized_crop_box(500, 375, rng)
        w, h = right - left, bottom - top
        assert 0 <= left < right <= 500 and 0 <= top < bottom <= 375
        assert 0.08 * 500 * 375 * 0.9 <= w * h <= 500 * 375 and 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02


def test_jpeg_draft_decoding_matches_a_full_decode(tmp_path):
    """The reduced-scale JPEG decode keeps the same crop (the box is rescaled with the image)."""
    yy, xx = np.mgrid[0:300, 0:400]
    img = np.stack([xx * 255 // 400, yy * 255 // 300, (xx + yy) * 255 // 700], -1).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "big.jpg", quality=95)
    Image.fromarray(img).save(tmp_path / "big.png")
    for augment in (False, True):
        a = decode_image(tmp_path / "big.jpg", 32, "RGB", augment=augment, flip=False, seed=3)
        b = decode_image(tmp_path / "big.png", 32, "RGB", augment=augment, flip=False, seed=3)
        assert a.shape == (32, 32, 3) and np.abs(a.astype(int) - b.astype(int)).mean() < 4
    assert decode_image(tmp_path / "big.jpg", 16, "L", augment=False, flip=False, seed=None).shape == (16, 16, 1)


# ---- batches --------------------------------------------------------------------------------------------
def _epoch(split, mean, std, workers, seed=0, augment=True):
    g = torch.Generator().manual_seed(seed)
    return list(batches(split, 5, shuffle=True, augment=augment, generator=g, mean=mean, std=std, workers=workers))


def test_batches_are_seeded_and_the_same_with_any_number_of_workers(tree):
    d = load_dataset(f"folder:{tree}", input_size=16, val_fraction=0.25)
    inline, two = _epoch(d.train, d.mean, d.std, 0), _epoch(d.train, d.mean, d.std, 2)
    assert [len(y) for _, y in inline] == [5, 5, 5, 3] and inline[0][0].shape == (5, 3, 16, 16)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(inline, two))
    other = _epoch(d.train, d.mean, d.std, 0, seed=1)
    assert not torch.equal(torch.cat([x for x, _ in inline]), torch.cat([x for x, _ in other]))
    x = torch.cat([x for x, _ in _epoch(d.train, d.mean, d.std, 0, augment=False)])
    assert abs(float(x.mean())) < 0.5 and 0.5 < float(x.std()) < 2  # normalised with the index's stats


def test_an_unreadable_image_is_skipped_and_counted(tree):
    bad = tree / "train" / "dog" / "dog_99.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    d = load_dataset(f"folder:{tree}", input_size=16, val_fraction=0.2)
    seen = sum(len(y) for _, y in _epoch(d.train, d.mean, d.std, 1)) + \
        sum(len(y) for _, y in _epoch(d.val, d.mean, d.std, 0, augment=False))
    assert seen == 24 and d.train.skipped.keys() | d.val.skipped.keys() == {str(bad)}
    reason = {**d.train.skipped, **d.val.skipped}[str(bad)]
    assert "UnidentifiedImageError" in reason or "OSError" in reason


def test_training_reports_skipped_images(tree, tiny_arch):
    bad = tree / "train" / "cat" / "cat_99.jpg"
    bad.write_bytes(b"truncated")
    d = load_dataset(f"folder:{tree}", input_size=16, val_fraction=0.25)
    r = train(tiny_arch.replace(num_classes=3), d, TrainConfig(epochs=1, batch_size=8, loader_workers=0))
    assert r.extra["skipped_images"] == 1 and r.extra["skipped"][0].startswith(str(bad))
    assert r.extra["loader_workers"] == 0 and 0 <= r.accuracy <= 1


def test_too_many_unreadable_images_is_an_error_naming_one(tmp_path):
    tree = jpeg_tree(tmp_path / "imgs", train=16)
    for i in range(16):
        (tree / "train" / "emu" / f"emu_{i}.jpg").write_bytes(b"junk")  # a third of 48: over max(10, 1%)
    d = load_dataset(f"folder:{tree}", input_size=16, val_fraction=0.05)
    with pytest.raises(DataError, match=r"of \d+ images under .*train could not be read \(first: .*emu_\d+\.jpg"):
        _epoch(d.train, d.mean, d.std, 1)


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork",
                    reason="the patched decoder reaches loader workers only when they are forked")
def test_an_error_in_a_loader_worker_propagates_instead_of_hanging(tree, monkeypatch):
    d = load_dataset(f"folder:{tree}", input_size=16, val_fraction=0.25)

    def broken(*a, **k):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(folder, "decode_image", broken)
    with pytest.raises(RuntimeError, match="decoder exploded"):
        _epoch(d.train, d.mean, d.std, 2)


# ---- training on a folder ---------------------------------------------------------------------------
def test_cli_trains_on_a_folder_and_tests_on_val(tree, tmp_path, tiny_arch, capsys):
    from shufflenas.cli import main

    arch = tmp_path / "tiny3.yaml"
    tiny_arch.replace(num_classes=3, name="tiny3").to_yaml(arch)
    assert main(["train", str(arch), "--data", f"folder:{tree}", "--epochs", "1", "--batch-size", "6",
                 "--loader-workers", "1", "--test", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["train_images"] + rep["val_images"] == 24 and rep["test_images"] == 6
    assert rep["skipped_images"] == 0 and rep["loader_workers"] == 1 and rep["placement"]["device"] == "cpu"
    assert 0 <= rep["test_accuracy"] <= 1 and len(rep["history"]) == 1


def test_evaluate_on_streamed_test_split_matches_in_process(tree, tiny_arch):
    d = load_dataset(f"folder:{tree}", input_size=16, val_fraction=0.25)
    model = build_model(tiny_arch.replace(num_classes=3))
    assert evaluate(model, d.test, d.mean, d.std, workers=0) == evaluate(model, d.test, d.mean, d.std, workers=2)
