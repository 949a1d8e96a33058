"""A fit's shards written on the driver from the Parquet files of a plain scan, or from the rows of a small
DataFrame (sparkdl.spark.direct): which DataFrames qualify, which rows each worker gets, and the same
checks and errors as the Spark pass."""
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparkdl import DataError, optim
from sparkdl.nn import Dense, Sequential
from sparkdl.spark import ParameterAveraging, SparkTrainer
from sparkdl.spark.direct import Unreadable, parquet_files, read_batches


def write(directory, tables, **kw):
    os.makedirs(directory, exist_ok=True)
    for k, t in enumerate(tables):
        pq.write_table(t, os.path.join(directory, f"part-{k}.parquet"), **kw)
    return str(directory)


def table(features, labels, xtype=pa.float32()):
    return pa.table({"features": pa.array(features, pa.list_(xtype)), "label": pa.array(labels, pa.int64())})


def trainer(mode="jobs"):
    m = Sequential([Dense(4, activation="relu"), Dense(3, activation="softmax")], input_shape=(2,), seed=0)
    m.compile(optim.SGD(0.01), "sparse_categorical_crossentropy")
    return SparkTrainer(m, ParameterAveraging(num_workers=2, batch_size_per_worker=2, mode=mode, seed=0))


def test_which_dataframes_are_a_plain_scan(spark, tmp_path):
    from pyspark.sql import functions as F
    d = write(tmp_path / "p", [table([[1.0, 2.0]] * 3, [0, 1, 2])])
    df = spark.read.parquet(d)
    from sparkdl import fs
    assert [fs.local_path(f) for f in parquet_files(df)] == [f"{d}/part-0.parquet"]
    assert parquet_files(df.cache()) is not None and parquet_files(df.select("label", "features")) is not None
    df.unpersist()
    for other in (df.where(F.col("label") > 0), df.select("features", (F.col("label") + 1).alias("label")),
                  df.limit(2), spark.createDataFrame([([1.0, 2.0], 0)], "features array<float>, label long")):
        assert parquet_files(other) is None


@pytest.mark.spark
def test_each_worker_gets_every_other_row_in_file_order(spark, tmp_path):
    """Three files, several row groups each: worker w holds global rows w, w + 2, ... (files in path order), as
    the shards of a fit's export show."""
    from sparkdl.spark import shards
    rows = [0, 7, 4]
    tables, at = [], 0
    for n in rows:
        ids = np.arange(at, at + n, dtype=np.float32)
        tables.append(table(np.stack([ids, -ids], 1).tolist(), (np.arange(at, at + n) % 3).tolist()))
        at += n
    df = spark.read.parquet(write(tmp_path / "p", tables, row_group_size=3))
    t = trainer()
    entry = t._prepared_data(df, "features", "label", "training DataFrame", t.master)
    out = shards.export(entry, shards.new_export_dir(str(tmp_path)), np.float64)
    for w, (path, n) in enumerate(out):
        x, y = shards.read_shard(path, (2,))
        want = np.arange(w, at, 2, dtype=np.float32)
        np.testing.assert_array_equal(x[:, 0], want)
        np.testing.assert_array_equal(x[:, 1], -want)
        np.testing.assert_array_equal(y, want % 3)
        assert n == len(want)


@pytest.mark.spark
def test_a_small_dataframe_is_collected_and_dealt_on_the_driver(spark, tmp_path, monkeypatch, caplog):
    """Not a plain scan but small (cached, so that Spark knows its size): collected on the driver, worker w gets
    rows w, w + 2, ... of the DataFrame's order; past SMALL_BYTES, the Spark pass; on a cluster, never."""
    import logging

    from sparkdl.spark import direct, shards
    caplog.set_level(logging.INFO, logger="sparkdl")
    ids = np.arange(11, dtype=np.float32)
    df = spark.createDataFrame([([float(i), -float(i)], int(i) % 3) for i in ids], "features array<float>, label long")
    df.count()
    t = trainer()
    entry = t._prepared_data(df, "features", "label", "training DataFrame", t.master)
    assert direct.small_rows(entry) is None   # rows from Python: Spark's plan cannot tell their size
    df = df.cache()
    df.count()
    entry = t._prepared_data(df, "features", "label", "training DataFrame", t.master)
    assert direct.small_rows(entry).num_rows == 11
    out = shards.export(entry, shards.new_export_dir(str(tmp_path)), np.float64)
    assert any("11 rows of a small training DataFrame collected" in r.getMessage() for r in caplog.records)
    for w, (path, n) in enumerate(out):
        x, y = shards.read_shard(path, (2,))
        np.testing.assert_array_equal(x[:, 0], ids[w::2])
        np.testing.assert_array_equal(y, ids[w::2] % 3)
        assert n == len(ids[w::2])
    monkeypatch.setattr(direct, "SMALL_BYTES", 16)
    assert direct.small_rows(entry) is None
    monkeypatch.setattr(direct, "SMALL_BYTES", 1 << 20)
    monkeypatch.setattr(spark.sparkContext, "master", "spark://elsewhere:7077")
    assert direct.small_rows(entry) is None


BAD = {
    "nan feature": ([[0.5, float("nan")], [1.0, 0.0]], [0, 1]),
    "null row": ([None, [1.0, 0.0]], [0, 1]),
    "null value": ([[None, 1.0], [1.0, 0.0]], [0, 1]),
    "wrong width": ([[0.5, 1.0, 2.0], [1.0, 0.0]], [0, 1]),
    "label not a class": ([[0.5, 1.0], [1.0, 0.0]], [0, 7]),
    "null label": ([[0.5, 1.0], [1.0, 0.0]], [0, None]),
}


@pytest.mark.spark
@pytest.mark.parametrize("mode", ["jobs", "barrier"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_rows_give_the_error_the_spark_pass_gives(spark, tmp_path, mode, case, caplog, monkeypatch):
    """The same rows read from the files, collected on the driver (a filter that keeps every row makes the DataFrame
    other than a plain scan; it is small) and through the Spark pass (nothing counted small): the same
    DataError, word for word."""
    import logging

    from pyspark.sql import functions as F

    from sparkdl.spark import direct
    caplog.set_level(logging.INFO, logger="sparkdl")
    features, labels = BAD[case]
    good = [[0.25, 0.5]] * 6
    df = spark.read.parquet(write(tmp_path / "p", [table(good + features, [1] * 6 + labels, pa.float64())]))
    messages = []
    for frame, small in ((df, 1 << 20), (df.where(F.lit(True)), 1 << 20), (df.where(F.lit(True)), -1)):
        monkeypatch.setattr(direct, "SMALL_BYTES", small)
        with pytest.raises(DataError) as e:
            trainer(mode).fit(frame, epochs=1, verbose=0)
        messages.append(str(e.value))
    log = [r.getMessage() for r in caplog.records]
    assert len([m for m in log if "Parquet file(s) read on the driver" in m]) == 1, log   # the plain scan only
    assert len([m for m in log if "collected on the driver" in m]) == 1, log   # the small filtered one
    assert messages[0] == messages[1] == messages[2]


def test_files_other_than_the_plan_said_are_refused(tmp_path):
    d = write(tmp_path / "p", [pa.table({"features": pa.array([[1.0, 2.0]], pa.list_(pa.float32())),
                                         "y": pa.array([0])})])
    with pytest.raises(Unreadable, match="no column 'features' or 'label'"):
        read_batches([f"{d}/part-0.parquet"], "features", "label")
    d = write(tmp_path / "q", [pa.table({"features": pa.array(["a"]), "label": pa.array([0])})])
    with pytest.raises(Unreadable, match="holds features as string"):
        read_batches([f"{d}/part-0.parquet"], "features", "label")


def test_the_daemon_drops_pyspark_zip_only_for_the_same_version(tmp_path):
    import zipfile

    from sparkdl_daemon import prefer_installed

    def installed(name, version):
        (tmp_path / name / "pyspark").mkdir(parents=True)
        (tmp_path / name / "pyspark" / "version.py").write_text(f'__version__: str = "{version}"\n')
        return str(tmp_path / name)
    z = str(tmp_path / "pyspark.zip")
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("pyspark/version.py", '__version__: str = "4.3.0"\n')
    same, other = installed("same", "4.3.0"), installed("other", "4.2.1")
    assert prefer_installed([z, "py4j.zip", same]) == ["py4j.zip", same]
    assert prefer_installed([z, "py4j.zip", other]) == [z, "py4j.zip", other]
    assert prefer_installed([z, "py4j.zip"]) == [z, "py4j.zip"]
    assert prefer_installed(["py4j.zip", same]) == ["py4j.zip", same]


def test_the_daemons_workers_end_quietly_only_where_the_jvm_closed_their_socket():
    from sparkdl_daemon import quiet

    def worker(error):
        def run(sock, authenticated):
            if error is not None:
                raise error
            return 0 if authenticated else 7
        return run
    assert quiet(worker(None))(None, True) == 0
    assert quiet(worker(None))(None, False) == 7
    assert quiet(worker(BrokenPipeError(32, "Broken pipe")))(None, True) == 1
    assert quiet(worker(ConnectionResetError(104, "reset")))(None, True) == 1
    with pytest.raises(ValueError, match="a real failure"):
        quiet(worker(ValueError("a real failure")))(None, True)


@pytest.mark.spark
@pytest.mark.parametrize("case", ["nan feature", "label not a class", None])
def test_a_barrier_fits_validation_parquet_is_read_on_the_driver(spark, tmp_path, case, caplog, monkeypatch):
    """Validation data of a barrier fit (evaluated on the driver): read there from a plain scan, or collected there
    where it is small, with the error the Spark pass gives where a row is bad."""
    import logging

    from pyspark.sql import functions as F

    from sparkdl.spark import direct
    caplog.set_level(logging.INFO, logger="sparkdl")
    good = [[0.25, 0.5], [0.5, -0.25]] * 4
    train = spark.read.parquet(write(tmp_path / "t", [table(good, [0, 1] * 4)]))
    features, labels = BAD[case] if case else ([[1.0, 0.0]], [2])
    val = spark.read.parquet(write(tmp_path / "v", [table(good + features, [0, 1] * 4 + labels)]))
    if case is None:
        h = trainer("barrier").fit(train, epochs=2, validation_df=val, verbose=0)
        assert len(h.history["val_loss"]) == 2 and np.isfinite(h.history["val_loss"]).all()
    else:
        messages = []
        for frame, small in ((val, 1 << 20), (val.where(F.lit(True)), 1 << 20), (val.where(F.lit(True)), -1)):
            monkeypatch.setattr(direct, "SMALL_BYTES", small)   # -1: nothing is small, the Spark pass
            with pytest.raises(DataError) as e:
                trainer("barrier").fit(train, epochs=1, validation_df=frame, verbose=0)
            messages.append(str(e.value))
        assert messages[0] == messages[1] == messages[2] and "validation DataFrame" in messages[0]
    read = [r.getMessage() for r in caplog.records if "on the driver" in r.getMessage()]
    val_read = [m for m in read if "validation DataFrame" in m]
    if case is None:
        assert len(val_read) == 1 and "Parquet file(s) read" in val_read[0], read
    else:
        assert len(val_read) == 2 and "Parquet file(s) read" in val_read[0] and "collected" in val_read[1], read


@pytest.mark.spark
@pytest.mark.parametrize("case", [None, "nan feature", "label not a class"])
def test_an_applications_first_fit_reads_its_files_from_its_start(spark, tmp_path, monkeypatch, case):
    """An application's first fit starts reading its files before its plan is analysed (direct.Early, handed over
    by read_ahead): the same weights, or the same DataError word for word, as the read after the analysis."""
    import threading

    from sparkdl.spark import direct, prepared, trainer as trainer_module
    features, labels = BAD[case] if case else ([[1.0, 0.0]], [2])
    df = spark.read.parquet(write(tmp_path / "p", [table([[0.25, 0.5], [0.5, -0.25]] * 6 + features,
                                                         [0, 1] * 6 + labels)]))
    taken = []
    take = direct.Early.take
    monkeypatch.setattr(direct.Early, "take", lambda self, *a: taken.append(take(self, *a)) or taken[-1])
    outcomes = []
    for first in (False, True):
        def started(sc, n):   # as on an application's first fit: a thread that started the workers (or None)
            t = threading.Thread(target=lambda: None)
            t.start()
            return t if first else None
        monkeypatch.setattr(trainer_module, "warm_workers", started)
        prepared.release(df)   # nothing kept from the other fit
        t = trainer("barrier")
        try:
            t.fit(df, epochs=2, verbose=0)
            outcomes.append(t.model.get_flat_params())
        except DataError as e:
            outcomes.append(str(e))
    assert len(taken) == 1 and taken[0]   # the first fit's rows came from the early read
    if case is None:
        np.testing.assert_array_equal(outcomes[0], outcomes[1])
    else:
        assert outcomes[0] == outcomes[1]


@pytest.mark.spark
def test_an_early_read_not_wanted_is_stopped_and_its_errors_reach_the_fit(spark, tmp_path, monkeypatch):
    from sparkdl.spark import direct
    df = spark.read.parquet(write(tmp_path / "p", [table([[0.25, 0.5]] * 5000, [0, 1] * 2500)], row_group_size=100))
    checks = trainer()._checks("features", "label", "training DataFrame")
    early = direct.Early.start(df, checks, 2)
    assert early.take(checks, 3) is None and not early._thread.is_alive()   # laid out for 3 workers: not these
    early = direct.Early.start(df, checks, 2)
    (x0, y0, m0), (x1, y1, m1) = early.take(checks, 2)
    assert (len(x0), len(x1), m0["rows"], m0["problem"]) == (2500, 2500, 2500, None) and (y0 == 0).all()
    early = direct.Early.start(df, checks, 2)
    early.stop()
    assert not early._thread.is_alive()
    assert direct.Early.start(df.where("label > 0"), checks, 2) is None   # not a plain scan

    def broken(*a):
        raise OSError("disk gone")
    monkeypatch.setattr(direct, "deal", broken)
    with pytest.raises(OSError, match="disk gone"):
        direct.Early.start(df, checks, 2).take(checks, 2)
