"""Shard files (sparkdl.spark.shards): a worker reads its shard memory-mapped, without a copy of the partition."""
import sys

import numpy as np
import pytest

from sparkdl.spark.shards import read_shard, write_shard


def _private_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) / 1024


def test_a_shard_round_trips():
    rng = np.random.default_rng(0)
    x, y = rng.random((50, 12), dtype=np.float32), rng.integers(0, 3, 50).astype(np.float64)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        write_shard(f"{d}/s.arrow", x, y)
        got_x, got_y = read_shard(f"{d}/s.arrow", (3, 4))
        assert got_x.shape == (50, 3, 4) and got_x.dtype == np.float32
        np.testing.assert_array_equal(got_x.reshape(50, 12), x)
        np.testing.assert_array_equal(got_y, y)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_reading_a_shard_does_not_copy_its_features(tmp_path):
    """64 MB of features read back: the process's private memory grows by far less (pyarrow's combine_chunks
    copied even a shard's one chunk, so each worker held its partition twice)."""
    write_shard(tmp_path / "warm.arrow", np.zeros((4, 4), np.float32), np.zeros(4))
    read_shard(str(tmp_path / "warm.arrow"), (4,))   # imports and first-use allocations, before measuring
    x = np.ones((1 << 14, 1024), np.float32)   # 64 MB
    write_shard(tmp_path / "big.arrow", x, np.zeros(len(x)))
    del x
    before = _private_mb()
    got, _ = read_shard(str(tmp_path / "big.arrow"), (1024,))
    assert float(got[-1].sum()) == 1024.0   # its pages are read (file-backed, not private)
    grew = _private_mb() - before
    assert grew < 16, f"reading a 64 MB shard added {grew:.0f} MB of private memory"


@pytest.mark.parametrize("ordered", [False, True])
def test_staged_rows_come_back_as_held_ones(tmp_path, ordered):
    """Spiller(stage=dir): the incoming features wait in an unnamed file in dir, and finish gives what it gives
    without staging, in ORDER where there is one; nothing is left in dir."""
    from sparkdl.dist.spill import Spiller
    rng = np.random.default_rng(1)
    parts = [(rng.random((n, 5), dtype=np.float32), rng.random(n)) for n in (7, 1, 12)]
    order = rng.permutation(20) if ordered else None
    got = []
    for stage in (None, str(tmp_path)):
        s = Spiller(5, np.float64, None, 4, None, stage)
        for x, y in parts:
            s.add(x, y)
        got.append(s.finish((5,), order))
    (x0, y0), (x1, y1) = got
    np.testing.assert_array_equal(x1, x0)
    np.testing.assert_array_equal(y1, y0)
    want = np.concatenate([x for x, _ in parts])
    np.testing.assert_array_equal(x0, want if order is None else want[order])
    assert list(tmp_path.iterdir()) == []


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")   # VmHWM starts again from the current VmRSS


def _status_mb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_staged_partition_peaks_at_one_copy_and_one_incoming_batch(tmp_path):
    """The one Spark pass over a partition (``partition_to_numpy`` with ``stage``): 64 MB arriving in four 16 MB
    Arrow batches, put in ORDER. The process's peak grows by the result and about one batch; the last batch (kept
    by the loop's variable) and the freed ones (kept by the C heap) beside the result made it 64 + 40 MB."""
    import pyarrow as pa

    from sparkdl.spark.data import ORDER, X, Y, float_lists, partition_to_numpy
    rows, d = 1 << 12, 1024
    order = np.random.default_rng(2).permutation(4 * rows)

    def batches():
        for k in range(4):
            x = np.full((rows, d), k, np.float32)
            yield pa.record_batch([float_lists(x), pa.array(np.full(rows, float(k))),
                                   pa.array(order[k * rows:(k + 1) * rows])], names=[X, Y, ORDER])
    partition_to_numpy(batches(), d, np.float64, stage=str(tmp_path))   # imports and first-use allocations
    _reset_peak()
    before = _status_mb("VmRSS")
    x, y = partition_to_numpy(batches(), d, np.float64, stage=str(tmp_path))
    grew = _status_mb("VmHWM") - before
    assert x.shape == (4 * rows, d) and np.array_equal(x[:, 0], y)   # each row where its ORDER key puts it
    assert np.array_equal(y, np.repeat(np.arange(4.0), rows)[np.argsort(order)])
    assert grew < 64 + 16 + 12, f"the pass over a 64 MB partition peaked {grew:.0f} MB above its start"
