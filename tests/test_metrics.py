import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as skm

from sparkdl import metrics

N, C = 103, 4
CHUNKS = [0, 17, 58, N]  # three unequal chunks


def softmax_probs(rng, n=N, c=C):
    z = rng.normal(size=(n, c))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return softmax_probs(rng), rng.integers(0, C, size=N)


def merged(metric, y_pred, y_true):
    """Partials over three unequal chunks, merged starting from the empty identity."""
    totals = {}
    for lo, hi in zip(CHUNKS[:-1], CHUNKS[1:]):
        totals = metrics.merge(totals, metric.partial(y_pred[lo:hi], y_true[lo:hi]))
    return metric.result(totals)


def check(metric, y_pred, y_true, expected):
    metric = metrics.get(metric)
    one_shot = metrics.compute(metric, y_pred, y_true)
    np.testing.assert_allclose(one_shot, expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(merged(metric, y_pred, y_true), one_shot, rtol=1e-9, atol=1e-9)


def test_partials_are_host_float64_sums(data):
    probs, y = data
    for name in ["accuracy", "top_k_accuracy", "confusion_matrix", "log_loss"]:
        for value in metrics.get(name).partial(probs, y).values():
            assert isinstance(value, float) or (isinstance(value, np.ndarray) and value.dtype == np.float64)


def test_accuracy(data):
    probs, y = data
    expected = skm.accuracy_score(y, probs.argmax(1))
    check("accuracy", probs, y, expected)
    check("acc", probs, y.astype(np.float32), expected)  # labels as floats
    check("accuracy", probs, np.eye(C)[y], expected)  # one-hot


@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_k_accuracy(data, k):
    probs, y = data
    check(metrics.TopKAccuracy(k=k), probs, y, skm.top_k_accuracy_score(y, probs, k=k, labels=range(C)))


def test_top_k_default_is_5():
    rng = np.random.default_rng(1)
    probs, y = softmax_probs(rng, c=8), rng.integers(0, 8, size=N)
    assert metrics.get("top_k_accuracy").k == 5
    check("top_k_accuracy", probs, y, skm.top_k_accuracy_score(y, probs, k=5, labels=range(8)))


def test_confusion_matrix(data):
    probs, y = data
    expected = skm.confusion_matrix(y, probs.argmax(1), labels=range(C))
    for metric in [metrics.ConfusionMatrix(), metrics.ConfusionMatrix(num_classes=C)]:
        got = metrics.compute(metric, probs, np.eye(C)[y])
        assert got.dtype == np.int64 and got.shape == (C, C)
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(merged(metric, probs, y), expected)


@pytest.mark.parametrize("cls,index", [(metrics.Precision, 0), (metrics.Recall, 1), (metrics.F1Score, 2)])
def test_precision_recall_f1(data, cls, index):
    probs, y = data
    pred = probs.argmax(1)
    per_class = skm.precision_recall_fscore_support(y, pred, labels=range(C), zero_division=0)[index]
    macro = skm.precision_recall_fscore_support(y, pred, average="macro", zero_division=0)[index]
    check(cls(average=None), probs, y, per_class)
    check(cls(), probs, y, macro)


@pytest.mark.parametrize("cls,index", [(metrics.Precision, 0), (metrics.Recall, 1), (metrics.F1Score, 2)])
def test_class_never_predicted_or_absent(data, cls, index):
    probs, y = data
    probs = probs.copy()
    probs[:, 2] = 0.0  # class 2 is never predicted (but has support)
    y = np.where(y == 3, 0, y)  # class 3 never occurs and, for rows set below, is predicted
    probs[:5, 3] = 10.0
    pred = probs.argmax(1)
    assert 2 not in pred and 3 not in y and 3 in pred
    per_class = skm.precision_recall_fscore_support(y, pred, labels=range(C), zero_division=0)[index]
    macro = skm.precision_recall_fscore_support(y, pred, average="macro", zero_division=0)[index]
    check(cls(num_classes=C, average=None), probs, y, per_class)
    check(cls(num_classes=C), probs, y, macro)


@pytest.mark.parametrize("cls,index", [(metrics.Precision, 0), (metrics.Recall, 1), (metrics.F1Score, 2)])
def test_macro_skips_classes_absent_from_true_and_pred(data, cls, index):
    probs, y = data
    probs, y = probs.copy(), np.where(y == 3, 1, y)
    probs[:, 3] = 0.0  # class 3: no support, no predictions
    macro = skm.precision_recall_fscore_support(y, probs.argmax(1), average="macro", zero_division=0)[index]
    check(cls(), probs, y, macro)
    assert metrics.compute(cls(average=None), probs, y)[3] == 0.0


@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")  # float32 rows, seen in float64
def test_log_loss(data):
    probs, y = data
    expected = skm.log_loss(y, probs, labels=range(C))
    check("log_loss", probs, y, expected)
    p32 = probs.astype(np.float32)  # summed in float64: compare with sklearn on the same values in float64
    check("log_loss", p32, np.eye(C)[y], skm.log_loss(y, p32.astype(np.float64), labels=range(C)))


def test_log_loss_clips():
    probs, y = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1, 1])
    assert metrics.compute("log_loss", probs, y) == pytest.approx(-np.log(1e-7) / 2 - np.log(1 - 1e-7) / 2)


@pytest.mark.parametrize("shape", [(N,), (N, 1)])
def test_binary_probabilities(shape):
    rng = np.random.default_rng(2)
    p, y = rng.uniform(0.01, 0.99, size=N), rng.integers(0, 2, size=N)
    pred = (p > 0.5).astype(int)
    y_pred = p.reshape(shape)
    check("accuracy", y_pred, y, skm.accuracy_score(y, pred))
    check("log_loss", y_pred, y, skm.log_loss(y, p))
    np.testing.assert_array_equal(metrics.compute("confusion_matrix", y_pred, y), skm.confusion_matrix(y, pred))
    prf = skm.precision_recall_fscore_support(y, pred, zero_division=0)
    for name, index in [("precision", 0), ("recall", 1), ("f1_score", 2)]:
        check({"class_name": type(metrics.get(name)).__name__, "config": {"average": None}}, y_pred, y, prf[index])
    check(metrics.TopKAccuracy(k=1), y_pred, y.reshape(-1, 1), skm.accuracy_score(y, pred))


@pytest.mark.parametrize("shape", [(N,), (N, 3)])
def test_regression(shape):
    rng = np.random.default_rng(3)
    t = rng.normal(size=shape)
    p = t + 0.5 * rng.normal(size=shape)
    check("mse", p, t, skm.mean_squared_error(t, p))
    check("mae", p, t, skm.mean_absolute_error(t, p))
    check("r2", p, t, skm.r2_score(t.ravel(), p.ravel()))  # pooled over outputs
    check("mse", p.astype(np.float32), t.astype(np.float32),
          skm.mean_squared_error(t.astype(np.float32).astype(np.float64), p.astype(np.float32).astype(np.float64)))


def test_regression_column_against_flat_target():
    t = np.arange(6.0)
    p = (t + 1).reshape(-1, 1)  # a Dense(1) output against a flat target must not broadcast to (6, 6)
    assert metrics.compute("mse", p, t) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        metrics.compute("mae", p, t[:5])


def test_r2_constant_target():
    t = np.full(5, 0.1)
    assert metrics.compute("r2", t, t) == 1.0
    assert metrics.compute("r2", t + 1, t) == 0.0


def test_merge():
    a, b = {"x": 1.0, "m": np.ones(2)}, {"x": 2.0, "m": np.full(2, 3.0)}
    out = metrics.merge(a, b)
    assert out["x"] == 3.0 and list(out["m"]) == [4.0, 4.0] and list(a["m"]) == [1.0, 1.0]
    assert metrics.merge({}, a) == a and metrics.merge(a, {}) == a and metrics.merge({}, {}) == {}
    with pytest.raises(ValueError, match="different keys"):
        metrics.merge(a, {"x": 1.0})
    with pytest.raises(ValueError, match="shapes"):
        metrics.merge({"m": np.ones((2, 2))}, {"m": np.ones((3, 3))})


def test_empty_totals_are_nan():
    assert np.isnan(metrics.get("accuracy").result({"correct": 0.0, "count": 0.0}))


def test_bad_inputs(data):
    probs, y = data
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
        metrics.compute("accuracy", probs, np.full(N, 4))
    with pytest.raises(ValueError, match="same number of rows"):
        metrics.compute("log_loss", probs, y[:-1])
    with pytest.raises(ValueError, match="num_classes=3"):
        metrics.compute(metrics.ConfusionMatrix(3), probs, y)
    with pytest.raises(ValueError, match="Received: k=0"):
        metrics.TopKAccuracy(k=0)
    with pytest.raises(ValueError, match="Received: average='micro'"):
        metrics.F1Score(average="micro")
    with pytest.raises(ValueError, match="Received: num_classes=1"):
        metrics.Precision(num_classes=1)


NAMES = {"accuracy": metrics.Accuracy, "acc": metrics.Accuracy, "top_k_accuracy": metrics.TopKAccuracy,
         "confusion_matrix": metrics.ConfusionMatrix, "precision": metrics.Precision, "recall": metrics.Recall,
         "f1_score": metrics.F1Score, "log_loss": metrics.LogLoss, "mse": metrics.MeanSquaredError,
         "mae": metrics.MeanAbsoluteError, "r2": metrics.R2Score}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_get_by_name(name):
    metric = metrics.get(name)
    assert isinstance(metric, NAMES[name]) and metric.name == ("accuracy" if name == "acc" else name)
    assert metrics.get(metric) is metric


def test_get_unknown():
    with pytest.raises(ValueError, match=r"Received: 'f2'$") as info:
        metrics.get("f2")
    assert "accuracy" in str(info.value) and "r2" in str(info.value)
    with pytest.raises(ValueError, match="Received: {'class_name': 'Nope'}"):
        metrics.get({"class_name": "Nope"})


@pytest.mark.parametrize("metric", [metrics.TopKAccuracy(k=3), metrics.ConfusionMatrix(7),
                                    metrics.F1Score(num_classes=3, average=None), metrics.Recall(), metrics.R2Score()])
def test_config_round_trip(metric):
    import json
    config = json.loads(json.dumps(metrics.to_config(metric)))
    again = metrics.get(config)
    assert type(again) is type(metric) and again.get_config() == metric.get_config()


@pytest.mark.gpu
def test_cupy_matches_numpy(data):
    cp = pytest.importorskip("cupy")
    probs, y = data
    rng = np.random.default_rng(4)
    t = rng.normal(size=(N, 2))
    p = t + rng.normal(size=(N, 2))
    cases = [(name, probs, y) for name in ["accuracy", "top_k_accuracy", "log_loss", "precision", "f1_score"]]
    cases += [("accuracy", probs[:, 1], (y > 1).astype(np.float32)), ("log_loss", probs[:, :1], y > 2)]
    cases += [(name, p, t) for name in ["mse", "mae", "r2"]]
    cases += [(metrics.Recall(average=None), probs, np.eye(C)[y])]
    for metric, y_pred, y_true in cases:
        expected = metrics.compute(metric, y_pred, y_true)
        np.testing.assert_allclose(metrics.compute(metric, cp.asarray(y_pred), cp.asarray(y_true)), expected,
                                   rtol=1e-12)
    got = metrics.get("confusion_matrix").partial(cp.asarray(probs), cp.asarray(y))["matrix"]
    assert type(got) is np.ndarray and got.dtype == np.float64
    np.testing.assert_array_equal(got, metrics.get("confusion_matrix").partial(probs, y)["matrix"])


def test_imports_without_cupy_or_pyspark():
    code = ("import sys; sys.modules['cupy'] = None; sys.modules['pyspark'] = None\n"
            "import numpy as np; from sparkdl import metrics\n"
            "assert metrics.compute('accuracy', np.eye(3), np.arange(3)) == 1.0")
    subprocess.run([sys.executable, "-c", code], check=True)
