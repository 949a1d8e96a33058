"""Checks for layers, public like ``numpy.testing``: ``check_layer`` is what every layer of sparkdl passes, and what
a layer of your own should pass. It runs on a fresh, unbuilt layer:

- its config is JSON, and a layer rebuilt from it has the same config;
- the output has the shape ``build`` promised, finite values, and the model's dtype (float32 and float64);
- in float64, the gradients of a random projection of the output with respect to every parameter and to the
  input (``input_kind="float"``) agree with central finite differences (relative error at most ``tolerance``);
- saved to a model file and loaded back, the layer predicts exactly what it predicted before.

Merging layers (``Add``, ``Concatenate``) take a list of input shapes and are checked inside a GraphModel.
``check_registered_layers`` runs ``check_layer`` on the examples every registered layer class declares
(``Layer.examples``); tests/test_layers.py calls it, so a layer without examples fails the suite.
Failures raise AssertionError naming the layer and what failed.
"""
import json
import os
import tempfile

import numpy as np

from . import io
from .nn import Sequential, layer_from_config, layer_to_config
from .nn.graph import GraphModel
from .nn.layer import Input, registered

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
    """A float64 input: standard normal (``"float"``) or ints below ``V`` (``("int", V)``, for Embedding)."""
    if kind == "float":
        return rng.standard_normal(shape)
    if isinstance(kind, tuple) and kind[0] == "int":
        return rng.integers(0, kind[1], shape).astype(np.float64)
    raise ValueError(f"input_kind must be 'float' or ('int', vocabulary). Received: input_kind={kind!r}")


def gradient_check(model, x, training=False, check_input=True, limit=300, seed=0, reset_rng=None):
    """Relative errors of the analytic gradients of sum(model(x) * R) w.r.t. the flat params ("params") and the
    input ("input", or "input:<name>" for each input of a dict): ``limit`` sampled elements of each.
    ``reset_rng()`` (if given) runs before every forward pass: random layers (Dropout) draw the same mask."""
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
        inputs = x.items() if isinstance(x, dict) else [(None, x)]
        for name, arr in inputs:
            got = grad_in if name is None else grad_in[name]
            idx = _subset(arr.size, limit, rng)
            errors["input" if name is None else f"input:{name}"] = rel_error(got.reshape(-1)[idx],
                                                                             numeric_grad(f, arr, idx))
    return errors


def _check(condition, layer, message):
    if not condition:
        raise AssertionError(f"{type(layer).__name__}: {message}")


def _model(layer, input_shape, dtype, seed):
    """A model of the one layer: Sequential, or a GraphModel over named inputs for a merging layer."""
    if isinstance(input_shape, list):
        inputs = [Input(tuple(s), name=f"in{i}") for i, s in enumerate(input_shape)]
        return GraphModel(inputs, layer(inputs), dtype=dtype, seed=seed).build()
    return Sequential([layer], input_shape=input_shape, dtype=dtype, seed=seed).build()


def check_layer(layer, input_shape, batch=3, input_kind="float", training=False, check_input=True, seed=0,
                tolerance=TOL):
    """Run every check above on a fresh, unbuilt ``layer`` fed ``batch`` examples of ``input_shape`` (a list of
    shapes for a merging layer), in training mode if ``training`` (a random layer draws the same numbers at
    every pass). Returns the float64 model, for further checks."""
    config = layer_to_config(layer)
    _check(json.loads(json.dumps(config)) == config, layer, f"get_config() is not plain JSON: {config!r}")
    _check(layer_to_config(layer_from_config(config)) == config, layer, "a layer rebuilt from its config differs")

    model = _model(layer_from_config(config), input_shape, "float64", seed)

    def reset_rng():
        for each in model.layers:
            each.rng = np.random.default_rng(seed + 3)
    rng, state_rng = np.random.default_rng(seed + 1), np.random.default_rng(seed + 2)
    # random (not initial) weights, so that zeros/ones initializers do not hide gradient bugs
    model.params[...] = rng.standard_normal(model.params.size) * 0.5
    if model.state.size:
        model.state[...] = np.abs(state_rng.standard_normal(model.state.size)) + 0.5
    if isinstance(input_shape, list):
        x = {f"in{i}": make_input((batch,) + tuple(s), input_kind, rng) for i, s in enumerate(input_shape)}
    else:
        x = make_input((batch,) + tuple(input_shape), input_kind, rng)
    reset_rng()
    out = model.forward(x, training)
    _check(out.shape == (batch,) + tuple(model.output_shape), layer,
           f"output shape {out.shape}, but build() said {(batch,) + tuple(model.output_shape)}")
    _check(out.dtype == np.float64 and np.isfinite(out).all(), layer,
           f"a float64 model gave {out.dtype} or non-finite values")

    errors = gradient_check(model, x, training, check_input and input_kind == "float", seed=seed,
                            reset_rng=reset_rng if training else None)
    for what, err in errors.items():
        _check(err <= tolerance, layer, f"the gradient w.r.t. {what} has relative error {err:.2e} (> {tolerance:g})")

    m32 = _model(layer_from_config(config), input_shape, "float32", seed)
    x32 = {k: v.astype(np.float32) for k, v in x.items()} if isinstance(x, dict) else x.astype(np.float32)
    before = m32.predict(x32)
    _check(before.dtype == np.float32, layer, f"a float32 model predicted {before.dtype}")
    with tempfile.TemporaryDirectory(prefix="sparkdl-check-") as directory:
        path = os.path.join(directory, "layer.npz")
        io.save_model(m32, path)
        loaded = io.load_model(path)
    _check(loaded.get_config() == m32.get_config(), layer, "the model file changed the config")
    _check(np.array_equal(loaded.predict(x32), before), layer, "the model loaded from its file predicts differently")
    return model


def check_registered_layers(names=None):
    """``check_layer`` on every example of every registered layer class (or of those ``names``); returns the
    number of examples checked. A registered class that declares no examples fails."""
    done = 0
    for name, cls in sorted(registered().items()):
        if names is not None and name not in names:
            continue
        examples = cls.examples()
        if not examples:
            raise AssertionError(f"{name}: a registered layer must declare examples (Layer.examples) for check_layer")
        for make, input_shape, options in examples:
            check_layer(make(), input_shape, **options)
            done += 1
    return done
