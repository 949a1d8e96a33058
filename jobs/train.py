"""spark-submit entry point: train a sparkdl model on a DataFrame with parameter averaging.

    spark-submit jobs/train.py                                 # bundled digits, local[2], MLP
    spark-submit --master yarn jobs/train.py --data hdfs:///data/train.parquet --input-shape 28,28,1 \\
        --model conf/models/cnn.json --test-data hdfs:///data/test.parquet --num-workers 8

Writes <output-dir>/model.npz, metrics.json and stats.html, and prints the held-out metrics.
Exit status: 0 on success, 2 with a one-line reason on bad arguments or data.
"""
import argparse
import dataclasses
import json
import os
import sys
import tempfile

BUILTIN_DATA = ("digits", "mnist")
HERE = os.path.dirname(os.path.abspath(__file__))


@dataclasses.dataclass
class TrainConfig:
    data: str = "digits"
    data_format: str = None
    test_data: str = None
    test_fraction: float = 0.2
    features_col: str = "features"
    label_col: str = "label"
    input_shape: tuple = None
    model: str = "mlp"
    loss: str = "sparse_categorical_crossentropy"
    optimizer: str = "adam"
    learning_rate: float = 0.005
    metrics: tuple = ("accuracy",)
    epochs: int = 10
    num_workers: int = None
    batch_size_per_worker: int = 32
    averaging_frequency: int = 5
    average_optimizer_state: bool = True
    mode: str = "jobs"
    export_dir: str = None
    seed: int = 0
    output_dir: str = "out"
    master: str = "local[2]"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="jobs/train.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = TrainConfig()
    g = p.add_argument_group("data")
    g.add_argument("--data", default=d.data, help=f"a built-in dataset {BUILTIN_DATA} or a Parquet/CSV/JSON/LibSVM "
                   "path (local or any Hadoop URI)")
    g.add_argument("--data-format", default=None, choices=["parquet", "csv", "json", "libsvm"],
                   help="format of --data and --test-data (default: from the file extension, else parquet)")
    g.add_argument("--test-data", default=None, help="held-out data; default: a seeded split of --data")
    g.add_argument("--test-fraction", type=float, default=d.test_fraction, help="held-out share when no --test-data")
    g.add_argument("--features-col", default=d.features_col,
                   help="features column (vector or array), or several numeric columns separated by commas")
    g.add_argument("--label-col", default=d.label_col)
    g.add_argument("--input-shape", default=None, help="model input shape, e.g. 28,28,1 (default: from the data)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=d.model, help="'mlp', 'cnn' (conf/models/) or a model JSON file "
                   "(as written by model.to_json(); input_shape may be left out)")
    g.add_argument("--loss", default=d.loss)
    g.add_argument("--optimizer", default=d.optimizer, choices=["sgd", "adam", "adamw", "rmsprop", "adagrad"])
    g.add_argument("--learning-rate", type=float, default=d.learning_rate)
    g.add_argument("--metrics", default=",".join(d.metrics), help="comma-separated metric names")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g = p.add_argument_group("training master")
    g.add_argument("--num-workers", type=int, default=None, help="default: Spark's default parallelism")
    g.add_argument("--batch-size-per-worker", type=int, default=d.batch_size_per_worker)
    g.add_argument("--averaging-frequency", type=int, default=d.averaging_frequency,
                   help="minibatches per worker between two averagings")
    g.add_argument("--no-average-optimizer-state", dest="average_optimizer_state", action="store_false")
    g.add_argument("--mode", default=d.mode, choices=["jobs", "barrier"])
    g.add_argument("--export-dir", default=None, help="shard directory (a shared filesystem on a cluster)")
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("output")
    g.add_argument("--output-dir", default=d.output_dir, help="where model.npz, metrics.json, stats.html go")
    g.add_argument("--master", default=d.master, help="Spark master when not started by spark-submit")
    a = p.parse_args(argv)
    cfg = TrainConfig(**{k: v for k, v in vars(a).items() if k in TrainConfig.__dataclass_fields__})
    cfg.metrics = tuple(m for m in a.metrics.split(",") if m)
    if a.input_shape:
        try:
            cfg.input_shape = tuple(int(s) for s in a.input_shape.split(","))
        except ValueError:
            p.error(f"--input-shape must be comma-separated ints, e.g. 28,28,1. Received: {a.input_shape!r}")
    if "," in cfg.features_col:
        cfg.features_col = [c for c in cfg.features_col.split(",") if c]
    return cfg


def load_spec(name):
    path = name if os.path.exists(name) else os.path.join(HERE, "..", "conf", "models", f"{name}.json")
    if not os.path.exists(path):
        raise ValueError(f"--model must be 'mlp', 'cnn' or an existing model JSON file. Received: {name!r}")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"model spec {path!r} is not valid JSON: {e}") from None


def build_model(cfg, spec, input_shape):
    from sparkdl import optim
    from sparkdl.nn import model_from_config
    spec = json.loads(json.dumps(spec))
    spec.setdefault("config", {})["input_shape"] = list(cfg.input_shape or input_shape)
    model = model_from_config(spec, seed=cfg.seed)
    optimizer = optim.get({"class_name": cfg.optimizer, "config": {"learning_rate": cfg.learning_rate}})
    return model.compile(optimizer, cfg.loss, list(cfg.metrics))


def load_data(cfg, spark, workdir):
    """(train DataFrame, test DataFrame, natural input shape)."""
    from sparkdl import datasets
    from sparkdl.spark.data import numpy_to_dataframe, read_dataframe
    if cfg.data in BUILTIN_DATA:
        flat = "cnn" not in os.path.basename(cfg.model)
        if cfg.data == "digits":
            (xtr, ytr), (xte, yte) = (datasets.load_digits(s, seed=cfg.seed, flatten=flat) for s in ("train", "test"))
        else:
            directory = datasets.default_mnist_dir()
            (xtr, ytr), (xte, yte) = (datasets.load_mnist(directory, s, flatten=flat) for s in ("train", "t10k"))
        shape = xtr.shape[1:]
        train = numpy_to_dataframe(spark, xtr, ytr, os.path.join(workdir, "train"), cfg.features_col, cfg.label_col)
        test = numpy_to_dataframe(spark, xte, yte, os.path.join(workdir, "test"), cfg.features_col, cfg.label_col)
        return train, test, shape
    df = read_dataframe(spark, cfg.data, cfg.data_format)
    if cfg.test_data:
        test = read_dataframe(spark, cfg.test_data, cfg.data_format)
        train = df
    else:
        train, test = df.randomSplit([1 - cfg.test_fraction, cfg.test_fraction], seed=cfg.seed)
    return train, test, None


def natural_shape(df, features_col):
    from sparkdl.spark.data import X, prepare
    if not isinstance(features_col, str):
        return (len(features_col),)
    first = prepare(df.limit(1), features_col).select(X).first()
    if first is None:
        raise ValueError("the training data is empty")
    return (len(first[0]),)


def main(argv=None):
    cfg = parse_args(argv)
    from sparkdl.spark import ParameterAveraging, SparkTrainer, local_session
    spark = local_session(cfg.master, app_name="sparkdl-train")
    workdir = tempfile.mkdtemp(prefix="sparkdl-job-")
    try:
        spec = load_spec(cfg.model)
        train, test, shape = load_data(cfg, spark, workdir)
        model = build_model(cfg, spec, shape or natural_shape(train, cfg.features_col))
        model.summary()
        master = ParameterAveraging(num_workers=cfg.num_workers, batch_size_per_worker=cfg.batch_size_per_worker,
                                    averaging_frequency=cfg.averaging_frequency, mode=cfg.mode,
                                    average_optimizer_state=cfg.average_optimizer_state,
                                    export_dir=cfg.export_dir, seed=cfg.seed)
        trainer = SparkTrainer(model, master)
        history = trainer.fit(train, cfg.features_col, cfg.label_col, epochs=cfg.epochs)
        metrics = trainer.evaluate(test, cfg.features_col, cfg.label_col)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"jobs/train.py: error: {e}", file=sys.stderr)
        return 2
    os.makedirs(cfg.output_dir, exist_ok=True)
    model.save(os.path.join(cfg.output_dir, "model.npz"))
    history.stats.to_html(os.path.join(cfg.output_dir, "stats.html"), title=f"sparkdl: {cfg.data}, {cfg.model}")
    summary = history.stats.summary()
    with open(os.path.join(cfg.output_dir, "metrics.json"), "w") as f:
        json.dump({"test": metrics, "history": history.history, "stats": summary,
                   "config": dataclasses.asdict(cfg)}, f, indent=1, default=str)
    print("held-out:", " - ".join(f"{k}: {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    print(f"rounds: {summary['rounds']}, worker time fitting: {summary['fit_fraction']:.0%}, "
          f"driver overhead per round: {summary['overhead_ms_mean']:.0f} ms")
    print(f"wrote {cfg.output_dir}/model.npz, metrics.json, stats.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
