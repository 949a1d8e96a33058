"""Export once per fit: one Arrow IPC file per worker (features as fixed-size lists of float32, labels), read
back memory-mapped (local paths) so a round touches only the rows it fits."""
import json
import uuid

import numpy as np
import pyarrow as pa

from .. import fs
from ..errors import BadValues
from .data import partition_to_numpy

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
    xs = table.column("x").combine_chunks()
    d = xs.type.list_size
    x = xs.flatten().to_numpy(zero_copy_only=False).reshape((len(xs),) + tuple(input_shape))
    assert x.shape[1:] and int(np.prod(x.shape[1:])) == d
    y = table.column("y").to_numpy()
    if xp is not np:
        x, y = xp.asarray(x), xp.asarray(y)
    _CACHE.clear()  # keep one shard per process: a worker reads the same shard every round
    _CACHE[(path, xp.__name__)] = (x, y)
    return x, y


def new_export_dir(base):
    """A fresh directory for this fit's shards under ``base`` (a local path or a pyarrow.fs URI)."""
    path = fs.join(base, f"sparkdl-export-{uuid.uuid4().hex[:12]}")
    fs.makedirs(path)
    return path


def export(prepared, export_dir, n_features, label_dtype):
    """Write each partition of ``prepared`` (columns X, Y) as one shard; returns [(path, rows)] by partition.
    Raises sparkdl.errors.BadValues where the rows hold null, NaN or infinite feature values (found on the way)."""
    from pyspark import TaskContext

    def write(batches):
        found = {}
        x, y = partition_to_numpy(batches, n_features, label_dtype, found=found)
        pid = TaskContext.get().partitionId()
        path = fs.join(export_dir, f"shard-{pid:05d}.arrow")
        if not found:
            write_shard(path, x, y)
        yield pa.record_batch([pa.array([pid], pa.int32()), pa.array([len(x)], pa.int64()), pa.array([path]),
                               pa.array([json.dumps(found)])], names=["partition", "rows", "path", "found"])

    rows = sorted(prepared.mapInArrow(write, "partition int, rows long, path string, found string").collect(),
                  key=lambda r: r["partition"])
    bad = BadValues.of([json.loads(r["found"]) for r in rows], sum(r["rows"] for r in rows))
    if bad is not None:
        raise bad
    return [(r["path"], r["rows"]) for r in rows]
