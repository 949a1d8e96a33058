"""The Params of DeepClassifier / DeepRegressor and their models, and the checks ``fit`` runs on them.

Type conversion happens when a Param is set (pyspark's TypeConverters); value checks happen at ``fit``, so a
ParamGridBuilder value or a loaded Param is checked the same way, with a message naming the Param.
"""
import json
import math
import zlib

from pyspark.ml.base import _PredictorParams
from pyspark.ml.classification import _ClassifierParams
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasProbabilityCol, HasSeed

from .. import optim
from ..dist.modes import choices

CLASSIFIER_LOSSES = ("sparse_categorical_crossentropy", "binary_crossentropy")
REGRESSOR_LOSSES = ("mse", "mae", "huber", "mean_squared_error", "mean_absolute_error")
OPTIMIZERS = tuple(sorted(name.lower() for name in optim.OPTIMIZERS))   # what optim.get takes by name
MODES = choices()


def _to_spec(value):
    """A model spec as a JSON string; a sparkdl model or a config dict is converted."""
    if isinstance(value, str):
        return value
    if hasattr(value, "to_json") and hasattr(value, "get_config"):
        return value.to_json()
    if isinstance(value, dict):
        return json.dumps(value)
    raise TypeError(f"modelSpec must be a sparkdl model, its JSON string (model.to_json()) or that dict. "
                    f"Received: {type(value).__name__}")


def _param(name, doc, converter):
    return Param(Params._dummy(), name, doc, typeConverter=converter)


class _DeepParams(_PredictorParams, HasSeed):
    """Params shared by the estimators and their models (a model keeps the Params it was fitted with)."""

    modelSpec = _param("modelSpec", "the network as sparkdl model JSON (model.to_json()); input_shape may be "
                       "left out and is then the features length. Empty: a default MLP", _to_spec)
    loss = _param("loss", "the loss, a sparkdl loss name", TypeConverters.toString)
    optimizer = _param("optimizer", f"the optimizer, one of {OPTIMIZERS}", TypeConverters.toString)
    learningRate = _param("learningRate", "the optimizer's learning rate (> 0)", TypeConverters.toFloat)
    epochs = _param("epochs", "passes over the training data (>= 1)", TypeConverters.toInt)
    batchSize = _param("batchSize", "minibatch size in each worker (>= 1)", TypeConverters.toInt)
    averagingFrequency = _param("averagingFrequency", "minibatches each worker fits between two parameter "
                                "averagings (>= 1)", TypeConverters.toInt)
    numWorkers = _param("numWorkers", "training tasks (>= 1); 0: the SparkContext's default parallelism",
                        TypeConverters.toInt)
    mode = _param("mode", "'auto' (barrier where the cluster can run all the workers now, else jobs), 'jobs' (one "
                  "Spark job per averaging round) or 'barrier' (one barrier stage per fit)", TypeConverters.toString)
    validationFraction = _param("validationFraction", "share of the training rows held out to compute val_loss "
                                "each epoch, in [0, 1)", TypeConverters.toFloat)
    earlyStoppingPatience = _param("earlyStoppingPatience", "stop after this many epochs without a lower "
                                   "validation loss and keep the best weights; 0: never stop early (needs "
                                   "validationFraction > 0)", TypeConverters.toInt)
    exportDir = _param("exportDir", "jobs mode: where training shards go (local path or Hadoop URI, shared by "
                       "all hosts on a cluster); empty: as ParameterAveraging's export_dir (spark.sparkdl.exportDir, ...)", TypeConverters.toString)
    mlflowTrackingUri = _param("mlflowTrackingUri", "log each fit as an MLflow run (params, per-epoch metrics, the "
                               "model file and stats.html) to this tracking server or store; empty: off. Needs "
                               "pip install sparkdl[tracking]", TypeConverters.toString)
    tensorboardDir = _param("tensorboardDir", "write TensorBoard event files here (a local directory on the driver), "
                            "a new subdirectory per fit; empty: off. Needs pip install sparkdl[tracking]",
                            TypeConverters.toString)

    _default_loss = None

    def __init__(self, *args):
        super().__init__(*args)
        # HasSeed's default is hash(class name), which Python randomizes per process
        self._setDefault(modelSpec="", loss=self._default_loss, optimizer="adam", learningRate=0.01, epochs=10,
                         batchSize=32, averagingFrequency=5, numWorkers=0, mode="auto", validationFraction=0.0,
                         earlyStoppingPatience=0, exportDir="", mlflowTrackingUri="", tensorboardDir="",
                         seed=zlib.crc32(type(self).__name__.encode()))

    def getModelSpec(self):
        return self.getOrDefault(self.modelSpec)

    def getLoss(self):
        return self.getOrDefault(self.loss)

    def getOptimizer(self):
        return self.getOrDefault(self.optimizer)

    def getLearningRate(self):
        return self.getOrDefault(self.learningRate)

    def getEpochs(self):
        return self.getOrDefault(self.epochs)

    def getBatchSize(self):
        return self.getOrDefault(self.batchSize)

    def getAveragingFrequency(self):
        return self.getOrDefault(self.averagingFrequency)

    def getNumWorkers(self):
        return self.getOrDefault(self.numWorkers)

    def getMode(self):
        return self.getOrDefault(self.mode)

    def getValidationFraction(self):
        return self.getOrDefault(self.validationFraction)

    def getEarlyStoppingPatience(self):
        return self.getOrDefault(self.earlyStoppingPatience)

    def getExportDir(self):
        return self.getOrDefault(self.exportDir)

    def getMlflowTrackingUri(self):
        return self.getOrDefault(self.mlflowTrackingUri)

    def getTensorboardDir(self):
        return self.getOrDefault(self.tensorboardDir)


class _DeepClassifierParams(HasProbabilityCol, _ClassifierParams, _DeepParams):
    _default_loss = "sparse_categorical_crossentropy"
    losses = CLASSIFIER_LOSSES


class _DeepRegressorParams(_DeepParams):
    _default_loss = "mse"
    losses = REGRESSOR_LOSSES


class _DeepSetters:
    """Estimator setters for the training Params (column setters come from pyspark's Predictor)."""

    def setModelSpec(self, value):
        """A sparkdl model (its architecture is taken, not its weights), its JSON string, or ""."""
        return self._set(modelSpec=value)

    def setLoss(self, value):
        return self._set(loss=value)

    def setOptimizer(self, value):
        return self._set(optimizer=value)

    def setLearningRate(self, value):
        return self._set(learningRate=value)

    def setEpochs(self, value):
        return self._set(epochs=value)

    def setBatchSize(self, value):
        return self._set(batchSize=value)

    def setAveragingFrequency(self, value):
        return self._set(averagingFrequency=value)

    def setNumWorkers(self, value):
        return self._set(numWorkers=value)

    def setMode(self, value):
        return self._set(mode=value)

    def setSeed(self, value):
        return self._set(seed=value)

    def setValidationFraction(self, value):
        return self._set(validationFraction=value)

    def setEarlyStoppingPatience(self, value):
        return self._set(earlyStoppingPatience=value)

    def setExportDir(self, value):
        return self._set(exportDir=value)

    def setMlflowTrackingUri(self, value):
        return self._set(mlflowTrackingUri=value)

    def setTensorboardDir(self, value):
        return self._set(tensorboardDir=value)


def checked(instance):
    """The Params as a plain dict, every value checked; a ValueError names the Param and the value."""
    who = type(instance).__name__
    p = {param.name: instance.getOrDefault(param) for param in instance.params if instance.isDefined(param)}

    def require(name, test, rule):
        try:
            ok = p.get(name) is not None and test(p[name])
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"{who}: Param {name} must be {rule}. Received: {name}={p.get(name)!r}")

    require("epochs", lambda v: v >= 1, "an int >= 1")
    require("batchSize", lambda v: v >= 1, "an int >= 1 (the minibatch size in each worker)")
    require("averagingFrequency", lambda v: v >= 1, "an int >= 1")
    require("numWorkers", lambda v: v >= 0, "an int >= 1, or 0 for the SparkContext's default parallelism")
    require("learningRate", lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
    require("validationFraction", lambda v: 0 <= v < 1, "in [0, 1)")
    require("earlyStoppingPatience", lambda v: v >= 0, "an int >= 0 (0: no early stopping)")
    require("loss", lambda v: v in instance.losses, f"one of {list(instance.losses)} for {who}")
    require("optimizer", lambda v: v.lower() in OPTIMIZERS, f"one of {list(OPTIMIZERS)}")
    require("mode", lambda v: v in MODES, f"one of {list(MODES)}")
    require("seed", lambda v: isinstance(v, int), "an int")
    for name in ("featuresCol", "labelCol", "predictionCol"):
        require(name, lambda v: isinstance(v, str) and v != "", "a non-empty column name")
    if p["earlyStoppingPatience"] and not p["validationFraction"]:
        raise ValueError(f"{who}: Param earlyStoppingPatience={p['earlyStoppingPatience']} needs a validation "
                         f"split; set validationFraction > 0. Received: validationFraction={p['validationFraction']}")
    p["seed"] = p["seed"] % 2 ** 32   # numpy seeds are non-negative
    return p


def check_column(df, param, column, who, role):
    """``column`` (the value of Param ``param``: featuresCol or labelCol) of the ``role`` DataFrame exists and has a
    type the data path reads; the data path's own check, with the Param named."""
    from ..errors import DataError
    from ..spark import data
    check = data.features_expr if param == "featuresCol" else data.label_expr
    try:
        check(df, column, role)
    except DataError as e:
        raise DataError(e.role, e.column, f"{e.problem} ({who}: Param {param})") from None
