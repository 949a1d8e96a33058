"""GELU's two forms: the tanh approximation ("gelu", ``GELU()``) and the exact erf form ("gelu_exact",
``GELU(approximate=False)``, Keras's ``gelu``), against math.erf, finite differences and (where installed) PyTorch."""
import math

import numpy as np
import pytest
from sparkdl.testing import check_layer, gradient_check

from sparkdl.nn import GELU, Activation, Dense, Sequential, layer_from_config, layer_to_config
from sparkdl.nn.activations import erf

ERF = np.vectorize(math.erf)


def exact_gelu(x):
    return 0.5 * x * (1.0 + ERF(np.asarray(x, np.float64) / math.sqrt(2.0)))


def test_erf_matches_math_erf():
    grid = np.concatenate([np.linspace(-8.0, 8.0, 400_001), [0.0, 1.0, -1.0, 1e-30, -1e-300, 6.0, 30.0, -1e10]])
    want = ERF(grid)
    err64 = float(np.abs(erf(grid, np) - want).max())
    assert err64 <= 1e-15, err64
    got32 = erf(grid.astype(np.float32), np)
    assert got32.dtype == np.float32
    err32 = float(np.abs(got32.astype(np.float64) - ERF(grid.astype(np.float32).astype(np.float64))).max())
    assert err32 <= 2e-7, err32          # float32 rounding (half an ulp of 1 is 6e-8)
    assert erf(np.array([1e-30]), np)[0] == pytest.approx(2 / math.sqrt(math.pi) * 1e-30, rel=1e-15)
    special = erf(np.array([np.inf, -np.inf, np.nan, -0.0]), np)
    assert special[0] == 1.0 and special[1] == -1.0 and np.isnan(special[2]) and special[3] == 0.0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_exact_gelu_matches_the_erf_definition(dtype):
    x = np.linspace(-9.0, 9.0, 100_001).astype(dtype)
    layer = GELU(approximate=False)
    got = layer.forward(x)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, exact_gelu(x), rtol=0, atol=1e-6 if dtype == np.float32 else 1e-14)
    # the derivative: Phi(x) + x phi(x)
    want = 0.5 * (1.0 + ERF(x.astype(np.float64) / math.sqrt(2.0))) + x * np.exp(-0.5 * x.astype(np.float64) ** 2) \
        / math.sqrt(2 * math.pi)
    atol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(layer.backward(np.ones_like(x)), want, rtol=0, atol=atol)


def test_the_two_forms_differ_and_gelu_still_means_tanh():
    x = np.linspace(-4.0, 4.0, 801)
    tanh_form = 0.5 * x * (1.0 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(Activation("gelu").forward(x), tanh_form, rtol=0, atol=1e-15)
    np.testing.assert_allclose(GELU().forward(x), tanh_form, rtol=0, atol=1e-15)
    np.testing.assert_allclose(Activation("gelu_exact").forward(x), exact_gelu(x), rtol=0, atol=1e-14)
    assert 1e-4 < float(np.abs(exact_gelu(x) - tanh_form).max()) < 1e-3
    assert Dense(3, activation="gelu").activation.approximate is True
    assert Dense(3, activation="gelu_exact").activation.approximate is False


@pytest.mark.parametrize("make", [lambda: GELU(approximate=False), lambda: GELU(), lambda: Activation("gelu_exact"),
                                  lambda: Dense(4, activation="gelu_exact")])
def test_check_layer(make):
    check_layer(make(), (3, 5), batch=4)


def test_exact_gelu_gradient_check_float64():
    """Finite differences through a model, with inputs spread over both of erf's pieces (|x| < 1 and >= 1)."""
    m = Sequential([Dense(6, activation="gelu_exact"), GELU(approximate=False), Dense(3)], input_shape=(5,),
                   dtype="float64", seed=0).build()
    x = np.random.default_rng(0).standard_normal((8, 5)) * 2.0
    errors = gradient_check(m, x)
    assert max(errors.values()) <= 1e-7, errors
    layer = Sequential([GELU(approximate=False)], input_shape=(1,), dtype="float64").build()
    x = np.array([[-5.0], [-1.0], [-0.999], [-1e-8], [0.0], [0.3], [1.0], [1.001], [2.5], [5.9], [6.5]])
    errors = gradient_check(layer, x)
    assert errors["input"] <= 1e-8, errors


def test_config_round_trip_and_old_configs():
    exact = layer_to_config(GELU(approximate=False, name="g"))
    assert exact == {"class_name": "GELU", "config": {"name": "g", "approximate": False}}
    assert layer_from_config(exact).approximate is False
    assert layer_from_config({"class_name": "GELU", "config": {"name": "g"}}).approximate is True   # before the option
    assert layer_to_config(Dense(2, activation="gelu_exact"))["config"]["activation"] == "gelu_exact"
    with pytest.raises(ValueError, match=r"approximate must be True .* or False .*Received: approximate='none'"):
        GELU(approximate="none")


def test_gelu_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal((5, 7)) * 3.0
    g = np.random.default_rng(2).standard_normal((5, 7))
    for approximate, torch_name in ((False, "none"), (True, "tanh")):
        layer = GELU(approximate=approximate)
        t = torch.from_numpy(x).requires_grad_()
        out = torch.nn.GELU(approximate=torch_name)(t)
        out.backward(torch.from_numpy(g))
        np.testing.assert_allclose(layer.forward(x), out.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(layer.backward(g), t.grad.numpy(), rtol=1e-12, atol=1e-12)
