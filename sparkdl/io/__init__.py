"""Model files in and out: sparkdl's own format (``model_file``: one ``.npz``, loaded without pickle)."""
from .model_file import (FORMAT_VERSION, load_model, model_from_arrays, model_from_bytes, model_to_arrays,
                         model_to_bytes, save_model)

__all__ = ["FORMAT_VERSION", "load_model", "model_from_arrays", "model_from_bytes", "model_to_arrays",
           "model_to_bytes", "save_model"]
