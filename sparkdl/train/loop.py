"""The training loop shared by ``model.fit`` and the Spark workers: minibatch steps over host arrays."""
import math

import numpy as np

from ..checks import positive_int
from ..metrics import Sums
from .callbacks import CallbackList, History
from .progress import Progress


def batch_slices(n, batch_size, order=None):
    """Index arrays (or slices) of consecutive minibatches; the last one may be smaller."""
    for start in range(0, n, batch_size):
        yield slice(start, start + batch_size) if order is None else order[start:start + batch_size]


def train_batches(model, x, y, index_batches, totals=None, on_batch=None):
    """Run one optimizer step per index batch of the host arrays (x, y); returns the running Sums."""
    totals = totals or Sums()
    resident = not isinstance(x, np.ndarray)  # the data already lives on the device
    for i, idx in enumerate(index_batches):
        if resident and isinstance(idx, np.ndarray):
            idx = model.xp.asarray(idx)
        xb, yb = model._device(x[idx]), model._device(y[idx])
        loss, out = model.train_on_batch(xb, yb)
        totals.add(loss, yb, model.probabilities(out) if model.metrics else None, model.metrics)
        if on_batch is not None:
            on_batch(i, totals)
    return totals


def fit(model, x, y, epochs=1, batch_size=32, validation_data=None, shuffle=True, callbacks=(),
        verbose="auto", initial_epoch=0):
    model._check_compiled("fit")
    epochs = positive_int("epochs", epochs)
    batch_size = positive_int("batch_size", batch_size)
    x, y = model.check_data(x, y)
    if len(x) == 0:
        raise ValueError("fit needs at least one example; received x with 0 rows")
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data must be a tuple (x_val, y_val)")
        val_x, val_y = model.check_data(*validation_data)
    history = History()
    cbs = CallbackList([history, *callbacks], model)
    progress = Progress(len(x), verbose)
    model.stop_training = False
    model.history = history
    cbs.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        cbs.on_epoch_begin(epoch)
        last_good = model.get_flat_params(), model.get_flat_state()
        order = model.shuffle_rng.permutation(len(x)) if shuffle else None
        progress.start(f"Epoch {epoch + 1}/{epochs}")
        totals = train_batches(model, x, y, batch_slices(len(x), batch_size, order),
                               on_batch=lambda i, t: progress.update(t.n, lambda: t.results(model.metrics)))
        logs = totals.results(model.metrics)
        if not math.isfinite(logs["loss"]):
            model.set_flat_params(last_good[0])
            model.set_flat_state(last_good[1])
            raise FloatingPointError(f"the training loss became {logs['loss']} in epoch {epoch + 1}; the model "
                                     f"keeps the weights from the start of that epoch. Lower the learning rate "
                                     f"or check the data for extreme values")
        if validation_data is not None:
            logs.update({f"val_{k}": v for k, v in model.evaluate(val_x, val_y, batch_size=max(batch_size, 256)).items()})
        progress.end(totals.n, logs)
        cbs.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    cbs.on_train_end()
    return history
