"""spark-submit entry point: train a sparkdl model on a DataFrame with parameter averaging.

    spark-submit jobs/train.py                                 # bundled digits, local[2], MLP
    spark-submit --master yarn --properties-file conf/spark-defaults.yarn-client.conf \\
        --archives dist/sparkdl-env.tar.gz#environment --py-files jobs/common.py \\
        jobs/train.py --data hdfs:///data/train.parquet --test-data hdfs:///data/test.parquet \\
        --model conf/models/cnn.json --input-shape 28,28,1 --num-workers 8 --output-dir hdfs:///models/cnn

Writes <output-dir>/model.npz, metrics.json, stats.html (the training report) and stats.json (its data), and prints
the held-out metrics.
Exit status: 0 on success, 2 with a one-line reason on bad arguments or data.
"""
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (beside this file; on YARN cluster mode ship it with --py-files jobs/common.py)
from sparkdl.dist.modes import choices  # noqa: E402
from sparkdl.errors import DataError  # noqa: E402

PROG = "jobs/train.py"
DEFAULTS = {"epochs": 10, "learning_rate": 0.005, "lr_schedule": "constant",   # where neither option nor spec says
            "label_smoothing": 0.0, "weight_decay": 0.0}
LR_SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass
class TrainConfig:
    data: str = "digits"
    data_format: str = None
    test_data: str = None
    test_fraction: float = 0.2
    features_col: object = None
    label_col: str = "label"
    num_features: int = None
    input_shape: tuple = None
    model: str = "mlp"
    loss: str = "sparse_categorical_crossentropy"
    optimizer: str = "adam"
    learning_rate: float = None    # None: the spec's "training" section, else DEFAULTS
    lr_schedule: str = None
    label_smoothing: float = None
    weight_decay: float = None
    metrics: tuple = ("accuracy",)
    epochs: int = None
    num_workers: int = None
    batch_size_per_worker: int = 32
    averaging_frequency: int = 5
    average_optimizer_state: bool = True
    mode: str = "auto"
    ports: str = None
    export_dir: str = None
    seed: int = 0
    output_dir: str = "out"
    checkpoint_every: str = "100"
    checkpoint_dir: str = None
    resume: bool = False
    mlflow_uri: str = None
    tensorboard_dir: str = None
    master: str = None


def parse_args(argv=None):
    p = common.Parser(PROG, __doc__)
    d = TrainConfig()
    g = common.add_data_args(p, f"a built-in dataset {common.BUILTIN_DATA} or a Parquet/CSV/JSON/LibSVM/IDX path "
                             "(local or any Hadoop URI)", default=d.data)
    g.add_argument("--test-data", default=None, help="held-out data (same format as --data); default: the built-in "
                   "test split, the t10k files of an MNIST directory, or a seeded split of --data")
    g.add_argument("--test-fraction", type=float, default=d.test_fraction, help="held-out share when no --test-data")
    g.add_argument("--input-shape", default=None, help="model input shape, e.g. 28,28,1 (default: the spec's, else "
                   "from the data and the model's first layer)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=d.model, help=f"a spec in conf/models ({', '.join(common.builtin_models())}) "
                   "or a JSON/YAML model spec file (as written by model.to_json(); input_shape may be left out)")
    g.add_argument("--loss", default=d.loss)
    g.add_argument("--optimizer", default=d.optimizer, choices=["sgd", "adam", "adamw", "rmsprop", "adagrad"])
    g.add_argument("--learning-rate", type=float, default=None, help="default: the spec's (its \"training\" "
                   f"section), else {DEFAULTS['learning_rate']}")
    g.add_argument("--lr-schedule", default=None, choices=LR_SCHEDULES, help="cosine: from --learning-rate down to 0 "
                   "over the fit's optimizer steps (Keras' CosineDecay); default: the spec's, else constant")
    g.add_argument("--label-smoothing", type=float, default=None, help="the categorical cross-entropies: each "
                   "target becomes 1 - e on its class plus e / C on every class; default: the spec's, else 0")
    g.add_argument("--weight-decay", type=float, default=None, help="the optimizer's weight decay (L2 for sgd and "
                   "adam, decoupled for adamw); default: the spec's, else 0")
    g.add_argument("--metrics", default=",".join(d.metrics), help="comma-separated metric names")
    g.add_argument("--epochs", type=int, default=None, help=f"default: the spec's, else {DEFAULTS['epochs']}")
    g = p.add_argument_group("training master")
    g.add_argument("--num-workers", type=int, default=None, help="default: Spark's default parallelism")
    g.add_argument("--batch-size-per-worker", type=int, default=d.batch_size_per_worker)
    g.add_argument("--averaging-frequency", type=int, default=d.averaging_frequency,
                   help="minibatches per worker between two averagings")
    g.add_argument("--no-average-optimizer-state", dest="average_optimizer_state", action="store_false")
    g.add_argument("--mode", default=d.mode, choices=list(choices()), help="auto: barrier where the cluster can "
                   "run all the workers at once now, else jobs")
    g.add_argument("--ports", default=None, help="barrier mode: the port range the driver and the workers listen on, "
                   "e.g. 40000-40100 (for firewalled clusters; default spark.sparkdl.ports, else any free port)")
    g.add_argument("--export-dir", default=None, help="shard directory for jobs mode (on a cluster: a path every "
                   "executor can read and write, e.g. hdfs:///tmp/sparkdl; default spark.sparkdl.exportDir, else the "
                   "checkpoint directory or the default filesystem when it is not the local one)")
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("output and Spark")
    g.add_argument("--output-dir", default=d.output_dir, help="where model.npz, metrics.json, stats.html, stats.json go "
                   "(local or any Hadoop URI)")
    g.add_argument("--checkpoint-dir", default=None, help="where checkpoint.npz goes (local or any Hadoop URI; "
                   "default: OUTPUT_DIR)")
    g.add_argument("--checkpoint-every", default=d.checkpoint_every, help="while the run is unfinished, keep "
                   "CHECKPOINT_DIR/checkpoint.npz (the model, its optimizer state and the round), written every N "
                   "averaging rounds (default 100), or at every epoch end with 'epoch' (where epochs take milliseconds, "
                   "that costs the workers more time than it saves); 0: never")
    g.add_argument("--resume", action="store_true", help="go on from CHECKPOINT_DIR/checkpoint.npz (same data, model "
                   "and training options: the result is that of an uninterrupted run)")
    g.add_argument("--mlflow-uri", default=None, help="log the run to this MLflow tracking server or store (params, "
                   "per-epoch metrics, model.npz and stats.html); needs pip install sparkdl[tracking]")
    g.add_argument("--tensorboard-dir", default=None, help="write TensorBoard event files here (a local directory): "
                   "per-epoch and per-round scalars, per-layer weight norms; needs pip install sparkdl[tracking]")
    common.add_master_arg(g)
    a = p.parse_args(argv)
    cfg = TrainConfig(**{k: v for k, v in vars(a).items() if k in TrainConfig.__dataclass_fields__})
    cfg.metrics = tuple(m for m in a.metrics.split(",") if m)
    try:
        cfg.input_shape = common.shape_arg(a.input_shape)
        cfg.features_col = common.features_arg(a.features_col)
    except common.JobError as e:
        p.error(str(e))
    if not 0 < cfg.test_fraction < 1:
        p.error(f"--test-fraction must be in (0, 1). Received: {cfg.test_fraction}")
    if cfg.checkpoint_every != "epoch":
        try:
            cfg.checkpoint_every = int(cfg.checkpoint_every)
            if cfg.checkpoint_every < 0:
                raise ValueError
        except ValueError:
            p.error(f"--checkpoint-every must be 'epoch' or a number of rounds >= 0. Received: {a.checkpoint_every}")
    return cfg


def with_spec_defaults(cfg, spec):
    """``cfg`` with what the options left unset taken from the spec's "training" section (the recipe its model
    was tuned with: epochs, learning_rate, lr_schedule, label_smoothing, weight_decay), else from DEFAULTS."""
    training = spec.get("training", {})
    if not isinstance(training, dict) or set(training) - set(DEFAULTS):
        raise common.JobError(f"the \"training\" section of model spec {cfg.model!r} may set {sorted(DEFAULTS)}. "
                              f"Received: {training!r}")
    values = {k: getattr(cfg, k) if getattr(cfg, k) is not None else training.get(k, DEFAULTS[k]) for k in DEFAULTS}
    if values["lr_schedule"] not in LR_SCHEDULES:
        raise common.JobError(f"lr_schedule must be one of {list(LR_SCHEDULES)}. Received: {values['lr_schedule']!r}")
    return dataclasses.replace(cfg, **values)


def fit_steps(cfg, train, workers):
    """The optimizer steps of each worker over the whole fit (what a cosine schedule decays over): the rows are
    counted (one Spark pass) and split evenly among the workers."""
    per_worker = -(-train.count() // workers)
    return max(1, cfg.epochs * -(-per_worker // cfg.batch_size_per_worker))


def build_model(cfg, spec, input_shape, steps=None):
    """The compiled model; ``steps``: the optimizer steps of the fit (for --lr-schedule cosine)."""
    from sparkdl import optim
    from sparkdl.nn import model_from_config
    spec = {"class_name": spec["class_name"], "config": dict(spec["config"])}
    spec["config"]["input_shape"] = list(input_shape)
    learning_rate = cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        learning_rate = {"class_name": "CosineDecay",
                         "config": {"initial_learning_rate": cfg.learning_rate, "decay_steps": steps}}
    try:
        model = model_from_config(spec, seed=cfg.seed)
    except (ValueError, TypeError) as e:
        raise common.JobError(f"cannot build --model {cfg.model} for input shape {tuple(input_shape)}: {e}") from None
    opt_config = {"learning_rate": learning_rate}
    if cfg.weight_decay:
        opt_config["weight_decay"] = cfg.weight_decay
    loss = {"class_name": cfg.loss, "config": {"label_smoothing": cfg.label_smoothing} if cfg.label_smoothing else {}}
    try:
        return model.compile(optim.get({"class_name": cfg.optimizer, "config": opt_config}), loss, list(cfg.metrics))
    except (ValueError, TypeError) as e:
        raise common.JobError(f"cannot compile with --optimizer {cfg.optimizer} {opt_config} and --loss {cfg.loss} "
                              f"{loss['config']}: {e}") from None


def load_data(cfg, spark):
    """(train DataFrame, test DataFrame, features column, image shape or None). Data the executors read
    themselves (built-in, IDX) comes in one partition per worker where --num-workers is given: the fit then uses
    the partitions as they are (no shuffle), and the same rows go to the same workers however many executors had
    registered when the data was read (the default parallelism counts only those)."""
    parts = cfg.num_workers
    if cfg.data in common.BUILTIN_DATA:
        features_col = cfg.features_col or "features"
        (train, shape), (test, _) = (common.builtin_frame(spark, cfg.data, split, features_col, cfg.label_col, cfg.seed,
                                                          parts) for split in ("train", "test"))
        return train, test, features_col, shape
    fmt = common.guess_format(cfg.data, cfg.data_format)
    train, features_col, shape = common.read_data(spark, cfg.data, fmt, cfg.features_col, cfg.label_col, "train",
                                                  cfg.num_features, num_partitions=parts)
    num_features = cfg.num_features or (common.libsvm_size(train, features_col) if fmt == "libsvm" else None)
    if cfg.test_data:
        test = common.read_data(spark, cfg.test_data, fmt, features_col, cfg.label_col, "test", num_features)[0]
    elif fmt == "idx" and common.is_local(cfg.data) and os.path.isdir(cfg.data):
        test = common.read_data(spark, cfg.data, fmt, features_col, cfg.label_col, "test", num_partitions=parts)[0]
    else:
        train, test = train.randomSplit([1 - cfg.test_fraction, cfg.test_fraction], seed=cfg.seed)
    return train, test, features_col, shape


def model_input_shape(cfg, spec, train, features_col, image_shape):
    if cfg.input_shape:
        return cfg.input_shape
    if spec["config"].get("input_shape"):
        return tuple(spec["config"]["input_shape"])
    if image_shape is not None:
        return common.input_shape_for(spec, image_shape)
    from sparkdl.spark.data import X, prepare
    if not isinstance(features_col, str):
        return common.input_shape_for(spec, n_features=len(features_col))
    first = prepare(train.limit(1), features_col, role="training DataFrame").select(X).first()
    if first is None:
        raise common.JobError(f"the training data {cfg.data!r} is empty")
    if first[0] is None:
        raise DataError("training DataFrame", features_col, "its first row is null (the model's input size is read "
                        "from it; give --input-shape)")
    return common.input_shape_for(spec, n_features=len(first[0]))


def tracking_callbacks(cfg, master):
    """--mlflow-uri and --tensorboard-dir as callbacks (sparkdl.train's loggers, from the sparkdl[tracking] extra)."""
    loggers = []
    try:
        from sparkdl.train import MLflowLogger, TensorBoardLogger
        if cfg.mlflow_uri:
            params = {"job": dataclasses.asdict(cfg), "master": vars(master)}
            loggers.append(MLflowLogger(cfg.mlflow_uri, params=params))
        if cfg.tensorboard_dir:
            loggers.append(TensorBoardLogger(cfg.tensorboard_dir))
    except ImportError as e:   # the extra is not installed: a one-line error, not a traceback
        raise common.JobError(str(e)) from None
    return loggers


def main(argv=None):
    cfg = parse_args(argv)
    for path, option in ((cfg.data, "--data"), (cfg.test_data, "--test-data")):
        if path:
            common.check_input(path, option)
    spec = common.load_spec(cfg.model)
    cfg = with_spec_defaults(cfg, spec)
    from sparkdl.spark import ParameterAveraging, SparkTrainer
    spark = common.spark_session(cfg.master, "sparkdl-train")
    train, test, features_col, image_shape = load_data(cfg, spark)
    steps = None
    if cfg.lr_schedule == "cosine":
        steps = fit_steps(cfg, train, cfg.num_workers or spark.sparkContext.defaultParallelism)
    model = build_model(cfg, spec, model_input_shape(cfg, spec, train, features_col, image_shape), steps)
    model.summary()
    master = ParameterAveraging(num_workers=cfg.num_workers, batch_size_per_worker=cfg.batch_size_per_worker,
                                averaging_frequency=cfg.averaging_frequency, mode=cfg.mode,
                                average_optimizer_state=cfg.average_optimizer_state,
                                export_dir=cfg.export_dir, seed=cfg.seed, ports=cfg.ports)
    trainer = SparkTrainer(model, master)
    trainer.check(test, features_col, cfg.label_col, "evaluation DataFrame")   # before training, not after it
    out = lambda name: common.out_path(cfg.output_dir, name)
    from sparkdl import fs
    from sparkdl.errors import FitInterrupted
    from sparkdl.train import RoundCheckpoint
    checkpoint = common.out_path(cfg.checkpoint_dir or cfg.output_dir, "checkpoint.npz")
    if cfg.resume and not fs.exists(checkpoint):
        raise common.JobError(f"--resume: there is no checkpoint to resume from at {checkpoint}")
    callbacks = []
    if cfg.checkpoint_every:
        fs.makedirs(cfg.checkpoint_dir or cfg.output_dir)
        callbacks.append(RoundCheckpoint(checkpoint, every=cfg.checkpoint_every))
    try:
        history = trainer.fit(train, features_col, cfg.label_col, epochs=cfg.epochs,
                              callbacks=callbacks + tracking_callbacks(cfg, master),
                              resume_from=checkpoint if cfg.resume else None)
    except FitInterrupted as e:
        saved = callbacks[0].last_round if callbacks else None
        if saved is None and cfg.resume:
            saved = "the one resumed from"
        raise common.Interrupted(f"{e}; " + (f"the checkpoint of round {saved} is in {checkpoint}: resume with --resume"
                                             if saved else "no checkpoint was written (see --checkpoint-every)")) from None
    metrics = trainer.evaluate(test, features_col, cfg.label_col)

    from sparkdl import io
    common.write_bytes(out("model.npz"), io.model_to_bytes(model))
    common.write_text(out("stats.html"), history.stats.to_html(title=f"sparkdl: {cfg.data}, {cfg.model}"))
    common.write_text(out("stats.json"), history.stats.to_json())
    summary = history.stats.summary()
    common.write_json(out("metrics.json"), {"test": metrics, "history": history.history, "stats": summary,
                                            "mode": history.mode, "mode_reason": history.mode_reason,
                                            "config": dataclasses.asdict(cfg), "master": spark.sparkContext.master,
                                            "shared_memory": getattr(history, "shared_memory", None),
                                            "placement": getattr(history, "placement", None)})
    print(f"mode: {history.mode} ({history.mode_reason})")
    print("held-out:", common.format_metrics(metrics))
    print(f"rounds: {summary['rounds']}, worker time fitting: {summary['fit_fraction']:.0%}, "
          f"driver overhead per round: {summary['overhead_ms_mean']:.0f} ms")
    if history.stats.startup:
        steps = history.stats.startup
        print(f"start-up: {sum(t for _, t in steps):.1f} s from fit to the end of round 1 ("
              + ", ".join(f"{step} {t:.2f} s" for step, t in steps) + ")")
    fs.remove(checkpoint)   # the run is complete: model.npz holds what the checkpoint would resume to
    print(f"wrote {out('model.npz')}, metrics.json, stats.html, stats.json")
    common.stop_if_submitted(spark)
    return 0


if __name__ == "__main__":
    sys.exit(common.run(PROG, main))
