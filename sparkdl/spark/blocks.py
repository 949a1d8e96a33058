"""Rows packed as bytes: one Arrow binary value holds a block of rows of float32 features (or float64 labels), which
Spark hands to Python without converting a value (sparkdl.spark.prepared)."""
import numpy as np
import pyarrow as pa


def packed(a):
    """One binary value holding the bytes of ``a``, without a copy."""
    buf = pa.py_buffer(np.ascontiguousarray(a))
    return pa.BinaryArray.from_buffers(pa.binary(), 1, [None, pa.py_buffer(np.array([0, buf.size], np.int32)), buf])


def unpack(col, n_features, dtype):
    """The rows packed in a binary column (``pack_partition``'s blocks) as one (rows, n_features) array of
    ``dtype``, a view of the Arrow buffer."""
    if not len(col):
        return np.empty((0, n_features), dtype)
    offsets = np.frombuffer(col.buffers()[1], np.int32, len(col) + 1, 4 * col.offset)
    start, end = int(offsets[0]), int(offsets[-1])
    if end == start:
        return np.empty((0, n_features), dtype)
    size = np.dtype(dtype).itemsize * n_features
    if (end - start) % size:
        raise ValueError(f"a prepared block of {end - start} bytes does not hold rows of {size} bytes")
    return np.frombuffer(col.buffers()[2], dtype, (end - start) // np.dtype(dtype).itemsize,
                         start).reshape(-1, n_features)
