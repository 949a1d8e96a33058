"""DataFrame -> Arrow -> numpy: one features column of array<float> and one label column, checked in one pass.

Whatever the features are (a Spark ML vector, array<float|double|int>, one or several numeric columns) they
become one ``array<float>`` column; an Arrow batch of it turns into a (rows, features) float32 array with no
per-row Python work (``ListArray.values`` is the contiguous float buffer). The executor reshapes it to the
model's input shape.
"""
import contextlib

import numpy as np
import pyarrow as pa

from ..errors import DataError, from_task_failure
from . import columns as C
from .values import find_bad_values, show as _show

X, Y = "__sparkdl_x", "__sparkdl_y"   # the prepared columns
ORDER = "__sparkdl_order"   # where present, a partition's rows are put in the order of this key (ParameterAveraging.workers_for)


def _columns(features_col):
    return [features_col] if isinstance(features_col, str) else list(features_col)


def column_name(features_col):
    """How errors name the features: the column, or the list of numeric columns."""
    return features_col if isinstance(features_col, str) else f"features {list(features_col)}"


def features_expr(df, features_col, role="DataFrame"):
    """array<float> of ``features_col`` (a column name or a list of numeric column names): an expression of
    sparkdl.spark.columns, or a pyspark Column where the features are Spark ML vectors (no SQL function converts
    them)."""
    from pyspark.sql.types import ArrayType, NumericType

    cols = _columns(features_col)
    if not cols:
        raise ValueError("features_col must name a column or a non-empty list of numeric columns. Received: []")
    for c in cols:
        if c not in df.columns:
            raise DataError(role, c, f"no such column; the DataFrame's columns are {df.columns}")
    if len(cols) > 1:
        bad = [(c, df.schema[c].dataType.simpleString()) for c in cols
               if not isinstance(df.schema[c].dataType, NumericType)]
        if bad:
            raise DataError(role, column_name(cols), f"feature columns must be numeric; found {bad}")
        return C.fn("array", *(C.cast(C.col(c), "float") for c in cols))
    c = cols[0]
    dt = df.schema[c].dataType
    if _is_vector(dt):   # converted only where not null: the conversion fails on a null vector
        from pyspark.ml.functions import vector_to_array
        from pyspark.sql import functions as F
        return F.when(F.col(C.quoted(c)).isNotNull(), vector_to_array(F.col(C.quoted(c)), "float32"))
    if isinstance(dt, ArrayType) and isinstance(dt.elementType, NumericType):
        return C.cast(C.col(c), "array<float>")
    if isinstance(dt, NumericType):
        return C.fn("array", C.cast(C.col(c), "float"))
    raise DataError(role, c, f"must be a Spark ML vector, an array of numbers or numeric; found type "
                             f"{dt.simpleString()}")


def _is_vector(dt):
    """Whether ``dt`` is Spark ML's VectorUDT, told without importing pyspark.ml (0.2-0.35 s of a first fit
    whose features are not vectors)."""
    return any(t.__name__ == "VectorUDT" and t.__module__.startswith("pyspark.ml") for t in type(dt).__mro__)


def features_are_floats(df, features_col):
    """Whether ``features_col`` is one column of array<float> already (preparing it is no work)."""
    from pyspark.sql.types import ArrayType, FloatType
    if not isinstance(features_col, str) or features_col not in df.columns:
        return False
    dt = df.schema[features_col].dataType
    return isinstance(dt, ArrayType) and isinstance(dt.elementType, FloatType)


def label_expr(df, label_col, role="DataFrame"):
    """The label as double: an expression of sparkdl.spark.columns."""
    from pyspark.sql.types import NumericType
    if label_col not in df.columns:
        raise DataError(role, label_col, f"no such column; the DataFrame's columns are {df.columns}")
    dt = df.schema[label_col].dataType
    if not isinstance(dt, NumericType):
        raise DataError(role, label_col, f"labels must be numeric; found type {dt.simpleString()}")
    return C.cast(C.col(label_col), "double")


def prepare(df, features_col, label_col=None, keep=False, role="DataFrame"):
    """The DataFrame with the prepared columns X (array<float>) and Y (double), plus the original ones if
    ``keep`` (prediction passes them through), built as sparkdl.spark.columns builds them (0.1-0.5 s less of an
    application's first fit than pyspark's Columns or SQL)."""
    x = features_expr(df, features_col, role)
    y = [] if label_col is None else [(Y, label_expr(df, label_col, role))]
    if isinstance(x, tuple):
        return C.select(df, [(X, x)] + y, keep)
    with_x = df.select("*", x.alias(X))   # a pyspark Column: Spark ML vectors
    return C.select(with_x, y, keep=True) if keep else C.select(with_x, [(X, C.col(X))] + y)


def _example(prepared, condition, features_col, label_col):
    """', e.g. features=[...], label=...' for the first row where ``condition`` holds (one more small job, run
    only when a check failed)."""
    has_y = Y in prepared.columns
    row = prepared.where(condition).select(X, *([Y] if has_y else [])).first()
    if row is None:
        return ""
    text = f"{column_name(features_col)}={_show(row[0])}"
    if has_y:
        text += f", {label_col}={_show(row[1])}"
    return f"; e.g. {text}"


def validate(prepared, n_features, loss_kind=None, num_classes=None, features_col="features",
             label_col="label", what="DataFrame"):
    """One aggregation job over the prepared DataFrame; raises DataError naming the DataFrame's role (``what``),
    the column, what was expected and what was found, how many rows are wrong and an example. Returns the row
    count. A fit checks its data where it converts it (sparkdl.spark.prepared) and runs this only for the message
    once something is wrong."""
    from pyspark.sql import functions as F
    x, has_y = F.col(X), Y in prepared.columns
    count_if = lambda cond: F.sum(F.when(cond, 1).otherwise(0))
    wrong_len = x.isNotNull() & (F.size(x) != n_features)
    has_null = x.isNotNull() & F.exists(x, lambda v: v.isNull())
    nonfinite_x = x.isNotNull() & F.exists(x, lambda v: F.isnan(v) | (F.abs(v) == float("inf")))
    aggs = [F.count(F.lit(1)).alias("rows"), count_if(x.isNull()).alias("null_x"),
            count_if(wrong_len).alias("wrong_len"),
            F.min(F.when(wrong_len, F.size(x))).alias("min_len"),   # of the rows of a wrong length
            F.max(F.when(wrong_len, F.size(x))).alias("max_len"),
            count_if(has_null).alias("null_values"), count_if(nonfinite_x).alias("nonfinite_x")]
    if has_y:
        y = F.col(Y)
        aggs += [count_if(y.isNull()).alias("null_y"), count_if(F.isnan(y) | (F.abs(y) == float("inf"))).alias("nonfinite_y"),
                 F.min(y).alias("min_y"), F.max(y).alias("max_y"), count_if(y != F.floor(y)).alias("fractional_y")]
        if loss_kind == "multiclass":
            aggs.append(count_if((y < 0) | (y >= num_classes)).alias("out_of_range"))
        elif loss_kind == "binary":
            aggs.append(count_if((y < 0) | (y > 1)).alias("out_of_range"))
    r = prepared.agg(*aggs).first().asDict()
    rows = r["rows"]
    fc = column_name(features_col)
    if rows == 0:
        raise DataError(what, fc, "no rows: the DataFrame is empty, and training or evaluating needs one")

    def fail(column, count, problem, condition):
        raise DataError(what, column, f"{count} of {rows} rows {problem}"
                                      f"{_example(prepared, condition, features_col, label_col)}")

    expected = f"{n_features} numbers per row, the model's input"
    if r["null_x"]:
        fail(fc, r["null_x"], f"are null (expected {expected})", x.isNull())
    if r["wrong_len"]:
        found = r["min_len"] if r["min_len"] == r["max_len"] else f"{r['min_len']} to {r['max_len']}"
        fail(fc, r["wrong_len"], f"have {found} values (expected {expected})", wrong_len)
    if r["null_values"]:
        fail(fc, r["null_values"], "hold null values", has_null)
    if r["nonfinite_x"]:
        fail(fc, r["nonfinite_x"], "hold NaN or infinite values", nonfinite_x)
    if not has_y:
        return rows
    y = F.col(Y)
    if r["null_y"]:
        fail(label_col, r["null_y"], "are null", y.isNull())
    if r["nonfinite_y"]:
        fail(label_col, r["nonfinite_y"], "are NaN or infinite", F.isnan(y) | (F.abs(y) == float("inf")))
    if loss_kind == "multiclass":
        if r["fractional_y"]:
            fail(label_col, r["fractional_y"], "are not integers (labels must be integer class indices)",
                 y != F.floor(y))
        if r["out_of_range"]:
            fail(label_col, r["out_of_range"], f"are outside [0, {num_classes - 1}] (the model has {num_classes} "
                                               f"outputs; labels found in [{r['min_y']:g}, {r['max_y']:g}])",
                 (y < 0) | (y >= num_classes))
    elif loss_kind == "binary" and r["out_of_range"]:
        fail(label_col, r["out_of_range"], f"are outside [0, 1] (binary targets; found values in "
                                           f"[{r['min_y']:g}, {r['max_y']:g}])", (y < 0) | (y > 1))
    return rows


def check_sample(prepared, n_features, features_col, what, rows=16, column=X):
    """The first ``rows`` rows' features (a cheap job: Spark reads only what it needs): for prediction, whose
    DataFrame is not scanned before the user's own action."""
    sizes = [r[0] for r in C.select(prepared, [(None, C.fn("size", C.col(column)))]).limit(rows).collect()]
    fc = column_name(features_col)
    nulls = sum(1 for v in sizes if v is None or v < 0)
    if nulls:
        raise DataError(what, fc, f"{nulls} of the first {len(sizes)} rows are null (expected {n_features} numbers "
                                  f"per row, the model's input)")
    bad = sorted({v for v in sizes if v != n_features})
    if bad:
        raise DataError(what, fc, f"rows of {bad} values among the first {len(sizes)} (expected {n_features} "
                                  f"numbers per row, the model's input)")


def batch_to_numpy(batch, n_features, with_labels=True, what="DataFrame", features_col="features", found=None,
                   column=X):
    """(x float32 (rows, n_features), y float64 (rows,) or None) from an Arrow batch of prepared columns,
    without per-row Python: the list column's child buffer is already row-major. A malformed row is a DataError
    naming ``what`` (the DataFrame's role) and ``features_col``. With a dict ``found``, rows holding null, NaN or
    infinite values are counted into it (sparkdl.errors.BadValues reads it): one pass over the values. ``column``:
    where the features are (default: the prepared column)."""
    col = batch.column(batch.schema.get_field_index(column))
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_binary(col.type):   # blocks of packed rows (sparkdl.spark.prepared)
        return _unpacked(batch, col, n_features, with_labels, found)
    n = len(col)
    if col.null_count:
        raise DataError(what, column_name(features_col), f"{col.null_count} of {n} rows of a batch are null "
                                                         f"(expected {n_features} numbers per row)")
    offsets = col.offsets.to_numpy()
    values = col.values.to_numpy(zero_copy_only=False)
    start = offsets[0]
    if offsets[-1] - start != n * n_features or (n and (np.diff(offsets) != n_features).any()):
        raise DataError(what, column_name(features_col), f"a batch has rows of "
                                                         f"{np.unique(np.diff(offsets)).tolist()} values, not "
                                                         f"{n_features} (the model's input)")
    x = np.asarray(values[start:start + n * n_features], np.float32).reshape(n, n_features)
    y = None
    if with_labels:
        ycol = batch.column(batch.schema.get_field_index(Y))
        y = ycol.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    if found is not None:
        find_bad_values(col.values, start, x, y, found)
    return x, y


def _unpacked(batch, col, n_features, with_labels, found):
    from .blocks import unpack
    x = unpack(col, n_features, np.float32)
    y = None
    if with_labels:
        ycol = batch.column(batch.schema.get_field_index(Y))
        y = unpack(ycol.combine_chunks() if isinstance(ycol, pa.ChunkedArray) else ycol, 1, np.float64).reshape(-1)
    if found is not None:
        find_bad_values(None, 0, x, y, found)
    return x, y


@contextlib.contextmanager
def task_errors():
    """A DataError that a task raised reaches the caller as itself, not as the Spark failure that wraps it."""
    try:
        yield
    except DataError:
        raise
    except Exception as e:
        found = from_task_failure(e)
        if found is None:
            raise
        raise found from None


def partition_to_numpy(batches, n_features, label_dtype, input_shape=None, budget=None, batch_size=1, directory=None,
                       found=None, stage=None):
    """(x float32 (rows, *input_shape), y of ``label_dtype``) for a whole partition of prepared Arrow batches, in
    the order of their ORDER column where they have one: in memory, or past ``budget`` bytes a memory-mapped file
    in ``directory`` (sparkdl.dist.spill). ``found``: see ``batch_to_numpy``; ``stage``: see ``Spiller``."""
    from ..dist.spill import Spiller
    spiller = Spiller(n_features, label_dtype, budget, batch_size, directory, stage)
    keys = []
    for b in batches:
        spiller.add(*batch_to_numpy(b, n_features, found=found))
        if ORDER in b.schema.names:
            # a copy: a view would keep the batch's whole Arrow message (its features too) alive
            keys.append(b.column(b.schema.get_field_index(ORDER)).to_numpy().copy())
    b = None   # the last incoming batch, a whole Arrow message: not kept beside the array finish allocates
    order = np.argsort(np.concatenate(keys), kind="stable") if keys else None
    return spiller.finish(input_shape or (n_features,), order)


def float_lists(x):
    """An Arrow list<float> column of the rows of ``x`` (each row flattened), built without per-row Python."""
    x = np.ascontiguousarray(x, np.float32).reshape(len(x), -1)
    n, d = x.shape
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * d + 1, d, dtype=np.int32)), pa.array(x.reshape(-1)))


def numpy_to_dataframe(spark, x, y, directory, features_col="features", label_col="label"):
    """Write (x, y) as Parquet (features as array<float>) under ``directory`` and read it back as a
    DataFrame: how a built-in dataset meets Spark the way users' data does."""
    import os
    import pyarrow.parquet as pq
    table = pa.table({features_col: float_lists(x), label_col: pa.array(np.asarray(y))})
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "part-0.parquet")
    pq.write_table(table, path)
    return spark.read.parquet(directory)


def read_dataframe(spark, path, fmt=None):
    """Parquet, CSV (header, inferred schema), JSON or LibSVM from a local path or any Hadoop URI."""
    fmt = fmt or next((f for f in ("parquet", "csv", "json", "libsvm") if str(path).rstrip("/").endswith(f)), "parquet")
    if fmt == "csv":
        return spark.read.option("header", True).option("inferSchema", True).csv(path)
    if fmt in ("parquet", "json", "libsvm"):
        return spark.read.format(fmt).load(path)
    raise ValueError(f"data format must be parquet, csv, json or libsvm. Received: format={fmt!r}")
