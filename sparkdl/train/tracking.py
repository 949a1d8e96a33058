"""Experiment tracking callbacks: MLflowLogger (an MLflow run: params, per-epoch metrics, the model file and the
training report as artifacts) and TensorBoardLogger (TensorBoard event files, written with tensorboardX).

Both packages are optional (``pip install sparkdl[tracking]``) and imported only when a logger is made. Neither
logger reads the model between epochs, so barrier mode does not load each round's average for them."""
import importlib
import json
import numbers
import os
import tempfile
import time

from .callbacks import Callback

EXTRA = "pip install sparkdl[tracking]"
MAX_PARAM_CHARS = 500   # MLflow keeps 6000 (older servers 250 or 500); the full config is in the model file
MAX_PARAMS, MAX_METRICS = 100, 1000   # per log_batch request, MLflow's limits


def _require(module, who):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{who} needs the {module} package, which is not installed: {EXTRA}") from e


def flatten(value, key=""):
    """(key, short text) pairs of a nested config: a dict by dotted keys (private ``_`` keys left out), a
    ``{class_name, config}`` pair as the class name under its key and the config below it, a list of dicts by
    index, anything else as JSON text cut to MAX_PARAM_CHARS."""
    join = lambda k: f"{key}.{k}" if key else str(k)
    if isinstance(value, dict) and set(value) == {"class_name", "config"}:
        yield from flatten(value["class_name"], key)
        yield from flatten(value["config"], key)
    elif isinstance(value, dict):
        for k, v in value.items():
            if not str(k).startswith("_"):
                yield from flatten(v, join(k))
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            yield from flatten(v, join(i))
    else:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        yield key, text if len(text) <= MAX_PARAM_CHARS else text[:MAX_PARAM_CHARS - 3] + "..."


def scalars(logs):
    """The numbers among an epoch's logs (loss, metrics, val_*), as floats."""
    return {k: float(v) for k, v in (logs or {}).items() if isinstance(v, numbers.Real) and not isinstance(v, bool)}


def _stats(model):
    """The TrainingStats of the model's current fit (SparkTrainer with collect_stats), else None."""
    return getattr(getattr(model, "history", None), "stats", None)


class MLflowLogger(Callback):
    """Log each fit as an MLflow run in ``experiment`` (made if missing).

    ``tracking_uri``: a tracking server (``http://host:5000``), a ``file:`` or database store, ``databricks``;
    None: MLflow's default (MLFLOW_TRACKING_URI, else ./mlruns). The logger talks through its own MlflowClient,
    never MLflow's global active run, so fits in one process do not mix.

    - train begin: a run starts; params: the model config (``model.*``), its compile settings (``compile.*``) and
      ``params`` (e.g. ``{"master": vars(trainer.master)}``), flattened to dotted keys, values cut to 500 chars.
    - epoch end: the loss, metrics and val_* values (step: the epoch, from 0).
    - every ``round_every`` averaging rounds (distributed fits; 0: never): ``round_loss`` (step: rounds done).
      Metrics are sent in batches: one request per epoch, or per 1000 rounds.
    - train end: the artifacts ``model.npz`` (with ``log_model``; ``sparkdl.load_model`` reads it) and, where the fit
      collected stats, ``stats.html`` and ``stats.json``; the run ends FINISHED.

    If a SparkTrainer fit raises, the run ends FAILED (KILLED when interrupted). A local ``model.fit`` that raises
    leaves the run open: this logger's next fit ends it FAILED, or call ``end_run("FAILED")``. ``run_id``: the last
    run's id."""

    def __init__(self, tracking_uri=None, experiment="sparkdl", run_name=None, log_model=True, params=None,
                 round_every=1, tags=None):
        mlflow = _require("mlflow", "MLflowLogger")
        if isinstance(round_every, bool) or not isinstance(round_every, int) or round_every < 0:
            raise ValueError(f"round_every must be an int >= 0. Received: round_every={round_every!r}")
        self.client = mlflow.MlflowClient(tracking_uri)
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.log_model, self.params, self.round_every, self.tags = log_model, dict(params or {}), round_every, tags
        self.run_id, self.running, self._pending = None, False, []

    def reads_model_at_round(self, round):
        return False

    def reads_model_at_epoch_end(self):   # per-epoch metrics only; the model is read at the end of the fit
        return False

    def _experiment_id(self):
        from mlflow.exceptions import MlflowException
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.experiment)
        except MlflowException:   # another fit made it meanwhile
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def on_train_begin(self, logs=None):
        from mlflow.entities import Param
        if self.running:   # the last fit raised where nothing ended its run
            self.end_run("FAILED")
        run = self.client.create_run(self._experiment_id(), run_name=self.run_name, tags=self.tags)
        self.run_id, self.running, self._pending = run.info.run_id, True, []
        params = dict(flatten(self.model.get_config(), "model"))
        if getattr(self.model, "compiled", False):
            params.update(flatten(self.model.compile_config(), "compile"))
        params.update(flatten(self.params))
        params = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(params), MAX_PARAMS):
            self.client.log_batch(self.run_id, params=params[i:i + MAX_PARAMS])

    def on_round_end(self, round, logs=None):
        from mlflow.entities import Metric
        if self.round_every and (round + 1) % self.round_every == 0 and "loss" in (logs or {}):
            self._pending.append(Metric("round_loss", float(logs["loss"]), int(time.time() * 1000), round + 1))
            if len(self._pending) >= MAX_METRICS:
                self._flush()

    def on_epoch_end(self, epoch, logs=None):
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self._pending += [Metric(k, v, now, epoch) for k, v in scalars(logs).items()]
        self._flush()

    def _flush(self):
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=pending[i:i + MAX_METRICS])

    def on_train_end(self, logs=None):
        self._flush()
        stats = _stats(self.model)
        with tempfile.TemporaryDirectory(prefix="sparkdl-mlflow-") as tmp:
            if self.log_model:
                self.model.save(os.path.join(tmp, "model.npz"))
            if stats is not None:
                stats.to_html(os.path.join(tmp, "stats.html"), title=f"sparkdl: {self.run_name or self.run_id}")
                stats.to_json(os.path.join(tmp, "stats.json"))
            if os.listdir(tmp):
                self.client.log_artifacts(self.run_id, tmp)
        mode = getattr(getattr(self.model, "history", None), "mode", None)
        if mode is not None:
            self.client.set_tag(self.run_id, "sparkdl.mode", mode)
        self.end_run("FINISHED")

    def on_train_failed(self, error):
        from ..errors import FitInterrupted
        if not self.running:
            return
        try:
            self._flush()   # the rounds up to the failure
        finally:
            self.end_run("KILLED" if isinstance(error, (FitInterrupted, KeyboardInterrupt)) else "FAILED")

    def end_run(self, status="FINISHED"):
        """End the open run (if any) with ``status``: FINISHED, FAILED or KILLED."""
        if self.running:
            self.running = False
            self.client.set_terminated(self.run_id, status)


class TensorBoardLogger(Callback):
    """Write a fit's numbers as TensorBoard event files in ``log_dir`` (a local directory; ``tensorboard --logdir``):

    - ``epoch/<name>`` per epoch for the loss, metrics and val_* values (step: the epoch, from 0);
    - ``round/loss`` per averaging round (distributed fits; step: rounds done);
    - at the end, where the fit collected stats, per layer ``weight_norm/<layer>``, ``update_ratio/<layer>`` (the
      mean update per round against the weights' norm) and ``grad_norm/<layer>`` (the workers' last gradients) at
      the rounds sampled (step: rounds done).

    Each fit writes a new event file; give each run a directory of its own to see them apart."""

    def __init__(self, log_dir):
        _require("tensorboardX", "TensorBoardLogger")
        self.log_dir = os.fspath(log_dir)
        self.writer = None

    def reads_model_at_round(self, round):
        return False

    def reads_model_at_epoch_end(self):   # per-epoch metrics only; the model is read at the end of the fit
        return False

    def on_train_begin(self, logs=None):
        from tensorboardX import SummaryWriter
        self.close()
        self.writer = SummaryWriter(self.log_dir)

    def on_round_end(self, round, logs=None):
        if "loss" in (logs or {}):
            self.writer.add_scalar("round/loss", float(logs["loss"]), round + 1)

    def on_epoch_end(self, epoch, logs=None):
        for k, v in scalars(logs).items():
            self.writer.add_scalar(f"epoch/{k}", v, epoch)
        self.writer.flush()   # an epoch is worth showing while the fit runs

    def on_train_end(self, logs=None):
        stats = _stats(self.model)
        for sample in stats.layers if stats is not None else ():
            for name, entry in sample["layers"].items():
                self.writer.add_scalar(f"weight_norm/{name}", entry["weight_norm"], sample["round"] + 1)
                if entry.get("ratio") is not None:
                    self.writer.add_scalar(f"update_ratio/{name}", entry["ratio"], sample["round"] + 1)
                if entry.get("grad_norm") is not None:
                    self.writer.add_scalar(f"grad_norm/{name}", entry["grad_norm"], sample["round"] + 1)
        self.close()

    def on_train_failed(self, error):
        self.close()

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
