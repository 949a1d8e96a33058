"""The one shared check every layer's test runs: config round trip, output shape, finite-difference gradients
in float64 for the input and every parameter, and a model-file round trip that predicts identically."""
import json

import numpy as np

from sparkdl import io
from sparkdl.nn import Sequential, layer_from_config, layer_to_config

TOL = 1e-6


def rel_error(a, b):
    a, b = np.ravel(a), np.ravel(b)
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if denom == 0 else float(np.linalg.norm(a - b) / denom)


def numeric_grad(f, arr, idx, eps=1e-6):
    """Central differences of the scalar f() w.r.t. arr.flat[idx] (arr is modified and restored)."""
    flat = arr.reshape(-1)
    out = np.empty(len(idx))
    for j, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + eps
        hi = f()
        flat[i] = old - eps
        lo = f()
        flat[i] = old
        out[j] = (hi - lo) / (2 * eps)
    return out


def _subset(n, limit, rng):
    return np.arange(n) if n <= limit else np.sort(rng.choice(n, limit, replace=False))


def make_input(shape, kind, rng):
    if kind == "float":
        return rng.standard_normal(shape)
    if isinstance(kind, tuple) and kind[0] == "int":   # ("int", vocabulary size)
        return rng.integers(0, kind[1], shape).astype(np.float64)
    raise ValueError(kind)


def gradient_check(model, x, training=False, check_input=True, limit=300, seed=0, reset_rng=None):
    """Max relative error of the analytic gradients of sum(model(x) * R) w.r.t. x and the flat params."""
    rng = np.random.default_rng(seed)
    if reset_rng:
        reset_rng()
    out = model.forward(x, training)
    r = rng.standard_normal(out.shape)

    def f():
        if reset_rng:
            reset_rng()
        return float((model.forward(x, training) * r).sum())

    for layer in model.layers:
        layer.need_input_grad = True
    model.grads[...] = 0
    if reset_rng:
        reset_rng()
    model.forward(x, training)
    grad_in = model.backward(r)
    errors = {}
    idx = _subset(model.params.size, limit, rng)
    if len(idx):
        analytic = model.grads.reshape(-1)[idx].copy()
        errors["params"] = rel_error(analytic, numeric_grad(f, model.params, idx))
    if check_input:
        idx = _subset(x.size, limit, rng)
        errors["input"] = rel_error(grad_in.reshape(-1)[idx], numeric_grad(f, x, idx))
    return errors


def check_layer(layer, input_shape, batch=3, input_kind="float", training=False, check_input=True, seed=0,
                reset_rng=None, tmp_path=None):
    """Run the shared checks on a fresh, unbuilt layer. Returns the float64 model for extra checks."""
    config = layer_to_config(layer)
    assert json.loads(json.dumps(config)) == config, "get_config must be JSON-able"
    clone = layer_from_config(config)
    assert layer_to_config(clone) == config, "config round trip changed the config"

    model = Sequential([clone], input_shape=input_shape, dtype="float64", seed=seed).build()
    rng = np.random.default_rng(seed + 1)
    state_rng = np.random.default_rng(seed + 2)
    # random (not initial) weights so that zeros/ones initializers do not hide gradient bugs
    model.params[...] = rng.standard_normal(model.params.size) * 0.5
    if model.state.size:
        model.state[...] = np.abs(state_rng.standard_normal(model.state.size)) + 0.5
    x = make_input((batch,) + tuple(input_shape), input_kind, rng)
    out = model.forward(x, training)
    assert out.shape == (batch,) + tuple(model.output_shape), (out.shape, model.output_shape)
    assert np.isfinite(out).all()

    errors = gradient_check(model, x, training, check_input and input_kind == "float", seed=seed,
                            reset_rng=reset_rng)
    for what, err in errors.items():
        assert err <= TOL, f"{type(layer).__name__}: gradient w.r.t. {what} has relative error {err:.2e}"

    if tmp_path is not None:
        m32 = Sequential([layer_from_config(config)], input_shape=input_shape, seed=seed).build()
        path = tmp_path / f"{type(layer).__name__}.npz"
        io.save_model(m32, path)
        loaded = io.load_model(path)
        x32 = x.astype(np.float32)
        np.testing.assert_array_equal(loaded.predict(x32), m32.predict(x32))
        assert loaded.get_config() == m32.get_config()
    return model
