"""The training loop, callbacks and checkpoints: plain Python over numpy/cupy batches, no Spark."""
from .callbacks import Callback, EarlyStopping, History, ModelCheckpoint, RoundCheckpoint, TerminateOnNaN
from .loop import fit, train_batches
