"""sparkdl: Spark-native distributed deep learning (NumPy/CuPy training loops, parameter averaging)."""
from .errors import DataError, FitInterrupted
from .io import load_model, save_model
from .nn import Sequential
from .version import __version__

__all__ = ["DataError", "FitInterrupted", "Sequential", "__version__", "load_model", "save_model"]
