"""Bad input, in both modes: every case fails before any training round (null, NaN or infinite feature values: as
the workers convert their rows; the rest before any training job) with a sparkdl.DataError that names the
DataFrame's role and the column, and leaves the Spark session as it found it (it still runs a job, no job of ours
is left running, nothing of ours is left in /dev/shm). Small data trains."""
import glob
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from sparkdl import DataError, optim
from sparkdl.nn import Dense, Sequential
from sparkdl.spark import ParameterAveraging, SparkTrainer

pytestmark = pytest.mark.spark
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH = 4
GOOD = [([0.5, -0.25, 1.0, 0.0], 1), ([0.0, 0.5, -1.0, 0.25], 0), ([1.0, 1.0, 0.0, -0.5], 2)] * 4
MODES = ["jobs", "barrier"]


def model(loss="sparse_categorical_crossentropy", outputs=3):
    m = Sequential([Dense(8, activation="relu"), Dense(outputs, activation="softmax" if outputs > 1 else "sigmoid")],
                   input_shape=(WIDTH,), seed=0)
    return m.compile(optim.Adam(0.01), loss, ["accuracy"])


def trainer(mode, m=None, **kw):
    kw.setdefault("num_workers", 2)
    kw.setdefault("batch_size_per_worker", 4)
    return SparkTrainer(m or model(), ParameterAveraging(mode=mode, seed=0, **kw))


def vectors(spark, rows):
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.sql.types import DoubleType, StructField, StructType
    schema = StructType([StructField("features", VectorUDT()), StructField("label", DoubleType())])
    return spark.createDataFrame([(None if f is None else Vectors.dense(f), None if y is None else float(y))
                                  for f, y in rows], schema)


def arrays(spark, rows, label_type="double"):
    return spark.createDataFrame([(f, None if y is None else (float(y) if label_type == "double" else y))
                                  for f, y in rows], f"features array<double>, label {label_type}")


def columns(spark, rows):
    return spark.createDataFrame([tuple(f) + (float(y),) for f, y in rows], "a double, b double, c double, d double, "
                                                                             "label double")


@pytest.fixture(autouse=True)
def leaves_nothing_behind(spark):
    before = set(glob.glob("/dev/shm/sparkdl-*"))
    yield
    tracker, deadline = spark.sparkContext.statusTracker(), time.monotonic() + 10
    while (tracker.getActiveJobsIds() or tracker.getActiveStageIds()) and time.monotonic() < deadline:
        time.sleep(0.05)   # the tracker hears of a job's end asynchronously
    assert tracker.getActiveJobsIds() == [], "a job was left running"
    assert tracker.getActiveStageIds() == [], "a stage was left running"
    assert spark.range(5).count() == 5                    # the session still runs jobs
    assert set(glob.glob("/dev/shm/sparkdl-*")) <= before, "a shared-memory region was left behind"


def expect(role, column, *fragments):
    """A check of the DataError's role, column and message."""
    def check(e):
        assert isinstance(e, DataError), repr(e)
        assert e.role == role and e.column == column, (e.role, e.column, str(e))
        assert str(e).startswith(f"the {role}, column {column!r}: "), str(e)
        for f in fragments:
            assert f in str(e), (f, str(e))
    return check


BAD_TRAINING = {
    "a null vector": (lambda s: vectors(s, GOOD + [(None, 1)]),
                      expect("training DataFrame", "features", "1 of 13 rows are null", "expected 4 numbers per row",
                             "e.g. features=null, label=1")),
    "a vector of 3 values": (lambda s: vectors(s, GOOD + [([1.0, 2.0, 3.0], 1)]),
                             expect("training DataFrame", "features", "1 of 13 rows have 3 values",
                                    "e.g. features=[1, 2, 3] (3 values)")),
    "a null array": (lambda s: arrays(s, GOOD + [(None, 0)]),
                     expect("training DataFrame", "features", "1 of 13 rows are null")),
    "a null inside an array": (lambda s: arrays(s, GOOD + [([1.0, None, 0.0, 0.0], 0)]),
                               expect("training DataFrame", "features", "1 of 13 rows hold null values",
                                      "e.g. features=[1, null, 0, 0]")),
    "NaN features": (lambda s: arrays(s, GOOD + [([1.0, float("nan"), 0.0, 0.0], 0)] * 2),
                     expect("training DataFrame", "features", "2 of 14 rows hold NaN or infinite values")),
    "infinite features": (lambda s: vectors(s, GOOD + [([float("inf"), 0.0, 0.0, 0.0], 0)]),
                          expect("training DataFrame", "features", "1 of 13 rows hold NaN or infinite values")),
    "a null in one of the feature columns": (
        lambda s: columns(s, GOOD).union(s.createDataFrame([(1.0, None, 0.0, 0.0, 1.0)], "a double, b double, "
                                                           "c double, d double, label double")),
        expect("training DataFrame", "features ['a', 'b', 'c', 'd']", "1 of 13 rows hold null values"),
        ["a", "b", "c", "d"]),
    "a null label": (lambda s: arrays(s, GOOD + [([0.0] * 4, None)]),
                     expect("training DataFrame", "label", "1 of 13 rows are null", "label=null")),
    "a NaN label": (lambda s: arrays(s, GOOD + [([0.0] * 4, float("nan"))]),
                    expect("training DataFrame", "label", "1 of 13 rows are NaN or infinite")),
    "a label past the classes": (lambda s: arrays(s, GOOD + [([0.0] * 4, 3)]),
                                 expect("training DataFrame", "label", "1 of 13 rows are outside [0, 2]",
                                        "the model has 3 outputs", "label=3")),
    "a negative label": (lambda s: vectors(s, GOOD + [([0.0] * 4, -1)]),
                         expect("training DataFrame", "label", "are outside [0, 2]", "labels found in [-1, 2]")),
    "a fractional label": (lambda s: arrays(s, GOOD + [([0.0] * 4, 1.5)]),
                           expect("training DataFrame", "label", "1 of 13 rows are not integers", "label=1.5")),
    "no features column": (lambda s: arrays(s, GOOD).withColumnRenamed("features", "x"),
                           expect("training DataFrame", "features", "no such column", "['x', 'label']")),
    "no label column": (lambda s: arrays(s, GOOD).withColumnRenamed("label", "y"),
                        expect("training DataFrame", "label", "no such column")),
    "text features": (lambda s: s.createDataFrame([("a", 1.0)], "features string, label double"),
                      expect("training DataFrame", "features", "must be a Spark ML vector", "found type string")),
    "text labels": (lambda s: s.createDataFrame([([0.0] * 4, "x")], "features array<double>, label string"),
                    expect("training DataFrame", "label", "labels must be numeric; found type string")),
    "no rows": (lambda s: arrays(s, GOOD).limit(0),
                expect("training DataFrame", "features", "no rows")),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(BAD_TRAINING))
def test_fit_refuses_bad_training_data(spark, mode, case):
    make, check, *features_col = BAD_TRAINING[case]
    with pytest.raises(DataError) as e:
        trainer(mode).fit(make(spark), *features_col, epochs=1, verbose=0)
    check(e.value)


@pytest.mark.parametrize("mode", MODES)
def test_fit_names_the_validation_dataframe(spark, mode):
    t = trainer(mode)
    with pytest.raises(DataError) as e:
        t.fit(arrays(spark, GOOD), epochs=1, verbose=0, validation_df=vectors(spark, GOOD + [([1.0] * 5, 0)]))
    expect("validation DataFrame", "features", "1 of 13 rows have 5 values")(e.value)


def test_a_binary_target_outside_zero_and_one_is_named(spark):
    t = trainer("jobs", model("binary_crossentropy", 1))
    with pytest.raises(DataError) as e:
        t.fit(arrays(spark, [(f, min(y, 1)) for f, y in GOOD] + [([0.0] * 4, 2)]), epochs=1, verbose=0)
    expect("training DataFrame", "label", "1 of 13 rows are outside [0, 1]", "binary targets")(e.value)


@pytest.mark.parametrize("case, make, check", [
    ("a null vector", lambda s: vectors(s, GOOD + [(None, 1)]),
     expect("evaluation DataFrame", "features", "1 of 13 rows are null")),
    ("a wider vector", lambda s: vectors(s, GOOD + [([1.0] * 6, 1)]),
     expect("evaluation DataFrame", "features", "1 of 13 rows have 6 values")),
    ("a label past the classes", lambda s: arrays(s, GOOD + [([0.0] * 4, 7)]),
     expect("evaluation DataFrame", "label", "are outside [0, 2]")),
])
def test_evaluate_refuses_bad_data(spark, case, make, check):
    with pytest.raises(DataError) as e:
        trainer("jobs").evaluate(make(spark))
    check(e.value)


@pytest.mark.parametrize("case, make, check", [
    ("narrower vectors", lambda s: vectors(s, [([1.0, 2.0], 0)] * 3),
     expect("prediction DataFrame", "features", "rows of [2] values among the first 3",
            "expected 4 numbers per row")),
    ("a null vector first", lambda s: vectors(s, [(None, 0)] + GOOD),
     expect("prediction DataFrame", "features", "1 of the first 13 rows are null")),
    ("no features column", lambda s: arrays(s, GOOD).drop("features"),
     expect("prediction DataFrame", "features", "no such column")),
])
def test_predict_refuses_bad_data_before_the_users_action(spark, case, make, check):
    with pytest.raises(DataError) as e:
        trainer("jobs").predict(make(spark))   # no action yet: the check is up front
    check(e.value)


def test_a_bad_row_only_a_task_sees_reaches_the_driver_as_a_data_error(spark):
    """Prediction checks only the first rows up front; a NaN further on is found by a task, and where sparkdl runs
    the action (here: the validation data of a barrier fit, collected once) the driver raises the same DataError,
    not the Spark failure around it."""
    from sparkdl.spark import data
    bad = arrays(spark, GOOD * 3 + [([float("nan")] * 4, 0)]).repartition(2)
    predicted = trainer("jobs").predict(bad)
    with pytest.raises(DataError) as e:
        with data.task_errors():
            predicted.collect()
    expect("prediction DataFrame", "features", "1 of", "rows of a batch hold NaN or infinite values")(e.value)


# -- small data trains, as in Keras --------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_fewer_rows_than_workers_times_batch_train(spark, mode, caplog):
    m = model()
    before = m.get_flat_params()
    t = trainer(mode, m, batch_size_per_worker=64)     # 3 rows, 2 workers, batches of 64
    history = t.fit(arrays(spark, GOOD[:3]), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    assert not np.array_equal(m.get_flat_params(), before)


@pytest.mark.parametrize("mode", MODES)
def test_an_empty_partition_sits_the_fit_out(spark, mode, caplog):
    df = arrays(spark, GOOD[:1])                      # one row, two workers: one partition is empty
    t = trainer(mode, batch_size_per_worker=8)
    with caplog.at_level("WARNING", logger="sparkdl"):
        history = t.fit(df, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert any("are empty" in r.getMessage() and "sit the fit out" in r.getMessage() for r in caplog.records)


# -- the command line ------------------------------------------------------------------------------------------------
def _job(script, *args):
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    r = subprocess.run([sys.executable, os.path.join(REPO, "jobs", script), *map(str, args)], capture_output=True,
                       text=True, timeout=300, cwd=REPO, env=env)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "WARN" not in ln and not ln.startswith(
        ("Using Spark", "Setting default log level", "To adjust logging", "WARNING: Using incubator"))]
    return r.returncode, lines


def test_a_bad_argument_is_one_line_and_a_hint():
    status, lines = _job("train.py", "--epochs", "ten")
    assert status == 2 and lines == ["jobs/train.py: error: argument --epochs: invalid int value: 'ten' "
                                     "(see jobs/train.py --help)"]


@pytest.mark.slow
def test_jobs_name_the_role_and_column_in_one_line(spark, tmp_path):
    bad = tmp_path / "bad.parquet"
    arrays(spark, GOOD * 5 + [([float("nan")] * 4, 0)]).coalesce(1).write.parquet(str(bad))
    wide = tmp_path / "wide.parquet"
    arrays(spark, [([1.0] * 5, 0)] * 3).coalesce(1).write.parquet(str(wide))
    good = tmp_path / "good.parquet"
    arrays(spark, GOOD * 5).coalesce(1).write.parquet(str(good))
    status, lines = _job("train.py", "--data", bad, "--test-data", good, "--epochs", "1", "--output-dir",
                         tmp_path / "out")
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("jobs/train.py: error: the training DataFrame, column 'features': 1 of 61 rows hold "
                               "NaN or infinite values"), lines
    status, lines = _job("train.py", "--data", good, "--test-data", bad, "--epochs", "1", "--output-dir",
                         tmp_path / "out")
    assert status == 2 and len(lines) == 1, lines          # the test data is checked before training, not after
    assert lines[0].startswith("jobs/train.py: error: the evaluation DataFrame, column 'features': 1 of 61 rows hold "
                               "NaN or infinite values"), lines
    assert not (tmp_path / "out" / "model.npz").exists()
    status, lines = _job("train.py", "--data", good, "--epochs", "1", "--input-shape", "4", "--output-dir",
                         tmp_path / "model")
    assert status == 0, lines
    # prediction reads the rows only when it writes them: a task finds the bad one (Spark logs the task's failure
    # first, in local mode on the same console), and the job ends with the same one-line DataError
    status, lines = _job("predict.py", "--model-file", tmp_path / "model" / "model.npz", "--data", bad, "--output",
                         tmp_path / "p")
    assert status == 2 and lines[-1].startswith("jobs/predict.py: error: the prediction DataFrame, column 'features': "
                                                "1 of 61 rows of a batch hold NaN or infinite values"), lines[-1]
    status, lines = _job("evaluate.py", "--model-file", tmp_path / "model" / "model.npz", "--data", wide)
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("jobs/evaluate.py: error: the evaluation DataFrame, column 'features': 3 of 3 rows "
                               "have 5 values"), lines
