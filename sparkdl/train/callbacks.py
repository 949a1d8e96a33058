"""Keras-style callbacks: History, EarlyStopping, ModelCheckpoint, TerminateOnNaN."""
import math
import os


class Callback:
    model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None): pass
    def on_epoch_begin(self, epoch, logs=None): pass
    def on_round_end(self, round, logs=None): pass   # distributed training: after each averaging round
    def on_epoch_end(self, epoch, logs=None): pass
    def on_train_end(self, logs=None): pass
    def on_train_failed(self, error): pass   # SparkTrainer.fit raised error; on_train_end is not called

    def reads_model_at_round(self, round):
        """Distributed training: whether ``on_round_end(round)`` reads ``self.model``. Barrier mode then loads that
        round's average into the driver's model first (otherwise it does so only at epoch ends). Default: when
        ``on_round_end`` is overridden."""
        return type(self).on_round_end is not Callback.on_round_end

    def reads_model_at_epoch_end(self):
        """Distributed training: whether ``on_epoch_end`` reads ``self.model`` or may stop the fit. Barrier mode
        fetches the model from the workers at every epoch end only where a callback (or validation) says so: on
        small data an epoch takes milliseconds and a fetch per epoch would cost the workers a tenth of their time.
        Default: True (a callback of yours may read the weights, as in Keras)."""
        return True


class CallbackList:
    def __init__(self, callbacks, model):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be sparkdl Callback instances; received {type(cb).__name__}")
            cb.set_model(model)

    def reads_model_at_round(self, round):
        return any(cb.reads_model_at_round(round) for cb in self.callbacks)

    def reads_model_at_epoch_end(self):
        return any(cb.reads_model_at_epoch_end() for cb in self.callbacks)

    def __getattr__(self, hook):
        def call(*args, **kwargs):
            for cb in self.callbacks:
                getattr(cb, hook)(*args, **kwargs)
        return call


class History(Callback):
    """``history.history["loss"]`` etc., one value per epoch; ``history.epoch`` lists the epochs run."""

    def __init__(self):
        self.history, self.epoch = {}, []

    def reads_model_at_epoch_end(self):
        return False

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)


def _better(mode, monitor):
    if mode == "auto":
        mode = "max" if any(s in monitor for s in ("acc", "f1", "precision", "recall", "r2")) else "min"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max'. Received: mode={mode!r}")
    return mode


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs in a row without an improvement of ``monitor`` by more than ``min_delta``
    (Keras's rule: patience=1 stops at the first epoch that does not improve); optionally restore the weights
    (params and layer state) of the best epoch."""

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, mode="auto", restore_best_weights=False):
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be an int >= 0. Received: patience={patience!r}")
        self.monitor, self.patience, self.min_delta = monitor, patience, abs(float(min_delta))
        self.mode = _better(mode, monitor)
        self.restore_best_weights = restore_best_weights
        self.stopped_epoch = None

    def on_train_begin(self, logs=None):
        self.wait, self.best, self.best_weights, self.stopped_epoch = 0, None, None, None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r}, which is not among the logged values "
                           f"{sorted(logs)}; pass validation data for val_* values")
        value = logs[self.monitor]
        sign = 1.0 if self.mode == "min" else -1.0
        if self.best is None or sign * (self.best - value) > self.min_delta:
            self.best, self.wait = value, 0
            if self.restore_best_weights:
                self.best_weights = (self.model.get_flat_params(), self.model.get_flat_state())
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None and self.stopped_epoch is not None:
            self.model.set_flat_params(self.best_weights[0])
            self.model.set_flat_state(self.best_weights[1])


class ModelCheckpoint(Callback):
    """Save the model file (weights, layer state, optimizer state, epoch) every ``every`` epochs, or only when
    ``monitor`` improves with ``save_best_only``. ``path`` may contain ``{epoch}``."""

    def __init__(self, path, monitor="val_loss", save_best_only=False, mode="auto", every=1):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1. Received: every={every!r}")
        self.path, self.monitor, self.save_best_only, self.every = os.fspath(path), monitor, save_best_only, every
        self.mode = _better(mode, monitor)
        self.best = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        if self.save_best_only:
            value = (logs or {}).get(self.monitor)
            if value is None:
                raise KeyError(f"ModelCheckpoint monitors {self.monitor!r}, not among {sorted(logs or {})}")
            if self.best is not None and not (value < self.best if self.mode == "min" else value > self.best):
                return
            self.best = value
        self.model.save(self.path.format(epoch=epoch + 1), meta={"epoch": epoch + 1})


class TerminateOnNaN(Callback):
    def on_epoch_end(self, epoch, logs=None):
        if not math.isfinite((logs or {}).get("loss", 0.0)):
            self.model.stop_training = True


class RoundCheckpoint(Callback):
    """Distributed training: every ``every`` averaging rounds (``"epoch"``: at every epoch end), write the model
    file (params, layer state, optimizer state) with the round counter to ``path`` (local or any pyarrow.fs URI;
    may contain ``{round}``; a local file is replaced whole, never left half-written).
    ``SparkTrainer.fit(..., resume_from=path)`` continues from exactly that round; ``last_round`` is the round of
    the last file written."""

    def __init__(self, path, every=1):
        if every != "epoch" and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
            raise ValueError(f"every must be an int >= 1 or 'epoch'. Received: every={every!r}")
        self.path, self.every = os.fspath(path), every
        self.saved, self.last_round = [], None

    def reads_model_at_round(self, round):
        return self.every != "epoch" and (round + 1) % self.every == 0

    def reads_model_at_epoch_end(self):
        return self.every == "epoch"

    def on_round_end(self, round, logs=None):
        from .. import fs
        done, logs = round + 1, logs or {}
        if self.every == "epoch":
            if logs.get("round_in_epoch") != logs.get("rounds_per_epoch"):
                return
        elif done % self.every:
            return
        path = self.path.format(round=done)
        with fs.open_output(path) as f:
            self.model.save(f, meta={"round": done, **{k: v for k, v in logs.items()
                                                               if k in ("epoch", "round_in_epoch")}})
        self.saved.append(path)
        self.last_round = done
