import numpy as np
import pytest

from sparkdl import losses
from sparkdl.nn import Dense, Sequential
from sparkdl.testing import TOL, numeric_grad, rel_error

rng = np.random.default_rng(0)


def _grad_check(fn, y_pred, y_true):
    value, grad = fn(y_pred, y_true)
    idx = np.arange(y_pred.size)
    numeric = numeric_grad(lambda: float(fn(y_pred, y_true)[0]), y_pred, idx)
    assert rel_error(grad.ravel(), numeric) <= TOL
    return float(value)


def _probs(shape):
    e = np.exp(rng.standard_normal(shape))
    return e / e.sum(axis=-1, keepdims=True)


CASES = [
    ("sparse_categorical_crossentropy", lambda: rng.standard_normal((5, 4)), lambda: rng.integers(0, 4, 5)),
    ("sparse_categorical_crossentropy_seq", lambda: rng.standard_normal((2, 3, 4)), lambda: rng.integers(0, 4, (2, 3))),
    ("categorical_crossentropy", lambda: rng.standard_normal((5, 4)), lambda: _probs((5, 4))),
    ("binary_crossentropy", lambda: rng.standard_normal((6, 1)) * 3, lambda: rng.integers(0, 2, (6, 1)).astype(float)),
    ("sparse_categorical_crossentropy_probs", lambda: _probs((5, 4)), lambda: rng.integers(0, 4, 5)),
    ("categorical_crossentropy_probs", lambda: _probs((5, 4)), lambda: _probs((5, 4))),
    ("binary_crossentropy_probs", lambda: rng.uniform(0.05, 0.95, (6, 2)), lambda: rng.uniform(0, 1, (6, 2))),
    ("mean_squared_error", lambda: rng.standard_normal((5, 3)), lambda: rng.standard_normal((5, 3))),
    ("mean_absolute_error", lambda: rng.standard_normal((5, 3)), lambda: rng.standard_normal((5, 3))),
    ("huber", lambda: rng.standard_normal((8, 2)) * 2, lambda: rng.standard_normal((8, 2))),
]


@pytest.mark.parametrize("name,make_pred,make_true", CASES, ids=[c[0] for c in CASES])
def test_loss_gradients(name, make_pred, make_true):
    fn = getattr(losses, name.replace("_seq", ""))
    _grad_check(fn, make_pred(), make_true())


def test_crossentropy_values_match_definitions():
    z = rng.standard_normal((6, 5))
    y = rng.integers(0, 5, 6)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    expected = -np.log(p[np.arange(6), y]).mean()
    assert np.isclose(losses.sparse_categorical_crossentropy(z, y)[0], expected)
    assert np.isclose(losses.categorical_crossentropy(z, np.eye(5)[y])[0], expected)
    assert np.isclose(losses.sparse_categorical_crossentropy_probs(p, y)[0], expected)
    b = rng.standard_normal(7)
    t = rng.integers(0, 2, 7).astype(float)
    s = 1 / (1 + np.exp(-b))
    assert np.isclose(losses.binary_crossentropy(b, t)[0], -(t * np.log(s) + (1 - t) * np.log(1 - s)).mean())
    d = rng.standard_normal(10) * 3
    assert np.isclose(losses.huber(d, np.zeros(10), 1.0)[0],
                      np.where(np.abs(d) <= 1, 0.5 * d * d, np.abs(d) - 0.5).mean())


def test_logits_are_stable_for_extreme_values():
    z = np.array([[1000.0, -1000.0, 0.0]])
    value, grad = losses.sparse_categorical_crossentropy(z, np.array([1]))
    assert np.isfinite(value) and np.isclose(value, 2000.0)
    assert np.isfinite(grad).all()
    value, grad = losses.binary_crossentropy(np.array([800.0, -800.0]), np.array([0.0, 1.0]))
    assert np.isclose(value, 800.0) and np.isfinite(grad).all()


def test_softmax_output_is_fused_with_crossentropy():
    """Dense(softmax) + sparse CE trains from the cached logits: same loss and gradients as a logits model."""
    x = rng.standard_normal((8, 3))
    y = rng.integers(0, 4, 8)
    fused = Sequential([Dense(4, activation="softmax")], input_shape=(3,), dtype="float64", seed=1)
    plain = Sequential([Dense(4)], input_shape=(3,), dtype="float64", seed=1)
    for m in (fused, plain):
        m.compile("sgd", "sparse_categorical_crossentropy")
    assert fused.loss.mode == "fused" and plain.loss.mode == "logits"
    results = []
    for m in (fused, plain):
        out = m.forward(x, training=True)
        value, grad = m.loss_and_grad(out, y)
        m.backward(grad)
        results.append((float(value), m.grads.copy()))
    assert np.isclose(results[0][0], results[1][0])
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-12, atol=1e-15)
    # the logits model's metrics see probabilities
    np.testing.assert_allclose(plain.probabilities(plain.forward(x)), fused.forward(x), rtol=1e-12)


def test_from_logits_true_with_softmax_output_is_refused():
    m = Sequential([Dense(4, activation="softmax")], input_shape=(3,))
    with pytest.raises(ValueError, match="from_logits=True but the model ends in softmax"):
        m.compile("sgd", losses.SparseCategoricalCrossentropy(from_logits=True))


def test_get_and_serialize():
    for name in losses.LOSSES:
        loss = losses.get(name)
        again = losses.get(losses.serialize(loss))
        assert type(again) is type(loss) and again.get_config() == loss.get_config()
    assert isinstance(losses.get("mean_squared_error"), losses.MeanSquaredError)
    with pytest.raises(ValueError, match=r"unknown loss.*Received: loss='hinge'"):
        losses.get("hinge")
    with pytest.raises(ValueError, match="delta"):
        losses.Huber(delta=0)


def test_target_checks_name_expected_and_received():
    scce = losses.get("sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"must be in \[0, 9\].*received labels in \[0, 10\]"):
        scce.check_targets(np.array([0, 10, 3]), (10,))
    with pytest.raises(ValueError, match="integer class indices; received 1.5"):
        scce.check_targets(np.array([0.0, 1.5]), (10,))
    with pytest.raises(ValueError, match=r"received labels of shape \(3, 10\)"):
        scce.check_targets(np.zeros((3, 10)), (10,))
    assert scce.check_targets(np.array([1.0, 2.0]), (10,)).dtype == np.int64
    with pytest.raises(ValueError, match=r"one-hot or class probabilities of shape \(n, 10\); received shape \(3,\)"):
        losses.get("categorical_crossentropy").check_targets(np.zeros(3), (10,))
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        losses.get("binary_crossentropy").check_targets(np.array([0.0, 2.0]), (1,))
    with pytest.raises(ValueError, match="finite"):
        losses.get("mse").check_targets(np.array([np.nan]), (1,))
    assert losses.get("mse").check_targets(np.zeros(4), (1,)).shape == (4, 1)


@pytest.mark.parametrize("mode", ["logits", "probs"])
@pytest.mark.parametrize("sparse", [True, False])
def test_label_smoothing_is_the_cross_entropy_to_the_smoothed_targets(sparse, mode):
    # the loss and its gradient against the same cross-entropy written out on the smoothed target rows, and the
    # gradient against finite differences (float64)
    rng = np.random.default_rng(4)
    z = rng.normal(size=(6, 5))
    labels = rng.integers(0, 5, size=6)
    onehot = np.eye(5)[labels]
    eps = 0.2
    q = onehot * (1 - eps) + eps / 5
    loss = (losses.SparseCategoricalCrossentropy if sparse else losses.CategoricalCrossentropy)(
        from_logits=mode == "logits", label_smoothing=eps)
    loss.bind(None)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    x = z if mode == "logits" else p
    value, grad = loss(x, labels if sparse else onehot)
    expected = -(q * np.log(p)).sum(1).mean()
    assert float(value) == pytest.approx(expected, rel=1e-9)
    numeric = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        d = np.zeros_like(x)
        d[i] = 1e-6
        numeric[i] = (float(loss(x + d, labels if sparse else onehot)[0])
                      - float(loss(x - d, labels if sparse else onehot)[0])) / 2e-6
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)
    assert loss.get_config()["label_smoothing"] == eps
    assert losses.get(losses.serialize(loss)).label_smoothing == eps
    with pytest.raises(ValueError, match=r"label_smoothing must be a number in \[0, 1\). Received: label_smoothing=1"):
        type(loss)(label_smoothing=1)
