import gzip
import os
import struct

import numpy as np
import pytest

from sparkdl import datasets


# ---------------------------------------------------------------- digits

def test_digits_shapes_dtypes_ranges():
    x, y = datasets.load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    x4, _ = datasets.load_digits(flatten=False)
    assert x4.shape == (1797, 8, 8, 1) and x4.dtype == np.float32
    np.testing.assert_array_equal(x4.reshape(1797, 64), x)
    xr, _ = datasets.load_digits(normalize=False)
    assert xr.max() == 16.0 and xr.dtype == np.float32
    np.testing.assert_array_equal(xr / 16, x)


def test_digits_bundle_raw():
    with np.load(os.path.join(os.path.dirname(datasets.__file__), "data", "digits.npz"),
                 allow_pickle=False) as z:
        assert set(z.files) == {"images", "labels"}
        assert z["images"].dtype == np.uint8 and z["images"].shape == (1797, 8, 8)
        assert z["labels"].dtype == np.uint8 and z["labels"].shape == (1797,)


def test_digits_equal_sklearn():
    skd = pytest.importorskip("sklearn.datasets")
    ref = skd.load_digits()
    x, y = datasets.load_digits(normalize=False)
    np.testing.assert_array_equal(x, ref.data)
    np.testing.assert_array_equal(y, ref.target)


def test_digits_split_deterministic_disjoint_covering():
    xa, ya = datasets.load_digits()
    xtr, ytr = datasets.load_digits("train", seed=3)
    xte, yte = datasets.load_digits("test", seed=3)
    assert len(xte) == round(1797 * 0.2) and len(xtr) + len(xte) == 1797
    xtr2, ytr2 = datasets.load_digits("train", seed=3)
    np.testing.assert_array_equal(xtr, xtr2)
    np.testing.assert_array_equal(ytr, ytr2)
    other, _ = datasets.load_digits("train", seed=4)
    assert not np.array_equal(xtr, other)
    # rows of train + test are exactly the full set (as a multiset of (x, y) rows)
    def rows(x, y):
        return sorted(map(bytes, np.concatenate([x, y[:, None].astype(np.float32)], 1)))
    assert rows(np.concatenate([xtr, xte]), np.concatenate([ytr, yte])) == rows(xa, ya)
    # disjoint by index: recover indices through the seeded permutation
    perm = np.random.default_rng(3).permutation(1797)
    np.testing.assert_array_equal(xte, xa[perm[:len(xte)]])
    np.testing.assert_array_equal(xtr, xa[perm[len(xte):]])
    assert not set(perm[:len(xte)]) & set(perm[len(xte):])
    with pytest.raises(ValueError):
        datasets.load_digits("valid")


# ---------------------------------------------------------------- IDX

_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
          np.float32: 0x0D, np.float64: 0x0E}


def _idx_bytes(a):
    a = np.asarray(a)
    head = bytes([0, 0, _CODES[a.dtype.type], a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return head + a.astype(a.dtype.newbyteorder(">")).tobytes()


def _write(path, data):
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("gz", ["", ".gz"])
@pytest.mark.parametrize("arr", [
    np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
    np.array([-5, 0, 7, 2 ** 31 - 1], dtype=np.int32),
    np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3),
    np.array([[-3, 300]], dtype=np.int16),
    np.array([1.5, -2.25], dtype=np.float64),
    np.array([-128, 127], dtype=np.int8),
])
def test_idx_round_trip(tmp_path, arr, gz):
    p = _write(tmp_path / f"a.idx{gz}", _idx_bytes(arr))
    out = datasets.load_idx(p)
    assert out.shape == arr.shape and out.dtype == arr.dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("gz", ["", ".gz"])
def test_idx_truncated(tmp_path, gz):
    data = _idx_bytes(np.zeros((3, 4, 4), np.uint8))
    p = _write(tmp_path / f"trunc.idx{gz}", data[:-5])
    with pytest.raises(ValueError, match="trunc.idx"):
        datasets.load_idx(p)
    p = _write(tmp_path / f"hdr.idx{gz}", data[:8])
    with pytest.raises(ValueError, match="hdr.idx"):
        datasets.load_idx(p)


def test_idx_bad_magic_and_dtype(tmp_path):
    data = _idx_bytes(np.zeros(4, np.int32))
    p = _write(tmp_path / "magic.idx", b"\x12\x34" + data[2:])
    with pytest.raises(ValueError, match="magic.idx.*magic"):
        datasets.load_idx(p)
    p = _write(tmp_path / "code.idx", data[:2] + b"\x07" + data[3:])
    with pytest.raises(ValueError, match="code.idx.*dtype"):
        datasets.load_idx(p)
    p = _write(tmp_path / "notgz.idx.gz", b"")
    p.write_bytes(data)  # named .gz but not gzipped
    with pytest.raises(ValueError, match="notgz.idx.gz"):
        datasets.load_idx(p)


# ---------------------------------------------------------------- MNIST

@pytest.mark.parametrize("dotted,gz", [(False, ""), (True, ".gz"), (False, ".gz")])
def test_load_mnist_synthetic(tmp_path, dotted, gz):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    imgs[0, 0, 0], imgs[0, 0, 1] = 0, 255
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    sep = "." if dotted else "-"
    _write(tmp_path / f"t10k-images{sep}idx3-ubyte{gz}", _idx_bytes(imgs))
    _write(tmp_path / f"t10k-labels{sep}idx1-ubyte{gz}", _idx_bytes(labels))
    x, y = datasets.load_mnist(tmp_path, split="test")
    assert x.shape == (5, 784) and x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_allclose(x, imgs.reshape(5, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, labels)
    x4, _ = datasets.load_mnist(tmp_path, split="test", flatten=False, normalize=False)
    assert x4.shape == (5, 28, 28, 1)
    np.testing.assert_array_equal(x4[..., 0], imgs)
    x5, _ = datasets.load("mnist", directory=tmp_path, split="test")
    np.testing.assert_array_equal(x5, x)
    with pytest.raises(FileNotFoundError, match="train-images"):
        datasets.load_mnist(tmp_path, split="train")


def test_load_mnist_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        datasets.load_mnist(tmp_path / "nope")


def test_default_mnist_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARKDL_MNIST_DIR", str(tmp_path))
    assert datasets.default_mnist_dir() == str(tmp_path)


def test_load_by_name():
    x, y = datasets.load("digits", split="test")
    assert len(x) == len(y) == round(1797 * 0.2)
    with pytest.raises(ValueError, match="digits.*mnist"):
        datasets.load("cifar")


@pytest.fixture
def mnist_dir():
    d = datasets.default_mnist_dir()   # conftest points SPARKDL_MNIST_DIR at ../shared/data/mnist where it exists
    if d is None:
        pytest.skip("MNIST files not available (SPARKDL_MNIST_DIR unset, no ../shared/data/mnist)")
    return d


def test_real_mnist(mnist_dir):
    x, y = datasets.load_mnist(mnist_dir, split="test")
    assert x.shape == (10000, 784) and x.dtype == np.float32
    assert y.shape == (10000,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    # train: labels only here (the full image file takes about a second, see the slow test)
    ytr = datasets.load_idx(datasets._find(mnist_dir, "train-labels", "idx1"))
    assert ytr.shape == (60000,) and ytr.min() == 0 and ytr.max() == 9


@pytest.mark.slow
def test_real_mnist_train(mnist_dir):
    x, y = datasets.load_mnist(mnist_dir, split="train")
    assert x.shape == (60000, 784) and y.shape == (60000,)
    assert x.min() == 0.0 and x.max() == 1.0 and set(np.unique(y)) == set(range(10))
