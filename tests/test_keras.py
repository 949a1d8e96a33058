"""Keras import (sparkdl.io.keras) against the fixtures of tools/make_keras_fixtures.py: Keras's own predictions,
saved beside each model, are the reference. Keras is never imported here; h5py is needed."""
import json
import os
import shutil
import zipfile

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

import sparkdl  # noqa: E402
from sparkdl.io import load_keras, save_model  # noqa: E402
from sparkdl.nn import GraphModel, Sequential  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data", "keras")
FIXTURES = sorted(f[:-4] for f in os.listdir(DATA) if f.endswith(".npz"))
FORMATS = ("keras", "h5")


def reference(name):
    with np.load(os.path.join(DATA, f"{name}.npz"), allow_pickle=False) as d:
        names = [str(n) for n in d["input_names"]]
        x = d["x"] if len(names) == 1 else {n: d[f"x.{n}"] for n in names}
        return x, d["y"]


def path_of(name, fmt):
    return os.path.join(DATA, f"{name}.{fmt}")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", FIXTURES)
def test_predictions_match_keras(name, fmt):
    model = load_keras(path_of(name, fmt))
    x, y = reference(name)
    assert model.dtype == np.float32
    np.testing.assert_allclose(model.predict(x), y, rtol=1e-5, atol=1e-5)


def test_fixtures_cover_both_model_kinds_and_exist_in_both_formats():
    assert len(FIXTURES) >= 20
    for name in FIXTURES:
        for fmt in FORMATS:
            assert os.path.exists(path_of(name, fmt)), (name, fmt)
    assert isinstance(load_keras(path_of("residual", "keras")), GraphModel)
    assert isinstance(load_keras(path_of("add_concat", "h5")), GraphModel)
    assert isinstance(load_keras(path_of("mlp", "h5")), Sequential)


def test_batch_norm_moving_statistics_are_model_state():
    model = load_keras(path_of("batch_norm", "keras"))
    weights = model.get_weights()
    assert model.state.size > 0
    assert not np.allclose(weights["batch_normalization.moving_variance"], 1.0)
    assert "batch_normalization_2.beta" not in weights   # center=False


def test_leaky_relu_activation_keeps_keras_slope_after_a_save_round_trip(tmp_path):
    model = load_keras(path_of("activation_layers", "h5"))
    slopes = sorted(layer.negative_slope for layer in model.layers if type(layer).__name__ == "LeakyReLU")
    assert slopes == [0.1, 0.2, 0.3]
    save_model(model, tmp_path / "m.npz")
    x, y = reference("activation_layers")
    np.testing.assert_allclose(sparkdl.load_model(tmp_path / "m.npz").predict(x), y, rtol=1e-5, atol=1e-5)


EXPECTED_COMPILE = {
    "mlp": ("Adam", {"learning_rate": 0.003}, "sparse_categorical_crossentropy", ["Accuracy"]),
    "cnn": ("SGD", {"learning_rate": 0.05, "momentum": 0.9}, "categorical_crossentropy", ["Accuracy"]),
    "text_lstm": ("RMSprop", {"learning_rate": 0.002, "rho": 0.9}, "binary_crossentropy", ["Accuracy"]),
    "residual": ("AdamW", {"learning_rate": 0.01, "weight_decay": 0.001}, "mse", ["MeanAbsoluteError"]),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(EXPECTED_COMPILE))
def test_compile_settings_are_read(name, fmt):
    optimizer, options, loss, metrics = EXPECTED_COMPILE[name]
    settings = load_keras(path_of(name, fmt)).compile_config()
    assert settings["optimizer"]["class_name"] == optimizer
    for key, value in options.items():
        assert settings["optimizer"]["config"][key] == pytest.approx(value, rel=1e-9)
    assert settings["loss"]["class_name"] == loss
    if loss.endswith("crossentropy"):
        assert settings["loss"]["config"]["from_logits"] is False   # Keras's string losses take probabilities
    assert [m["class_name"] for m in settings["metrics"]] == metrics


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_model_saved_uncompiled_stays_uncompiled(fmt):
    assert not load_keras(path_of("lstm", fmt)).compiled


def test_compiled_model_trains():
    model = load_keras(path_of("mlp", "keras"))
    x, _ = reference("mlp")
    model.fit(x, np.arange(len(x)) % 3, epochs=1, batch_size=3, verbose=0)


# -- files edited to hold what sparkdl cannot import ---------------------------------------------------------------

def edited_keras(tmp_path, name, edit):
    """A copy of fixture ``name``.keras whose config.json went through ``edit(config)``."""
    out = tmp_path / f"{name}_edited.keras"
    with zipfile.ZipFile(path_of(name, "keras")) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config)
            dst.writestr(item, data)
    return out


def edited_h5(tmp_path, name, edit):
    out = tmp_path / f"{name}_edited.h5"
    shutil.copy(path_of(name, "h5"), out)
    with h5py.File(out, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config)
        f.attrs["model_config"] = json.dumps(config)
    return out


def layer(config, class_name, k=0):
    return [spec for spec in config["config"]["layers"] if spec["class_name"] == class_name][k]


def set_option(class_name, key, value):
    def edit(config):
        layer(config, class_name)["config"][key] = value
    return edit


@pytest.mark.parametrize("name, class_name, key, value, match", [
    ("conv_valid_s1", "Conv2D", "dilation_rate", [2, 2], r"dilation_rate=\[2, 2\]"),
    ("conv_valid_s1", "Conv2D", "groups", 2, "groups=2"),
    ("lstm", "LSTM", "stateful", True, "stateful=True"),
    ("lstm", "LSTM", "return_state", True, "return_state=True"),
    ("gru_reset_after", "GRU", "activation", "selu", "activation='selu'"),
    ("embedding", "Embedding", "mask_zero", True, "mask_zero=True"),
    ("layer_norm", "LayerNormalization", "rms_scaling", True, "rms_scaling=True"),
    ("dense_activations", "Dense", "activation", "swish", "activation='swish'"),
    ("dense_activations", "Dense", "dtype", "float64", "dtype='float64'"),
    ("dense_activations", "Dense", "a_future_option", 3, "a_future_option=3.*no such option"),
    ("activation_layers", "ReLU", "max_value", 6.0, "max_value=6.0"),
    ("flatten_reshape_dropout", "Flatten", "data_format", "channels_first", "data_format='channels_first'"),
])
@pytest.mark.parametrize("fmt", FORMATS)
def test_unsupported_option_names_layer_class_and_option(tmp_path, fmt, name, class_name, key, value, match):
    edit = set_option(class_name, key, value)
    path = edited_keras(tmp_path, name, edit) if fmt == "keras" else edited_h5(tmp_path, name, edit)
    with pytest.raises(ValueError, match=rf"Keras layer '[a-z_0-9]+' \({class_name}\): {match}"):
        load_keras(path)


def exact_gelu(x):
    """Keras's gelu (approximate=False), from math.erf."""
    from math import erf, sqrt
    return 0.5 * x * (1.0 + np.vectorize(erf)(x / sqrt(2.0)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_keras_gelu_is_the_exact_gelu(tmp_path, fmt):
    """Dense(activation="gelu") and Activation("gelu") (added to the fixture's config) become sparkdl's exact GELU,
    which stays exact through a sparkdl file."""
    model = load_keras(path_of("dense_gelu", fmt))
    assert model.layers[0].get_config()["activation"] == "gelu_exact"
    assert model.layers[0].activation.approximate is False

    def add_activation(config):   # Dense(gelu) then Activation("gelu"): gelu(gelu(x W + b))
        config["config"]["layers"].append({"module": "keras.layers", "class_name": "Activation",
                                           "config": {"name": "activation_gelu", "trainable": True,
                                                      "dtype": "float32", "activation": "gelu"}})
    path = edited_keras(tmp_path, "dense_gelu", add_activation) if fmt == "keras" else \
        edited_h5(tmp_path, "dense_gelu", add_activation)
    model = load_keras(path)
    assert model.layers[-1].get_config()["activation"] == "gelu_exact"
    x, y = reference("dense_gelu")
    want = exact_gelu(y.astype(np.float64))
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-5, atol=1e-5)
    save_model(model, tmp_path / "m.npz")
    np.testing.assert_allclose(sparkdl.load_model(tmp_path / "m.npz").predict(x), want, rtol=1e-5, atol=1e-5)


def test_unknown_layer_class(tmp_path):
    path = edited_keras(tmp_path, "mlp", lambda c: layer(c, "Dropout").update(class_name="GaussianDropout"))
    with pytest.raises(ValueError, match=r"Keras layer 'dropout_\d+' \(GaussianDropout\) has no sparkdl counterpart"):
        load_keras(path)


def test_training_only_options_warn(tmp_path):
    path = edited_keras(tmp_path, "mlp", set_option("Dense", "kernel_regularizer", {"class_name": "L2"}))
    with pytest.warns(UserWarning, match="kernel_regularizer.*changes training only"):
        model = load_keras(path)
    x, y = reference("mlp")
    np.testing.assert_allclose(model.predict(x), y, rtol=1e-5, atol=1e-5)


def test_shared_layer_is_refused(tmp_path):
    def edit(config):
        spec = layer(config, "Dense")
        spec["inbound_nodes"] = spec["inbound_nodes"] * 2
    with pytest.raises(ValueError, match=r"\(Dense\) is called 2 times.*no shared layers"):
        load_keras(edited_keras(tmp_path, "add_concat", edit))


def test_variable_input_dimension_is_refused(tmp_path):
    path = edited_keras(tmp_path, "lstm", set_option("InputLayer", "batch_shape", [None, None, 3]))
    with pytest.raises(ValueError, match=r"variable dimension"):
        load_keras(path)


def test_subclassed_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"'MyModel'.*not subclassed"):
        load_keras(edited_keras(tmp_path, "mlp", lambda c: c.update(class_name="MyModel")))


@pytest.mark.parametrize("part, value, match", [
    ("optimizer", {"class_name": "Nadam", "config": {"learning_rate": 0.1}}, "optimizer 'Nadam'"),
    ("optimizer", {"class_name": "SGD", "config": {"learning_rate": 0.1, "weight_decay": 0.01}},
     "weight_decay=0.01"),
    ("optimizer", {"class_name": "Adam", "config": {"learning_rate": 0.1, "use_ema": True}}, "use_ema=True"),
    ("optimizer", {"class_name": "Adam", "config": {"learning_rate": {"class_name": "ExponentialDecay"}}},
     "constant learning rate"),
    ("loss", "kl_divergence", "loss 'kl_divergence'"),
    ("loss", {"class_name": "BinaryCrossentropy", "config": {"label_smoothing": 0.1}}, "label_smoothing=0.1"),
    ("metrics", ["auc"], "metric 'auc'"),
])
def test_unsupported_compile_settings(tmp_path, part, value, match):
    path = edited_keras(tmp_path, "mlp", lambda c: c["compile_config"].update({part: value}))
    with pytest.raises(ValueError, match=match):
        load_keras(path)


def test_adam_with_weight_decay_is_adamw(tmp_path):
    optimizer = {"class_name": "Adam", "config": {"learning_rate": 0.01, "weight_decay": 0.05}}
    path = edited_keras(tmp_path, "mlp", lambda c: c["compile_config"].update(optimizer=optimizer))
    config = load_keras(path).compile_config()["optimizer"]
    assert config["class_name"] == "AdamW" and config["config"]["weight_decay"] == 0.05


# -- not Keras files, and load_model's dispatch ----------------------------------------------------------------------

def test_not_a_keras_file(tmp_path):
    text = tmp_path / "notes.keras"
    text.write_text("hello")
    with pytest.raises(ValueError, match="is not a Keras model file"):
        load_keras(text)
    other_zip = tmp_path / "other.zip"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(ValueError, match="is not a Keras model file"):
        load_keras(other_zip)
    sparkdl_file = tmp_path / "model.npz"
    save_model(load_keras(path_of("mlp", "keras")), sparkdl_file)
    with pytest.raises(ValueError, match="is not a Keras model file"):
        load_keras(sparkdl_file)
    with pytest.raises(FileNotFoundError):
        load_keras(tmp_path / "missing.keras")


def test_weights_only_h5_is_refused(tmp_path):
    path = tmp_path / "weights.h5"
    shutil.copy(path_of("mlp", "h5"), path)
    with h5py.File(path, "r+") as f:
        del f.attrs["model_config"]
    with pytest.raises(ValueError, match="without a model_config"):
        load_keras(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_model_dispatches_keras_files(tmp_path, fmt):
    x, y = reference("cnn")
    np.testing.assert_allclose(sparkdl.load_model(path_of("cnn", fmt)).predict(x), y, rtol=1e-5, atol=1e-5)
    renamed = tmp_path / "model.bin"   # told apart by the first bytes, not the name
    shutil.copy(path_of("cnn", fmt), renamed)
    np.testing.assert_allclose(sparkdl.io.load_model(renamed).predict(x), y, rtol=1e-5, atol=1e-5)
    sparkdl_file = tmp_path / "model.npz"
    save_model(load_keras(renamed), sparkdl_file)
    np.testing.assert_allclose(sparkdl.load_model(sparkdl_file).predict(x), y, rtol=1e-5, atol=1e-5)


# -- Keras 2's way of writing configs (legacy files from tf.keras), made from the Keras 3 fixtures ---------------

def keras2_functional(config):
    """Keras 2 functional configs: class "Model", inbound nodes as [[name, node, index, kwargs], ...]."""
    config["class_name"] = "Model"
    for spec in config["config"]["layers"]:
        if spec["inbound_nodes"]:
            args = spec["inbound_nodes"][0]["args"][0]
            spec["inbound_nodes"] = [[t["config"]["keras_history"] + [{}] for t in
                                      (args if isinstance(args, list) else [args])]]
        if spec["class_name"] == "InputLayer":
            spec["config"]["batch_input_shape"] = spec["config"].pop("batch_shape")


def keras2_sequential(config):
    """Keras 2 Sequential configs: no InputLayer, batch_input_shape on the first layer; LeakyReLU's alpha."""
    layers = config["config"]["layers"]
    first_input = layers.pop(0)
    layers[0]["config"]["batch_input_shape"] = first_input["config"]["batch_shape"]
    config["config"].pop("build_input_shape", None)
    for spec in layers:
        if spec["class_name"] == "LeakyReLU":
            spec["config"]["alpha"] = spec["config"].pop("negative_slope")


@pytest.mark.parametrize("name, edit", [("add_concat", keras2_functional), ("residual", keras2_functional),
                                        ("activation_layers", keras2_sequential), ("text_lstm", keras2_sequential)])
def test_keras2_style_configs(tmp_path, name, edit):
    x, y = reference(name)
    np.testing.assert_allclose(load_keras(edited_h5(tmp_path, name, edit)).predict(x), y, rtol=1e-5, atol=1e-5)


def test_a_sparkdl_file_named_like_a_keras_file_still_loads(tmp_path):
    path = tmp_path / "model.h5"
    save_model(load_keras(path_of("mlp", "keras")), path)
    x, y = reference("mlp")
    np.testing.assert_allclose(sparkdl.load_model(path).predict(x), y, rtol=1e-5, atol=1e-5)


def test_categorical_label_smoothing_comes_with_the_loss():
    from sparkdl import losses
    from sparkdl.io import keras_compile
    spec = keras_compile._loss({"class_name": "CategoricalCrossentropy", "config": {"label_smoothing": 0.1}}, "f")
    assert spec == {"class_name": "categorical_crossentropy", "config": {"label_smoothing": 0.1, "from_logits": False}}
    assert losses.get(spec).label_smoothing == 0.1
