"""What a model file holds, and writing it: one ``.npz`` of the JSON config, the flat params, the flat layer state,
the compile settings and the optimizer state, with a format version (``Model.save``, checkpoints, the pyspark.ml
writer and the models shipped to executors all write this). Reading a file back, with the checks a file from
elsewhere needs, is sparkdl.io.model_file's job: it sits above the model classes it builds, this below them."""
import io
import json
import os

import numpy as np

from ..backend import to_numpy

FORMAT_VERSION = 1


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
    buf = io.BytesIO()
    save_model(model, buf, meta)
    return buf.getvalue()
