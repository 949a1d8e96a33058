"""Data the executors read themselves, each task a range of records, so that no data travels inside the driver's
tasks (60,000 MNIST images built on the driver would ship 188 MB of float32 in them):

- ``read_idx``: IDX files (MNIST's format). The driver reads only the headers. Local paths must be readable on
  every host (a shared mount); any filesystem pyarrow knows (hdfs://, s3://) works as it is. A gzipped file is
  decompressed by each task up to its range: fine for MNIST-sized files; put larger data in Parquet.
- ``read_digits``: the bundled digits dataset (sparkdl.datasets.load_digits), from each executor's own copy.
"""
import contextlib
import gzip
import math

import numpy as np

from .. import fs
from ..datasets import idx_header

RECORDS_PER_BATCH = 4096


@contextlib.contextmanager
def _opened(path):
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(fs.open_input(path))
        if str(path).endswith(".gz"):
            f = stack.enter_context(gzip.GzipFile(fileobj=f, mode="rb"))
        yield f


def header(path):
    """(big-endian dtype, dims, header bytes) of an IDX file, reading its first bytes only."""
    try:
        with _opened(path) as f:
            return idx_header(f, path)
    except (OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a readable IDX file ({e})") from None


def _ranges(spark, n, num_partitions):
    parts = max(1, min(int(num_partitions or spark.sparkContext.defaultParallelism), n))
    return parts, [n * i // parts for i in range(parts + 1)]


def _frame(spark, parts, bounds, records, features_col, label_col, with_labels=True):
    """A DataFrame of ``parts`` tasks, task i yielding ``records(lo, hi, schema)`` for its range."""
    import pyarrow as pa
    fields = [pa.field(features_col, pa.list_(pa.float32()))]
    if with_labels:
        fields.append(pa.field(label_col, pa.int64()))
    schema = pa.schema(fields)

    def read(batches):
        for batch in batches:
            for part in batch.column(0).to_pylist():
                yield from records(bounds[part], bounds[part + 1], schema)

    ddl = f"`{features_col}` array<float>" + (f", `{label_col}` long" if with_labels else "")
    return spark.range(parts, numPartitions=parts).mapInArrow(read, ddl)


def _batch(x, y, schema):
    import pyarrow as pa
    from .data import float_lists
    columns = [float_lists(x)]
    if y is not None:
        columns.append(pa.array(np.asarray(y, np.int64)))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def read_digits(spark, split=None, seed=0, features_col="features", label_col="label", num_partitions=None):
    """(DataFrame, image shape (8, 8)) of ``load_digits(split, seed=seed)``, pixels scaled to [0, 1]."""
    from ..datasets import load_digits
    n = len(load_digits(split, seed=seed)[1])

    def records(lo, hi, schema):
        from sparkdl.datasets import load_digits as load
        x, y = load(split, seed=seed)
        yield _batch(x[lo:hi], y[lo:hi], schema)

    return _frame(spark, *_ranges(spark, n, num_partitions), records, features_col, label_col), (8, 8)


def read_idx(spark, images, labels=None, features_col="features", label_col="label", num_partitions=None):
    """(DataFrame of ``features_col`` array<float> (scaled to [0, 1] when stored as bytes) and ``label_col``
    long, the image shape) from an IDX images file and its labels file (or None: no label column), read by
    ``num_partitions`` tasks (default: the default parallelism)."""
    dtype, dims, offset = header(images)
    if len(dims) < 2:
        raise ValueError(f"IDX images {images!r} must have 2 or more dimensions; received shape {dims}")
    n = dims[0]
    label_spec = None
    if labels is not None:
        ldtype, ldims, loffset = header(labels)
        if ldims != (n,):
            raise ValueError(f"IDX labels {labels!r} have shape {ldims}; expected ({n},), one per image")
        label_spec = (labels, ldtype.str, loffset)
    image_spec = (images, dtype.str, offset, math.prod(dims[1:]))

    def records(lo, hi, schema):
        return _records(image_spec, label_spec, lo, hi, schema)

    df = _frame(spark, *_ranges(spark, n, num_partitions), records, features_col, label_col, labels is not None)
    return df, tuple(dims[1:])


def _records(image_spec, label_spec, lo, hi, schema):
    """Arrow batches of the records [lo, hi) (at most RECORDS_PER_BATCH each)."""
    path, dtype, offset, size = image_spec
    dtype = np.dtype(dtype)
    with contextlib.ExitStack() as stack:
        images = _open_at(stack, path, offset + lo * size * dtype.itemsize)
        if label_spec is not None:
            lpath, ldtype, loffset = label_spec
            ldtype = np.dtype(ldtype)
            labels = _open_at(stack, lpath, loffset + lo * ldtype.itemsize)
        for start in range(lo, hi, RECORDS_PER_BATCH):
            count = min(RECORDS_PER_BATCH, hi - start)
            x = _read(images, path, count * size, dtype).astype(np.float32).reshape(count, size)
            if dtype == np.uint8:
                x /= np.float32(255)
            y = _read(labels, lpath, count, ldtype) if label_spec is not None else None
            yield _batch(x, y, schema)


def _open_at(stack, path, position):
    import socket
    try:
        f = stack.enter_context(_opened(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"the IDX file {path!r} is not there on the executor's host {socket.gethostname()}: "
                                f"on a cluster it must be where every host reads it (HDFS, S3, a shared mount)") from None
    f.seek(position)
    return f


def _read(f, path, count, dtype):
    raw = f.read(count * dtype.itemsize)
    if len(raw) != count * dtype.itemsize:
        raise ValueError(f"{path}: truncated IDX file (ends {count * dtype.itemsize - len(raw)} bytes short)")
    return np.frombuffer(raw, dtype)
