"""A barrier worker's partition on local disk, when it is larger than the worker's memory budget.

The rows are collected in memory up to the budget; past it they are streamed to an Arrow IPC file in a local
directory, one record batch per minibatch of ``batch_size`` rows, and the file is memory-mapped: the page cache
holds what fits, the worker's own memory holds almost nothing. Each epoch then shuffles the order of the
minibatches rather than the rows (``schedule.block_order``), so a minibatch is one contiguous record batch, read
without a copy. The last, shorter minibatch stays last, so every round fits as many examples as with a row
shuffle and the averaging weights are the same.
"""
import os
import uuid

import numpy as np
import pyarrow as pa


class Spiller:
    """Feed a partition's rows with ``add(x, y)``; ``finish()`` gives (x, y): numpy arrays when they stayed within
    ``budget`` bytes, else the two columns of a MinibatchFile. Past the budget rows are written as they come, in
    minibatches sliced from the incoming arrays (only a minibatch that spans two of them is copied).

    With ``stage`` (a local directory), the features of the rows that stay in memory wait in an unnamed file there,
    not in memory, until ``finish`` reads them back into the one array it returns: the partition is then held once,
    not twice (the incoming arrays beside the result: a 90 MB MNIST partition took 285 MB of a worker)."""

    def __init__(self, n_features, label_dtype, budget, batch_size, directory, stage=None):
        self.n_features, self.label_dtype = n_features, np.dtype(label_dtype)
        self.budget = float("inf") if budget is None else budget
        self.batch_size, self.directory = batch_size, directory
        self.held, self.bytes = [], 0
        self.writer = self.path = self.carry = None
        self.stage, self.staged = stage, None

    def add(self, x, y):
        x = np.asarray(x, np.float32).reshape(-1, self.n_features)
        y = np.asarray(y).astype(self.label_dtype, copy=False)
        if self.writer is not None:
            self._stream(x, y)
            return
        if self.stage is not None and self.budget == float("inf"):
            if self.staged is None:
                import tempfile
                self.staged = tempfile.TemporaryFile(dir=self.stage)   # gone once closed, or the process ends
            self.staged.write(np.ascontiguousarray(x).data)
            # read back in finish; y copied: a view would keep the whole incoming Arrow message alive
            x, y = None, y.copy()
        self.held.append((x, y))
        self.bytes += (0 if x is None else x.nbytes) + y.nbytes
        if self.bytes > self.budget:
            os.makedirs(self.directory, exist_ok=True)
            self.path = os.path.join(self.directory, f"sparkdl-partition-{uuid.uuid4().hex}.arrow")
            schema = pa.schema([("x", pa.list_(pa.float32(), self.n_features)),
                                ("y", pa.from_numpy_dtype(self.label_dtype))])
            self.writer = pa.ipc.new_file(self.path, schema)
            held, self.held = self.held, []
            for hx, hy in held:
                self._stream(hx, hy)

    def _stream(self, x, y):
        start, b = 0, self.batch_size
        if self.carry is not None:   # complete the minibatch the previous arrays left open
            cx, cy = self.carry
            start = b - len(cx)
            cx, cy = np.concatenate([cx, x[:start]]), np.concatenate([cy, y[:start]])
            if len(cx) < b:
                self.carry = (cx, cy)
                return
            self.carry = None
            self._write(cx, cy)
        full = start + (len(x) - start) // b * b
        for i in range(start, full, b):
            self._write(x[i:i + b], y[i:i + b])
        if full < len(x):
            self.carry = (x[full:].copy(), y[full:].copy())

    def _write(self, x, y):
        self.writer.write_batch(pa.record_batch(
            [pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), self.n_features), pa.array(y)],
            names=["x", "y"]))

    def finish(self, input_shape, order=None):
        """(x, y); with ``order`` (a permutation of the rows as they came) in that order: row i is the
        ``order[i]``-th row added."""
        if self.writer is None:
            held, self.held = self.held, []
            if self.staged is not None:   # the incoming batches' freed memory back to the OS before the array
                trim_heap()               # is allocated, not beside it (a 90 MB MNIST partition: 272 -> 234 MB)
            n = sum(len(h[1]) for h in held)
            x, y = np.empty((n, self.n_features), np.float32), np.empty(n, self.label_dtype)
            where = None if order is None else _inverse(order)
            at = 0
            for hx, hy in held:   # straight into place: no concatenated copy beside the result
                rows = slice(at, at + len(hy)) if where is None else where[at:at + len(hy)]
                if hx is not None:
                    x[rows] = hx
                y[rows] = hy
                at += len(hy)
            if self.staged is not None:
                self._unstage(x, where)
            return x.reshape((-1,) + tuple(input_shape)), y
        if self.carry is not None:   # the last, shorter minibatch
            self._write(*self.carry)
            self.carry = None
        self.writer.close()
        self.writer = None
        if order is not None:
            self._rewrite(order)
        spilled = MinibatchFile(self.path, input_shape, self.batch_size)
        return spilled.x, spilled.y

    def _unstage(self, x, where, block_bytes=1 << 20):
        """The staged rows into ``x`` (row k to ``where[k]``), read in place or through one small buffer: a buffer
        as large as an incoming array would stay with the allocator after the pass (glibc keeps freed blocks of
        up to 32 MB)."""
        f, self.staged = self.staged, None

        def read(into):
            if f.readinto(memoryview(into).cast("B")) != into.nbytes:
                raise OSError(f"the staged rows of this partition came back short ({f.name})")
        f.seek(0)
        with f:
            if where is None:
                read(x)
            else:
                step = max(block_bytes // (4 * self.n_features), 1)
                buf = np.empty((step, self.n_features), np.float32)
                for at in range(0, len(x), step):
                    part = buf[:min(step, len(x) - at)]
                    read(part)
                    x[where[at:at + len(part)]] = part

    def _rewrite(self, order, rows_at_once=1 << 16):
        """The spilled file again, its rows in ``order``: gathered from the memory map a slice at a time."""
        source = pa.ipc.open_file(pa.memory_map(self.path)).read_all()
        path = os.path.join(self.directory, f"sparkdl-partition-{uuid.uuid4().hex}.arrow")
        step = max(rows_at_once // self.batch_size, 1) * self.batch_size
        with pa.ipc.new_file(path, source.schema) as writer:
            for start in range(0, len(order), step):
                part = source.take(pa.array(order[start:start + step])).combine_chunks().to_batches()[0]
                for i in range(0, part.num_rows, self.batch_size):
                    writer.write_batch(part.slice(i, self.batch_size))
        del source
        os.unlink(self.path)
        self.path = path


def trim_heap():
    """Give the C heap's free memory back to the OS (glibc's malloc_trim; nothing elsewhere), and Arrow's (its
    allocator keeps freed memory too). After the one Spark pass over a partition (converted, checked, written) about
    40 MB of freed blocks stayed there, which the worker then carried through the fit (a 90 MB MNIST partition:
    125 -> 86 MB private); Parquet read by the task itself left 80 MB in Arrow's."""
    pa.default_memory_pool().release_unused()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def local_dir():
    """Where a task may spill: the executor's local directories (Spark's, else YARN's), else the temp dir."""
    import tempfile
    for name in ("SPARK_LOCAL_DIRS", "LOCAL_DIRS"):
        if os.environ.get(name):
            return os.environ[name].split(",")[0]
    return tempfile.gettempdir()


def _inverse(order):
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return inverse


class MinibatchFile:
    """A spilled partition: ``x[k]``, ``y[k]`` are minibatch k (zero-copy views of the memory-mapped file);
    ``len(x)`` is the number of rows. The file is removed once mapped (the mapping keeps it readable)."""

    def __init__(self, path, input_shape, batch_size):
        self.path, self.batch_size = path, batch_size
        source = pa.memory_map(path)
        reader = pa.ipc.open_file(source)
        xs, ys = [], []
        for k in range(reader.num_record_batches):
            b = reader.get_batch(k)
            xs.append(b.column(0).flatten().to_numpy(zero_copy_only=True).reshape((-1,) + tuple(input_shape)))
            ys.append(b.column(1).to_numpy(zero_copy_only=True))
        os.unlink(path)
        rows = sum(len(v) for v in ys)
        if any(len(v) != batch_size for v in ys[:-1]):
            raise ValueError(f"{path}: minibatches of {sorted({len(v) for v in ys})} rows, not {batch_size}")
        self.x, self.y = _Column(xs, rows), _Column(ys, rows)


class _Column:
    def __init__(self, parts, rows):
        self.parts, self.rows = parts, rows

    def __len__(self):
        return self.rows

    def __getitem__(self, k):
        return self.parts[k]

    @property
    def nbytes(self):
        return sum(p.nbytes for p in self.parts)


def is_spilled(x):
    return isinstance(x, _Column)


def default_budget(total_bytes, workers_per_host):
    """Half of ``total_bytes`` (the memory Python workers may use on a host) shared by its workers."""
    return int(total_bytes // 2 // max(workers_per_host, 1))
