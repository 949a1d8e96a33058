"""Inference on executors: the broadcast model, deserialized once per Python worker, and ``predict``, which adds a
model's predictions to a DataFrame (SparkTrainer.predict)."""
import uuid

import numpy as np
import pyarrow as pa

from .. import io
from ..errors import DataError
from . import data


def predict(model, df, features_col, output_col, probability_col, batch_size):
    """``df`` with ``model``'s predictions added by ``mapInArrow`` (see SparkTrainer.predict)."""
    from pyspark.sql.types import ArrayType, DoubleType, FloatType, IntegerType, StructField, StructType
    if not hasattr(model, "input_shape"):
        raise ValueError("SparkTrainer.predict needs a model with a single input")
    kind = model.loss.kind if model.loss is not None else "regression"
    n_out = int(np.prod(model.output_shape))
    for c in (output_col, probability_col):
        if c in df.columns:
            raise ValueError(f"output column {c!r} already exists in the DataFrame; choose another name")
    what = "prediction DataFrame"
    if data.features_are_floats(df, features_col):   # read as they are: no second copy of them to Python
        prepared, column = df, features_col
    else:
        prepared, column = data.prepare(df, features_col, keep=True, role=what), data.X
    data.check_sample(prepared, int(np.prod(model.input_shape)), features_col, what, column=column)
    fields = list(df.schema.fields)
    if kind in ("multiclass", "binary"):
        fields += [StructField(probability_col, ArrayType(FloatType(), False)),
                   StructField(output_col, IntegerType())]
    elif n_out == 1:
        fields.append(StructField(output_col, DoubleType()))
    else:
        fields.append(StructField(output_col, ArrayType(FloatType(), False)))
    schema = StructType(fields)
    names = [f.name for f in df.schema.fields]
    sc = df.sparkSession.sparkContext
    bc, key = sc.broadcast(io.model_to_bytes(model)), uuid.uuid4().hex
    n_features, input_shape = int(np.prod(model.input_shape)), tuple(model.input_shape)

    def run(batches):
        from sparkdl.spark.inference import cached_model
        m = cached_model(key, bc)
        for b in batches:
            x, _ = data.batch_to_numpy(b, n_features, False, what, features_col, column=column)
            if not np.isfinite(x).all():
                bad = int((~np.isfinite(x)).any(axis=1).sum())
                raise DataError(what, data.column_name(features_col), f"{bad} of {len(x)} rows of a batch hold "
                                                                      f"NaN or infinite values")
            out = m.predict(x.reshape((-1,) + input_shape), batch_size)
            cols = [b.column(b.schema.get_field_index(n)) for n in names]
            if kind in ("multiclass", "binary"):
                probs = np.asarray(m.probabilities(out), np.float32).reshape(len(x), -1)
                if kind == "binary" and probs.shape[1] == 1:
                    probs = np.concatenate([1 - probs, probs], axis=1)
                cols += [data.float_lists(probs), pa.array(probs.argmax(axis=1).astype(np.int32))]
            elif n_out == 1:
                cols.append(pa.array(out.reshape(-1).astype(np.float64)))
            else:
                cols.append(data.float_lists(out))
            yield pa.record_batch(cols, names=names + [f.name for f in fields[len(names):]])

    return prepared.mapInArrow(run, schema)


_MODELS = {}


def cached_model(key, bc):
    """The broadcast model, deserialized once per Python worker (not per task or batch)."""
    model = _MODELS.get(key)
    if model is None:
        _MODELS.clear()
        model = _MODELS[key] = io.model_from_bytes(bc.value)
    return model
