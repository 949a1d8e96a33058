"""The training summary of a fitted DeepClassificationModel / DeepRegressionModel, in Spark's style."""


class DeepTrainingSummary:
    """What the last ``fit`` did. Like Spark's training summaries it lives with the fitted model and is not
    saved with it (``model.hasSummary`` is False after ``load``).

    objectiveHistory: the training loss of each epoch.
    validationHistory: the validation loss of each epoch (empty without ``validationFraction``).
    metricHistory: every logged value per epoch (``loss``, ``accuracy``, ``val_loss``, ...).
    totalIterations: epochs run (fewer than ``epochs`` when early stopping stopped the fit).
    totalRounds: parameter-averaging rounds run.
    stoppedEarly: whether early stopping ended the fit.
    trainingTime: seconds the fit took on the driver.
    numWorkers: training tasks.
    stats: per-round timings (sparkdl.train.stats.TrainingStats: ``.summary()``, ``.to_html(path)``), or None.
    """

    def __init__(self, history, training_time, num_workers, stopped_early):
        self._history = history
        self.trainingTime = float(training_time)
        self.numWorkers = int(num_workers)
        self.stoppedEarly = bool(stopped_early)

    @property
    def metricHistory(self):
        return {k: list(v) for k, v in self._history.history.items()}

    @property
    def objectiveHistory(self):
        return list(self._history.history.get("loss", []))

    @property
    def validationHistory(self):
        return list(self._history.history.get("val_loss", []))

    @property
    def totalIterations(self):
        return len(self._history.epoch)

    @property
    def totalRounds(self):
        return len(getattr(self._history, "rounds", []))

    @property
    def stats(self):
        return getattr(self._history, "stats", None)

    def __repr__(self):
        loss = self.objectiveHistory[-1] if self.objectiveHistory else float("nan")
        return (f"DeepTrainingSummary(totalIterations={self.totalIterations}, totalRounds={self.totalRounds}, "
                f"final loss={loss:.4g}, trainingTime={self.trainingTime:.1f}s)")
