"""sparkdl: Spark-native distributed deep learning (NumPy/CuPy training loops, parameter averaging)."""
from .errors import DataError, FitInterrupted
from .io import load_model, save_model
from .nn import Sequential

__version__ = "0.1.0"
