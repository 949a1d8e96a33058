"""Model files: one ``.npz`` (``allow_pickle=False``) holding the JSON config, the flat params, the flat layer
state, the compile settings and the optimizer state, with a format version. A model file is data: loading it
never runs code, and a truncated, tampered or foreign file gives a ValueError that says what is wrong.
"""
import io as _io
import json
import os
import zipfile

import numpy as np

from .backend import to_numpy

FORMAT_VERSION = 1
_REQUIRED = ("sparkdl_format", "config", "params", "state")


def _text(obj):
    return np.array(json.dumps(obj))


def model_to_arrays(model, meta=None):
    """The arrays a model file holds (also what checkpoints and the pyspark.ml writer store)."""
    model._ensure_built()
    arrays = {"sparkdl_format": np.array(FORMAT_VERSION, np.int64),
              "config": _text({"class_name": type(model).__name__, "config": model.get_config()}),
              "params": model.get_flat_params(), "state": model.get_flat_state(),
              "meta": _text(meta or {})}
    if model.compiled:
        arrays["compile"] = _text(model.compile_config())
        opt = model.optimizer.get_state()
        arrays["optimizer_buffer"] = to_numpy(opt["buffer"])
        arrays["optimizer_iterations"] = np.array(opt["iterations"], np.int64)
    return arrays


def save_model(model, path, meta=None):
    """Write ``model`` to ``path`` (a local path or a writable binary file object)."""
    arrays = model_to_arrays(model, meta)
    if hasattr(path, "write"):
        np.savez(path, **arrays)
        return
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)  # readers never see a half-written file


def model_to_bytes(model, meta=None):
    buf = _io.BytesIO()
    save_model(model, buf, meta)
    return buf.getvalue()


def _read(source, name):
    try:
        with np.load(source, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise ValueError(f"{name} is not a readable sparkdl model file ({type(e).__name__}: {e})") from None
    missing = [k for k in _REQUIRED if k not in arrays]
    if missing:
        raise ValueError(f"{name} is not a sparkdl model file: missing {missing}; found {sorted(arrays)}")
    version = int(arrays["sparkdl_format"])
    if version != FORMAT_VERSION:
        raise ValueError(f"{name} has model format version {version}; this sparkdl reads version {FORMAT_VERSION}")
    return arrays


def _json(arrays, key, name):
    try:
        return json.loads(str(arrays[key]))
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{name}: the {key!r} entry is not valid JSON ({e})") from None


def model_from_arrays(arrays, name="model file", backend="numpy"):
    from .nn.model import model_from_config
    model = model_from_config(_json(arrays, "config", name), backend=backend).build()
    for key, target in (("params", model.params), ("state", model.state)):
        if arrays[key].shape != target.shape:
            raise ValueError(f"{name}: {key} has {arrays[key].size} values but the model config needs "
                             f"{target.size}")
    model.set_flat_params(arrays["params"])
    model.set_flat_state(arrays["state"])
    if "compile" in arrays:
        settings = _json(arrays, "compile", name)
        model.compile(**settings)
        model.optimizer.set_state({"buffer": arrays["optimizer_buffer"],
                                   "iterations": int(arrays["optimizer_iterations"])})
    model.meta = _json(arrays, "meta", name) if "meta" in arrays else {}
    return model


def load_model(path, backend="numpy"):
    """Read a model written by ``save_model`` (a path or a readable binary file object)."""
    name = repr(os.fspath(path)) if not hasattr(path, "read") else "the model file"
    return model_from_arrays(_read(path, name), name, backend)


def model_from_bytes(data, backend="numpy"):
    return model_from_arrays(_read(_io.BytesIO(data), "model bytes"), "model bytes", backend)
