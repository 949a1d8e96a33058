"""Export once per fit: one Arrow IPC file per worker (features as fixed-size lists of float32, labels), read
back memory-mapped (local paths) so a round touches only the rows it fits."""
import json
import uuid

import numpy as np
import pyarrow as pa

from .. import fs
from .data import ORDER, task_errors

_CACHE = {}  # path -> (x, y), per Python worker; a new fit writes new paths


def write_shard(path, x, y):
    n, d = x.shape
    xs = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), d)
    batch = pa.record_batch([xs, pa.array(y)], names=["x", "y"])
    with fs.open_output(path) as f:
        with pa.ipc.new_file(f, batch.schema) as writer:
            writer.write_batch(batch)


def read_shard(path, input_shape, xp=np):
    """(x as (rows, *input_shape) float32, y) for a shard; zero-copy from a memory map for local paths, or
    copied once to the device of ``xp`` (cupy) and kept there across rounds."""
    hit = _CACHE.get((path, xp.__name__))
    if hit is not None:
        return hit
    local = fs.local_path(path)
    source = pa.memory_map(local) if local else fs.open_input(path)
    table = pa.ipc.open_file(source).read_all()
    # one chunk (write_shard writes one batch): its memory map as it is; combine_chunks copies even one chunk
    xs, ys = (c.chunk(0) if c.num_chunks == 1 else c.combine_chunks() for c in (table.column("x"), table.column("y")))
    d = xs.type.list_size
    x = _view(xs.flatten()).reshape((len(xs),) + tuple(input_shape))
    assert x.shape[1:] and int(np.prod(x.shape[1:])) == d
    y = _view(ys)
    if xp is not np:
        x, y = xp.asarray(x), xp.asarray(y)
    _CACHE.clear()  # keep one shard per process: a worker reads the same shard every round
    _CACHE[(path, xp.__name__)] = (x, y)
    return x, y


def _view(array):
    """A numpy view of a primitive Arrow array without nulls, as write_shard writes them (``Array.to_numpy``
    imports pandas: 0.2-0.3 s of a Python worker's first fit)."""
    dtype = np.dtype(array.type.to_pandas_dtype())
    return np.frombuffer(array.buffers()[1], dtype, len(array), array.offset * dtype.itemsize)


def new_export_dir(base):
    """A fresh directory for this fit's shards under ``base`` (a local path or a pyarrow.fs URI)."""
    path = fs.join(base, f"sparkdl-export-{uuid.uuid4().hex[:12]}")
    fs.makedirs(path)
    return path


def export(entry, export_dir, label_dtype):
    """Write each partition of ``entry.laid_out`` (sparkdl.spark.prepared: columns X, Y) as one shard, checking
    it on the way (``Entry.check`` raises what is wrong, the directory then left empty); returns [(path, rows)] by
    partition. Where the DataFrame is a plain scan of local Parquet files on a local master, or small there, the
    driver reads its rows and writes the shards (sparkdl.spark.direct)."""
    from pyspark import TaskContext
    n_features, kind, classes = (entry.checks[k] for k in ("n_features", "loss_kind", "num_classes"))

    def write(batches, pid):
        from sparkdl.spark.prepared import checked_partition
        return store(*checked_partition(batches, n_features, kind, classes), pid)

    def store(x, y, meta, pid):
        from sparkdl.dist.spill import trim_heap
        path = fs.join(export_dir, f"shard-{pid:05d}.arrow")
        if x is not None:
            write_shard(path, x, y.astype(label_dtype))
        del x, y
        trim_heap()   # the Python worker goes on to train (barrier mode on a local master), or to the next task
        return pid, path, json.dumps(meta)

    def write_partition(batches):
        pid, path, meta = write(batches, TaskContext.get().partitionId())
        yield pa.record_batch([pa.array([pid], pa.int32()), pa.array([path]), pa.array([meta])],
                              names=["partition", "path", "meta"])

    with task_errors():
        out = None
        if ORDER in entry.laid_out.columns:   # rows dealt anew (not Spark's partitions as they are): read another way
            out = _on_driver(entry, store)
        if out is None:
            out = entry.laid_out.mapInArrow(write_partition, "partition int, path string, meta string").collect()
    out = sorted(out, key=lambda r: r[0])
    metas = [json.loads(r[2]) for r in out]
    entry.check(metas)
    return [(r[1], m["rows"]) for r, m in zip(out, metas)]


def _on_driver(entry, store):
    """[(partition, path, meta)] of shards written on the driver from the rows it read or collected, dealt every
    ``workers``-th row (sparkdl.spark.direct.arrays_on_driver, or ``read_ahead``), or None."""
    from . import direct
    dealt = direct.arrays_on_driver(entry, entry.workers) if entry.dealt is None else entry.dealt
    entry.dealt = None
    if not dealt:
        return None
    out = []
    for w in range(len(dealt)):
        x, y, meta = dealt[w]
        dealt[w] = None   # let go once written
        out.append(store(x, y, meta, w))
        del x, y
    return out
