"""DataFrame -> Arrow -> numpy: one features column of array<float> and one label column, checked in one pass.

Whatever the features are (a Spark ML vector, array<float|double|int>, one or several numeric columns) they
become one ``array<float>`` column; an Arrow batch of it turns into a (rows, features) float32 array with no
per-row Python work (``ListArray.values`` is the contiguous float buffer). The executor reshapes it to the
model's input shape.
"""
import numpy as np
import pyarrow as pa

X, Y = "__sparkdl_x", "__sparkdl_y"   # the prepared columns
NUMERIC = ("byte", "short", "int", "long", "float", "double", "decimal")


def _type_name(dt):
    return dt.simpleString()


def features_expr(df, features_col):
    """A Column of array<float> for ``features_col`` (a column name or a list of numeric column names)."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, NumericType

    cols = [features_col] if isinstance(features_col, str) else list(features_col)
    if not cols:
        raise ValueError("features_col must name a column or a non-empty list of numeric columns. Received: []")
    for c in cols:
        if c not in df.columns:
            raise ValueError(f"features column {c!r} is not in the DataFrame; its columns are {df.columns}")
    if len(cols) > 1:
        bad = [(c, _type_name(df.schema[c].dataType)) for c in cols
               if not isinstance(df.schema[c].dataType, NumericType)]
        if bad:
            raise ValueError(f"feature columns must be numeric; received {bad}")
        return F.array(*[F.col(c).cast("float") for c in cols])
    c = cols[0]
    dt = df.schema[c].dataType
    if isinstance(dt, VectorUDT):
        return vector_to_array(F.col(c), "float32")
    if isinstance(dt, ArrayType) and isinstance(dt.elementType, NumericType):
        return F.col(c).cast("array<float>")
    if isinstance(dt, NumericType):
        return F.array(F.col(c).cast("float"))
    raise ValueError(f"features column {c!r} must be a Spark ML vector, an array of numbers or numeric; "
                     f"received type {_type_name(dt)}")


def label_expr(df, label_col):
    from pyspark.sql import functions as F
    from pyspark.sql.types import NumericType
    if label_col not in df.columns:
        raise ValueError(f"label column {label_col!r} is not in the DataFrame; its columns are {df.columns}")
    dt = df.schema[label_col].dataType
    if not isinstance(dt, NumericType):
        raise ValueError(f"label column {label_col!r} must be numeric; received type {_type_name(dt)}")
    return F.col(label_col).cast("double")


def prepare(df, features_col, label_col=None, keep=False):
    """The DataFrame with the prepared columns X (array<float>) and Y (double), plus the original ones if
    ``keep`` (prediction passes them through)."""
    cols = [features_expr(df, features_col).alias(X)]
    if label_col is not None:
        cols.append(label_expr(df, label_col).alias(Y))
    return df.select(*(["*"] if keep else []), *cols)


def validate(prepared, n_features, loss_kind=None, num_classes=None, features_col="features",
             label_col="label", what="DataFrame"):
    """One aggregation job over the prepared DataFrame; raises ValueError naming the column, the expected
    and the received values, and how many rows are wrong. Returns the row count."""
    from pyspark.sql import functions as F
    x, has_y = F.col(X), Y in prepared.columns
    count_if = lambda cond: F.sum(F.when(cond, 1).otherwise(0))
    aggs = [F.count(F.lit(1)).alias("rows"), count_if(x.isNull()).alias("null_x"),
            F.min(F.when(x.isNotNull(), F.size(x))).alias("min_len"),
            F.max(F.when(x.isNotNull(), F.size(x))).alias("max_len"),
            count_if(F.exists(x, lambda v: v.isNull())).alias("null_values"),
            count_if(F.exists(x, lambda v: F.isnan(v) | (F.abs(v) == float("inf")))).alias("nonfinite_x")]
    if has_y:
        y = F.col(Y)
        aggs += [count_if(y.isNull()).alias("null_y"), count_if(F.isnan(y) | (F.abs(y) == float("inf"))).alias("nonfinite_y"),
                 F.min(y).alias("min_y"), F.max(y).alias("max_y"), count_if(y != F.floor(y)).alias("fractional_y")]
    r = prepared.agg(*aggs).first().asDict()
    rows = r["rows"]
    fc = features_col if isinstance(features_col, str) else f"features {list(features_col)}"
    if rows == 0:
        raise ValueError(f"the {what} is empty: it needs at least one row")
    if r["null_x"]:
        raise ValueError(f"column {fc!r}: {r['null_x']} of {rows} rows are null")
    if r["null_values"]:
        raise ValueError(f"column {fc!r}: {r['null_values']} of {rows} rows hold null values")
    if r["min_len"] != n_features or r["max_len"] != n_features:
        raise ValueError(f"column {fc!r}: every row must have {n_features} values (the model input); received rows "
                         f"with {r['min_len']} to {r['max_len']} values")
    if r["nonfinite_x"]:
        raise ValueError(f"column {fc!r}: {r['nonfinite_x']} of {rows} rows hold NaN or infinite values")
    if not has_y:
        return rows
    if r["null_y"]:
        raise ValueError(f"column {label_col!r}: {r['null_y']} of {rows} rows are null")
    if r["nonfinite_y"]:
        raise ValueError(f"column {label_col!r}: {r['nonfinite_y']} of {rows} rows are NaN or infinite")
    if loss_kind == "multiclass":
        if r["fractional_y"]:
            raise ValueError(f"column {label_col!r}: labels must be integer class indices; {r['fractional_y']} of "
                             f"{rows} rows are not integers")
        if r["min_y"] < 0 or r["max_y"] >= num_classes:
            raise ValueError(f"column {label_col!r}: labels must be in [0, {num_classes - 1}] (the model has "
                             f"{num_classes} outputs); received labels in [{r['min_y']:g}, {r['max_y']:g}]")
    elif loss_kind == "binary" and (r["min_y"] < 0 or r["max_y"] > 1):
        raise ValueError(f"column {label_col!r}: binary targets must be in [0, 1]; received values in "
                         f"[{r['min_y']:g}, {r['max_y']:g}]")
    return rows


def batch_to_numpy(batch, n_features, with_labels=True):
    """(x float32 (rows, n_features), y float64 (rows,) or None) from an Arrow batch of prepared columns,
    without per-row Python: the list column's child buffer is already row-major."""
    col = batch.column(batch.schema.get_field_index(X))
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    n = len(col)
    offsets = col.offsets.to_numpy()
    values = col.values.to_numpy(zero_copy_only=False)
    start = offsets[0]
    if offsets[-1] - start != n * n_features or (n and (np.diff(offsets) != n_features).any()):
        raise ValueError(f"every features row must have {n_features} values; received a batch with rows of "
                         f"{np.unique(np.diff(offsets)).tolist()} values")
    x = np.asarray(values[start:start + n * n_features], np.float32).reshape(n, n_features)
    if not with_labels:
        return x, None
    ycol = batch.column(batch.schema.get_field_index(Y))
    return x, ycol.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def partition_to_numpy(batches, n_features, label_dtype, input_shape=None, budget=None, batch_size=1, directory=None):
    """(x float32 (rows, *input_shape), y of ``label_dtype``) for a whole partition of prepared Arrow batches: in
    memory, or past ``budget`` bytes a memory-mapped file in ``directory`` (sparkdl.dist.spill)."""
    from ..dist.spill import Spiller
    spiller = Spiller(n_features, label_dtype, budget, batch_size, directory)
    for b in batches:
        spiller.add(*batch_to_numpy(b, n_features))
    return spiller.finish(input_shape or (n_features,))


def numpy_to_dataframe(spark, x, y, directory, features_col="features", label_col="label"):
    """Write (x, y) as Parquet (features as array<float>) under ``directory`` and read it back as a
    DataFrame: how a built-in dataset meets Spark the way users' data does."""
    import os
    import pyarrow.parquet as pq
    x = np.ascontiguousarray(x, np.float32).reshape(len(x), -1)
    n, d = x.shape
    offsets = pa.array(np.arange(0, n * d + 1, d, dtype=np.int32))
    table = pa.table({features_col: pa.ListArray.from_arrays(offsets, pa.array(x.reshape(-1))),
                      label_col: pa.array(np.asarray(y))})
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
