"""ONNX export (sparkdl.io.onnx, jobs/export.py): every layer kind, in Sequential and GraphModel models with
random (seeded) weights and non-trivial BatchNormalization statistics, exported, checked by onnx's full checker
and run in onnxruntime on batch sizes never seen at export; the outputs must match ``model.predict``."""
import io
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from sparkdl import nn  # noqa: E402
from sparkdl.io import export_onnx  # noqa: E402
from sparkdl.io import onnx as sparkdl_onnx  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-5
BATCHES = (7, 2)   # the graph is exported without a batch size; run it on two


def randomize(model, seed):
    """Random weights (biases included) and BatchNormalization statistics away from their initial 0 and 1."""
    rng = np.random.default_rng(seed)
    model.build()
    model.set_flat_params(rng.normal(0.0, 0.4, model.params.shape).astype(np.float32))
    weights = model.get_weights()
    for name, value in weights.items():
        if name.endswith(".moving_mean"):
            weights[name] = rng.normal(0.0, 0.5, value.shape)
        elif name.endswith(".moving_variance"):
            weights[name] = rng.uniform(0.3, 2.0, value.shape)
    model.set_weights(weights)
    return model


def run_onnx(proto, feeds):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def assert_matches(model, make_input, opset=sparkdl_onnx.DEFAULT_OPSET, seed=0):
    """Export, check, run on BATCHES rows; returns the largest absolute difference from model.predict."""
    proto = export_onnx(model, None, opset=opset)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == opset
    for value in list(proto.graph.input) + list(proto.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    rng = np.random.default_rng(seed)
    worst = 0.0
    for n in BATCHES:
        x = make_input(rng, n)
        feeds = {k: v.astype(np.float32) for k, v in (x.items() if isinstance(x, dict) else [("input", x)])}
        got, want = run_onnx(proto, feeds), model.predict(x)
        assert got.shape == want.shape and want.std() > 1e-3   # a constant output would prove little
        worst = max(worst, float(np.abs(got - want).max()))
    print(f"{model.name}: max abs difference {worst:.3g} ({len(proto.graph.node)} nodes, opset {opset})")
    assert worst <= TOLERANCE
    return proto


def normal(*shape):
    return lambda rng, n: rng.normal(size=(n,) + shape)


# -- models ---------------------------------------------------------------------------------------------------
def cnn_channels_last():
    return nn.Sequential([
        nn.Conv2D(4, 3, padding="same", strides=2, activation="relu"),
        nn.BatchNormalization(),
        nn.MaxPooling2D(padding="same"),
        nn.Conv2D(5, (2, 3), activation="gelu"),
        nn.AveragePooling2D((2, 2), strides=1, padding="same"),
        nn.Conv2D(3, 2, strides=2, padding="same", use_bias=False),
        nn.Activation("tanh"),
        nn.MaxPooling2D((2, 1), strides=1),
        nn.Flatten(),
        nn.Dense(6, activation="softmax"),
    ], input_shape=(16, 14, 2), name="cnn_channels_last", seed=1)


def cnn_channels_first():
    return nn.Sequential([
        nn.Conv2D(4, 3, strides=1, data_format="channels_first", activation="elu"),
        nn.BatchNormalization(axis=1),
        nn.AveragePooling2D(2, data_format="channels_first"),
        nn.Conv2D(3, 3, strides=2, padding="same", data_format="channels_first", activation="softmax"),
        nn.MaxPooling2D(3, strides=2, padding="same", data_format="channels_first"),
        nn.GlobalAveragePooling2D(data_format="channels_first", keepdims=True),
        nn.Reshape((-1,)),
        nn.Dense(2, activation="sigmoid"),
    ], input_shape=(3, 12, 9), name="cnn_channels_first", seed=2)


def image_head():
    return nn.Sequential([
        nn.Conv2D(4, 3, padding="same"), nn.ReLU(), nn.Dropout(0.5),
        nn.GlobalAveragePooling2D(), nn.Dense(3),
    ], input_shape=(6, 6, 3), name="image_head", seed=3)


def mlp_activations():
    layers = [nn.Dense(8, activation=name) for name in ("relu", "leaky_relu", "elu", "gelu", "sigmoid", "tanh",
                                                         "linear", None)]
    layers += [nn.ReLU(), nn.Dense(8), nn.LeakyReLU(0.1), nn.Dense(8), nn.ELU(0.5), nn.Dense(8), nn.GELU(),
               nn.Dense(8), nn.Sigmoid(), nn.Dense(8), nn.Tanh(), nn.Linear(), nn.Dropout(0.3),
               nn.LayerNormalization(), nn.BatchNormalization(), nn.Dense(5), nn.Softmax()]
    return nn.Sequential(layers, input_shape=(6,), name="mlp_activations", seed=4)


def sequence_norms():
    """LayerNormalization over trailing and non-trailing axes, Dense on a 3-d input, softmax over the last axis."""
    return nn.Sequential([
        nn.LayerNormalization(axis=[1, 2], epsilon=1e-5), nn.Dense(4), nn.LayerNormalization(axis=1),
        nn.LayerNormalization(scale=False, center=False), nn.BatchNormalization(axis=1), nn.Activation("softmax"),
    ], input_shape=(5, 3), name="sequence_norms", seed=5)


def recurrent(kind, return_sequences, go_backwards=False, **kwargs):
    layer = {"lstm": nn.LSTM, "gru": nn.GRU, "gru_v1": nn.GRU, "rnn": nn.SimpleRNN}[kind]
    if kind == "gru_v1":
        kwargs["reset_after"] = False
    name = f"{kind}_seq{int(return_sequences)}_back{int(go_backwards)}"
    return nn.Sequential([layer(4, return_sequences=return_sequences, go_backwards=go_backwards, **kwargs)],
                         input_shape=(6, 3), name=name, seed=6)


def text_model():
    return nn.Sequential([
        nn.Embedding(11, 5), nn.GRU(6, return_sequences=True), nn.LSTM(4), nn.Dense(3, activation="softmax"),
    ], input_shape=(7,), name="text_model", seed=7)


def residual_graph():
    inp = nn.Input((8,))
    h = nn.Dense(8, activation="relu")(inp)
    h = nn.Dropout(0.2)(nn.Dense(8)(h))
    h = nn.Add()([inp, h])
    h = nn.LayerNormalization()(h)
    h2 = nn.Dense(8, activation="tanh")(h)
    out = nn.Dense(3, activation="softmax")(nn.Add()([h, h2, nn.Dense(8)(inp)]))
    return nn.GraphModel(inp, out, name="residual_graph", seed=8)


def multi_input_graph():
    image = nn.Input((8, 8, 1), name="image")
    series = nn.Input((5, 2), name="series")
    a = nn.MaxPooling2D()(nn.Conv2D(3, 3, padding="same", activation="relu")(image))
    a = nn.Dense(4)(nn.Flatten()(nn.BatchNormalization()(a)))
    b = nn.SimpleRNN(4, go_backwards=True)(series)
    c = nn.Concatenate()([a, b, nn.Dense(2)(nn.Flatten()(series))])
    seq = nn.Concatenate(axis=1)([nn.LSTM(2, return_sequences=True)(series), series])   # (10, 2)
    out = nn.Dense(2)(nn.Concatenate()([c, nn.Flatten()(seq)]))
    return nn.GraphModel([image, series], out, name="multi_input_graph", seed=9)


# -- exported models match predict -----------------------------------------------------------------------------
@pytest.mark.parametrize("build, make_input", [
    (cnn_channels_last, normal(16, 14, 2)),
    (cnn_channels_first, normal(3, 12, 9)),
    (image_head, normal(6, 6, 3)),
    (mlp_activations, normal(6)),
    (sequence_norms, normal(5, 3)),
    (residual_graph, normal(8)),
])
def test_feedforward_models_match_predict(build, make_input):
    assert_matches(randomize(build(), seed=10), make_input)


@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_v1", "rnn"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_recurrent_layers_match_predict(kind, return_sequences):
    for go_backwards in (False, True):
        model = randomize(recurrent(kind, return_sequences, go_backwards), seed=11)
        assert_matches(model, normal(6, 3))


@pytest.mark.parametrize("kind, kwargs", [
    ("rnn", {"activation": "relu", "use_bias": False}),
    ("rnn", {"activation": "leaky_relu"}),
    ("lstm", {"activation": "elu", "recurrent_activation": "tanh"}),
    ("gru", {"activation": "sigmoid", "use_bias": False}),
    ("gru_v1", {"activation": "relu"}),
])
def test_recurrent_activations_and_no_bias(kind, kwargs):
    assert_matches(randomize(recurrent(kind, True, **kwargs), seed=12), normal(6, 3))


def test_embedding_model_matches_predict():
    model = randomize(text_model(), seed=13)
    assert_matches(model, lambda rng, n: rng.integers(0, 11, size=(n, 7)).astype(np.float64))


def test_multi_input_graph_keeps_input_names():
    model = randomize(multi_input_graph(), seed=14)
    proto = assert_matches(model, lambda rng, n: {"image": rng.normal(size=(n, 8, 8, 1)),
                                                  "series": rng.normal(size=(n, 5, 2))})
    assert [v.name for v in proto.graph.input] == ["image", "series"]
    renamed = export_onnx(model, None, input_name=["a", "b"], output_name="scores")
    assert [v.name for v in renamed.graph.input] == ["a", "b"]
    assert [v.name for v in renamed.graph.output] == ["scores"]


@pytest.mark.parametrize("opset", [13, 18, 20])
def test_other_opsets(opset):
    """Opset-dependent forms: ReduceMean's axes (attribute < 18, input from 18), LayerNormalization (decomposed
    before 17), Gelu (an operator from 20)."""
    assert_matches(randomize(mlp_activations(), seed=15), normal(6), opset=opset)
    assert_matches(randomize(sequence_norms(), seed=15), normal(5, 3), opset=opset)
    assert_matches(randomize(image_head(), seed=15), normal(6, 6, 3), opset=opset)


def test_batchnorm_statistics_from_training_are_exported():
    rng = np.random.default_rng(16)
    model = nn.Sequential([nn.Dense(4), nn.BatchNormalization(momentum=0.5), nn.Dense(2)], input_shape=(3,),
                          name="trained_bn", seed=16)
    model.compile("sgd", "mse")
    model.fit(rng.normal(2.0, 3.0, (32, 3)), rng.normal(size=(32, 2)), epochs=2, batch_size=8, verbose=0)
    stats = model.get_weights()
    assert not np.allclose(stats["batch_normalization.moving_mean"], 0.0)
    assert_matches(model, lambda rng, n: rng.normal(2.0, 3.0, (n, 3)))


def test_channels_last_transposes_are_shared():
    """Conv -> pool -> conv (with activation layers between) needs only one Transpose in and one out."""
    model = nn.Sequential([nn.Conv2D(2, 3), nn.ReLU(), nn.MaxPooling2D(), nn.Dropout(0.1), nn.Conv2D(2, 2),
                           nn.Flatten()], input_shape=(8, 8, 1), name="shared_transposes", seed=17)
    proto = assert_matches(randomize(model, 17), normal(8, 8, 1))
    assert [n.op_type for n in proto.graph.node].count("Transpose") == 2


def exact_gelu_model():
    """The exact (erf) GELU as a Dense activation, a layer, an Activation and on a channels-last Conv2D (its NCHW
    twin), next to the tanh approximation."""
    return nn.Sequential([
        nn.Conv2D(3, 3, padding="same", activation="gelu_exact"), nn.MaxPooling2D(), nn.GELU(approximate=False),
        nn.Flatten(), nn.Dense(8, activation="gelu_exact"), nn.Dense(8), nn.GELU(approximate=False),
        nn.Dense(8, activation="gelu"), nn.Dense(6), nn.Activation("gelu_exact"), nn.Dense(4),
    ], input_shape=(6, 6, 2), name="exact_gelu", seed=19)


@pytest.mark.parametrize("opset", [17, 20])
def test_exact_gelu_matches_predict(opset):
    """Exact GELU: the Gelu operator with approximate="none" from opset 20, else x * (1 + Erf(x / sqrt 2)) * 0.5."""
    proto = assert_matches(randomize(exact_gelu_model(), seed=19), normal(6, 6, 2), opset=opset)
    ops = [n.op_type for n in proto.graph.node]
    gelus = [{a.name: a.s.decode() for a in n.attribute} for n in proto.graph.node if n.op_type == "Gelu"]
    if opset >= 20:
        assert "Erf" not in ops and sorted(g["approximate"] for g in gelus) == ["none"] * 5 + ["tanh"]
    else:
        assert not gelus and ops.count("Erf") == 5 and ops.count("Tanh") == 1


# -- files, options and errors ----------------------------------------------------------------------------------
def test_writes_a_path_or_a_file_object_and_states_the_opset(tmp_path):
    model = randomize(image_head(), seed=18)
    path = tmp_path / "model.onnx"
    proto = export_onnx(model, path)
    buffer = io.BytesIO()
    export_onnx(model, buffer, opset=13)
    for data, opset in ((path.read_bytes(), sparkdl_onnx.DEFAULT_OPSET), (buffer.getvalue(), 13)):
        loaded = onnx.load_from_string(data)
        assert [(o.domain, o.version) for o in loaded.opset_import] == [("", opset)]
        assert f"opset {opset}" in loaded.doc_string
        assert loaded.producer_name == "sparkdl"
    assert proto.SerializeToString() == path.read_bytes()
    assert sparkdl_onnx.DEFAULT_OPSET == 17 and "default opset 17" in sparkdl_onnx.__doc__
    names = {t.name for t in proto.graph.initializer}
    assert {"conv2d.kernel", "conv2d.bias", "dense.kernel", "dense.bias"} <= names


def test_unsupported_layers_and_options_are_named():
    @nn.register
    class Doubling(nn.Layer):
        def forward(self, x, training=False):
            return 2 * x

    model = nn.Sequential([nn.Dense(3), Doubling(name="twice")], input_shape=(4,), seed=0)
    with pytest.raises(ValueError, match=r"layer 'twice' \(Doubling\) cannot be exported to ONNX"):
        export_onnx(model, None)
    gelu_rnn = nn.Sequential([nn.GRU(3, activation="gelu", name="gru_gelu")], input_shape=(4, 2), seed=0)
    with pytest.raises(ValueError, match=r"layer 'gru_gelu' \(GRU\): activation GELU has no ONNX GRU equivalent"):
        export_onnx(gelu_rnn, None)
    exact_rnn = nn.Sequential([nn.LSTM(3, activation="gelu_exact", name="lstm_gelu")], input_shape=(4, 2), seed=0)
    with pytest.raises(ValueError, match=r"layer 'lstm_gelu' \(LSTM\): activation GELU has no ONNX LSTM"):
        export_onnx(exact_rnn, None)
    small = nn.Sequential([nn.Dense(3)], input_shape=(4,), seed=0)
    with pytest.raises(ValueError, match=r"opset must be an int from 13 to \d+. Received: opset=12"):
        export_onnx(small, None, opset=12)
    with pytest.raises(ValueError, match="output_name must be"):
        export_onnx(small, None, output_name="input")
    with pytest.raises(ValueError, match="export_onnx takes a Sequential or GraphModel"):
        export_onnx(object(), None)


def test_missing_onnx_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install sparkdl\[onnx\]"):
        export_onnx(nn.Sequential([nn.Dense(2)], input_shape=(3,)), None)


def test_import_inside_sparkdl_io_onnx_is_the_onnx_package():
    assert sparkdl_onnx._import_onnx() is onnx and hasattr(onnx, "helper")


# -- jobs/export.py ----------------------------------------------------------------------------------------------
def export_job(*args):
    r = subprocess.run([sys.executable, os.path.join(REPO, "jobs", "export.py"), *map(str, args)],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    return r.returncode, r.stdout, r.stderr


def test_export_job_writes_a_file_that_runs(tmp_path):
    model = randomize(cnn_channels_last(), seed=19)
    model.save(str(tmp_path / "model.npz"))
    out = tmp_path / "sub" / "model.onnx"
    status, stdout, stderr = export_job("--model-file", tmp_path / "model.npz", "--format", "onnx",
                                        "--output", out, "--opset", "13")
    assert status == 0, stderr
    assert f"wrote {out}: ONNX opset 13" in stdout
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == 13
    x = np.random.default_rng(19).normal(size=(3, 16, 14, 2)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(proto, {"input": x}), model.predict(x), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("args, needle", [
    (["--model-file", "missing.npz", "--output", "x.onnx"], "--model-file: no such file or directory"),
    (["--model-file", "m.npz", "--output", "x.onnx", "--format", "tflite"], "argument --format: invalid choice"),
    (["--model-file", "m.npz", "--output", "x.onnx", "--opset", "seven"], "argument --opset: invalid int value"),
    (["--model-file", "m.npz"], "the following arguments are required: --output"),
    (["--model-file", "m.npz", "--output", "x.onnx", "--opset", "9"], "opset must be an int from 13"),
])
def test_export_job_bad_arguments_are_one_line(tmp_path, args, needle):
    nn.Sequential([nn.Dense(2)], input_shape=(3,), seed=0).build().save(str(tmp_path / "m.npz"))
    args = [str(tmp_path / a) if a in ("m.npz", "x.onnx") else a for a in args]
    status, _, stderr = export_job(*args)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("jobs/export.py: error: "), stderr
    assert needle in lines[0], lines[0]
    assert not os.path.exists(tmp_path / "x.onnx")
