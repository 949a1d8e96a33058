"""A fit's shards written on the driver, from the Parquet files of a plain scan of local ones or from the rows of
a small DataFrame, where the master is local.

The one Spark pass of a fit (sparkdl.spark.shards.export) has the JVM write every cached value into Arrow on its
own: 3-4 s for MNIST's 47 million floats on two cores. Where the DataFrame is nothing but a scan of local Parquet
files (``spark.read.parquet(path)``, cached or not, with columns selected at most: no filter, no expression, no
partition columns) and the master is local, the driver reads the files with pyarrow instead, converts and checks
the rows once as the Spark pass checks a partition (``prepared.checked_partition``), and deals every
``workers``-th row to each worker (rows in file order, files in path order), as a repartition deals them
round-robin. (Before, each worker's task read the files itself: it decoded every row to keep its share, twice the
work on two workers, after the workers' start instead of beside it.) Where the files are other than the
plan said (a column missing or of another type), the fit takes the Spark pass. An application's first fit starts
the read in a thread as it begins (``Early``), before Spark has analysed the fit's plan.
"""
import logging

log = logging.getLogger("sparkdl")

MAX_FILES = 256       # more files than this: the Spark pass (each task reads every footer)
BATCH_ROWS = 1024     # rows decoded at a time: the reader holds a few batches (8192 MNIST rows: 70 MB)
SMALL_BYTES = 32 << 20   # a DataFrame Spark's plan puts at no more than this is collected through the driver


def files_for(df, checks):
    """The local Parquet files behind ``df`` where the driver may read them itself: a plain scan on a local master,
    features and label (``checks``: sparkdl.spark.prepared) of types read as Spark does; else None."""
    if not df.sparkSession.sparkContext.master.startswith("local") \
            or not column_types_fit(df, checks["features_col"], checks["label_col"]):
        return None
    return parquet_files(df)


def arrays_on_driver(entry, workers=1):
    """For each of ``workers`` workers, (x, y, meta) of every ``workers``-th row of ``entry``'s rows from its own,
    converted and checked on the driver (``deal``): read from the files ``files_for`` gives, else collected where
    the DataFrame is small (``small_rows``). None where neither (the Spark pass)."""
    got = _rows(entry)
    return None if got is None else deal(*got, entry.checks, workers)


def deal(batches, n, c, workers):
    """For each of ``workers`` workers, (x, y, meta) of every ``workers``-th row of the ``n`` rows of Arrow
    ``batches`` (the prepared columns), converted and checked as the Spark pass checks a partition
    (``prepared.checked_partition``, against the checks ``c``: x and y None where something is wrong, the first
    worker's meta saying what). Each batch is dealt as it is decoded into the workers' arrays, allocated once
    (fresh memory is slow to touch: dealing Arrow batches and converting each worker's took twice the time)."""
    import numpy as np

    from ..errors import DataError
    from .data import batch_to_numpy
    from .prepared import label_problem
    sizes = [len(range(w, n, workers)) for w in range(workers)]
    xs, ys = [np.empty((k, c["n_features"]), np.float32) for k in sizes], [np.empty(k) for k in sizes]
    found, problem, at = {}, None, 0
    try:
        for b in batches:
            x, y = batch_to_numpy(b, c["n_features"], found=found)
            for w in range(workers):
                first = (w - at) % workers
                i, k = (at + first - w) // workers, len(range(first, len(x), workers))
                xs[w][i:i + k], ys[w][i:i + k] = x[first::workers], y[first::workers]
            at += len(x)
    except DataError as e:   # as in checked_partition: no rows counted
        problem, at = str(e), 0
    else:
        problem = f"{at} rows read where the files' footers said {n}" if at != n else next(
            filter(None, (label_problem(y, c["loss_kind"], c["num_classes"]) for y in ys)), None)
    if problem is not None or found:
        meta = {"rows": at, "problem": problem, "found": found}
        return [(None, None, meta)] + [(None, None, {"rows": 0, "problem": None, "found": {}})] * (workers - 1)
    return [(x, y, {"rows": len(x), "problem": None, "found": {}}) for x, y in zip(xs, ys)]


class Early:
    """The rows of a plain scan of local Parquet files, read and dealt to ``workers`` workers (``deal``) in a
    thread that starts as an application's first fit begins, beside the analysis of the fit's plan
    (data.prepare: 0.25 s in a fresh JVM) and the Python workers' start; ``read_ahead`` hands them to the entry
    that wants them, or stops the thread. ``start`` gives None where the files cannot be read so."""

    def __init__(self, batches, n, files, checks, workers):
        import threading
        self.files, self.checks, self.workers = files, dict(checks), workers
        self._stop, self._dealt, self._error = False, None, None
        self._thread = threading.Thread(target=self._run, args=(batches, n), name="sparkdl-read", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, df, checks, workers):
        got = _file_rows(df, checks)
        return None if got is None else cls(*got, checks, workers)

    def _run(self, batches, n):
        try:
            self._dealt = deal((b for b in batches if not self._stop), n, self.checks, self.workers)
        except BaseException as e:   # raised in the fit's thread by take()
            self._error = e

    def take(self, checks, workers):
        """The dealt rows where they are those of ``checks`` and ``workers`` (raising what the read raised),
        else None, the thread stopped."""
        if dict(checks) != self.checks or workers != self.workers:
            self.stop()
            return None
        self._thread.join()
        if self._error is not None:
            raise self._error
        _said_read(self.checks, self.files)
        return self._dealt

    def stop(self):
        self._stop = True
        self._thread.join()


def read_ahead(entry, early=None):
    """Where ``entry``'s shards will be written on the driver, read their rows there now (``Entry.dealt``: per
    worker, its arrays; False where they cannot be read so), so that the read goes on beside the start of the
    Python workers (sparkdl.spark.shards.export writes them); taken from ``early`` (an ``Early``) where it read
    them. Stops ``early`` where it is not wanted."""
    from .data import ORDER
    if not entry.ready and entry.dealt is None and ORDER in entry.laid_out.columns:
        dealt = early.take(entry.checks, entry.workers) if early is not None else None
        entry.dealt = dealt or arrays_on_driver(entry, entry.workers) or False
    elif early is not None:
        early.stop()


def _file_rows(df, c):
    """(``read_batches`` of the files ``files_for`` gives, the files), or None: no such files, or (logged) files
    other than the plan said."""
    files = files_for(df, c)
    if files is None:
        return None
    try:
        return (*read_batches(files, c["features_col"], c["label_col"]), files)
    except Unreadable as e:
        log.info("sparkdl: the Parquet files could not be read directly (%s)", e)
        return None


def _said_read(c, files):
    log.info("sparkdl: the %s's %d Parquet file(s) read on the driver", c["what"], len(files))


def _rows(entry):
    """(Arrow batches of the prepared columns (data.X, data.Y) of ``entry``'s rows in order, on the driver; their
    count), or None (see ``arrays_on_driver``)."""
    got = _file_rows(entry.source, entry.checks)
    if got is not None:
        _said_read(entry.checks, got[2])
        return got[:2]
    table = small_rows(entry)
    if table is None:
        return None
    log.info("sparkdl: the %d rows of a small %s collected on the driver", table.num_rows, entry.checks["what"])
    return iter(table.to_batches()), table.num_rows


def read_on_driver(entry):
    """(x, y) of ``entry``'s rows from ``arrays_on_driver``, or None; ``Entry.check`` raises what is wrong. A
    barrier fit's validation data."""
    got = arrays_on_driver(entry)
    if got is None:
        return None
    x, y, meta = got[0]
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


def read_batches(files, features_col, label_col):
    """(Arrow batches of the prepared columns (data.X, data.Y) of the rows of ``files`` in order, their count from
    the footers); raises Unreadable at once (the footers are read first) where the files do not hold the columns
    as expected."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .. import fs
    from .data import X, Y
    opened = []
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
        opened.append((pf, cols))
    return ((pa.record_batch([b.column(0), b.column(1).cast(pa.float64())], names=[X, Y])
             for pf, cols in opened for b in pf.iter_batches(batch_size=BATCH_ROWS, columns=cols, use_threads=False)),
            sum(pf.metadata.num_rows for pf, _ in opened))


class Unreadable(Exception):
    """The files are not what the plan said: the fit takes the Spark pass."""
