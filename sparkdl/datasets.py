"""Small datasets: the bundled handwritten digits (8x8) and MNIST from IDX files.

Plain NumPy; no scikit-learn, network or pickle at runtime.

- ``load_digits``: scikit-learn's copy of the UCI Optical Recognition of Handwritten Digits
  data (1797 8x8 images, pixels 0..16, license CC BY 4.0), bundled as ``sparkdl/data/digits.npz``
  (regenerate with ``tools/make_digits.py``).
- ``load_idx`` / ``load_mnist``: the MNIST IDX format, gzipped or not.
"""
import gzip
import io
import os
from importlib import resources

import numpy as np

__all__ = ["load_digits", "load_idx", "load_mnist", "mnist_files", "default_mnist_dir", "load", "NAMES"]

NAMES = ("digits", "mnist")

# IDX dtype codes -> big-endian numpy dtypes
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _finish(images, labels, flatten, normalize, scale):
    x = images.astype(np.float32)
    if normalize:
        x /= np.float32(scale)
    n = x.shape[0]
    x = x.reshape(n, -1) if flatten else x.reshape(n, images.shape[1], images.shape[2], 1)
    return x, labels.astype(np.int64)


def load_digits(split=None, test_fraction=0.2, seed=0, flatten=True, normalize=True):
    """The bundled 8x8 digits: (x, y) with x float32 (n, 64) or (n, 8, 8, 1), y int64 in 0..9.

    ``split=None`` returns all 1797 examples in their original order; ``"train"`` / ``"test"``
    return the two disjoint parts of a seeded random permutation (``test_fraction`` of the
    examples, rounded, go to test). ``normalize`` divides pixels by 16 to get [0, 1].
    """
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be None, 'train' or 'test', got {split!r}")
    with resources.files("sparkdl").joinpath("data").joinpath("digits.npz").open("rb") as f:
        with np.load(f, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    if split is not None:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        n = len(labels)
        n_test = int(round(n * test_fraction))
        perm = np.random.default_rng(seed).permutation(n)
        idx = perm[:n_test] if split == "test" else perm[n_test:]
        images, labels = images[idx], labels[idx]
    return _finish(images, labels, flatten, normalize, 16.0)


def load_idx(path):
    """Read one IDX file (MNIST format), gzipped if the name ends in ``.gz``, into a native-endian array."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: not a valid gzip file ({e})") from None
    dtype, dims, header = idx_header(io.BytesIO(raw), path)
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: size {len(raw)} bytes does not match dims {dims} of {dtype.name} "
            f"(expected {expected} bytes; truncated or corrupt file?)")
    arr = np.frombuffer(raw, dtype, offset=header)
    return arr.astype(dtype.newbyteorder("=")).reshape(dims)


def idx_header(f, path):
    """(big-endian dtype, dims, header bytes) of the IDX file whose (decompressed) stream ``f`` is at its start."""
    head = f.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise ValueError(f"{path}: bad IDX magic number {head.hex() or '(empty file)'}")
    code, ndim = head[2], head[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX dtype code 0x{code:02X}")
    raw = f.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header ({4 + len(raw)} bytes, need {4 + 4 * ndim})")
    return _IDX_DTYPES[code], tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim)), 4 + 4 * ndim


def _find(directory, stem, idx):
    # train-images-idx3-ubyte(.gz) and the dotted variant train-images.idx3-ubyte(.gz)
    names = [f"{stem}{sep}{idx}-ubyte{gz}" for sep in ("-", ".") for gz in (".gz", "")]
    for name in names:
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(f"MNIST file not found in {directory}: looked for {', '.join(names)}")


def mnist_files(directory, split="train"):
    """(images file, labels file) of the ``split`` ("train" or "test") in a directory of MNIST IDX files."""
    prefix = "train" if split == "train" else "t10k"
    return _find(directory, f"{prefix}-images", "idx3"), _find(directory, f"{prefix}-labels", "idx1")


def load_mnist(directory=None, split="train", flatten=True, normalize=True):
    """MNIST from IDX files in ``directory`` (default: ``default_mnist_dir()``).

    Returns x float32 (n, 784) or (n, 28, 28, 1), scaled to [0, 1] when ``normalize``, and y int64.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if directory is None:
        directory = default_mnist_dir()
        if directory is None:
            raise FileNotFoundError(
                "no MNIST directory given: pass one or set SPARKDL_MNIST_DIR to a directory of the IDX files")
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"MNIST directory not found: {directory}")
    images, labels = (load_idx(p) for p in mnist_files(directory, split))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{directory}: MNIST {split} images {images.shape} and labels "
                         f"{labels.shape} do not match")
    return _finish(images, labels, flatten, normalize, 255.0)


def default_mnist_dir():
    """$SPARKDL_MNIST_DIR if set (and not empty), else None."""
    return os.environ.get("SPARKDL_MNIST_DIR") or None


def load(name, **kw):
    """Load a dataset by name: ``"digits"`` (``load_digits``) or ``"mnist"`` (``load_mnist``)."""
    if name == "digits":
        return load_digits(**kw)
    if name == "mnist":
        return load_mnist(**kw)
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(NAMES)}")
