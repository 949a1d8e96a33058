"""Reading model files (written by sparkdl.nn.saving: one ``.npz``, ``allow_pickle=False``, holding the JSON
config, the flat params, the flat layer state, the compile settings and the optimizer state, with a format
version) back into models. A model file is data: loading it never runs code nor unpacks more than the model its
config declares, and a truncated, tampered or foreign file gives a ValueError that says what is wrong.
"""
import io as _io
import json
import math
import os
import tokenize
import zipfile
import zlib

import numpy as np

from ..nn.model import model_from_config
from ..nn.saving import FORMAT_VERSION
from .keras import keras_format, load_keras

_REQUIRED = ("sparkdl_format", "config", "params", "state")


# What a file may declare, checked from the zip directory and the .npy headers before anything is decompressed
# or allocated, so that a small hostile file cannot unpack into a huge one: the small entries are read first and
# bounded by a constant; the flat buffers by what the config they describe needs, in the widest float.
_SMALL = ("sparkdl_format", "config", "meta", "compile", "optimizer_iterations")
_MAX_SMALL_BYTES = 16 << 20
_NPY_HEADER_BYTES = 4096   # np.save writes about 128
_CONFIG_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError)   # from hostile but valid JSON
# zipfile and numpy's .npy header parser (tokenize, for headers written by Python 2) raise these on garbage
_ZIP_ERRORS = (ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError,
               tokenize.TokenError)


def _unreadable(name, e):
    return ValueError(f"{name} is not a readable sparkdl model file ({type(e).__name__}: {e})")


def _npy_header(f):
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"unsupported .npy format version {version}")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(f)


def _member(z, info, limit, name):
    """One array of the zip, read only once the sizes it declares (zip directory, then .npy header) fit."""
    def refuse(why):
        return ValueError(f"{name} is not a readable sparkdl model file: {info.filename!r} {why}")
    if info.file_size > limit:
        raise refuse(f"unpacks to {info.file_size} bytes; the model config allows at most {limit}")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 1:
        raise refuse(f"is encrypted or compressed with method {info.compress_type}; model files are stored or "
                     f"deflated")
    try:
        with z.open(info) as f:
            shape, _, dtype = _npy_header(f)
            data_bytes = info.file_size - f.tell()
    except _ZIP_ERRORS as e:
        raise _unreadable(name, e) from None
    if dtype.hasobject:
        raise refuse(f"holds Python objects ({dtype}), which would need unpickling; model files never do")
    if dtype.itemsize == 0 or min(shape, default=0) < 0 or math.prod(shape) * dtype.itemsize != data_bytes:
        raise refuse(f"declares a {dtype} array of shape {shape} but holds {data_bytes} bytes of data")
    try:
        with z.open(info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except _ZIP_ERRORS as e:
        raise _unreadable(name, e) from None


def _read(source, name, backend):
    """(the model the file's config describes, compiled if the file says so; the file's arrays)."""
    try:
        z = zipfile.ZipFile(source)
    except FileNotFoundError:
        raise
    except _ZIP_ERRORS as e:
        raise _unreadable(name, e) from None
    with z:
        members = {i.filename[:-4]: i for i in z.infolist() if i.filename.endswith(".npy")}  # others are never read
        missing = [k for k in _REQUIRED if k not in members]
        if missing:
            raise ValueError(f"{name} is not a sparkdl model file: missing {missing}; found {sorted(members)}")
        arrays = {k: _member(z, members[k], _MAX_SMALL_BYTES, name) for k in _SMALL if k in members}
        version = _int(arrays, "sparkdl_format", name)
        if version != FORMAT_VERSION:
            raise ValueError(f"{name} has model format version {version}; this sparkdl reads version {FORMAT_VERSION}")
        model = _model(arrays, name, backend)
        sizes = {"params": model.params.size, "state": model.state.size}
        if model.compiled:
            sizes["optimizer_buffer"] = model.optimizer.state_buffer.size
        for key, size in sizes.items():
            if key in members:
                arrays[key] = _member(z, members[key], 8 * size + _NPY_HEADER_BYTES, name)
    return model, arrays


def _json(arrays, key, name):
    value = arrays[key]
    try:
        if value.shape != () or value.dtype.kind != "U":
            raise TypeError(f"a {value.dtype} array of shape {value.shape}, not a string")
        # decoded from the bytes: str() lets code points beyond Unicode through, and those crash str methods later
        text = value.astype(value.dtype.newbyteorder("<")).tobytes().decode("utf-32-le").rstrip("\0")
        return json.loads(text)
    except (ValueError, TypeError, RecursionError) as e:
        raise ValueError(f"{name}: the {key!r} entry is not valid JSON ({e})") from None


def _int(arrays, key, name):
    value = arrays[key]
    if value.shape != () or value.dtype.kind not in "iu":
        raise ValueError(f"{name}: the {key!r} entry must be one integer; received a {value.dtype} array of shape "
                         f"{value.shape}")
    return int(value)


def _model(arrays, name, backend):
    """The model ``arrays`` describe, built (and compiled where they hold compile settings), weights not set."""
    config = _json(arrays, "config", name)
    try:
        model = model_from_config(config, backend=backend).build()
    except _CONFIG_ERRORS as e:
        raise ValueError(f"{name}: the config does not describe a sparkdl model ({type(e).__name__}: {e})") from None
    if "compile" in arrays:
        settings = _json(arrays, "compile", name)
        try:
            model.compile(**settings)
        except _CONFIG_ERRORS as e:
            raise ValueError(f"{name}: the compile settings are not valid ({type(e).__name__}: {e})") from None
    return model


def _restore(model, arrays, name):
    """Set the weights and the optimizer state of ``model`` (from ``_model``) from ``arrays``."""
    for key, target in (("params", model.params), ("state", model.state)):
        if arrays[key].shape != target.shape:
            raise ValueError(f"{name}: {key} has {arrays[key].size} values but the model config needs "
                             f"{target.size} in a 1-D array; received shape {arrays[key].shape}")
    for key in ("params", "state", "optimizer_buffer"):
        if key in arrays and arrays[key].dtype.kind != "f":
            raise ValueError(f"{name}: {key} must hold floats; received {arrays[key].dtype}")
    model.set_flat_params(arrays["params"])
    model.set_flat_state(arrays["state"])
    if model.compiled:
        if "optimizer_buffer" not in arrays or "optimizer_iterations" not in arrays:
            raise ValueError(f"{name}: a compiled model needs the optimizer state; found {sorted(arrays)}")
        iterations = _int(arrays, "optimizer_iterations", name)
        try:
            model.optimizer.set_state({"buffer": arrays["optimizer_buffer"], "iterations": iterations})
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    model.meta = _json(arrays, "meta", name) if "meta" in arrays else {}
    return model


def model_from_arrays(arrays, name="model file", backend="numpy"):
    return _restore(_model(arrays, name, backend), arrays, name)


def load_model(path, backend="numpy"):
    """Read a model written by ``save_model`` (a path or a readable binary file object), or a Keras model file
    (a ``.keras`` zip or a legacy HDF5 ``.h5`` path, told apart by its content, not its name: see
    ``sparkdl.io.keras``)."""
    if not hasattr(path, "read"):
        if keras_format(path) is not None:   # by content: a sparkdl file named x.h5 still loads
            return load_keras(path, backend=backend)
    name = repr(os.fspath(path)) if not hasattr(path, "read") else "the model file"
    return _restore(*_read(path, name, backend), name)


def model_from_bytes(data, backend="numpy"):
    return _restore(*_read(_io.BytesIO(data), "model bytes", backend), "model bytes")
