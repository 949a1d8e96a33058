"""SparkTrainer: fit a compiled sparkdl model on a DataFrame through a master; evaluate and predict on executors."""
import json
import logging
import time
import uuid

import numpy as np
import pyarrow as pa

from .. import io
from ..dist import wire
from ..checks import positive_int
from ..errors import DataError, FitInterrupted
from ..metrics import Sums
from ..dist.run import FitRun, stop_on_signals
from . import data, direct, prepared as cache
from .master import ParameterAveraging, _storage_level
from .session import warm_workers

log = logging.getLogger("sparkdl")


class SparkTrainer:
    """Train, evaluate and predict with a compiled sparkdl model on Spark DataFrames.

    ``trainer.fit(df, features_col="features", label_col="label", epochs=1, validation_df=None, callbacks=(),
    resume_from=None)`` leaves the trained weights in ``trainer.model`` (a normal sparkdl model)."""

    def __init__(self, model, master=None):
        self.model = model
        self.master = master or ParameterAveraging()
        if not isinstance(self.master, ParameterAveraging):
            raise TypeError(f"master must be a ParameterAveraging; received {type(master).__name__}")

    def _check_model(self, what):
        if not getattr(self.model, "compiled", False):
            raise RuntimeError(f"the model must be compiled (model.compile(optimizer, loss, metrics)) before "
                               f"SparkTrainer.{what}")
        if not hasattr(self.model, "input_shape") or isinstance(self.model.input_shape, dict):
            raise ValueError("SparkTrainer needs a model with a single input")

    def _checks(self, features_col, label_col, what):
        model = self.model
        return {"n_features": int(np.prod(model.input_shape)), "loss_kind": model.loss.kind,
                "num_classes": model.output_shape[-1], "features_col": features_col, "label_col": label_col,
                "what": what}

    def _prepared_data(self, df, features_col, label_col, what, workers=None):
        """The Entry (sparkdl.spark.prepared) of ``df``: kept and made ready by an earlier fit, else a new one (a
        plan: the first pass over it checks and converts it), laid out for ``workers`` (a ParameterAveraging, or
        None: the partitions as they are); kept for later fits with ``reuse_prepared``."""
        checks = self._checks(features_col, label_col, what)
        layout = None
        if workers is not None:
            layout = (workers.num_workers or df.sparkSession.sparkContext.defaultParallelism, workers.repartition)
        key = (what, tuple(checks.items()), layout)
        entry = cache.lookup(df, key)
        if entry is not None:
            log.info("sparkdl: the %s's prepared data (%d rows) kept from an earlier fit: reused", what, entry.rows)
            return entry
        frame = data.prepare(df, features_col, label_col, role=what)
        n, laid_out = (None, frame) if workers is None else workers.workers_for(frame)
        entry = cache.Entry(df, key, frame, laid_out, n, checks, _storage_level(self.master.storage_level))
        if self.master.reuse_prepared:
            cache.keep(entry)
        return entry

    def fit(self, df, features_col="features", label_col="label", epochs=1, validation_df=None, callbacks=(),
            resume_from=None, verbose="auto"):
        self._check_model("fit")
        marks = {"fit": time.time()}
        epochs = positive_int("epochs", epochs)
        master, model = self.master, self.model
        resume_round = self._resume(resume_from) if resume_from is not None else 0
        entries, evaluate_validation = [], None
        sc = df.sparkSession.sparkContext
        warm, early = warm_workers(sc, master.num_workers), None
        try:
            if warm is not None:   # the application's first fit: its files read from now on, where they can be
                early = direct.Early.start(df, self._checks(features_col, label_col, "training DataFrame"),
                                           master.num_workers or sc.defaultParallelism)
            # checked, converted and laid out one partition per worker in one Spark pass where the fit first reads
            # it, or kept from an earlier fit on the same DataFrame (sparkdl.spark.prepared)
            entry = self._prepared_data(df, features_col, label_col, "training DataFrame", master)
            if entry.ready:
                marks["checked"] = time.time()
            entries.append(entry)
            if warm is not None:   # its tasks would count as busy slots: mode="auto" would choose jobs mode
                direct.read_ahead(entry, early)   # meanwhile, where the driver writes the shards
                early = None
                warm.join()
            mode, reason = master.choose_mode(sc, entry.workers)
            if validation_df is not None:
                val = self._prepared_data(validation_df, features_col, label_col, "validation DataFrame")
                entries.append(val)
                if mode == "barrier":
                    # the barrier stage holds the executors' slots: validate on the driver, data collected once
                    if val.arrays is None:   # Parquet or small data read on the driver (sparkdl.spark.direct)
                        read = direct.read_on_driver(val)
                        if read is None:
                            read = data.batch_to_numpy(val.packed().select(data.X, data.Y).toArrow(),
                                                       int(np.prod(model.input_shape)))
                        val.arrays = read[0].reshape((-1,) + tuple(model.input_shape)), read[1]
                        if val.kept and val.frame is not None:   # the arrays are what is kept
                            val.frame.unpersist()
                            val.frame = None
                    vx, vy = val.arrays
                    evaluate_validation = lambda: model.evaluate(vx, vy)
                else:
                    evaluate_validation = lambda: self._evaluate_prepared(val.packed(), 1024, val.checks, val.prepared)
            marks["mode"] = time.time()
            history = self._run(entry, mode, reason, epochs, callbacks, evaluate_validation, verbose, resume_round,
                                marks)
        finally:
            if early is not None:   # not read ahead: the fit failed before
                early.stop()
            if warm is not None:   # no job of the fit left running
                warm.join()
            for e in entries:
                if not (e.kept and e.ready):   # kept only once made ready (not after a failed check, say)
                    e.release()
            df.sparkSession.sparkContext.setJobDescription(None)
        model.history = history
        return history

    def _run(self, entry, mode, reason, epochs, callbacks, evaluate_validation, verbose, resume_round, marks=None):
        from .barrier import BarrierUnsupported
        master, model = self.master, self.model
        start = (model.get_flat_params(), model.get_flat_state(), model.optimizer.get_state())
        run = FitRun(model, master, epochs, callbacks, evaluate_validation, verbose, resume_round)
        run.history.mode, run.history.mode_reason = mode, reason
        run.marks.update(marks or {})
        model.history = run.history   # callbacks may read the fit's history (its stats), as in the local fit
        try:
            with stop_on_signals(run), data.task_errors():
                return master.fit(run, entry, mode)
        except BarrierUnsupported as e:
            if master.mode != "auto":
                raise
            # nothing ran (Spark refused the stage at once): start over in jobs mode
            model.set_flat_params(start[0])
            model.set_flat_state(start[1])
            model.optimizer.set_state(start[2])
            return self._run(entry, "jobs", str(e).split(";")[0], epochs, callbacks, evaluate_validation, verbose,
                             resume_round, marks)
        except BaseException as e:
            error = e
            if run.stop_signal is not None and not isinstance(e, FitInterrupted):
                error = run.interrupted()   # not the cancelled job's error: where the fit stopped
            try:
                run.callbacks.on_train_failed(error)   # e.g. a tracking run is ended, not left open
            except Exception:
                log.warning("sparkdl: a callback failed in on_train_failed", exc_info=True)
            if error is not e:
                raise error from None
            raise

    def _resume(self, path):
        from .. import fs
        with fs.open_input(path) as f:
            saved = io.load_model(f)
        if saved.get_config() != self.model.get_config():
            raise ValueError(f"the checkpoint {path!r} holds a different model configuration than this trainer's")
        self.model.set_flat_params(saved.get_flat_params())
        self.model.set_flat_state(saved.get_flat_state())
        self.model.optimizer.set_state(saved.optimizer.get_state())
        if "round" not in saved.meta:
            raise ValueError(f"{path!r} is a model file but not a round checkpoint (no round counter)")
        return int(saved.meta["round"])

    def check(self, df, features_col="features", label_col="label", role="evaluation DataFrame"):
        """Check ``df`` as ``fit`` and ``evaluate`` do, in one Spark job, without training (for data that is used
        later, such as a test set); raises sparkdl.DataError naming ``role`` and the column. Returns the row count."""
        self._check_model("check")
        prepared = data.prepare(df, features_col, label_col, role=role)
        return data.validate(prepared, **self._checks(features_col, label_col, role))

    # -- evaluation and inference ------------------------------------------------------------------------
    def evaluate(self, df, features_col="features", label_col="label", batch_size=1024):
        """The model's loss and metrics over ``df``, computed on executors and merged on the driver, in one Spark
        pass that also checks the rows (a second one, for the message, only where a check fails)."""
        self._check_model("evaluate")
        what = "evaluation DataFrame"
        prepared = data.prepare(df, features_col, label_col, role=what)
        return self._evaluate_prepared(prepared, batch_size, self._checks(features_col, label_col, what))

    def _evaluate_prepared(self, frame, batch_size, checks, prepared=None):
        """The evaluation of ``frame`` (prepared columns, or a fit's packed blocks of ``prepared``), its rows
        checked on the way with ``checks`` (``_checks``) as a fit's pass checks them (sparkdl.spark.prepared)."""
        sc = frame.sparkSession.sparkContext
        bc, key = sc.broadcast(io.model_to_bytes(self.model)), uuid.uuid4().hex
        n_features, input_shape = int(np.prod(self.model.input_shape)), tuple(self.model.input_shape)
        kind, classes, what, features_col = (checks[k] for k in ("loss_kind", "num_classes", "what", "features_col"))

        def partials(batches):
            from sparkdl.spark.prepared import label_problem
            from sparkdl.spark.inference import cached_model
            from sparkdl.spark.trainer import _encode
            model = cached_model(key, bc)
            sums, found, problem, rows = None, {}, None, 0
            for b in batches:
                if problem is not None:
                    continue
                try:
                    x, y = data.batch_to_numpy(b, n_features, True, what, features_col, found)
                except DataError as e:
                    problem = str(e)
                    continue
                rows += len(x)
                problem = label_problem(y, kind, classes)
                if problem is not None or found or not len(x):
                    continue
                part = model.evaluate_sums(x.reshape((-1,) + input_shape), y, batch_size)
                sums = part if sums is None else sums.merge(part)
            meta = json.dumps({"rows": rows, "problem": problem, "found": found})
            yield pa.record_batch([pa.array([b"" if sums is None else _encode(sums)], pa.binary()),
                                   pa.array([meta])], names=["partials", "meta"])

        sc.setJobDescription("sparkdl: evaluate")
        with data.task_errors():
            rows = frame.mapInArrow(partials, "partials binary, meta string").collect()
        bc.destroy()
        cache.check(frame if prepared is None else prepared, checks, [json.loads(r["meta"]) for r in rows])
        sums = Sums()
        for row in rows:
            if row["partials"]:
                sums.merge(_decode(row["partials"]))
        return self.model.evaluate_results(sums)

    def predict(self, df, features_col="features", output_col="prediction", probability_col="probability",
                batch_size=1024):
        """``df`` with predictions added by ``mapInArrow`` (the model broadcast once). Classifiers get
        ``probability_col`` (array<float>) and ``output_col`` (int, the most likely class); other models get
        ``output_col`` as double (one output) or array<float>."""
        from .inference import predict
        return predict(self.model, df, features_col, output_col, probability_col, batch_size)


def _encode(sums):
    """Evaluation Sums as JSON bytes, so they travel as one Arrow binary value."""
    return json.dumps({"n": sums.n, "loss_sum": float(sums.loss_sum),
                       "metrics": wire.encode_partials(sums.partials)}).encode()


def _decode(raw):
    plain = json.loads(raw)
    return Sums(plain["n"], plain["loss_sum"], wire.decode_partials(plain["metrics"]))
