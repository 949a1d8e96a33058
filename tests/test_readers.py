"""sparkdl.spark.readers: IDX files and the bundled digits read by the executors, each task its own range of records."""
import gzip

import numpy as np
import pytest

from sparkdl import datasets
from sparkdl.spark import readers as idx

pytestmark = pytest.mark.spark
CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.float32): 0x0D, np.dtype(np.int16): 0x0B}


def write_idx(path, array, compress=False):
    array = np.ascontiguousarray(array)
    raw = bytes([0, 0, CODES[array.dtype], array.ndim]) + np.asarray(array.shape, ">u4").tobytes() \
        + array.astype(array.dtype.newbyteorder(">")).tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if compress else raw)
    return str(path)


def collect(df):
    table = df.toArrow()
    x = np.stack([np.asarray(v, np.float32) for v in table.column(0).to_pylist()])
    return x, (table.column(1).to_numpy() if table.num_columns > 1 else None)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("parts", [1, 3, 7])
def test_bytes_are_scaled_like_load_idx_in_record_order_whatever_the_partitions(spark, tmp_path, compress, parts,
                                                                                monkeypatch):
    monkeypatch.setattr(idx, "RECORDS_PER_BATCH", 4)   # several batches per task
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (23, 5, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, 23, dtype=np.uint8)
    suffix = ".gz" if compress else ""
    df, shape = idx.read_idx(spark, write_idx(tmp_path / f"i{suffix}", images, compress),
                             write_idx(tmp_path / f"l{suffix}", labels, compress), "pixels", "digit", parts)
    assert shape == (5, 4) and df.columns == ["pixels", "digit"] and df.rdd.getNumPartitions() == parts
    assert dict(df.dtypes) == {"pixels": "array<float>", "digit": "bigint"}
    x, y = collect(df)
    expected = datasets.load_idx(tmp_path / f"i{suffix}").astype(np.float32)
    expected /= np.float32(255)
    np.testing.assert_array_equal(x, expected.reshape(23, -1))
    np.testing.assert_array_equal(y, labels)


def test_other_dtypes_keep_their_values_and_labels_are_optional(spark, tmp_path):
    images = np.linspace(-3, 3, 6 * 9, dtype=np.float32).reshape(6, 9)
    df, shape = idx.read_idx(spark, write_idx(tmp_path / "f", images), None, num_partitions=2)
    assert shape == (9,) and df.columns == ["features"]
    np.testing.assert_array_equal(collect(df)[0], images)


def test_bad_files_say_what_is_wrong_before_any_job(spark, tmp_path):
    images = write_idx(tmp_path / "i", np.zeros((4, 3, 3), np.uint8))
    with pytest.raises(ValueError, match=r"labels .* have shape \(5,\); expected \(4,\)"):
        idx.read_idx(spark, images, write_idx(tmp_path / "l", np.zeros(5, np.uint8)))
    (tmp_path / "junk").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="bad IDX magic number 01020304"):
        idx.read_idx(spark, str(tmp_path / "junk"))
    with pytest.raises(ValueError, match="2 or more dimensions"):
        idx.read_idx(spark, write_idx(tmp_path / "v", np.zeros(4, np.uint8)))
    with pytest.raises(FileNotFoundError):
        idx.read_idx(spark, str(tmp_path / "missing"))


def test_a_truncated_file_fails_the_task_naming_the_file(spark, tmp_path):
    path = write_idx(tmp_path / "i", np.zeros((10, 4), np.uint8))
    with open(path, "r+b") as f:
        f.truncate(12 + 4 * 7)   # the header, then 7 of 10 records
    df, _ = idx.read_idx(spark, path, None, num_partitions=2)
    with pytest.raises(Exception, match=r"truncated IDX file \(ends 12 bytes short\)"):
        df.collect()


@pytest.mark.parametrize("split", ["train", "test", None])
def test_the_bundled_digits_are_read_by_the_executors_as_load_digits_gives_them(spark, split):
    df, shape = idx.read_digits(spark, split, seed=5, num_partitions=3)
    x, y = collect(df)
    ex, ey = datasets.load_digits(split, seed=5)
    assert shape == (8, 8) and df.rdd.getNumPartitions() == 3
    np.testing.assert_array_equal(x, ex)
    np.testing.assert_array_equal(y, ey)
