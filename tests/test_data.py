"""Tests of fundl.data: loaders (IDX, TFDS array_record, CIFAR pickle, sklearn digits),
error messages, standardisation, batching, prefetching and augmentations.

Real MNIST comes from the shared data dir (skipped, with the reason, when absent).
The TFDS tests prepare tiny array_record copies of 'mnist' and 'cifar10' on local
files with TFDS's own builders, TensorFlow-free (see ``tfds_dir``). Nothing here
touches the network.
"""
from __future__ import annotations

import gc
import gzip
import hashlib
import importlib.util
import itertools
import pickle
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fundl
import fundl.data as D
from fundl.data import CorruptDataError, DataUnavailableError

from .conftest import TFDS_SIZES

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(
    not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"real MNIST not found at {MNIST_DIR} (the shared data dir next to the repo)")

# sha256 of the raw 784 bytes of a few images, computed once from the shared files
# (train = the first 22,699 official training images, test = the official 10k).
KNOWN_IMAGES = {
    ("train", 0): (5, "23ceaef5eb61f0e70d64ac18fdf0f60df3d5971cf30bbadac7b6ebf07f782d2c"),
    ("train", 1): (0, "2d1c3087ac5f2bed7c4d54a1b33bf75d09f479ee63c0df2e0a4378f6e7e9ae66"),
    ("train", 100): (5, "b33496520b135ff0c99f7f02135fa4ddce92c1864a26759d8b74897729fa0a51"),
    ("test", 0): (7, "8f6a418c9a639f9e14e96feca47a97df2a35a0a68ae2875431c5c80e05536941"),
    ("test", 1): (2, "3f8c3b265b6083fb0e5c68b6a5631b0d23bfe4cafce3c55e1b6a9cce9308ded2"),
    ("test", 100): (6, "0dbc7a8006799f49c76cd02f90eb9a99533858a46c00eb449cc939e589e8ad98"),
}
# The official test set's class counts (the training subset's were read once from the file).
CLASS_COUNTS = {
    "train": [2258, 2581, 2215, 2369, 2222, 2010, 2235, 2356, 2163, 2290],
    "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}


@pytest.fixture(autouse=True)
def _no_ambient_data_dirs(monkeypatch, tmp_path_factory):
    """No test sees the machine's FUNDL_DATA_DIR or TFDS data dir unless it sets them."""
    monkeypatch.delenv("FUNDL_DATA_DIR", raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path_factory.mktemp("tfds_default_empty")))


# -- real MNIST from the shared IDX files ----------------------------------------

@pytest.fixture(scope="module")
def mnist():
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found at {MNIST_DIR}")
    return {s: D.load_idx(MNIST_DIR, s) for s in ("train", "test")}


@needs_mnist
@pytest.mark.parametrize("split,n", [("train", 22_699), ("test", 10_000)])
def test_mnist_idx_shapes_dtypes_labels(mnist, split, n):
    ds = mnist[split]
    assert isinstance(ds, D.Dataset)
    assert ds.x.shape == (n, 28, 28, 1) and ds.x.dtype == np.uint8
    assert ds.y.shape == (n,) and ds.y.dtype == np.int32
    assert (ds.name, ds.num_classes) == ("mnist", 10)
    assert ds.y.min() == 0 and ds.y.max() == 9
    counts = np.bincount(ds.y, minlength=10)
    assert counts.tolist() == CLASS_COUNTS[split] and counts.sum() == n
    assert ds.x.max() == 255 and ds.x.min() == 0


@needs_mnist
@pytest.mark.parametrize("split,i", sorted(KNOWN_IMAGES))
def test_mnist_known_images(mnist, split, i):
    label, digest = KNOWN_IMAGES[(split, i)]
    ds = mnist[split]
    assert ds.y[i] == label
    assert hashlib.sha256(ds.x[i].tobytes()).hexdigest() == digest


@needs_mnist
def test_load_mnist_equals_load_idx(mnist):
    for data_dir in (MNIST_DIR, MNIST_DIR.parent, str(MNIST_DIR)):  # DIR or DIR/mnist
        got = D.load("mnist", "test", data_dir=data_dir)
        np.testing.assert_array_equal(got.x, mnist["test"].x)
        np.testing.assert_array_equal(got.y, mnist["test"].y)
        assert got.name == "mnist"
    assert D.load("mnist", "test", data_dir=MNIST_DIR, source="idx").x.shape == (10_000, 28, 28, 1)


@needs_mnist
@pytest.mark.parametrize("env", [MNIST_DIR, MNIST_DIR.parent])
def test_fundl_data_dir_env(mnist, monkeypatch, tmp_path, env):
    monkeypatch.setenv("FUNDL_DATA_DIR", str(env))
    got = D.load("mnist", "test")
    np.testing.assert_array_equal(got.y, mnist["test"].y)
    got = D.load("mnist", "test", data_dir=tmp_path)  # an empty data_dir falls through to the env var
    np.testing.assert_array_equal(got.x, mnist["test"].x)


@needs_mnist
def test_raw_idx_equals_gzip(mnist, tmp_path):
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / stem).write_bytes(gzip.decompress((MNIST_DIR / f"{stem}.gz").read_bytes()))
    raw = D.load_idx(tmp_path, "test")
    np.testing.assert_array_equal(raw.x, mnist["test"].x)
    np.testing.assert_array_equal(raw.y, mnist["test"].y)


# -- corrupt IDX files ----------------------------------------------------------------

def idx_bytes(a: np.ndarray) -> bytes:
    a = np.asarray(a, np.uint8)
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def write_idx(directory: Path, split="train", n_images=6, n_labels=6, labels=None, gz=True,
              images_blob=None, labels_blob=None):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_images, 4, 5), dtype=np.uint8)
    labels = np.arange(n_labels) % 10 if labels is None else np.asarray(labels)
    stems = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}[split]
    blobs = (idx_bytes(images) if images_blob is None else images_blob,
             idx_bytes(labels) if labels_blob is None else labels_blob)
    paths = []
    for stem, blob in zip(stems, blobs):
        path = directory / (stem + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(blob) if gz else blob)
        paths.append(path)
    return images, labels, paths


@pytest.mark.parametrize("gz", [True, False])
def test_small_idx_roundtrip(tmp_path, gz):
    images, labels, _ = write_idx(tmp_path, gz=gz)
    ds = D.load_idx(tmp_path, "train")
    np.testing.assert_array_equal(ds.x, images[..., None])
    np.testing.assert_array_equal(ds.y, labels)
    assert ds.x.shape == (6, 4, 5, 1) and ds.y.dtype == np.int32


def test_truncated_gzip(tmp_path):
    _, _, (img, _) = write_idx(tmp_path)
    img.write_bytes(img.read_bytes()[:-20])
    with pytest.raises(CorruptDataError, match=r"train-images-idx3-ubyte\.gz.*(gzip|truncated)"):
        D.load_idx(tmp_path)


def test_damaged_gzip_crc(tmp_path):
    _, _, (img, _) = write_idx(tmp_path)
    blob = bytearray(img.read_bytes())
    blob[-6] ^= 0xFF  # the CRC32 in the gzip trailer
    img.write_bytes(bytes(blob))
    with pytest.raises(CorruptDataError, match=r"train-images-idx3-ubyte\.gz: bad gzip stream"):
        D.load_idx(tmp_path)


def test_truncated_raw(tmp_path):
    _, _, (img, _) = write_idx(tmp_path, gz=False)
    img.write_bytes(img.read_bytes()[:-7])
    expected = 16 + 6 * 4 * 5
    with pytest.raises(CorruptDataError, match=rf"{img.name}: truncated.*expected {expected} bytes, "
                                               rf"got {expected - 7}"):
        D.load_idx(tmp_path)


def test_truncated_gzip_payload(tmp_path):
    """A well-formed gzip stream whose content is shorter than the IDX header promises."""
    images = np.zeros((6, 4, 5), np.uint8)
    write_idx(tmp_path, images_blob=idx_bytes(images)[:-10])
    with pytest.raises(CorruptDataError, match=r"train-images-idx3-ubyte\.gz: truncated.*expected 136 bytes"):
        D.load_idx(tmp_path)


def test_raw_too_long(tmp_path):
    _, _, (_, lab) = write_idx(tmp_path, gz=False)
    lab.write_bytes(lab.read_bytes() + b"\0")
    with pytest.raises(CorruptDataError, match=rf"{lab.name}: longer than its header"):
        D.load_idx(tmp_path)


def test_bad_magic(tmp_path):
    blob = bytearray(idx_bytes(np.zeros((6, 4, 5))))
    blob[3] = 2
    _, _, (img, _) = write_idx(tmp_path, images_blob=bytes(blob))
    with pytest.raises(CorruptDataError,
                       match=rf"{img.name}: bad magic number 0x00000802, expected 0x00000803"):
        D.load_idx(tmp_path)


def test_swapped_files(tmp_path):
    _, labels, (img, _) = write_idx(tmp_path)
    img.write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(CorruptDataError, match=r"label file where an image file was expected"):
        D.load_idx(tmp_path)


def test_count_mismatch(tmp_path):
    write_idx(tmp_path, n_images=6, n_labels=5)
    with pytest.raises(CorruptDataError, match=r"holds 6 images but .*train-labels-idx1-ubyte\.gz holds 5"):
        D.load_idx(tmp_path)


def test_label_out_of_range(tmp_path):
    _, _, (_, lab) = write_idx(tmp_path, labels=[0, 1, 2, 10, 3, 4])
    with pytest.raises(CorruptDataError, match=rf"{lab.name}: label 10 at index 3 is out of range"):
        D.load_idx(tmp_path)


def test_corrupt_file_is_not_skipped_by_load(tmp_path):
    """A damaged file found by load('auto') raises instead of silently trying other sources."""
    _, _, (img, _) = write_idx(tmp_path, split="test")
    img.write_bytes(img.read_bytes()[:30])
    with pytest.raises(CorruptDataError, match="t10k-images-idx3-ubyte.gz"):
        D.load("mnist", "test", data_dir=tmp_path)


def test_load_idx_missing_file(tmp_path):
    _, _, (_, lab) = write_idx(tmp_path)
    lab.unlink()
    with pytest.raises(DataUnavailableError, match=r"lacks train-labels-idx1-ubyte\[\.gz\]"):
        D.load_idx(tmp_path)


def test_errors_are_fundl_errors():
    assert issubclass(DataUnavailableError, fundl.FundlError)
    assert issubclass(CorruptDataError, fundl.FundlError)
    assert issubclass(CorruptDataError, ValueError)


# -- nothing available: a clear error, no download ----------------------------------

@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_unavailable_lists_sources(tmp_path, monkeypatch, no_download, name):
    empty, tfds_dir = tmp_path / "empty", tmp_path / "tfds"
    empty.mkdir()
    tfds_dir.mkdir()
    monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
    with pytest.raises(DataUnavailableError) as info:
        D.load(name, data_dir=empty)
    msg = str(info.value)
    native = "IDX files in data_dir" if name != "cifar10" else "cifar-10-batches-py in data_dir"
    for part in (native, "TFDS copy in data_dir", "$FUNDL_DATA_DIR: not set",
                 "TFDS default data dir", str(tfds_dir / name), "pass data_dir=DIR",
                 "set FUNDL_DATA_DIR=DIR", f"tfds.builder('{name}'", "file_format='array_record'"):
        assert part in msg, (part, msg)
    assert list(empty.iterdir()) == [] and list(tfds_dir.iterdir()) == []  # nothing written


def test_unavailable_half_idx_pair(tmp_path, no_download):
    _, _, (img, _) = write_idx(tmp_path)
    img.unlink()
    with pytest.raises(DataUnavailableError, match=r"has train-labels-idx1-ubyte\.gz but lacks "
                                                   r"train-images-idx3-ubyte\[\.gz\]"):
        D.load("mnist", data_dir=tmp_path, source="idx")


def test_bad_arguments():
    with pytest.raises(fundl.ConfigError, match="unknown data set name='imagenet'"):
        D.load("imagenet")
    with pytest.raises(fundl.ConfigError, match="split must be 'train' or 'test'"):
        D.load("mnist", "validation")
    with pytest.raises(fundl.ConfigError, match=r"source='pickle' is not available for 'mnist'"):
        D.load("mnist", source="pickle")
    with pytest.raises(fundl.ConfigError, match="source='tfds' is not available for 'digits'"):
        D.load("digits", source="tfds")


# -- TFDS's TensorFlow-free path, on array_record copies prepared from local data ----

@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
@pytest.mark.parametrize("split", ["train", "test"])
def test_tfds_array_record(tfds_dir, no_download, name, shape, split):
    ds = D.load(name, split, data_dir=tfds_dir, source="tfds")
    n = TFDS_SIZES[split]
    assert ds.x.shape == (n, *shape) and ds.x.dtype == np.uint8
    assert ds.y.shape == (n,) and ds.y.dtype == np.int32
    assert (ds.name, ds.num_classes) == (name, 10)
    # TFDS shuffles records when writing: compare as a set of (image, label) pairs.
    offset = 0 if split == "train" else 100
    values = ds.x.reshape(n, -1)
    assert (values == values[:, :1]).all()  # each decoded image is still constant
    got = sorted(zip(values[:, 0].tolist(), ds.y.tolist()))
    assert got == [(offset + i, i % 10) for i in range(n)]


def test_tfds_auto_and_default_dir(tfds_dir, monkeypatch, tmp_path, no_download):
    assert D.load("mnist", "test", data_dir=tfds_dir).x.shape == (7, 28, 28, 1)  # auto: IDX absent, TFDS
    monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))  # TFDS's default dir, with an empty data_dir
    assert D.load("cifar10", "train", data_dir=tmp_path).x.shape == (12, 32, 32, 3)
    assert D.load("mnist", "train").x.shape == (12, 28, 28, 1)
    monkeypatch.delenv("TFDS_DATA_DIR")
    monkeypatch.setenv("FUNDL_DATA_DIR", str(tfds_dir))
    assert D.load("mnist", "train", source="tfds").y.shape == (12,)


def test_tfds_tfrecord_copy_is_explained(tfds_dir, tmp_path, no_download):
    """A copy prepared by plain ``tfds.load`` (TFRecord) needs TensorFlow: say so, and how to fix it."""
    import json
    import shutil

    shutil.copytree(tfds_dir / "mnist", tmp_path / "mnist")
    info_path = tmp_path / "mnist" / "3.0.1" / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    with pytest.raises(DataUnavailableError, match=r"is in tfrecord format, which only TensorFlow reads; "
                                                   r"prepare it again with file_format='array_record'"):
        D.load("mnist", data_dir=tmp_path, source="tfds")


def test_tfds_prepared_but_other_dataset_missing(tfds_dir, no_download):
    with pytest.raises(DataUnavailableError, match=r"fashion_mnist/ does not exist"):
        D.load("fashion_mnist", data_dir=tfds_dir, source="tfds")


# -- CIFAR-10 python pickles ----------------------------------------------------------

def test_cifar10_pickle(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 3).tolist()
        batches[f] = (data, labels)
        with open(root / f, "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": f.encode()}, fh)
    for split, files in [("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])]:
        ds = D.load("cifar10", split, data_dir=tmp_path)
        assert ds.x.shape == (3 * len(files), 32, 32, 3) and ds.x.dtype == np.uint8
        assert ds.y.dtype == np.int32
        data = np.concatenate([batches[f][0] for f in files])
        labels = sum((batches[f][1] for f in files), [])
        np.testing.assert_array_equal(ds.y, labels)
        for i, h, w, c in [(0, 0, 0, 0), (1, 5, 7, 2), (2, 31, 30, 1)]:  # CHW rows -> NHWC
            assert ds.x[i, h, w, c] == data[i, c * 1024 + h * 32 + w]
    assert D.load("cifar10", "test", data_dir=root, source="pickle").x.shape == (3, 32, 32, 3)
    (root / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(CorruptDataError, match="test_batch: not a CIFAR-10 python batch"):
        D.load("cifar10", "test", data_dir=tmp_path)


# -- sklearn digits ----------------------------------------------------------------------

def test_digits_split_matches_quickstart():
    train, test = D.load("digits", "train"), D.load("digits", "test")
    assert train.x.shape == (1437, 8, 8, 1) and test.x.shape == (360, 8, 8, 1)
    assert train.x.dtype == np.uint8 and train.x.max() == 16
    assert train.y.dtype == np.int32 and (train.name, train.num_classes) == ("digits", 10)
    spec = importlib.util.spec_from_file_location("quickstart", REPO / "experiments" / "quickstart.py")
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    (x_tr, y_tr), (x_te, y_te) = quickstart.load_digits_nhwc()
    np.testing.assert_array_equal(train.y, y_tr)
    np.testing.assert_array_equal(test.y, y_te)
    np.testing.assert_allclose(D.standardizer(train.x)(test.x), x_te, rtol=1e-5, atol=1e-5)


# -- standardizer -----------------------------------------------------------------------

def test_standardizer_grayscale(monkeypatch):
    # private on purpose: shrinks the standardizer's chunk size to force many chunks
    from fundl.data import _standardize

    monkeypatch.setattr(_standardize, "_CHUNK_ELEMS", 50)  # force many chunks
    x = np.random.default_rng(0).integers(0, 256, (37, 6, 5, 1), dtype=np.uint8)
    s = D.standardizer(x)
    assert isinstance(s.mean, float) and isinstance(s.std, float)
    np.testing.assert_allclose([s.mean, s.std], [x.mean(dtype=np.float64), x.std(dtype=np.float64)],
                               rtol=1e-12)
    z = s(x)
    assert z.dtype == np.float32 and z.shape == x.shape
    np.testing.assert_allclose([z.mean(), z.std()], [0, 1], atol=1e-5)
    zj = s(jnp.asarray(x))
    assert isinstance(zj, jax.Array) and zj.dtype == jnp.float32
    np.testing.assert_allclose(zj, z, rtol=1e-6)


def test_standardizer_per_channel():
    x = np.random.default_rng(1).integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    x[..., 1] //= 4
    s = D.standardizer(x)
    assert s.mean.shape == (3,) and s.std.shape == (3,)
    np.testing.assert_allclose(s.mean, x.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(s.std, x.std(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(s(x).std(axis=(0, 1, 2)), 1, atol=1e-5)
    assert isinstance(D.standardizer(x, per_channel=False).mean, float)


def test_standardizer_errors():
    with pytest.raises(fundl.ConfigError, match="zero standard deviation"):
        D.standardizer(np.ones((3, 2, 2, 1), np.uint8))
    with pytest.raises(fundl.ShapeError, match="non-empty"):
        D.standardizer(np.zeros((0, 2, 2, 1)))


# -- batches -------------------------------------------------------------------------------

def _data(n):
    return np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 2, 1), np.float32), \
        np.arange(n, dtype=np.int32)


@pytest.mark.parametrize("n,bs,drop", [(10, 3, False), (10, 3, True), (12, 4, False), (5, 8, False)])
def test_batches_each_example_once(n, bs, drop):
    x, y = _data(n)
    out = list(D.batches(x, y, bs, seed=3, epoch=1, drop_remainder=drop))
    assert len(out) == D.num_batches(n, bs, drop_remainder=drop)
    sizes = [len(yb) for _, yb in out]
    assert all(s == bs for s in sizes[:-1])
    if drop:
        assert all(s == bs for s in sizes)
    seen = np.concatenate([yb for _, yb in out]) if out else np.array([], np.int32)
    if drop:
        assert len(seen) == n // bs * bs and len(set(seen.tolist())) == len(seen)
    else:
        assert sorted(seen.tolist()) == list(range(n))
    for xb, yb in out:
        np.testing.assert_array_equal(xb[:, 0, 0, 0], yb)  # x and y stay paired


def test_batches_deterministic_and_epoch_dependent():
    x, y = _data(50)
    order = lambda **kw: np.concatenate([yb for _, yb in D.batches(x, y, 8, **kw)])
    np.testing.assert_array_equal(order(seed=1, epoch=2), order(seed=1, epoch=2))
    assert not np.array_equal(order(seed=1, epoch=2), order(seed=1, epoch=3))
    assert not np.array_equal(order(seed=1, epoch=2), order(seed=2, epoch=2))
    # the documented recipe, so an external tool can reproduce the order
    np.testing.assert_array_equal(order(seed=1, epoch=2),
                                  np.random.Generator(np.random.PCG64([1, 2])).permutation(50))
    np.testing.assert_array_equal(order(shuffle=False), np.arange(50))


@pytest.mark.parametrize("n,bs,p", [(50, 8, 2), (50, 12, 4), (7, 4, 4), (64, 16, 8)])
@pytest.mark.parametrize("drop", [False, True])
def test_batches_process_sharding(n, bs, p, drop):
    x, y = _data(n)
    glob = list(D.batches(x, y, bs, seed=5, epoch=4, drop_remainder=drop))
    local = [list(D.batches(x, y, bs, seed=5, epoch=4, drop_remainder=drop, process_index=i,
                            process_count=p)) for i in range(p)]
    assert all(len(parts) == len(glob) for parts in local)  # same number of steps everywhere
    for b, (gx, gy) in enumerate(glob):
        np.testing.assert_array_equal(np.concatenate([local[i][b][1] for i in range(p)]), gy)
        np.testing.assert_array_equal(np.concatenate([local[i][b][0] for i in range(p)]), gx)
        if len(gy) == bs:
            assert all(len(local[i][b][1]) == bs // p for i in range(p))
            np.testing.assert_array_equal(local[1][b][1], gy[bs // p: 2 * bs // p])


def test_batches_errors():
    x, y = _data(10)
    with pytest.raises(fundl.ConfigError,
                       match=r"divisible by process_count.*batch_size=10, process_count=4"):
        D.batches(x, y, 10, process_count=4)  # raised at the call, before iterating
    with pytest.raises(fundl.ConfigError, match="process_index must be in"):
        D.batches(x, y, 8, process_index=2, process_count=2)
    with pytest.raises(fundl.ConfigError, match="batch_size must be >= 1"):
        D.batches(x, y, 0)
    with pytest.raises(fundl.ConfigError, match="seed must be >= 0"):
        D.batches(x, y, 2, seed=-1)
    with pytest.raises(fundl.ShapeError, match="len.x.=10, len.y.=9"):
        D.batches(x, y[:9], 2)
    assert D.num_batches(10, 4) == 3 and D.num_batches(10, 4, drop_remainder=True) == 2
    assert D.num_batches(0, 4) == 0


# -- prefetch_to_device ------------------------------------------------------------------

def test_prefetch_same_batches():
    x, y = _data(23)
    want = list(D.batches(x, y, 5, seed=0, epoch=0))
    got = list(D.prefetch_to_device(D.batches(x, y, 5, seed=0, epoch=0), size=3))
    assert len(got) == len(want)
    for (gx, gy), (wx, wy) in zip(got, want):
        assert isinstance(gx, jax.Array) and isinstance(gy, jax.Array)
        np.testing.assert_array_equal(gx, wx)
        np.testing.assert_array_equal(gy, wy)


def test_prefetch_transform_and_sharding():
    x = np.random.default_rng(0).integers(0, 256, (10, 3, 3, 1), dtype=np.uint8)
    y = np.arange(10, dtype=np.int32)
    s = D.standardizer(x)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    got = list(D.prefetch_to_device(D.batches(x, y, 4, shuffle=False), sharding=sharding,
                                    transform=lambda b: (s(b[0]), b[1])))
    assert [g[0].shape for g in got] == [(4, 3, 3, 1), (4, 3, 3, 1), (2, 3, 3, 1)]
    assert got[0][0].dtype == jnp.float32 and got[0][0].sharding == sharding
    np.testing.assert_allclose(np.concatenate([g[0] for g in got]), s(x), rtol=1e-6)


class Boom(RuntimeError):
    pass


def test_prefetch_propagates_producer_exception():
    def source():
        yield np.zeros(2), np.zeros(2)
        yield np.ones(2), np.ones(2)
        raise Boom("disk on fire")

    it = D.prefetch_to_device(source())
    assert float(next(it)[0][0]) == 0 and float(next(it)[0][0]) == 1
    with pytest.raises(Boom, match="disk on fire"):
        next(it)

    def bad_transform(batch):
        raise Boom("bad transform")

    with pytest.raises(Boom, match="bad transform"):
        list(D.prefetch_to_device(iter([np.zeros(2)]), transform=bad_transform))


def test_prefetch_stops_cleanly():
    import threading

    closed = threading.Event()

    def endless():
        try:
            for i in itertools.count():
                yield np.full(2, i)
        finally:
            closed.set()

    def prefetch_threads():
        return [t for t in threading.enumerate() if t.name == "fundl-prefetch"]

    it = D.prefetch_to_device(endless(), size=2)
    assert [int(next(it)[0]) for _ in range(3)] == [0, 1, 2]
    it.close()  # what a `break` out of a for loop does when the generator is dropped
    assert closed.wait(5), "the source iterator was not closed"
    assert prefetch_threads() == []
    closed.clear()
    for i, batch in enumerate(D.prefetch_to_device(endless(), size=2)):
        if i == 2:
            break  # the generator is collected here: its cleanup stops the thread
    gc.collect()
    assert closed.wait(5) and prefetch_threads() == []
    with pytest.raises(fundl.ConfigError, match="size must be an int >= 1"):
        D.prefetch_to_device(iter([]), size=0)


# -- augmentations -------------------------------------------------------------------------

@pytest.mark.slow
def test_augment_shapes_dtypes():
    key = jax.random.key(0)
    for x in (jnp.ones((5, 32, 32, 3), jnp.float32), jnp.ones((4, 7, 9, 1), jnp.uint8)):
        for fn in (D.random_crop, D.random_flip, D.augment_cifar):
            out = fn(key, x)
            assert out.shape == x.shape and out.dtype == x.dtype, fn.__name__
    with pytest.raises(fundl.ShapeError, match=r"random_crop: x must be \[N, H, W, C\].*x\[\.\.\., None\]"):
        D.random_crop(key, jnp.ones((4, 8, 8)))
    with pytest.raises(fundl.ConfigError, match="padding must be >= 0"):
        D.random_crop(key, jnp.ones((1, 8, 8, 1)), padding=-1)


def test_flip_involution_and_per_example():
    x = jax.random.uniform(jax.random.key(1), (64, 4, 5, 2))
    key = jax.random.key(7)
    once = D.random_flip(key, x)
    np.testing.assert_array_equal(D.random_flip(key, once), x)
    flipped = np.array([np.array_equal(once[i], x[i, :, ::-1]) for i in range(64)])
    kept = np.array([np.array_equal(once[i], x[i]) for i in range(64)])
    assert (flipped | kept).all() and 10 < flipped.sum() < 54  # per example, about half


def test_crop_is_a_window_of_the_padded_image():
    h, w, p = 4, 5, 2
    base = np.arange(1, h * w + 1, dtype=np.int32).reshape(1, h, w, 1)  # distinctive, no zeros
    x = np.repeat(base, 200, axis=0)
    padded = np.pad(base[0], ((p, p), (p, p), (0, 0)))
    windows = {(t, l): padded[t:t + h, l:l + w] for t in range(2 * p + 1) for l in range(2 * p + 1)}
    out = np.asarray(D.random_crop(jax.random.key(3), jnp.asarray(x), padding=p))
    used = set()
    for img in out:
        match = [tl for tl, win in windows.items() if np.array_equal(img, win)]
        assert len(match) == 1, "crop is not a window of the zero-padded image"
        used.add(match[0])
    assert len(used) == len(windows)  # every offset occurs: per-example, uniform over windows
    np.testing.assert_array_equal(D.random_crop(jax.random.key(3), jnp.asarray(x), padding=0), x)


@pytest.mark.slow
def test_augment_under_jit_and_keys():
    x = jax.random.uniform(jax.random.key(0), (8, 6, 6, 3))
    key = jax.random.key(5)
    np.testing.assert_array_equal(jax.jit(D.augment_cifar)(key, x), D.augment_cifar(key, x))
    np.testing.assert_array_equal(jax.jit(lambda k, v: D.random_crop(k, v, padding=1))(key, x),
                                  D.random_crop(key, x, padding=1))
    k_crop, k_flip = jax.random.split(key)
    np.testing.assert_array_equal(D.augment_cifar(key, x),
                                  D.random_flip(k_flip, D.random_crop(k_crop, x, padding=4)))
    legacy = jax.random.PRNGKey(5)  # raw uint32 keys work too
    assert D.augment_cifar(legacy, x).shape == x.shape
    assert not np.array_equal(D.augment_cifar(jax.random.key(6), x), D.augment_cifar(key, x))
