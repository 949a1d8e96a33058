"""jobs/train.py, evaluate.py and predict.py: --help, one-line failures (exit 2) on missing paths, malformed model
specs and bad data, and the readers: the same digits held out as Parquet, CSV, LibSVM and IDX give the same
metrics. The end-to-end runs call each job's main in this process on the test session's local[2] Spark; the
spark-submit path is tests/test_cluster.py's."""
import importlib
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparkdl.datasets import load_digits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOBS = os.path.join(REPO, "jobs")
SCRIPTS = ("train.py", "evaluate.py", "predict.py")
IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def job(name):
    sys.path.insert(0, JOBS)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(JOBS)


def run_job(name, argv, capsys):
    """(exit status, stdout, stderr) of jobs/<name>.py run in this process, through its error contract."""
    module, common = job(name), job("common")
    capsys.readouterr()
    status = common.run(f"jobs/{name}.py", module.main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def run_script(script, *args):
    t0 = time.time()
    r = subprocess.run([sys.executable, os.path.join(JOBS, script), *map(str, args)], capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    return r.returncode, r.stdout, r.stderr, time.time() - t0


def assert_one_line_error(status, err, script, *needles):
    assert status == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip() and "WARN" not in ln]
    assert len(lines) == 1 and lines[0].startswith(f"jobs/{script}: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# -- command line, no Spark ----------------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_the_options(script):
    status, out, err, _ = run_script(script, "--help")
    assert status == 0, err
    for option in ("--data", "--data-format", "--master", "--features-col", "--label-col"):
        assert option in out
    assert ("--model " if script == "train.py" else "--model-file") in out
    assert "idx" in out and "libsvm" in out


@pytest.mark.parametrize("script, args, needle", [
    ("train.py", ["--data", "/no/such/train.parquet"], "--data: no such file or directory: '/no/such/train.parquet'"),
    ("train.py", ["--data", "digits", "--test-data", "/no/such/test.csv"], "--test-data: no such file"),
    ("evaluate.py", ["--model-file", "/no/such/model.npz"], "--model-file: no such file or directory"),
    ("evaluate.py", ["--model-file", "{model}", "--data", "/no/such/dir"], "--data: no such file or directory"),
    ("predict.py", ["--model-file", "/no/such/model.npz"], "--model-file: no such file or directory"),
    ("predict.py", ["--model-file", "{model}", "--data", "/no/such/t10k-images-idx3-ubyte"], "--data: no such file"),
])
def test_a_missing_path_fails_in_one_line_before_spark_starts(tmp_path, script, args, needle):
    model = tmp_path / "model.npz"
    from sparkdl.nn import Dense, Sequential
    Sequential([Dense(10, activation="softmax")], input_shape=(64,), seed=0).compile("adam").save(str(model))
    status, _, err, seconds = run_script(script, *[a.format(model=model) for a in args])
    assert_one_line_error(status, err, script, needle)
    assert seconds < 60   # no Spark: a JVM start alone takes longer than the checks on this machine


BAD_SPECS = {
    "not-json.json": ('{"class_name": "Sequential", "config": {"layers": [', "is not valid JSON"),
    "not-a-model.json": ('[1, 2, 3]', 'must be {"class_name": "Sequential"'),
    "unknown-layer.json": ('{"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense3D"}]}}',
                           "unknown layer class_name"),
    "bad-argument.json": ('{"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense", '
                          '"config": {"units": -4}}]}}', "units"),
    "not-yaml.yaml": ("class_name: Sequential\nconfig: {layers: [\n", "YAML"),
}


@pytest.mark.parametrize("name", sorted(BAD_SPECS))
def test_a_malformed_model_spec_fails_in_one_line(tmp_path, name):
    text, needle = BAD_SPECS[name]
    spec = tmp_path / name
    spec.write_text(text)
    status, _, err, _ = run_script("train.py", "--model", spec)
    assert_one_line_error(status, err, "train.py", needle)


def test_an_unknown_builtin_model_names_the_choices():
    status, _, err, _ = run_script("train.py", "--model", "resnet152")
    assert_one_line_error(status, err, "train.py", "'cnn'", "'lstm'", "'mlp'", "resnet152")


@pytest.mark.parametrize("script", ["evaluate.py", "predict.py"])
def test_a_malformed_model_file_fails_in_one_line(tmp_path, script):
    spec = tmp_path / "model.npz"
    spec.write_text(open(os.path.join(REPO, "conf", "models", "mlp.json")).read())   # a spec is not a model file
    status, _, err, _ = run_script(script, "--model-file", spec)
    assert_one_line_error(status, err, script, str(spec))


def test_the_spec_s_training_recipe_fills_the_options_left_unset():
    train = job("train")
    spec = {"class_name": "Sequential", "config": {"layers": []},
            "training": {"epochs": 12, "learning_rate": 0.002, "lr_schedule": "cosine"}}
    cfg = train.with_spec_defaults(train.parse_args([]), spec)
    assert (cfg.epochs, cfg.learning_rate, cfg.lr_schedule) == (12, 0.002, "cosine")
    cfg = train.with_spec_defaults(train.parse_args(["--epochs", "3", "--lr-schedule", "constant"]), spec)
    assert (cfg.epochs, cfg.learning_rate, cfg.lr_schedule) == (3, 0.002, "constant")   # an option wins
    cfg = train.with_spec_defaults(train.parse_args([]), {"class_name": "Sequential", "config": {}})
    assert (cfg.epochs, cfg.learning_rate, cfg.lr_schedule) == (10, 0.005, "constant")  # no recipe: DEFAULTS
    for bad, needle in (({"batch": 3}, "may set ['epochs', 'label_smoothing', 'learning_rate', 'lr_schedule', "
                                       "'weight_decay']"),
                        ({"lr_schedule": "step"}, "lr_schedule must be one of ['constant', 'cosine']")):
        with pytest.raises(job("common").JobError, match=re.escape(needle)):
            train.with_spec_defaults(train.parse_args([]), {**spec, "training": bad})


def test_a_cosine_schedule_decays_to_zero_over_the_fit_s_steps_of_one_worker():
    train = job("train")

    class Rows:
        def count(self):
            return 1001

    cfg = train.with_spec_defaults(train.parse_args(["--lr-schedule", "cosine", "--learning-rate", "0.01",
                                                     "--epochs", "3", "--batch-size-per-worker", "50"]), {})
    steps = train.fit_steps(cfg, Rows(), workers=2)
    assert steps == 3 * 11                               # 501 rows per worker: 11 minibatches of at most 50
    model = train.build_model(cfg, json.load(open(os.path.join(REPO, "conf", "models", "mlp.json"))), (64,), steps)
    schedule = model.optimizer.learning_rate
    assert type(schedule).__name__ == "CosineDecay" and schedule.decay_steps == steps
    assert float(schedule(0)) == pytest.approx(0.01) and float(schedule(steps)) == pytest.approx(0.0, abs=1e-12)


def test_label_smoothing_and_weight_decay_reach_the_loss_and_the_optimizer():
    train, common = job("train"), job("common")
    spec = json.load(open(os.path.join(REPO, "conf", "models", "mlp.json")))
    cfg = train.with_spec_defaults(train.parse_args(["--label-smoothing", "0.1", "--optimizer", "adamw"]),
                                   {**spec, "training": {"weight_decay": 0.02}})
    model = train.build_model(cfg, spec, (64,), steps=100)
    assert model.loss.label_smoothing == 0.1 and model.optimizer.weight_decay == 0.02
    cfg = train.with_spec_defaults(train.parse_args(["--label-smoothing", "0.1", "--loss", "mse"]), spec)
    with pytest.raises(common.JobError, match=r"cannot compile with --optimizer adam .* and --loss mse "
                                              r"\{'label_smoothing': 0.1\}"):
        train.build_model(cfg, spec, (64,), steps=100)


def test_bad_arguments_exit_2():
    status, _, err, _ = run_script("train.py", "--input-shape", "8,x")
    assert status == 2 and "--input-shape must be comma-separated positive ints" in err
    status, _, err, _ = run_script("evaluate.py")
    assert status == 2 and "--model-file" in err


# -- data in every format --------------------------------------------------------------------------------------
def write_idx(path, array):
    array = np.ascontiguousarray(array)
    header = bytes([0, 0, IDX_CODES[array.dtype], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    with open(path, "wb") as f:
        f.write(header + array.astype(array.dtype.newbyteorder(">")).tobytes())


def write_parquet(path, x, y):
    offsets = pa.array(np.arange(0, x.size + 1, x.shape[1], dtype=np.int32))
    os.makedirs(path)
    pq.write_table(pa.table({"features": pa.ListArray.from_arrays(offsets, pa.array(x.reshape(-1))),
                             "label": pa.array(y)}), os.path.join(path, "part-0.parquet"))


def write_csv(path, x, y):
    header = ",".join([f"pixel{i}" for i in range(x.shape[1])] + ["label"])
    rows = [",".join([f"{v:.9g}" for v in row] + [str(int(t))]) for row, t in zip(x, y)]
    with open(path, "w") as f:
        f.write("\n".join([header] + rows) + "\n")


def write_libsvm(path, x, y):
    with open(path, "w") as f:
        for row, t in zip(x, y):
            f.write(" ".join([str(int(t))] + [f"{i + 1}:{v:.9g}" for i, v in enumerate(row) if v != 0]) + "\n")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The digits train/test split as Parquet, CSV, LibSVM, IDX files and an MNIST-style IDX directory."""
    root = tmp_path_factory.mktemp("data")
    (xtr, ytr), (xte, yte) = load_digits("train"), load_digits("test")
    paths = {"train.parquet": root / "train.parquet", "test.parquet": root / "test.parquet",
             "test.csv": root / "test.csv", "test.libsvm": root / "test.libsvm",
             "test-images": root / "test-images-idx3-ubyte", "mnist": root / "mnist",
             "bad-labels.parquet": root / "bad-labels.parquet", "empty": root / "empty"}
    write_parquet(str(paths["train.parquet"]), xtr, ytr)
    write_parquet(str(paths["test.parquet"]), xte, yte)
    write_parquet(str(paths["bad-labels.parquet"]), xte, yte + 10)
    write_csv(paths["test.csv"], xte, yte)
    write_libsvm(paths["test.libsvm"], xte, yte)
    write_idx(root / "test-images-idx3-ubyte", xte.reshape(-1, 8, 8))            # float32 IDX: the same values
    write_idx(root / "test-labels-idx1-ubyte", yte.astype(np.uint8))
    paths["mnist"].mkdir()
    for split, (x, y) in (("train", (xtr, ytr)), ("t10k", (xte, yte))):     # bytes 0..255, as MNIST ships
        write_idx(paths["mnist"] / f"{split}-images-idx3-ubyte", np.round(x.reshape(-1, 8, 8) * 255).astype(np.uint8))
        write_idx(paths["mnist"] / f"{split}-labels-idx1-ubyte", y.astype(np.uint8))
    paths["empty"].mkdir()
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def trained(spark, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    module = job("train")
    status = job("common").run("jobs/train.py", module.main, [
        "--data", data["train.parquet"], "--test-data", data["test.parquet"], "--model", "mlp", "--epochs", "3",
        "--num-workers", "2", "--averaging-frequency", "4", "--output-dir", str(out)])
    assert status == 0
    return out


@pytest.mark.spark
def test_train_writes_the_model_the_metrics_and_the_stats_page(trained):
    assert sorted(os.listdir(trained)) == ["metrics.json", "model.npz", "stats.html", "stats.json"]
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.85
    assert metrics["master"].startswith("local") and metrics["stats"]["workers"] == 2
    assert len(metrics["history"]["loss"]) == 3 and metrics["history"]["loss"][-1] < metrics["history"]["loss"][0]
    assert "Timeline per worker" in (trained / "stats.html").read_text()
    from sparkdl import load_model
    assert load_model(str(trained / "model.npz")).input_shape == (64,)


@pytest.mark.spark
def test_every_format_gives_the_same_evaluation(trained, data, capsys, tmp_path):
    results = {}
    for name in ("test.parquet", "test.csv", "test.libsvm", "test-images", "mnist"):
        out = tmp_path / f"{name}.json"
        status, stdout, err = run_job("evaluate", ["--model-file", trained / "model.npz", "--data", data[name],
                                                   "--output", out], capsys)
        assert status == 0, err
        assert "accuracy" in stdout
        results[name] = json.loads(out.read_text())["metrics"]
    reference = results.pop("test.parquet")
    assert set(reference) == {"loss", "accuracy", "precision", "recall", "f1_score", "log_loss", "confusion_matrix"}
    assert np.sum(reference["confusion_matrix"]) == len(load_digits("test")[1])
    trained_metrics = json.loads((trained / "metrics.json").read_text())["test"]
    assert reference["accuracy"] == pytest.approx(trained_metrics["accuracy"], abs=1e-12)
    for name in ("test.csv", "test.libsvm", "test-images"):   # exactly the same values, in another format
        assert results[name]["accuracy"] == reference["accuracy"], name
        assert results[name]["confusion_matrix"] == reference["confusion_matrix"], name
        assert results[name]["loss"] == pytest.approx(reference["loss"], rel=1e-6), name
    # the MNIST directory holds the images as bytes (x * 255 rounded): nearly the same
    assert results["mnist"]["accuracy"] == pytest.approx(reference["accuracy"], abs=0.02)


@pytest.mark.spark
def test_predict_writes_parquet_with_or_without_labels(trained, data, capsys, tmp_path):
    status, stdout, err = run_job("predict", ["--model-file", trained / "model.npz", "--data", data["test.parquet"],
                                              "--output", tmp_path / "with-labels"], capsys)
    assert status == 0, err
    table = pq.read_table(str(tmp_path / "with-labels"))
    assert table.column_names == ["label", "probability", "prediction"]
    accuracy = float(np.mean(table.column("label").to_numpy() == table.column("prediction").to_numpy()))
    assert f"accuracy against 'label': {accuracy:.4f}" in stdout
    probabilities = np.array(table.column("probability").to_pylist())
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)

    unlabeled = tmp_path / "images-only-idx3-ubyte"        # an IDX images file with no labels file beside it
    write_idx(unlabeled, load_digits("test")[0][:50].reshape(-1, 8, 8))
    status, stdout, err = run_job("predict", ["--model-file", trained / "model.npz", "--data", unlabeled,
                                              "--output", tmp_path / "no-labels", "--keep-features"], capsys)
    assert status == 0, err
    table = pq.read_table(str(tmp_path / "no-labels"))
    assert table.column_names == ["features", "probability", "prediction"] and table.num_rows == 50
    from sparkdl import load_model
    expected = load_model(str(trained / "model.npz")).predict(load_digits("test")[0][:50]).argmax(axis=1)
    np.testing.assert_array_equal(table.column("prediction").to_numpy(), expected)


@pytest.mark.spark
@pytest.mark.parametrize("model, extra, shape", [
    ("lstm", [], (8, 8)),                                     # rows of the image as 8 steps of 8 values
    ("cnn", ["--input-shape", "8,8,1"], (8, 8, 1)),
])
def test_train_on_an_mnist_idx_directory(data, capsys, tmp_path, model, extra, shape):
    status, stdout, err = run_job("train", ["--data", data["mnist"], "--model", model, "--epochs", "1",
                                            "--num-workers", "2", "--output-dir", tmp_path, *extra], capsys)
    assert status == 0, err
    from sparkdl import load_model
    assert load_model(str(tmp_path / "model.npz")).input_shape == shape
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.2        # one epoch: learning, not converged; t10k is the test split


@pytest.mark.spark
def test_train_from_csv_columns_with_a_yaml_spec(data, capsys, tmp_path):
    pytest.importorskip("yaml")
    status, stdout, err = run_job("train", ["--data", data["test.csv"], "--model", "lenet", "--epochs", "1",
                                            "--batch-size-per-worker", "16", "--output-dir", tmp_path], capsys)
    assert status == 0, err
    from sparkdl import load_model
    model = load_model(str(tmp_path / "model.npz"))
    assert model.input_shape == (8, 8, 1)              # 64 numeric columns, a conv spec: a square image
    assert [type(layer).__name__ for layer in model.layers][:2] == ["Conv2D", "MaxPooling2D"]


@pytest.mark.spark
@pytest.mark.parametrize("args, needles", [
    (["--data", "{bad-labels.parquet}"], ["the evaluation DataFrame, column 'label'", "are outside [0, 9]"]),
    (["--data", "{train.parquet}", "--features-col", "pixels"], ["the training DataFrame, column 'pixels': no such "
                                                                  "column"]),
    (["--data", "{empty}"], ["Parquet"]),                       # Spark's own analysis error, first line only
    (["--data", "{test.csv}", "--features-col", "pixel0,label2"], ["label2"]),
])
def test_bad_data_fails_in_one_line(data, capsys, tmp_path, args, needles):
    argv = [data[a[1:-1]] if a.startswith("{") else a for a in args]
    status, _, err = run_job("train", argv + ["--epochs", "1", "--output-dir", tmp_path], capsys)
    assert_one_line_error(status, err, "train.py", *needles)


@pytest.mark.spark
def test_predict_on_data_that_does_not_fit_the_model_fails_in_one_line(trained, data, capsys, tmp_path):
    status, _, err = run_job("predict", ["--model-file", trained / "model.npz", "--data", data["test.csv"],
                                         "--features-col", "pixel0,pixel1", "--output", tmp_path / "p"], capsys)
    assert_one_line_error(status, err, "predict.py", "the prediction DataFrame, column \"features ['pixel0', "
                          "'pixel1']\": rows of [2] values among the first 16 (expected 64 numbers per row")


@pytest.mark.spark
def test_train_on_libsvm_reads_the_test_file_at_the_training_width(data, capsys, tmp_path):
    status, _, err = run_job("train", ["--data", data["test.libsvm"], "--test-data", data["test.libsvm"],
                                       "--epochs", "1", "--output-dir", tmp_path], capsys)
    assert status == 0, err
    widest = max(int(item.split(":")[0]) for line in open(data["test.libsvm"]) for item in line.split()[1:])
    from sparkdl import load_model
    assert load_model(str(tmp_path / "model.npz")).input_shape == (widest,)


@pytest.mark.spark
@pytest.mark.parametrize("source", ["digits", "mnist"])
def test_data_the_executors_read_comes_in_one_partition_per_worker(spark, data, source):
    # the fit then needs no shuffle, and the rows each worker trains on do not depend on how many executors had
    # registered when the data was read (a standalone cluster's default parallelism counts only those)
    train = job("train")
    path = "digits" if source == "digits" else data["mnist"]
    for workers, expected in ((3, 3), (None, spark.sparkContext.defaultParallelism)):
        tr, te, _, _ = train.load_data(train.TrainConfig(data=path, num_workers=workers), spark)
        assert (tr.rdd.getNumPartitions(), te.rdd.getNumPartitions()) == (expected, expected), (source, workers)
