"""What ``fit`` and ``transform`` do, given checked Params: build the network from the spec, train it with
SparkTrainer, and add the prediction columns in the types Spark's evaluators read."""
import json
import os
import time
import uuid

import numpy as np

from ..errors import DataError
from ..spark import ParameterAveraging, SparkTrainer, data
from ..spark import columns as C
from .params import check_column, checked
from .summary import DeepTrainingSummary

HIDDEN_UNITS = 64


def fit(estimator, df, kind):
    """(compiled, trained sparkdl model, History, DeepTrainingSummary) for ``kind`` "classifier"/"regressor"."""
    who = type(estimator).__name__
    p = checked(estimator)
    check_column(df, "featuresCol", p["featuresCol"], who, "training DataFrame")
    check_column(df, "labelCol", p["labelCol"], who, "training DataFrame")
    network = build(p, df, kind, who)
    sc = df.sparkSession.sparkContext
    master = ParameterAveraging(num_workers=p["numWorkers"] or None, batch_size_per_worker=p["batchSize"],
                                averaging_frequency=p["averagingFrequency"], mode=p["mode"], seed=p["seed"],
                                export_dir=p["exportDir"] or None)
    train, validation, callbacks = df, None, []
    if p["validationFraction"] > 0:
        train, validation = df.randomSplit([1 - p["validationFraction"], p["validationFraction"]], seed=p["seed"])
    if p["earlyStoppingPatience"]:
        from ..train import EarlyStopping
        callbacks.append(EarlyStopping("val_loss", patience=p["earlyStoppingPatience"], restore_best_weights=True))
    callbacks += trackers(p, master, estimator.uid)
    start = time.time()
    history = SparkTrainer(network, master).fit(train, p["featuresCol"], p["labelCol"], epochs=p["epochs"],
                                                validation_df=validation, callbacks=callbacks, verbose=0)
    summary = DeepTrainingSummary(history, time.time() - start, p["numWorkers"] or sc.defaultParallelism,
                                  stopped_early=len(history.epoch) < p["epochs"])
    return network, history, summary


def trackers(p, master, uid):
    """The tracking callbacks Params mlflowTrackingUri and tensorboardDir ask for. TensorBoard gets a subdirectory
    per fit (a run of its own: a CrossValidator's fits share the estimator's uid)."""
    from ..train import MLflowLogger, TensorBoardLogger
    out = []
    if p["mlflowTrackingUri"]:
        params = {k: v for k, v in p.items() if k != "modelSpec"}   # the network is logged as model.*
        out.append(MLflowLogger(p["mlflowTrackingUri"], run_name=uid, params={**params, "master": vars(master)}))
    if p["tensorboardDir"]:
        run = f"{uid}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        out.append(TensorBoardLogger(os.path.join(p["tensorboardDir"], run)))
    return out


def build(p, df, kind, who):
    """The compiled network: from ``modelSpec`` (input_shape filled in from the data when left out) or the
    default MLP, checked against the loss and the features length."""
    from .. import optim
    from ..nn import Dense, Sequential, model_from_config
    loss = p["loss"]
    classes = not p["modelSpec"] and kind != "regressor" and loss != "binary_crossentropy"
    n_features, n_classes = _shape_of(df, p["featuresCol"], p["labelCol"] if classes else None, who)
    if p["modelSpec"]:
        try:
            spec = json.loads(p["modelSpec"])
            config = spec["config"]
            if spec.get("class_name") == "Sequential" and not config.get("input_shape"):
                config["input_shape"] = [n_features]
            network = model_from_config(spec, seed=p["seed"]).build()
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{who}: Param modelSpec is not a usable sparkdl model spec ({type(e).__name__}: {e}). "
                             f"Received: modelSpec={_short(p['modelSpec'])}") from None
    else:
        if kind == "regressor":
            out = Dense(1)
        elif loss == "binary_crossentropy":
            out = Dense(1, activation="sigmoid")
        else:
            out = Dense(n_classes, activation="softmax")
        network = Sequential([Dense(HIDDEN_UNITS, activation="relu"), out], input_shape=(n_features,),
                             seed=p["seed"]).build()
    if not hasattr(network, "input_shape") or isinstance(network.input_shape, dict):
        raise ValueError(f"{who}: Param modelSpec must describe a model with a single input")
    if int(np.prod(network.input_shape)) != n_features:
        raise ValueError(f"{who}: Param modelSpec: the model's input_shape {tuple(network.input_shape)} needs "
                         f"{int(np.prod(network.input_shape))} features per row, but column {p['featuresCol']!r} "
                         f"(Param featuresCol) has {n_features}")
    _check_outputs(tuple(network.output_shape), loss, kind, who)
    optimizer = optim.get({"class_name": p["optimizer"], "config": {"learning_rate": p["learningRate"]}})
    return network.compile(optimizer, loss, ["accuracy"] if kind == "classifier" else ["mse"])


def _short(text, limit=200):
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _check_outputs(shape, loss, kind, who):
    if loss == "sparse_categorical_crossentropy" and not (len(shape) == 1 and shape[0] >= 2):
        rule = "one output per class (at least 2, softmax)"
    elif loss == "binary_crossentropy" and shape != (1,):
        rule = "one output (the probability of class 1, sigmoid)"
    elif kind == "regressor" and int(np.prod(shape)) != 1:
        rule = "one output"
    else:
        return
    raise ValueError(f"{who}: Param modelSpec: with loss={loss!r} the model needs {rule}; its output shape is "
                     f"{shape}")


def _shape_of(df, features_col, label_col, who):
    """(the features length of the first row, the number of classes or None where ``label_col`` is None): the
    classes from the label's ML attribute (StringIndexer writes it), else max label + 1, at least 2. One Spark
    job: a small one for the length alone, one pass over the rows where the labels' maximum is needed too."""
    role = "training DataFrame"
    classes = None if label_col is None else _nominal_classes(df, label_col)
    # not pyspark's Columns or SQL (sparkdl.spark.columns says why)
    size = C.fn("size", C.col(data.X))
    if label_col is None or classes is not None:
        row = C.select(data.prepare(df, features_col, role=role), [(None, size)]).first()
        rows, length = (0, None) if row is None else (1, row[0])
    else:
        prepared = data.prepare(df, features_col, label_col, role=role)
        rows, length, top = C.select(prepared, [(None, C.fn("count", C.lit(1))), (None, C.fn("first", size)),
                                                (None, C.fn("max", C.col(data.Y)))]).first()
        if rows and top is None:
            raise ValueError(f"{who}: Param labelCol: column {label_col!r} holds no labels")
        classes = None if top is None else int(top) + 1
    if not rows:
        raise DataError(role, features_col, f"the DataFrame is empty ({who})")
    if length is None or length < 1:
        raise DataError(role, features_col, f"its first row is null or empty ({who}: Param featuresCol)")
    return int(length), None if classes is None else max(classes, 2)


def _nominal_classes(df, label_col):
    """The number of classes the label's ML attribute names (StringIndexer's), or None."""
    attr = df.schema[label_col].metadata.get("ml_attr", {}) if label_col in df.columns else {}
    if attr.get("type") == "nominal" and (attr.get("vals") or attr.get("num_vals")):
        return len(attr["vals"]) if attr.get("vals") else int(attr["num_vals"])
    return None


# -- transform ----------------------------------------------------------------------------------------------
_TMP_PROB, _TMP_PRED = "__sparkdl_probability", "__sparkdl_prediction"


def _col(name):
    from pyspark.sql import functions as F
    return F.col("`" + name.replace("`", "``") + "`")


def transform(model, df, outputs):
    """``df`` plus the output columns: ``outputs`` maps Param name -> column name ("" leaves one out) for
    predictionCol, and for a classifier probabilityCol and rawPredictionCol."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F
    who = type(model).__name__
    if model._network is None:
        raise RuntimeError(f"{who} has no network; fit an estimator or load a saved model")
    features_col = model.getFeaturesCol()
    check_column(df, "featuresCol", features_col, who, "prediction DataFrame")
    outputs = {k: v for k, v in outputs.items() if v}
    for param, column in outputs.items():
        if column in df.columns:
            raise ValueError(f"{who}: Param {param}: output column {column!r} already exists in the DataFrame")
    if not outputs:
        return df
    predicted = SparkTrainer(model._network).predict(df, features_col, output_col=_TMP_PRED,
                                                     probability_col=_TMP_PROB)
    cols = [_col(c) for c in df.columns]
    if "rawPredictionCol" in outputs:   # log-probabilities; 0 is clamped so log stays finite
        logp = F.transform(_col(_TMP_PROB), lambda v: F.log(F.greatest(v.cast("double"), F.lit(1e-300))))
        cols.append(array_to_vector(logp).alias(outputs["rawPredictionCol"]))
    if "probabilityCol" in outputs:
        cols.append(array_to_vector(_col(_TMP_PROB)).alias(outputs["probabilityCol"]))
    if "predictionCol" in outputs:
        cols.append(_col(_TMP_PRED).cast("double").alias(outputs["predictionCol"]))
    return predicted.select(*cols)


def predict_one(network, value):
    """The model's outputs for one feature vector, on the driver: class probabilities for a classifier
    (two columns for a single sigmoid output), the raw output otherwise."""
    x = np.asarray(value.toArray() if hasattr(value, "toArray") else value, np.float32)
    out = network.predict(x.reshape((1,) + tuple(network.input_shape)))
    if network.loss is None or network.loss.kind == "regression":
        return out.reshape(-1)
    probs = np.asarray(network.probabilities(out), np.float64).reshape(-1)
    return np.array([1 - probs[0], probs[0]]) if probs.size == 1 else probs
