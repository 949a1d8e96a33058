"""A partition packed into blocks of float32 rows (sparkdl.spark.prepared) and read back as a worker reads it,
and what the packing pass reports when something is wrong. No Spark."""
import json

import numpy as np
import pyarrow as pa

from sparkdl.spark import data
from sparkdl.spark.prepared import META, checked_partition, pack_partition


def batches(x, y, order=None, size=7):
    """Prepared Arrow batches of ``size`` rows (with an ORDER column where ``order`` is given)."""
    for a in range(0, len(x), size):
        cols, names = [data.float_lists(x[a:a + size]), pa.array(y[a:a + size], pa.float64())], [data.X, data.Y]
        if order is not None:
            cols.append(pa.array(order[a:a + size], pa.int64()))
            names.append(data.ORDER)
        yield pa.record_batch(cols, names=names)


def read_back(records, n_features):
    """(x, y, metas) as a barrier worker (batch_to_numpy) and the driver (the META rows) see the packed records."""
    table = pa.Table.from_batches(list(records))
    x, y = data.batch_to_numpy(table, n_features)
    metas = [json.loads(m) for m in table.column(META).to_pylist() if m is not None]
    return x, y, metas


def test_a_partition_comes_back_bit_for_bit_in_the_order_of_its_keys_in_blocks():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 6)).astype(np.float32)
    y = rng.integers(0, 3, 50).astype(np.float64)
    order = rng.permutation(50) * 10   # the rows' places before a shuffle
    records = list(pack_partition(batches(x, y, order), 6, "multiclass", 3, per_block=8))
    assert [len(r) for r in records] == [1] * 8   # 7 blocks of at most 8 rows, then the META row
    got_x, got_y, metas = read_back(records, 6)
    sort = np.argsort(order, kind="stable")
    np.testing.assert_array_equal(got_x, x[sort])
    np.testing.assert_array_equal(got_y, y[sort])
    assert got_x.dtype == np.float32 and got_y.dtype == np.float64
    assert metas == [{"rows": 50, "problem": None, "found": {}}]


def test_an_empty_partition_gives_its_meta_row_only():
    records = list(pack_partition(iter(()), 4, "regression", 1, per_block=8))
    x, y, metas = read_back(records, 4)
    assert x.shape == (0, 4) and y.shape == (0,) and metas == [{"rows": 0, "problem": None, "found": {}}]


def test_what_is_wrong_is_reported_and_nothing_is_packed():
    x = np.ones((5, 3), np.float32)
    labels = np.array([0, 1, 2, 1, 0], np.float64)
    cases = {
        "nan value": (np.where(np.arange(15).reshape(5, 3) == 4, np.nan, x).astype(np.float32), labels, "multiclass"),
        "label out of range": (x, np.array([0, 1, 3, 1, 0.0]), "multiclass"),
        "fractional label": (x, np.array([0, 1, 0.5, 1, 0.0]), "multiclass"),
        "binary target": (x, np.array([0, 1, 2, 1, 0.0]), "binary"),
        "nan label": (x, np.array([0, np.nan, 1, 1, 0]), "regression"),
    }
    for name, (cx, cy, kind) in cases.items():
        got_x, got_y, meta = checked_partition(batches(cx, cy), 3, kind, 3)
        assert got_x is None and got_y is None, name
        assert meta["rows"] == 5 and (meta["problem"] or meta["found"]), name
        packed = list(pack_partition(batches(cx, cy), 3, kind, 3, per_block=2))
        assert len(packed) == 1 and packed[0].column(2).to_pylist()[0] is not None, name   # only the META row
    _, _, meta = checked_partition(batches(x, labels), 3, "multiclass", 3)
    assert meta == {"rows": 5, "problem": None, "found": {}}
    wrong = pa.record_batch([pa.array([[1.0, 2.0]], pa.list_(pa.float32())), pa.array([0.0])], names=[data.X, data.Y])
    x2, _, meta = checked_partition(iter([wrong]), 3, "multiclass", 3)   # rows of 2 values where 3 are expected
    assert x2 is None and "not 3" in meta["problem"]
