"""The training loop, callbacks, checkpoints and experiment tracking: plain Python over numpy/cupy batches, no Spark."""
from .callbacks import Callback, EarlyStopping, History, ModelCheckpoint, RoundCheckpoint, TerminateOnNaN
from .loop import fit, train_batches
from .tracking import MLflowLogger, TensorBoardLogger
