"""The driver's side of one distributed fit, shared by every master and Spark-free: what to ship, the round
schedule, how an averaged round is applied (history, stats, callbacks, progress), resume and roll-back."""
import json
import logging
import math
import time

import numpy as np

from ..backend import to_numpy
from ..metrics import Sums
from ..train.callbacks import CallbackList, History
from ..train.progress import Progress
from ..train import stats as stats_mod
from ..train.stats import TrainingStats
from . import schedule
from .stopping import Stoppable, stop_on_signals

__all__ = ["FitRun", "label_dtype", "stop_on_signals"]

log = logging.getLogger("sparkdl")


def label_dtype(loss_kind, dtype=np.float32):
    """The dtype labels travel in: class indices for multiclass losses, else targets in the model's ``dtype``."""
    return np.int32 if loss_kind == "multiclass" else np.dtype(dtype).type


class FitRun(Stoppable):
    """Driver-side state of one fit, shared by both modes: what to ship, how to apply an averaged round,
    history, stats, callbacks, progress, resume."""

    def __init__(self, model, master, epochs, callbacks, evaluate_validation, verbose, resume_round):
        self.model, self.master, self.epochs = model, master, epochs
        self.model_json = json.dumps({"class_name": type(model).__name__, "config": model.get_config()})
        self.compile_json = json.dumps(model.compile_config())
        self.input_shape = tuple(model.input_shape)
        self.n_features = int(np.prod(self.input_shape))
        self.label_dtype = label_dtype(model.loss.kind, model.dtype)
        self.history = History()
        self.history.rounds = []
        self.history.stats = TrainingStats() if master.collect_stats else None
        self.callbacks = CallbackList([self.history, *callbacks], model)
        self.evaluate_validation = evaluate_validation
        self.verbose = verbose
        self.resume_round = resume_round
        self.synced = resume_round - 1  # the last round whose average is in the model
        self.synced_iterations = int(model.optimizer.iterations)   # the optimizer's steps after that round
        self.epoch_rounds = []   # (round, Sums) of the current epoch, for a rollback
        self.stopped = False
        self.ended = -1   # the last epoch whose end was handled (logs, callbacks): a roll-back does not redo it
        self.stop_signal = None   # the signal that asked the fit to stop (stop_on_signals)
        self.stoppers = []        # what stops the running work: cancel the Spark jobs, abort the workers
        self.next_round = resume_round
        self.rounds_per_epoch = None
        self.marks = {}   # when the fit's start-up steps ended (time.time()): see ``startup``

    def mark(self, step, t=None):
        """Note when a start-up step ended (the first time only)."""
        self.marks.setdefault(step, time.time() if t is None else t)

    def startup(self):
        """[(step, seconds)] from the call of fit to the end of the first round, each step from the end of the
        one before; the workers' steps (their tasks begun, partitions loaded, models built) are the slowest
        worker's, where the master reports them."""
        names = {"checked": "data checked and converted (one Spark pass)", "mode": "mode chosen, validation data ready",
                 "launched": "launch", "started": "workers' tasks begun", "loaded": "partitions loaded",
                 "built": "models built", "ready": "workers ready (barrier: the rendezvous; jobs: the export)",
                 "round 1": "first round"}
        marks = sorted((t, step) for step, t in self.marks.items() if step in names or step == "fit")
        steps, before = [], self.marks.get("fit")
        for t, step in marks:
            if step != "fit" and before is not None:
                steps.append((names[step], max(t - before, 0.0)))
            before = t if before is None else max(before, t)
        return steps

    # -- schedule ---------------------------------------------------------------------------------------
    def start(self, shard_sizes, logs=None):
        """The workers hold ``shard_sizes`` rows: settle the schedule and begin (``logs``: for on_train_begin,
        e.g. where the workers run)."""
        empty = [i for i, n in enumerate(shard_sizes) if n == 0]
        if empty:   # as the schedule has workers whose shard is used up sit a round out
            log.warning("sparkdl: the partitions of workers %s are empty (%d workers for %d rows); those workers "
                        "sit the fit out", empty, len(shard_sizes), sum(shard_sizes))
        workers = (logs or {}).get("workers") or []
        for step in ("started", "loaded", "built"):   # the slowest worker's
            times = [w[step] for w in workers if isinstance(w.get(step), (int, float))]
            if times:
                self.mark(step, max(times))
        self.mark("ready")
        self.shard_sizes = list(shard_sizes)
        self.rows = sum(shard_sizes)
        self.rounds_per_epoch = schedule.rounds_per_epoch(shard_sizes, self.master.batch_size_per_worker,
                                                          self.master.averaging_frequency)
        total_rounds = self.epochs * self.rounds_per_epoch
        if self.resume_round > total_rounds:
            raise ValueError(f"the checkpoint is at round {self.resume_round}, past the {total_rounds} rounds of "
                             f"this fit ({self.epochs} epochs x {self.rounds_per_epoch} rounds)")
        self.model.stop_training = False
        stats = self.history.stats
        if stats is not None:
            stats.config.update(model=self.model.summary(print_fn=None), epochs=self.epochs, rows=self.rows,
                                workers=len(shard_sizes), rounds_per_epoch=self.rounds_per_epoch,
                                master={k: v for k, v in vars(self.master).items() if not k.startswith("_")})
            self._layer_step = max(1, total_rounds // stats_mod.MAX_LAYER_SAMPLES)
            # never more often than once an epoch (which fits with few epochs fetch anyway)
            self._fetch_step = max(self.rounds_per_epoch, -(-total_rounds // stats_mod.MAX_FETCHED_SAMPLES))
            stats.sample_layers(self.model, self.resume_round - 1)   # the starting point of the first update
        self.callbacks.on_train_begin(logs)
        self.start_clock()

    def start_clock(self):
        """Rounds are timed end to end: a round's wall time runs from the previous round's end (or from here,
        when the workers start) to its own, so the walls add up to the training time less the epoch-end work
        (validation, callbacks), which is not counted."""
        self.clock = time.time()

    def rounds(self):
        """(epoch, round in epoch, global round) for every round still to run; epoch ends are handled here.
        After ``rollback`` the rounds go on from the rolled-back point; the ends of epochs already ended are not
        handled again (the rounds run again average to what they did: their logs were right)."""
        total = self.epochs * self.rounds_per_epoch
        self.next_round, begun = self.resume_round, None
        while self.next_round < total:
            self.check_stop()
            g = self.next_round
            epoch, r = divmod(g, self.rounds_per_epoch)
            if epoch != begun:
                if epoch > self.ended:
                    self._untimed(self._begin_epoch, epoch)
                begun = epoch
            self.next_round = g + 1
            yield epoch, r, g
            if self.stopped:
                return
            if self.next_round == g + 1 and r == self.rounds_per_epoch - 1 and epoch > self.ended:
                self._untimed(self._end_epoch, epoch)
                self.ended = epoch
                if self.model.stop_training:
                    self.stopped = True
                    return

    # -- roll-back, and what the workers start from ---------------------------------------------------------
    def rollback(self, g):
        """Go back to round g (whose average the model holds): the rounds after it are forgotten (history, stats,
        the epoch's sums) and run again."""
        self.history.rounds = [h for h in self.history.rounds if h["round"] <= g + 1]
        stats = self.history.stats
        if stats is not None:
            stats.rounds = [rec for rec in stats.rounds if rec["round"] <= g]
            stats.workers = [rec for rec in stats.workers if rec["round"] <= g]
            stats.layers = [rec for rec in stats.layers if rec["round"] <= g]
            stats._last = None   # the next sample starts a new interval
        self.epoch_rounds = [(h, c) for h, c in self.epoch_rounds if h <= g]
        self.epoch_total = Sums()
        for _, c in self.epoch_rounds:
            self.epoch_total.merge(c)
        self.model.optimizer.iterations = self.synced_iterations
        self.next_round = g + 1

    def _untimed(self, step, epoch):
        t = time.time()
        step(epoch)
        self.clock += time.time() - t

    def payload(self, copy=True):
        """What every worker starts a round from (host arrays; views of the model's buffers if not ``copy``,
        for a caller that ships them before the next round changes them)."""
        model, opt = self.model, self.model.optimizer
        host = (lambda a: to_numpy(a).copy()) if copy else to_numpy
        return {"params": host(model.params),
                "state": host(model.state) if model.state.size else None,
                "opt": host(opt.state_buffer) if self.master.average_optimizer_state else None,
                "iterations": int(opt.iterations)}

    # -- applying a round -----------------------------------------------------------------------------------
    def needs_model(self, r, g):
        """Whether round g's average must be in the model when the round is committed: at the end of the fit, where
        a callback reads it, at epoch ends where there is validation or a callback reads it there (or may stop the
        fit), and every few rounds for the stats' layer samples. Elsewhere a master may skip it."""
        if g == self.epochs * self.rounds_per_epoch - 1 or self.callbacks.reads_model_at_round(g):
            return True
        if r == self.rounds_per_epoch - 1 and (self.evaluate_validation is not None
                                               or self.callbacks.reads_model_at_epoch_end()):
            return True
        return self.history.stats is not None and (g + 1) % self._fetch_step == 0

    def average(self, total, epoch, r, g, arrays=None, skip=False):
        """The round's averaged buffers (``arrays``, a dict by part name, when the master averaged them itself;
        none with ``skip``) with the loss and the optimizer's step count after it, as a dict; raises if nothing
        was fitted or the loss or the average is not finite (the model keeps the weights it holds)."""
        if total.n == 0:
            raise RuntimeError(f"round {g + 1} (epoch {epoch + 1}, round {r + 1}): no worker fitted any example")
        loss = total.loss_sum / total.n
        if arrays is None and not skip:
            arrays = dict(zip(("params", "state", "opt"), total.average(self.model.dtype)))
        if not (math.isfinite(loss) and (skip or np.isfinite(arrays["params"]).all())):
            raise FloatingPointError(
                f"the training loss became {loss} in round {g + 1} (epoch {epoch + 1}, round {r + 1} of the epoch); "
                f"the model keeps the weights averaged after round {self.synced + 1}. Lower the learning rate or "
                f"check the data")
        arrays = arrays or {}
        return {"params": arrays.get("params"), "state": arrays.get("state"), "opt": arrays.get("opt"), "loss": loss,
                "iterations": int(self.model.optimizer.iterations) + total.steps}

    def load(self, averaged, g):
        """Put round g's averaged buffers in the model."""
        model = self.model
        model.set_flat_params(averaged["params"])
        if averaged.get("state") is not None:
            model.set_flat_state(averaged["state"])
        if averaged.get("opt") is not None:
            model.optimizer.state_buffer[...] = model.xp.asarray(averaged["opt"])
        self.synced = g

    def commit(self, total, averaged, epoch, r, g, t0, extra=None):
        """Load an ``average``d round into the model (unless it was skipped), then history, stats, callbacks and
        progress; ``t0``: when the master started merging the round (the stats' merge_s runs from there);
        ``extra``: more numbers for the round's stats record."""
        self.model.optimizer.iterations = averaged["iterations"]
        if averaged["params"] is not None:
            self.load(averaged, g)
            self.synced_iterations = averaged["iterations"]
            stats = self.history.stats
            if stats is not None and (r == self.rounds_per_epoch - 1 or not stats.layers
                                      or g - stats.layers[-1]["round"] >= self._layer_step):
                stats.sample_layers(self.model, g, [rec["grad_norms"] for rec in total.stats
                                                    if rec.get("round") == g and "grad_norms" in rec])
            for rec in total.stats:   # kept with the layer samples only
                rec.pop("grad_norms", None)
        loss = averaged["loss"]
        self.epoch_total.merge(total)
        self.epoch_rounds.append((g, total.sums()))
        now = time.time()
        if "round 1" not in self.marks:
            self.mark("round 1", now)
            if self.history.stats is not None:
                self.history.stats.startup = self.startup()
        record = {"round": g, "epoch": epoch, "start": self.clock, "wall_s": now - self.clock, "merge_s": now - t0,
                  "loss": loss, "n": total.n, **(extra or {})}
        self.clock = now
        self.history.rounds.append({"round": g + 1, "epoch": epoch + 1, "loss": loss, "examples": total.n})
        if self.history.stats is not None:
            self.history.stats.add_round(record, total.stats)
        self.callbacks.on_round_end(g, {"loss": loss, "epoch": epoch + 1, "round_in_epoch": r + 1,
                                        "rounds_per_epoch": self.rounds_per_epoch})
        self.progress.title = f"Epoch {epoch + 1}/{self.epochs} round {r + 1}/{self.rounds_per_epoch}"
        self.progress.update(self.epoch_total.n, lambda: {"loss": self.epoch_total.loss()})

    def apply(self, total, epoch, r, g):
        t0 = time.time()
        self.commit(total, self.average(total, epoch, r, g), epoch, r, g, t0)

    def _begin_epoch(self, epoch):
        self.epoch_total, self.epoch_rounds = Sums(), []
        self.callbacks.on_epoch_begin(epoch)
        self.progress = Progress(self.rows, self.verbose)
        self.progress.start(f"Epoch {epoch + 1}/{self.epochs}")

    def _end_epoch(self, epoch):
        t = self.epoch_total
        logs = t.results(self.model.metrics)
        if self.evaluate_validation is not None:
            logs.update({f"val_{k}": v for k, v in self.evaluate_validation().items()})
        self.progress.title = f"Epoch {epoch + 1}/{self.epochs}"
        self.progress.end(t.n, logs)
        if self.history.stats is not None:
            self.history.stats.add_epoch(epoch, (epoch + 1) * self.rounds_per_epoch - 1, logs)
        self.callbacks.on_epoch_end(epoch, logs)

    def finish(self):
        self.callbacks.on_train_end()
        return self.history
