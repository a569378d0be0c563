"""Data loaders on tiny fake files (CIFAR pickles, idx, image folders), spec strings, batching."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch

from evaluators.data import DataError, DatasetSpec, batches, check_dataset, load_dataset, load_raw
from evaluators.data.download import fetch
from evaluators.data.tensors import TensorData, adapt, augment_batch


# ---- spec strings -----------------------------------------------------------------------------
@pytest.mark.parametrize("spec,name,path", [
    ("digits", "digits", None), ("cifar10", "cifar10", None), ("CIFAR-10:/d/c.tar.gz", "cifar10", "/d/c.tar.gz"),
    ("fashion-mnist:data/fm", "fashion-mnist", "data/fm"), ("mnist", "mnist", None),
    ("folder:/imgs", "folder", "/imgs"),
])
def test_spec_parses(spec, name, path):
    s = DatasetSpec.parse(spec)
    assert s.name == name and (str(s.path) if s.path else None) == path
    assert DatasetSpec.parse(str(s)) == s


@pytest.mark.parametrize("spec,needle", [
    ("", "empty"), ("imagenet", "unknown dataset 'imagenet'"), ("digits:/x", "takes no PATH"),
    ("folder", "folder:PATH"), ("cifar10:", "empty PATH"),
])
def test_spec_errors_are_one_line(spec, needle):
    with pytest.raises(DataError, match=needle) as e:
        DatasetSpec.parse(spec)
    assert "\n" not in str(e.value)


# ---- digits -----------------------------------------------------------------------------------
def test_digits_adapted_to_rgb_32_with_fixed_test_split():
    a = load_dataset("digits", input_size=32, seed=0)
    b = load_dataset("digits", input_size=32, seed=1, subset=500, val_fraction=0.2)
    assert a.train.x.shape[1:] == (3, 32, 32) and a.train.x.dtype == torch.uint8
    assert a.num_classes == 10 and a.name == "digits" and not a.train.flip and a.source_shape == (1, 8, 8)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert (len(b.train), len(b.val)) == (400, 100)
    assert torch.equal(a.test.x, b.test.x)  # the held-out test part never depends on the seed
    assert not torch.equal(a.train.x[:100], load_dataset("digits", input_size=32, seed=1).train.x[:100])
    assert torch.equal(a.train.x[:, 0], a.train.x[:, 2])  # grey repeated on 3 channels
    assert len(a.mean) == 3 and 0 < a.mean[0] < 1 and a.std[0] > 0
    g = load_dataset("digits", input_size=8, in_channels=1, subset=100)
    assert g.train.x.shape[1:] == (1, 8, 8) and int(g.train.x.max()) == 255


def test_bad_dataset_arguments():
    with pytest.raises(DataError, match="val_fraction"):
        load_dataset("digits", input_size=32, val_fraction=1.0)
    with pytest.raises(DataError, match="subset"):
        load_dataset("digits", input_size=32, subset=1)
    with pytest.raises(DataError, match="4 channels"):
        adapt(TensorData(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2)), 4, 4)


def test_batches_are_normalised_seeded_and_complete():
    d = load_dataset("digits", input_size=16, subset=300)
    kw = dict(shuffle=True, augment=True, mean=d.mean, std=d.std)
    one = list(batches(d.train, 64, generator=torch.Generator().manual_seed(3), **kw))
    two = list(batches(d.train, 64, generator=torch.Generator().manual_seed(3), **kw))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(one, two))
    assert sum(len(y) for _, y in one) == len(d.train) and one[0][0].dtype == torch.float32
    assert sorted(torch.cat([y for _, y in one]).tolist()) == sorted(d.train.y.tolist())
    plain = torch.cat([x for x, _ in batches(d.train, 64, shuffle=False, augment=False, generator=None,
                                               mean=d.mean, std=d.std)])
    assert abs(plain.mean().item()) < 1e-3 and abs(plain.std().item() - 1) < 1e-2
    assert len(list(batches(d.train, 64, shuffle=False, augment=False, generator=None, mean=d.mean,
                            std=d.std, drop_last=True))) == len(d.train) // 64


def test_augment_crops_and_flips_only_when_allowed():
    x = torch.arange(100 * 8 * 8, dtype=torch.int64).remainder(251).to(torch.uint8).view(100, 1, 8, 8)
    out = augment_batch(x, flip=False, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out, x)
    assert torch.equal(out, augment_batch(x, flip=False, generator=torch.Generator().manual_seed(0)))
    # every crop is a window of the zero-padded original (pad 1 at 8x8)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    assert all(any(torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8]) for dy in range(3) for dx in range(3))
               for i in range(len(x)))
    # same seed draws the same crops, then flips about half of them
    flipped = augment_batch(x, flip=True, generator=torch.Generator().manual_seed(0))
    is_flip = [torch.equal(flipped[i], out[i].flip(-1)) and not torch.equal(flipped[i], out[i]) for i in range(100)]
    assert all(torch.equal(flipped[i], out[i]) or is_flip[i] for i in range(100))
    assert 20 < sum(is_flip) < 80


# ---- CIFAR-10 (fake, tiny) --------------------------------------------------------------------
def _cifar_batch(n, seed, protocol=2):
    rng = np.random.default_rng(seed)
    return pickle.dumps({"batch_label": "x", "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, n).tolist()}, protocol=protocol)


def _fake_cifar_dir(root, protocol=2, n=6):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i in range(1, 6):
        (d / f"data_batch_{i}").write_bytes(_cifar_batch(n, i, protocol))
    (d / "test_batch").write_bytes(_cifar_batch(n, 9, protocol))
    return d


@pytest.mark.parametrize("protocol", [2, 5])
def test_fake_cifar_from_directory_and_archive(tmp_path, protocol):
    d = _fake_cifar_dir(tmp_path, protocol)
    tar = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(d, arcname="cifar-10-batches-py")
    for spec in (f"cifar10:{d}", f"cifar10:{tmp_path}", f"cifar10:{tar}"):
        s = load_dataset(spec, input_size=32, val_fraction=0.2)
        assert (len(s.train), len(s.val), len(s.test)) == (24, 6, 6) and s.train.flip
        assert s.train.x.shape[1:] == (3, 32, 32) and s.num_classes == 10
    raw = pickle.loads(_cifar_batch(6, 1, protocol))
    first = load_raw(f"cifar10:{d}").train.x[0]
    assert torch.equal(first, torch.from_numpy(raw["data"][0].reshape(3, 32, 32)))  # R, G, B planes
    # no path: read from the cache dir (root) when the archive is there, no download
    assert len(load_raw("cifar10", root=str(tmp_path)).test) == 6


def test_cifar_missing_corrupt_and_hostile_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_raw(f"cifar10:{tmp_path / 'nope.tar.gz'}")
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"this is not a tar file")
    with pytest.raises(DataError, match="bad.tar.gz: corrupt"):
        load_raw(f"cifar10:{bad}")
    d = _fake_cifar_dir(tmp_path / "c")
    (d / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing data_batch_3"):
        load_raw(f"cifar10:{d}")
    (d / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR-10 batch"):
        load_raw(f"cifar10:{d}")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (d / "data_batch_3").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(DataError, match="refusing to load"):
        load_raw(f"cifar10:{d}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no CIFAR-10 files"):
        load_raw(f"cifar10:{tmp_path / 'empty'}")


# ---- idx (MNIST / Fashion-MNIST) --------------------------------------------------------------
def _idx(path, arr, magic, compress=True):
    body = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(body) if compress else body)


def _fake_idx_dir(root, n=12, compress=True):
    rng = np.random.default_rng(0)
    ext = ".gz" if compress else ""
    for prefix in ("train", "t10k"):
        _idx(root / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28)), 2051, compress)
        _idx(root / f"{prefix}-labels-idx1-ubyte{ext}", rng.integers(0, 10, n), 2049, compress)
    return root


@pytest.mark.parametrize("name,compress", [("fashion-mnist", True), ("mnist", False)])
def test_fake_idx_loads_and_adapts(tmp_path, name, compress):
    _fake_idx_dir(tmp_path, compress=compress)
    s = load_dataset(f"{name}:{tmp_path}", input_size=32, val_fraction=0.25)
    assert (len(s.train), len(s.val), len(s.test)) == (9, 3, 12) and not s.train.flip
    assert s.train.x.shape[1:] == (3, 32, 32) and s.num_classes == 10
    g = load_dataset(f"{name}:{tmp_path}", input_size=28, in_channels=1)
    raw = load_raw(f"{name}:{tmp_path}")
    assert torch.equal(torch.sort(torch.cat([g.train.x, g.val.x]).flatten(1).sum(1)).values,
                       torch.sort(raw.train.x.flatten(1).sum(1)).values)


def test_idx_corrupt_and_missing(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load_raw(f"mnist:{tmp_path / 'absent'}")
    _fake_idx_dir(tmp_path)
    lab = tmp_path / "train-labels-idx1-ubyte.gz"
    _idx(lab, np.zeros((12, 28, 28)), 2051)  # images where labels belong
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: not an idx file.*expected 2049"):
        load_raw(f"mnist:{tmp_path}")
    lab.write_bytes(gzip.compress(struct.pack(">II", 2049, 99) + bytes(5)))
    with pytest.raises(DataError, match="truncated"):
        load_raw(f"mnist:{tmp_path}")
    lab.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="unreadable"):
        load_raw(f"mnist:{tmp_path}")
    lab.unlink()
    with pytest.raises(DataError, match="missing train-labels-idx1-ubyte.gz"):
        load_raw(f"mnist:{tmp_path}")


# ---- image folders (streamed; the full set of tests is in test_folder_stream.py) ------------------
def _png_tree(root, classes=("cat", "dog", "emu"), per_class=5):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            size = (10 + i, 14)  # images of different sizes
            Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_png_folder_with_a_test_split_named_test(tmp_path):
    _png_tree(tmp_path / "split" / "train")
    _png_tree(tmp_path / "split" / "test", per_class=2)  # test/ is accepted in place of val/
    s = load_dataset(f"folder:{tmp_path / 'split'}", input_size=8, in_channels=1, val_fraction=0.2)
    assert s.classes == ["cat", "dog", "emu"] and (len(s.train), len(s.val), len(s.test)) == (12, 3, 6)
    x, y = next(batches(s.test, 6, shuffle=False, augment=False, generator=None, mean=s.mean, std=s.std,
                        workers=0))
    assert x.shape == (6, 1, 8, 8) and y.tolist() == [0, 0, 1, 1, 2, 2]


def test_a_flat_class_folder_is_refused_with_the_layout_to_use(tmp_path):
    """The pool layout (PATH/<class>/*) is no longer split by a hidden rule: it is a one-line error."""
    _png_tree(tmp_path / "pool")
    with pytest.raises(DataError, match="no train/ and val/ folder; expected the ImageNet layout"):
        load_raw(f"folder:{tmp_path / 'pool'}")


# ---- check_dataset: the loaders' files, checked without loading them ---------------------------
def _fake_cifar_archive(tmp_path, n=6):
    d = _fake_cifar_dir(tmp_path / "src", n=n)
    tar = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(d, arcname="cifar-10-batches-py")
    return tar


def test_check_cifar_reads_the_archive_through_and_decodes_only_the_test_batch(tmp_path, monkeypatch):
    import evaluators.data.cifar as cifar

    tar = _fake_cifar_archive(tmp_path, n=6)
    decoded = []
    real = cifar._read_batch
    monkeypatch.setattr(cifar, "_read_batch", lambda raw, where: decoded.append(where) or real(raw, where))
    for spec in (f"cifar10:{tar}", f"cifar10:{tmp_path}", f"cifar10:{tmp_path / 'src'}"):
        decoded.clear()
        s = check_dataset(spec)
        assert (s.name, s.num_classes, dict(s.images)) == ("cifar10", 10, {"test": 6})
        assert len(decoded) == 1 and decoded[0].endswith(":test_batch"), decoded
    assert check_dataset("cifar10", root=str(tmp_path)).source == str(tar)  # in the cache: no download
    decoded.clear()
    assert len(load_raw(f"cifar10:{tar}").train) == 30 and len(decoded) == 6  # the loader decodes all six


def _broken_cifar(tmp_path, how):
    tar = _fake_cifar_archive(tmp_path)
    data = bytearray(tar.read_bytes())
    if how == "truncated":
        data = data[:len(data) * 6 // 10]
    elif how == "crc":
        data[-6] ^= 0xFF  # in the gzip trailer's checksum: nothing but a read to the end notices
    elif how == "missing":
        with tarfile.open(tar, "w:gz") as t:
            for i in (1, 2, 4, 5):
                t.add(tmp_path / "src" / "cifar-10-batches-py" / f"data_batch_{i}",
                      arcname=f"cifar-10-batches-py/data_batch_{i}")
            t.add(tmp_path / "src" / "cifar-10-batches-py" / "test_batch", arcname="cifar-10-batches-py/test_batch")
        return tar
    elif how == "bad_test":
        (tmp_path / "src" / "cifar-10-batches-py" / "test_batch").write_bytes(b"garbage")
        return tmp_path / "src"
    tar.write_bytes(bytes(data))
    return tar


@pytest.mark.parametrize("how,needle", [("truncated", "corrupt or truncated archive"),
                                        ("crc", "corrupt or truncated archive"),
                                        ("missing", "missing data_batch_3"),
                                        ("bad_test", "test_batch: not a CIFAR-10 batch")])
def test_check_and_loader_refuse_a_broken_cifar_the_same_way(tmp_path, how, needle):
    spec = f"cifar10:{_broken_cifar(tmp_path, how)}"
    with pytest.raises(DataError) as checked:
        check_dataset(spec)
    with pytest.raises(DataError) as loaded:
        load_raw(spec)
    assert needle in str(checked.value) and "\n" not in str(checked.value)
    assert str(checked.value) == str(loaded.value)  # one piece of code knows the format


def test_check_idx_counts_what_the_loader_loads_and_fails_as_it_does(tmp_path):
    _fake_idx_dir(tmp_path, n=12)
    s = check_dataset(f"mnist:{tmp_path}")
    raw = load_raw(f"mnist:{tmp_path}")
    assert (s.num_classes, dict(s.images)) == (len(raw.classes), {"train": len(raw.train), "test": len(raw.test)})
    img = tmp_path / "t10k-images-idx3-ubyte.gz"
    img.write_bytes(gzip.compress(gzip.decompress(img.read_bytes())[:-100]))
    with pytest.raises(DataError, match="truncated idx file") as checked:
        check_dataset(f"mnist:{tmp_path}")
    with pytest.raises(DataError) as loaded:
        load_raw(f"mnist:{tmp_path}")
    assert str(checked.value) == str(loaded.value)
    with pytest.raises(DataError, match="not a directory"):
        check_dataset(f"fashion-mnist:{tmp_path / 'absent'}")


def test_check_folder_and_digits(tmp_path):
    _png_tree(tmp_path / "f" / "train")
    _png_tree(tmp_path / "f" / "val", per_class=2)
    s = check_dataset(f"folder:{tmp_path / 'f'}")
    assert (s.classes, dict(s.images)) == (("cat", "dog", "emu"), {"train": 15, "test": 6})
    with pytest.raises(DataError, match="no train/ and val/ folder"):
        check_dataset(f"folder:{tmp_path / 'f' / 'train'}")
    d = check_dataset("digits")
    assert d.num_classes == 10 and sum(d.images.values()) == 1797


# ---- downloads (local file:// URLs only; tests never touch the network) -----------------------
def test_fetch_verifies_md5_and_leaves_nothing_behind(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    good = hashlib.md5(b"payload").hexdigest()
    dest = tmp_path / "cache" / "file.bin"
    with pytest.raises(DataError, match="corrupt: md5"):
        fetch(src.as_uri(), dest, "0" * 32)
    assert not dest.exists() and os.listdir(dest.parent) == []
    assert fetch(src.as_uri(), dest, good).read_bytes() == b"payload"
    with pytest.raises(DataError, match="cannot download"):
        fetch((tmp_path / "missing").as_uri(), tmp_path / "cache" / "other.bin", good)


# ---- the real copies in ../shared/data --------------------------------------------------------
@pytest.mark.slow  # reads the real 170 MB CIFAR-10 archive
def test_shared_cifar10_shapes(shared_data):
    s = load_dataset(f"cifar10:{shared_data / 'cifar10' / 'cifar-10-python.tar.gz'}", input_size=32,
                     subset=2000, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (1800, 200, 10000)
    assert s.train.x.shape == (1800, 3, 32, 32) and s.test.x.shape == (10000, 3, 32, 32)
    assert s.num_classes == 10 and set(s.test.y.tolist()) == set(range(10))
    assert torch.bincount(s.test.y).tolist() == [1000] * 10
    assert 0.4 < s.mean[0] < 0.55 and 0.2 < s.std[0] < 0.3


def test_shared_fashion_mnist_shapes(shared_data):
    s = load_dataset(f"fashion-mnist:{shared_data / 'fashion-mnist'}", input_size=32, subset=1000)
    assert s.train.x.shape == (900, 3, 32, 32) and len(s.test) == 10000 and s.num_classes == 10
