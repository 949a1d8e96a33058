"""Model files in and out: sparkdl's own format (``model_file``: one ``.npz``, loaded without pickle), Keras files
in (``keras``: ``.keras`` and legacy HDF5 ``.h5``, read with h5py and json) and ONNX out (``onnx``)."""
from .model_file import (FORMAT_VERSION, load_model, model_from_arrays, model_from_bytes, model_to_arrays,
                         model_to_bytes, save_model)


def load_keras(path, backend="numpy"):
    """A sparkdl model from a Keras file (see ``sparkdl.io.keras.load_keras``)."""
    from .keras import load_keras as load
    return load(path, backend=backend)


def export_onnx(model, path, **kwargs):
    """Write ``model`` as an ONNX file (see ``sparkdl.io.onnx.export_onnx``)."""
    from .onnx import export_onnx as export
    return export(model, path, **kwargs)


__all__ = ["FORMAT_VERSION", "export_onnx", "load_keras", "load_model", "model_from_arrays", "model_from_bytes",
           "model_to_arrays", "model_to_bytes", "save_model"]
