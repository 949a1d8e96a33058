"""Keras in, Spark training, ONNX out: every model Keras made (tests/data/keras, from tools/make_keras_fixtures.py)
leaves as ONNX with Keras's predictions; a model Keras made and compiled (mlp.keras) trains under SparkTrainer with the compile settings it came with, and the ONNX file
exported afterwards holds the trained weights and gives the trained model's predictions in onnxruntime."""
import os

import numpy as np
import pytest

pytest.importorskip("h5py")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
datasets = pytest.importorskip("sklearn.datasets")

import sparkdl  # noqa: E402
from sparkdl.io import export_onnx  # noqa: E402
from sparkdl.spark import ParameterAveraging, SparkTrainer  # noqa: E402

KERAS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "keras")
KERAS_MLP = os.path.join(KERAS, "mlp.keras")
FIXTURES = sorted(f[:-4] for f in os.listdir(KERAS) if f.endswith(".npz"))


@pytest.mark.parametrize("name", FIXTURES)
def test_every_keras_fixture_exports_to_onnx_with_keras_predictions(name, tmp_path):
    """Keras's model -> sparkdl -> ONNX: the full checker accepts the file, and onnxruntime gives what Keras gave
    (and what sparkdl gives) within 1e-5, at the fixture's batch size, which the export did not know."""
    model = sparkdl.io.load_keras(os.path.join(KERAS, f"{name}.keras"))
    with np.load(os.path.join(KERAS, f"{name}.npz"), allow_pickle=False) as d:
        names = [str(n) for n in d["input_names"]]
        x = d["x"] if len(names) == 1 else {n: d[f"x.{n}"] for n in names}
        keras_y = d["y"]
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, str(path))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    dtypes = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
    feeds = {i.name: np.asarray(x if len(names) == 1 else x[i.name], dtypes[i.type]) for i in inputs}
    (got,) = session.run(None, feeds)
    np.testing.assert_allclose(got, keras_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, model.predict(x), rtol=1e-5, atol=1e-5)


def wine(spark):
    """scikit-learn's wine data (178 rows, 3 classes), its first 10 features standardized: the fixture's shape."""
    x, y = datasets.load_wine(return_X_y=True)
    x = x[:, :10]
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    df = spark.createDataFrame([(row.tolist(), int(label)) for row, label in zip(x, y)],
                               "features array<float>, label int")
    return x, y, df


@pytest.mark.spark
@pytest.mark.parametrize("mode", ["barrier", "jobs"])
def test_a_keras_model_trains_on_spark_and_leaves_as_onnx(spark, tmp_path, mode):
    model = sparkdl.load_model(KERAS_MLP)                     # dispatched to sparkdl.io.keras by content
    assert model.input_shape == (10,) and type(model.optimizer).__name__ == "Adam"
    before = model.get_flat_params().copy()
    x, y, df = wine(spark)
    untrained = model.evaluate(x, y)["accuracy"]
    trainer = SparkTrainer(model, ParameterAveraging(num_workers=2, batch_size_per_worker=16, mode=mode, seed=0))
    history = trainer.fit(df, epochs=30, verbose=0)
    assert history.mode == mode and not np.allclose(model.get_flat_params(), before)
    trained = model.evaluate(x, y)["accuracy"]
    assert trained > max(untrained, 0.85), (untrained, trained)

    path = tmp_path / "wine.onnx"
    proto = export_onnx(model, str(path))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    # the file holds the trained weights: every Dense kernel and bias, bit for bit
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for layer in model.layers:
        for name, value in getattr(layer, "params", {}).items():
            matches = [k for k, v in inits.items() if v.shape == value.shape and np.array_equal(v, value)]
            assert matches, f"{layer.name}.{name} is not in the ONNX file"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(got, model.predict(x), rtol=1e-5, atol=1e-5)
