"""A fit's shards read straight from Parquet files, where the DataFrame is a plain scan of local ones, or from
its rows collected on the driver, where it is small.

The one Spark pass of a fit (sparkdl.spark.shards.export) has the JVM write every cached value into Arrow on its
own: 3-4 s for MNIST's 47 million floats on two cores. Where the DataFrame is nothing but a scan of local Parquet
files (``spark.read.parquet(path)``, cached or not, with columns selected at most: no filter, no expression, no
partition columns) and the master is local, each worker's task reads the files itself with pyarrow instead and
keeps every ``workers``-th row (rows in file order, files in path order), as a repartition deals them round-robin.
The rows go through the same conversion and checks as in the Spark pass (``prepared.checked_partition``).
A task that finds the files other than the plan said (a column missing or of another type) says so, and the fit
takes the Spark pass.
"""
import logging

log = logging.getLogger("sparkdl")

MAX_FILES = 256       # more files than this: the Spark pass (each task reads every footer)
BATCH_ROWS = 1024     # rows decoded at a time: the reader holds a few batches (8192 MNIST rows: 70 MB)
SMALL_BYTES = 32 << 20   # a DataFrame Spark's plan puts at no more than this is collected through the driver


def files_for(entry):
    """The local Parquet files behind ``entry.source`` (sparkdl.spark.prepared) where its tasks, or the driver,
    may read them themselves: a plain scan on a local master, features and label of types read as Spark does."""
    checks, df = entry.checks, entry.source
    if not df.sparkSession.sparkContext.master.startswith("local") \
            or not column_types_fit(df, checks["features_col"], checks["label_col"]):
        return None
    return parquet_files(df)


def read_on_driver(entry):
    """(x, y) of ``entry``'s rows, checked as the Spark pass checks them (``Entry.check`` raises what is wrong),
    read on the driver from the files ``files_for`` gives, or collected there where the DataFrame is small
    (``small_rows``); None otherwise. A barrier fit's validation data."""
    from .prepared import checked_partition
    c = entry.checks
    files = files_for(entry)
    if files is None:
        table = small_rows(entry)
        if table is None:
            return None
        batches, how = table.to_batches(), f"{table.num_rows} rows collected on the driver"
    else:
        batches = read_rows(files, c["features_col"], c["label_col"], 0, 1)
        how = f"{len(files)} Parquet file(s) read on the driver"
    try:
        x, y, meta = checked_partition(batches, c["n_features"], c["loss_kind"], c["num_classes"])
    except Unreadable as e:
        log.info("sparkdl: the Parquet files could not be read directly (%s): a Spark pass instead", e)
        return None
    log.info("sparkdl: the %s's %s", c["what"], how)
    entry.check([meta])
    return x, y


def small_rows(entry):
    """The prepared columns (data.X, data.Y) of ``entry``'s rows as one Arrow table on the driver
    (``DataFrame.toArrow``: one job, no shuffle, no Python stage), where the master is local and Spark's plan
    puts the DataFrame at SMALL_BYTES or less; else None. Such a table is a few MB: it takes 0.07-0.1 s to collect
    against 0.16-0.24 s for the Spark pass, and 0.4 s against 1.3 s in an application's first fit (the JVM's
    first Arrow stage and shuffle)."""
    df = entry.prepared   # the columns data.X and data.Y
    if not df.sparkSession.sparkContext.master.startswith("local"):
        return None
    try:
        size = int(str(df._jdf.queryExecution().optimizedPlan().stats().sizeInBytes()))   # a BigInt
    except Exception:   # not a classic (py4j) DataFrame
        return None
    return df.toArrow() if size <= SMALL_BYTES else None


def dealt(table, worker, workers):
    """Arrow batches of every ``workers``-th row of ``table`` from row ``worker``, as ``read_rows`` deals them."""
    import numpy as np
    import pyarrow as pa
    return table.take(pa.array(np.arange(worker, table.num_rows, workers))).to_batches()


def parquet_files(df):
    """The local Parquet files ``df`` is a plain scan of (sorted paths), or None."""
    import os

    from .. import fs
    try:
        plan = df._jdf.queryExecution().analyzed()
        if plan.nodeName() == "Project":   # columns selected, as they are
            exprs = plan.projectList()
            if any(exprs.apply(i).getClass().getSimpleName() != "AttributeReference" for i in range(exprs.size())):
                return None
            plan = plan.child()
        if plan.getClass().getSimpleName() != "LogicalRelation":
            return None
        relation = plan.relation()
        if relation.getClass().getSimpleName() != "HadoopFsRelation" or relation.partitionSchema().length() \
                or "parquet" not in relation.fileFormat().toString().lower():
            return None
        files = sorted(str(f) for f in relation.location().inputFiles())
    except Exception:   # not a classic (py4j) DataFrame, or a plan of another shape
        return None
    if not files or len(files) > MAX_FILES or not all(fs.is_local(f) and os.path.exists(fs.local_path(f))
                                                      for f in files):
        return None
    return files


def column_types_fit(df, features_col, label_col):
    """Whether the features are array<float or double> and the label a number: what the tasks read as such."""
    from pyspark.sql import types as T
    if not isinstance(features_col, str):   # a list of numeric columns: put together by Spark
        return False
    fields = {f.name: f.dataType for f in df.schema.fields}
    x, y = fields.get(features_col), fields.get(label_col)
    return (isinstance(x, T.ArrayType) and isinstance(x.elementType, (T.FloatType, T.DoubleType))
            and isinstance(y, T.NumericType) and not isinstance(y, T.DecimalType))


def read_rows(files, features_col, label_col, worker, workers):
    """Arrow batches of the prepared columns (data.X, data.Y) holding every ``workers``-th row of ``files`` from
    row ``worker``; raises Unreadable where the files do not hold the columns as expected."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .. import fs
    from .data import X, Y
    at = 0   # the global index of the next row
    for path in files:
        pf = pq.ParquetFile(fs.local_path(path))
        names = {n.lower(): n for n in pf.schema_arrow.names}   # Spark matches column names case-insensitively
        cols = [names.get(features_col.lower()), names.get(label_col.lower())]
        if None in cols:
            raise Unreadable(f"{path} has no column {features_col!r} or {label_col!r}")
        xtype, ytype = (pf.schema_arrow.field(c).type for c in cols)
        if not (pa.types.is_list(xtype) and xtype.value_type in (pa.float32(), pa.float64())) or not (
                pa.types.is_integer(ytype) or pa.types.is_floating(ytype)):
            raise Unreadable(f"{path} holds {cols[0]} as {xtype} and {cols[1]} as {ytype}")
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=cols, use_threads=False):
            first = (worker - at) % workers
            at += batch.num_rows
            if first >= batch.num_rows:
                continue
            mine = batch.take(pa.array(np.arange(first, batch.num_rows, workers)))
            yield pa.record_batch([mine.column(0), mine.column(1).cast(pa.float64())], names=[X, Y])


class Unreadable(Exception):
    """The files are not what the plan said: the fit takes the Spark pass."""
