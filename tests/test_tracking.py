"""Experiment tracking (sparkdl.train.tracking): fits logged to a real `mlflow server` (sqlite store, local
artifacts) and read back through MlflowClient; TensorBoard event files read back frame by frame (and with
tensorboard's EventAccumulator where tensorboard is installed); the pyspark.ml Params and jobs/train.py's options."""
import glob
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from sparkdl import load_model, optim
from sparkdl.datasets import load_digits
from sparkdl.nn import Dense, Sequential
from sparkdl.train import Callback, MLflowLogger, TensorBoardLogger
from sparkdl.train.tracking import MAX_PARAM_CHARS, flatten

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = "features array<float>, label int"


def tiny(seed=0):
    m = Sequential([Dense(16, activation="relu"), Dense(10, activation="softmax")], input_shape=(64,), seed=seed)
    return m.compile(optim.Adam(0.01), "sparse_categorical_crossentropy", ["accuracy"])


@pytest.fixture(scope="module")
def digits(spark):
    frames = []
    for split in ("train", "test"):
        x, y = load_digits(split)
        frames.append(spark.createDataFrame([(a.tolist(), int(b)) for a, b in zip(x, y)], SCHEMA))
    return frames


def trainer(model):
    from sparkdl.spark import ParameterAveraging, SparkTrainer
    return SparkTrainer(model, ParameterAveraging(num_workers=2, batch_size_per_worker=32, averaging_frequency=5,
                                                  seed=0))


# -- an MLflow tracking server -------------------------------------------------------------------------------
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (sqlite backend, artifacts proxied into a local directory), stopped by
    its process group at the end, also when a test failed."""
    try:
        import mlflow  # noqa: F401
    except ImportError as e:
        print(f"\ntest_tracking: MLflow tests skipped: mlflow cannot be imported ({e})")
        pytest.skip(f"mlflow cannot be imported ({e}); pip install sparkdl[tracking]")
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    with open(root / "server.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                   "--workers", "1", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                                   "--artifacts-destination", str(root / "artifacts")],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        uri = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)   # the server and its uvicorn worker
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def metric(client, run_id, key):
    """[(step, value)] of a metric's history, by step."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# -- TensorBoard event files, read back ----------------------------------------------------------------------
def read_events(log_dir):
    """{tag: [(step, value)]} of the scalars in the event files in ``log_dir``, read from the TFRecord frames
    (length, masked CRC32C of it, an Event protobuf, masked CRC32C of that; CRCs checked) with tensorboardX's
    bundled protos; where tensorboard is installed, its EventAccumulator must read the same."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c
    files = sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*")))
    assert files, f"no event file in {log_dir}: {os.listdir(log_dir)}"
    scalars = {}
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            header = data[pos:pos + 8]
            (length,), (header_crc,) = struct.unpack("<Q", header), struct.unpack("<I", data[pos + 8:pos + 12])
            body = data[pos + 12:pos + 12 + length]
            (body_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
            assert header_crc == masked_crc32c(header) and body_crc == masked_crc32c(body), path
            pos += 16 + length
            event = Event.FromString(body)
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return scalars
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    assert {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]} == scalars
    return scalars


def values(scalars, tag):
    return [v for _, v in scalars[tag]]


# -- no Spark ------------------------------------------------------------------------------------------------
def test_params_are_flattened_to_short_dotted_keys():
    model = tiny()
    params = dict(flatten(model.get_config(), "model"))
    params.update(flatten(model.compile_config(), "compile"))
    params.update(flatten({"master": {"batch_size_per_worker": 32, "export_dir": None, "_private": 1},
                           "note": "x" * 10_000}))
    assert params["model.layers.0"] == "Dense" and params["model.layers.0.units"] == "16"
    assert params["model.layers.1.activation"] == "softmax" and params["model.input_shape"] == "[64]"
    assert params["compile.optimizer"] == "Adam" and float(params["compile.optimizer.learning_rate"]) == 0.01
    assert params["compile.loss"] == "sparse_categorical_crossentropy"
    assert params["master.batch_size_per_worker"] == "32" and params["master.export_dir"] == "null"
    assert "master._private" not in params
    assert len(params["note"]) == MAX_PARAM_CHARS and params["note"].endswith("...")


def test_a_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match=r"MLflowLogger needs the mlflow package.*pip install sparkdl\[tracking\]"):
        MLflowLogger("http://127.0.0.1:1")
    with pytest.raises(ImportError, match=r"tensorboardX package.*sparkdl\[tracking\]"):
        TensorBoardLogger("unused")


def test_tensorboard_on_a_local_fit(tmp_path):
    pytest.importorskip("tensorboardX")
    x, y = load_digits("train")
    xv, yv = load_digits("test")
    model = tiny()
    history = model.fit(x, y, epochs=3, batch_size=64, validation_data=(xv, yv), verbose=0,
                        callbacks=[TensorBoardLogger(tmp_path)])
    scalars = read_events(str(tmp_path))
    assert set(scalars) == {"epoch/loss", "epoch/accuracy", "epoch/val_loss", "epoch/val_accuracy"}
    for name in ("loss", "accuracy", "val_loss"):
        assert [s for s, _ in scalars[f"epoch/{name}"]] == [0, 1, 2]
        assert values(scalars, f"epoch/{name}") == pytest.approx(history.history[name], rel=1e-6)  # float32 on disk


# -- Spark ---------------------------------------------------------------------------------------------------
@pytest.mark.spark
def test_mlflow_round_trip_through_a_server(mlflow_uri, digits, tmp_path):
    from mlflow import MlflowClient
    train, validation = digits
    t = trainer(tiny())
    logger = MLflowLogger(mlflow_uri, experiment="digits", run_name="tiny", params={"master": vars(t.master)})
    history = t.fit(train, epochs=2, validation_df=validation, callbacks=[logger], verbose=0)

    client = MlflowClient(mlflow_uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny" and not logger.running
    assert client.get_experiment(run.info.experiment_id).name == "digits"
    params = run.data.params
    assert (params["model.layers.0"], params["model.layers.0.units"], params["compile.optimizer"]) == \
           ("Dense", "16", "Adam")
    assert params["master.batch_size_per_worker"] == "32" and params["master.num_workers"] == "2"
    assert run.data.tags["sparkdl.mode"] == history.mode
    for name in ("loss", "val_loss", "accuracy", "val_accuracy"):
        assert metric(client, logger.run_id, name) == list(enumerate(pytest.approx(v) for v in history.history[name]))
    rounds = metric(client, logger.run_id, "round_loss")
    assert [s for s, _ in rounds] == [r["round"] for r in history.rounds] == list(range(1, len(rounds) + 1))
    assert [v for _, v in rounds] == pytest.approx([r["loss"] for r in history.rounds])

    assert {a.path for a in client.list_artifacts(logger.run_id)} == {"model.npz", "stats.html", "stats.json"}
    saved = load_model(client.download_artifacts(logger.run_id, "model.npz", str(tmp_path)))
    assert saved.get_config() == t.model.get_config()
    assert np.array_equal(saved.get_flat_params(), t.model.get_flat_params())
    page = open(client.download_artifacts(logger.run_id, "stats.html", str(tmp_path)), encoding="utf-8").read()
    assert "<html" in page.lower() and len(page) > 1000
    stats = json.load(open(client.download_artifacts(logger.run_id, "stats.json", str(tmp_path))))
    assert [e["loss"] for e in stats["epochs"]] == pytest.approx(history.history["loss"])


@pytest.mark.spark
def test_a_failed_fit_ends_its_mlflow_run_failed(mlflow_uri, digits):
    from mlflow import MlflowClient

    class Boom(Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("boom at the epoch end")

    logger = MLflowLogger(mlflow_uri, run_name="fails")
    with pytest.raises(RuntimeError, match="boom"):
        trainer(tiny()).fit(digits[0], epochs=2, callbacks=[logger, Boom()], verbose=0)
    client = MlflowClient(mlflow_uri)
    assert client.get_run(logger.run_id).info.status == "FAILED" and not logger.running
    assert [s for s, _ in metric(client, logger.run_id, "loss")] == [0]   # what came before the failure is kept


@pytest.mark.spark
def test_tensorboard_on_a_spark_fit(digits, tmp_path):
    pytest.importorskip("tensorboardX")
    train, validation = digits
    t = trainer(tiny())
    history = t.fit(train, epochs=2, validation_df=validation, callbacks=[TensorBoardLogger(tmp_path)], verbose=0)
    scalars = read_events(str(tmp_path))
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert scalars[f"epoch/{name}"] == [(0, pytest.approx(history.history[name][0], rel=1e-6)),
                                            (1, pytest.approx(history.history[name][1], rel=1e-6))]
    assert [s for s, _ in scalars["round/loss"]] == [r["round"] for r in history.rounds]
    assert values(scalars, "round/loss") == pytest.approx([r["loss"] for r in history.rounds], rel=1e-6)
    layers = history.stats.layers
    for name in ("dense", "dense_1"):
        assert [s for s, _ in scalars[f"weight_norm/{name}"]] == [s["round"] + 1 for s in layers]
        assert values(scalars, f"weight_norm/{name}") == \
               pytest.approx([s["layers"][name]["weight_norm"] for s in layers], rel=1e-6)
        ratios = [s["layers"][name]["ratio"] for s in layers if s["layers"][name].get("ratio") is not None]
        assert ratios and values(scalars, f"update_ratio/{name}") == pytest.approx(ratios, rel=1e-6)
        grads = [s["layers"][name]["grad_norm"] for s in layers if "grad_norm" in s["layers"][name]]
        assert grads and values(scalars, f"grad_norm/{name}") == pytest.approx(grads, rel=1e-6)


@pytest.mark.spark
def test_estimator_params_log_to_mlflow_and_tensorboard(mlflow_uri, digits, tmp_path):
    from mlflow import MlflowClient
    from sparkdl.ml import DeepClassifier, DeepRegressor
    assert DeepClassifier().getMlflowTrackingUri() == "" and DeepRegressor().getTensorboardDir() == ""
    clf = DeepClassifier(epochs=1, numWorkers=2, learningRate=0.01, mlflowTrackingUri=mlflow_uri,
                         tensorboardDir=str(tmp_path))
    model = clf.fit(digits[0])

    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("sparkdl").experiment_id],
                              filter_string=f"attributes.run_name = '{clf.uid}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["epochs"] == "1" and runs[0].data.params["model.layers.0.units"] == "64"
    assert [v for _, v in metric(client, runs[0].info.run_id, "loss")] == pytest.approx(model.history.history["loss"])
    (run_dir,) = os.listdir(tmp_path)   # a subdirectory per fit
    assert run_dir.startswith(clf.uid)
    scalars = read_events(str(tmp_path / run_dir))
    assert values(scalars, "epoch/loss") == pytest.approx(model.history.history["loss"], rel=1e-6)


@pytest.mark.spark
def test_train_job_writes_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboardX")
    tb, out = tmp_path / "tb", tmp_path / "out"
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    r = subprocess.run([sys.executable, os.path.join(REPO, "jobs", "train.py"), "--epochs", "1", "--tensorboard-dir",
                        str(tb), "--output-dir", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    loss = json.loads((out / "metrics.json").read_text())["history"]["loss"]
    scalars = read_events(str(tb))
    assert scalars["epoch/loss"] == [(0, pytest.approx(loss[0], rel=1e-6))]
    assert scalars["round/loss"] and scalars["weight_norm/dense"]
