"""Model files in and out: sparkdl's own format (written by ``sparkdl.nn.saving``, read back by ``model_file``:
one ``.npz``, loaded without pickle), Keras files in (``keras``: ``.keras`` and legacy HDF5 ``.h5``, read with
h5py and json) and ONNX out (``onnx``). This package sits above sparkdl.nn: it builds and converts models."""
from ..nn.saving import FORMAT_VERSION, model_to_arrays, model_to_bytes, save_model
from .keras import load_keras
from .model_file import load_model, model_from_arrays, model_from_bytes
from .onnx import export_onnx

__all__ = ["FORMAT_VERSION", "export_onnx", "load_keras", "load_model", "model_from_arrays", "model_from_bytes",
           "model_to_arrays", "model_to_bytes", "save_model"]
