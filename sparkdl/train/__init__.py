"""The training loop, callbacks and checkpoints: plain Python over numpy/cupy batches, no Spark."""
from .callbacks import Callback, EarlyStopping, History, ModelCheckpoint, TerminateOnNaN
from .loop import fit, train_batches
