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
