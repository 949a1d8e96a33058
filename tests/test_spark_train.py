"""Spark training (jobs mode), distributed evaluate/predict, checkpoints and bad input, on local[2]."""
import json
import os

import numpy as np
import pytest

from sparkdl import optim
from sparkdl.datasets import load_digits
from sparkdl.nn import Dense, Sequential
from sparkdl.dist import schedule
from sparkdl.train import Callback, RoundCheckpoint
from sparkdl.dist.averaging import Contribution
from sparkdl.dist.worker import fit_round, worker_model

pytestmark = pytest.mark.spark
SCHEMA = "features array<float>, label int"


def rows(x, y):
    return [(a.tolist(), int(b)) for a, b in zip(x, y)]


@pytest.fixture(scope="module")
def digits(spark):
    xtr, ytr = load_digits("train")
    xte, yte = load_digits("test")
    return (xtr, ytr, spark.createDataFrame(rows(xtr, ytr), SCHEMA),
            xte, yte, spark.createDataFrame(rows(xte, yte), SCHEMA))


def mlp(seed=0, opt=None, hidden=64):
    m = Sequential([Dense(hidden, activation="relu"), Dense(10, activation="softmax")], input_shape=(64,), seed=seed)
    return m.compile(opt or optim.Adam(0.005), "sparse_categorical_crossentropy", ["accuracy"])


def master(**kw):
    from sparkdl.spark import ParameterAveraging
    kw.setdefault("seed", 0)
    return ParameterAveraging(**kw)


def trainer(model, **kw):
    from sparkdl.spark import SparkTrainer
    return SparkTrainer(model, master(**kw))


def one_partition(spark, x, y):
    return spark.createDataFrame(rows(x, y), SCHEMA).coalesce(1)


def test_two_workers_reach_single_machine_accuracy(digits, tmp_path):
    xtr, ytr, df, xte, yte, dte = digits
    local = mlp()
    local.fit(xtr, ytr, epochs=10, batch_size=32, verbose=0)
    local_acc = local.evaluate(xte, yte)["accuracy"]
    t = trainer(mlp(), num_workers=2, batch_size_per_worker=32, averaging_frequency=10)
    history = t.fit(df, epochs=10, verbose=0)
    acc = t.evaluate(dte)["accuracy"]
    assert acc >= local_acc - 0.01, (acc, local_acc)
    assert len(history.history["loss"]) == 10 and history.history["loss"][-1] < history.history["loss"][0]
    assert history.rounds[-1]["round"] == len(history.rounds)
    summary = history.stats.summary()
    assert summary["workers"] == 2 and 0 < summary["fit_fraction"] < 1
    page = history.stats.to_html(tmp_path / "stats.html")
    assert "Timeline per worker" in page and '"worker 1"' in page and (tmp_path / "stats.html").exists()
    # the trained weights are a normal sparkdl model
    np.testing.assert_allclose(t.model.evaluate(xte, yte)["accuracy"], acc)


def test_distributed_evaluate_equals_local(digits):
    xtr, ytr, df, xte, yte, dte = digits
    m = mlp(seed=3)
    m.fit(xtr, ytr, epochs=1, verbose=0)
    m.compile(m.optimizer, m.loss, ["accuracy", "log_loss", optim and "f1_score", "confusion_matrix"])
    t = trainer(m)
    got, want = t.evaluate(dte), m.evaluate(xte, yte)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-9, err_msg=k)


def test_predict_adds_probability_and_class(digits):
    xtr, ytr, df, xte, yte, dte = digits
    m = mlp(seed=4)
    m.fit(xtr, ytr, epochs=2, verbose=0)
    out = trainer(m).predict(dte).toPandas()
    assert list(out.columns) == ["features", "label", "probability", "prediction"]
    probs = np.stack(out["probability"].to_numpy())
    np.testing.assert_allclose(probs, m.predict(xte), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["prediction"].to_numpy(), probs.argmax(1))


def test_feature_column_types(spark):
    """Spark ML vectors, array<double> and several numeric columns all feed the same model."""
    from pyspark.ml.linalg import Vectors
    x, y = load_digits("test")
    x, y = x[:64, :3], y[:64] % 2
    m = Sequential([Dense(2, activation="softmax")], input_shape=(3,), seed=0).compile("sgd", "sparse_categorical_crossentropy")
    want = m.evaluate(x, y)["loss"]
    t = trainer(m)
    vec = spark.createDataFrame([(Vectors.dense(a.tolist()), int(b)) for a, b in zip(x, y)], ["features", "label"])
    dbl = spark.createDataFrame([(a.tolist(), int(b)) for a, b in zip(x, y)], "features array<double>, label long")
    cols = spark.createDataFrame([(*map(float, a), float(b)) for a, b in zip(x, y)], ["a", "b", "c", "label"])
    assert np.isclose(t.evaluate(vec)["loss"], want, rtol=1e-6)
    assert np.isclose(t.evaluate(dbl)["loss"], want, rtol=1e-6)
    assert np.isclose(t.evaluate(cols, features_col=["a", "b", "c"])["loss"], want, rtol=1e-6)
    assert "probability" in t.predict(vec).columns


def test_one_round_one_worker_equals_local_step(spark):
    """averaging_frequency=1, one worker, SGD: one round is one local train_on_batch on the same minibatch."""
    x, y = load_digits("train")
    x, y = x[:16], y[:16]
    m = mlp(seed=5, opt=optim.SGD(0.1))
    local = mlp(seed=5, opt=optim.SGD(0.1))
    trainer(m, num_workers=1, batch_size_per_worker=16, averaging_frequency=1, repartition="never",
            seed=11).fit(one_partition(spark, x, y), epochs=1, verbose=0)
    order = schedule.epoch_order(16, 11, 0, 0)
    local.train_on_batch(x[order], y[order])
    np.testing.assert_allclose(m.get_flat_params(), local.get_flat_params(), rtol=1e-6, atol=1e-6)


def _manual_round(model, shards, batch_size, freq, seed, average_opt):
    """The expected result of round 0 computed without Spark: each shard fitted, example-weighted mean."""
    spec, compile_json = model.to_json(), json.dumps(model.compile_config())
    start, opt0 = model.get_flat_params(), model.optimizer.get_state()["buffer"]
    total = None
    for w, (x, y) in enumerate(shards):
        worker = worker_model(spec, compile_json)
        batches = schedule.round_batches(schedule.epoch_order(len(x), seed, 0, w), batch_size, freq, 0)
        c = Contribution.of(fit_round(worker, x, y, batches, start, None, opt0 if average_opt else None, 0, average_opt))
        total = c if total is None else total.merge(c)
    return total.average()


@pytest.mark.parametrize("average_opt", [True, False])
def test_merge_is_example_weighted_with_unequal_partitions(spark, average_opt):
    x, y = load_digits("train")
    shards = [(x[:96], y[:96]), (x[96:128], y[96:128])]   # 3 minibatches vs 1
    parts = [rows(*s) for s in shards]
    df = spark.createDataFrame(spark.sparkContext.parallelize([0, 1], 2).flatMap(lambda i: parts[i]), SCHEMA)
    assert df.rdd.getNumPartitions() == 2
    m = mlp(seed=6, opt=optim.Adam(0.01))
    expected = _manual_round(mlp(seed=6, opt=optim.Adam(0.01)), shards, 32, 3, 2, average_opt)
    trainer(m, batch_size_per_worker=32, averaging_frequency=3, repartition="never", seed=2,
            average_optimizer_state=average_opt).fit(df, epochs=1, verbose=0)
    np.testing.assert_allclose(m.get_flat_params(), expected[0], rtol=1e-5, atol=1e-6)
    buffer = m.optimizer.get_state()["buffer"]
    if average_opt:
        np.testing.assert_allclose(buffer, expected[2], rtol=1e-5, atol=1e-7)
    else:
        assert not buffer.any(), "optimizer state must stay untouched when it is not averaged"
    assert m.optimizer.iterations == 3


class CrashAfter(Callback):
    def __init__(self, rounds):
        self.rounds = rounds

    def on_round_end(self, round, logs=None):
        if round + 1 == self.rounds:
            raise KeyboardInterrupt("simulated driver crash")


@pytest.mark.parametrize("mode", ["jobs", "barrier"])
def test_resume_from_checkpoint_matches_uninterrupted(digits, tmp_path, mode):
    xtr, ytr, df, *_ = digits
    small = df.limit(384)
    opts = dict(num_workers=2, batch_size_per_worker=32, averaging_frequency=2, mode=mode)
    full = mlp(seed=7)
    trainer(full, **opts).fit(small, epochs=2, verbose=0)
    crashed = mlp(seed=7)
    ckpt = RoundCheckpoint(tmp_path / "round-{round}.npz", every=2)
    with pytest.raises(KeyboardInterrupt):
        trainer(crashed, **opts).fit(small, epochs=2, callbacks=[ckpt, CrashAfter(5)], verbose=0)
    assert ckpt.saved[-1].endswith("round-4.npz")
    resumed = mlp(seed=7)
    t = trainer(resumed, **opts)
    history = t.fit(small, epochs=2, resume_from=ckpt.saved[-1], verbose=0)
    assert history.rounds[0]["round"] == 5
    np.testing.assert_allclose(resumed.get_flat_params(), full.get_flat_params(), rtol=1e-5, atol=1e-6)
    assert resumed.optimizer.iterations == full.optimizer.iterations


def test_early_stopping_on_validation_dataframe(digits):
    from sparkdl.train import EarlyStopping
    xtr, ytr, df, xte, yte, dte = digits
    m = mlp(opt=optim.SGD(0.0))   # nothing changes, so val_loss never improves
    h = trainer(m, num_workers=2, batch_size_per_worker=64, averaging_frequency=50).fit(
        df, epochs=5, validation_df=dte, callbacks=[EarlyStopping(patience=1)], verbose=0)
    assert len(h.history["val_loss"]) == 2 and "val_accuracy" in h.history


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_loss_names_the_round_and_keeps_last_good_weights(spark):
    x, y = load_digits("train")
    m = Sequential([Dense(10)], input_shape=(64,), seed=0).compile(optim.SGD(1e30), "mse")
    before = m.get_flat_params()
    df = spark.createDataFrame([(a.tolist(), float(b)) for a, b in zip(x[:64] * 1e20, y[:64])],
                               "features array<float>, label double")
    m2 = Sequential([Dense(1)], input_shape=(64,), seed=0).compile(optim.SGD(1e30), "mse")
    before = m2.get_flat_params()
    with pytest.raises(FloatingPointError, match=r"round 1 \(epoch 1, round 1 of the epoch\)"):
        trainer(m2, num_workers=2, batch_size_per_worker=16).fit(df, epochs=1, verbose=0)
    np.testing.assert_array_equal(m2.get_flat_params(), before)


def _df(spark, data, schema=SCHEMA):
    return spark.createDataFrame(data, schema)


def test_bad_input_is_named(spark):
    from sparkdl.spark import SparkTrainer
    m = mlp()
    t = trainer(m, num_workers=2, batch_size_per_worker=2)
    good = [([0.1] * 64, 1)] * 8
    cases = [
        (_df(spark, good).withColumnRenamed("features", "f"), r"the training DataFrame, column 'features': no such"),
        (_df(spark, good).withColumnRenamed("label", "y"), r"the training DataFrame, column 'label': no such column"),
        (_df(spark, good + [(None, 1)]), r"column 'features': 1 of 9 rows are null"),
        (_df(spark, good + [([0.1] * 64, None)]), r"column 'label': 1 of 9 rows are null"),
        (_df(spark, good + [([0.1] * 63, 1)]), r"column 'features': 1 of 9 rows have 63 values \(expected 64 "),
        (_df(spark, good + [([float("nan")] * 64, 1)]), r"column 'features': 1 of 9 rows hold NaN or infinite"),
        (_df(spark, good + [([0.1] * 64, 10)]), r"1 of 9 rows are outside \[0, 9\].*labels found in \[1, 10\]"),
        (_df(spark, [([0.1] * 64, 0.5)] + [(f, float(v)) for f, v in good], "features array<float>, label double"), r"integer class indices"),
        (_df(spark, [], SCHEMA), r"the training DataFrame, column 'features': no rows"),
        (_df(spark, [("x", 1)], "features string, label int"), r"must be a Spark ML vector.*found type string"),
        (_df(spark, [([0.1] * 64, "a")], "features array<float>, label string"), r"column 'label': labels must be "
                                                                                 r"numeric"),
    ]
    for df, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            t.fit(df, verbose=0)
    with pytest.raises(RuntimeError, match="must be compiled"):
        SparkTrainer(Sequential([Dense(2)], input_shape=(64,))).fit(_df(spark, good))
    with pytest.raises(ValueError, match="epochs must be a positive integer. Received: epochs=0"):
        t.fit(_df(spark, good), epochs=0)
    with pytest.raises(ValueError, match="repartition must be one of"):
        master(repartition="sometimes")
    with pytest.raises(ValueError, match="averaging_frequency must be an int >= 1. Received: averaging_frequency=0"):
        master(averaging_frequency=0)


@pytest.mark.parametrize("mode", ["jobs", "barrier"])
def test_prepared_data_is_kept_for_the_next_fit_on_the_same_dataframe_and_released_on_demand(digits, caplog, mode):
    """A second fit on a DataFrame of the same plan reuses the first one's prepared data (no checks, conversion or
    repartition) and ends with the same weights as the first; with reuse_prepared=False nothing stays cached;
    release_prepared() frees what was kept."""
    import logging
    from sparkdl.spark import prepared_data, release_prepared
    xtr, ytr, df, *_ = digits
    spark = df.sparkSession
    storage = lambda: len(spark.sparkContext._jsc.sc().getRDDStorageInfo())
    release_prepared()
    before = storage()
    weights, reused = [], []
    for frame, keep in ((df, True), (df.select("*"), True), (df.where("label >= 0"), False)):
        caplog.clear()
        t = trainer(mlp(), num_workers=2, batch_size_per_worker=32, averaging_frequency=5, mode=mode,
                    reuse_prepared=keep)
        with caplog.at_level(logging.INFO, logger="sparkdl"):
            t.fit(frame, epochs=1, verbose=0)
        reused.append(any("kept from an earlier fit: reused" in r.getMessage() for r in caplog.records))
        weights.append(t.model.get_flat_params())
    assert reused == [False, True, False]   # df.select("*") has df's plan; the filter makes another one
    kept = prepared_data()
    assert len(kept) == 1 and "training DataFrame of 1438 rows, 2 partitions" in kept[0] and "shard files" in kept[0]
    from sparkdl.spark.prepared import _HELD
    paths = [p for p, _ in next(iter(_HELD.values())).shards]   # on a local master: shard files, none in Spark
    assert len(paths) == 2 and all(os.path.exists(p) for p in paths) and storage() == before
    assert release_prepared(df) == 1 and prepared_data() == [] and not any(os.path.exists(p) for p in paths)
    for w in weights[1:]:
        np.testing.assert_array_equal(weights[0], w)


@pytest.mark.parametrize("mode", ["jobs", "barrier"])
def test_the_driver_holds_blas_to_one_thread_while_local_workers_fit(digits, mode):
    """On a local master the workers use the driver's CPUs, and OpenBLAS's idle threads spin after every call: the
    driver keeps to one BLAS thread during the fit and gets its threads back after it."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from sparkdl.backend import blas_threads

    def threads():
        return max((i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"), default=0)

    seen = []

    class Blas(Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(threads())

    with blas_threads(2):
        before = threads()
        if before < 2:
            pytest.skip(f"BLAS can run only {before} thread here")
        trainer(mlp(), num_workers=2, mode=mode).fit(digits[2], epochs=2, callbacks=[Blas()], verbose=0)
        after = threads()
    assert before == after == 2 and seen == [1, 1], (before, seen, after)
