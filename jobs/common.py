"""What the three jobs share: argument groups, data readers, model specs, the Spark session, output files and
the error contract (exit status 2 and one line, ``jobs/<job>.py: error: <reason>``, on bad arguments or data).

Nothing here is shipped to executors: a function defined in this module would be pickled by reference to a
module the executors cannot import. The executor-side code is sparkdl's own.
"""
import argparse
import glob
import json
import logging
import math
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS_DIR = os.path.normpath(os.path.join(HERE, "..", "conf", "models"))
BUILTIN_DATA = ("digits", "mnist")
FORMATS = ("parquet", "csv", "json", "libsvm", "idx")
SPEC_SUFFIXES = (".json", ".yaml", ".yml")
IMAGE_LAYERS = ("Conv2D", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D")
SEQUENCE_LAYERS = ("SimpleRNN", "LSTM", "GRU")
CLASSIFIER_METRICS = ("accuracy", "precision", "recall", "f1_score", "log_loss", "confusion_matrix")
REGRESSION_METRICS = ("mse", "mae", "r2")


class JobError(Exception):
    """Bad arguments or data: the job exits with status 2 and this one-line reason."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the job: it exits with status 130 and this one-line reason."""


def _terminate(signum, frame):
    raise KeyboardInterrupt   # SIGTERM ends a job as Ctrl-C does (a fit handles both itself while it runs)


# -- the error contract ---------------------------------------------------------------------------------------
def run(prog, main, argv=None):
    """``main(argv)``'s status; bad arguments or data (sparkdl's ValueErrors, missing files, Spark's analysis
    errors, a task that failed on bad data) print ``prog: error: <one line>`` to stderr and give 2. Anything
    else is a bug and keeps its traceback."""
    import signal
    signal.signal(signal.SIGTERM, _terminate)
    _console_log()
    try:
        return main(argv)
    except KeyboardInterrupt as e:   # Ctrl-C or SIGTERM; a fit says where it stopped
        print(f"{prog}: {one_line(e) if str(e) else 'interrupted'}", file=sys.stderr)
        return 130
    except (JobError, ValueError, OSError, FloatingPointError) as e:
        reason = str(e)
    except RuntimeError as e:
        if type(e).__module__.startswith(("pyspark", "py4j")):
            reason = spark_reason(e)
        else:
            reason = str(e)
    except Exception as e:
        if not type(e).__module__.startswith(("pyspark", "py4j")):
            raise
        reason = spark_reason(e)
    print(f"{prog}: error: {one_line(reason)}", file=sys.stderr)
    return 2


class _Console(logging.Handler):
    """sparkdl's log in a job: what it does (the mode it chose) on stdout with the progress, warnings on stderr;
    the streams are looked up at each line (a test may replace them)."""

    def emit(self, record):
        print(self.format(record), file=sys.stdout if record.levelno < logging.WARNING else sys.stderr, flush=True)


def _console_log():
    logger = logging.getLogger("sparkdl")
    if not any(isinstance(h, _Console) for h in logger.handlers):
        logger.addHandler(_Console())
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)


_PY_ERROR = re.compile(r"^\s*([A-Za-z_.]*(Error|Exception)): (.+)$")


def spark_reason(e):
    """The useful line of a Spark error: the Python exception raised in a task, else the Java exception's
    message, else the first line (Spark's analysis errors put the reason there)."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    python = [ln for ln in lines if _PY_ERROR.match(ln) and not ln.lstrip().startswith(("at ", "org.", "java."))]
    if python:
        return python[-1].strip()
    java = [ln for ln in lines if _PY_ERROR.match(ln)]
    return (java[0] if java else lines[0] if lines else type(e).__name__).strip()


def one_line(text, limit=600):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# -- arguments ------------------------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """argparse with the jobs' error contract: a bad argument is one line and a hint, not the usage block."""

    def __init__(self, prog, doc):
        super().__init__(prog=prog, description=doc.split("\n\n")[0],
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def add_data_args(p, data_help, default=None):
    g = p.add_argument_group("data")
    g.add_argument("--data", default=default, required=default is None, help=data_help)
    g.add_argument("--data-format", default=None, choices=FORMATS,
                   help="format of the data paths (default: from the name: *.parquet, *.csv, *.json, *.libsvm, "
                   "IDX files *-ubyte[.gz]; else parquet). IDX: an images file whose labels file is found by "
                   "name (train-images-idx3-ubyte -> train-labels-idx1-ubyte), or a directory of MNIST files")
    g.add_argument("--features-col", default=None,
                   help="features column (vector or array), or numeric columns separated by commas "
                   "(default: 'features' if present, else every numeric column but the label)")
    g.add_argument("--label-col", default="label")
    g.add_argument("--num-features", type=int, default=None,
                   help="LibSVM: the feature count (default: the model's input size, or read from the data)")
    return g


def saved_model_parser(prog, doc, data_help, output_default, output_help):
    """The parser evaluate.py and predict.py share: --model-file, --batch-size, the data arguments with --split,
    and an "output and Spark" group holding --output. Returns (parser, model group, output group): callers add
    their own options to those, and --master last."""
    p = Parser(prog, doc)
    model = p.add_argument_group("model")
    model.add_argument("--model-file", required=True, help="a model file written by jobs/train.py or model.save() "
                       "(local or any Hadoop URI)")
    model.add_argument("--batch-size", type=int, default=1024, help="rows per forward pass on an executor")
    add_data_args(p, data_help, default="digits").add_argument(
        "--split", default="test", choices=["train", "test"], help="split of a built-in dataset or MNIST directory")
    out = p.add_argument_group("output and Spark")
    out.add_argument("--output", default=output_default, help=output_help)
    return p, model, out


def parse_saved_model_args(p, argv):
    """Parse, then check what argparse cannot (--features-col, --batch-size); errors exit 2 with one line."""
    a = p.parse_args(argv)
    try:
        a.features_col = features_arg(a.features_col)
    except JobError as e:
        p.error(str(e))
    if a.batch_size < 1:
        p.error(f"--batch-size must be >= 1. Received: {a.batch_size}")
    return a


def add_master_arg(g):
    g.add_argument("--master", default=None, help="Spark master when not started by spark-submit "
                   "(default: spark-submit's --master, else local[2])")


def features_arg(text):
    """None, a column name, or a list of column names from 'a,b,c'."""
    if text is None or "," not in text:
        return text
    cols = [c.strip() for c in text.split(",") if c.strip()]
    if not cols:
        raise JobError(f"--features-col must name columns. Received: {text!r}")
    return cols


def shape_arg(text):
    if not text:
        return None
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise JobError(f"--input-shape must be comma-separated positive ints, e.g. 28,28,1. Received: {text!r}")
    return shape


# -- inputs ---------------------------------------------------------------------------------------------------
def is_local(path):
    from sparkdl import fs
    return fs.is_local(path)


def check_input(path, option="--data"):
    """Fail before Spark starts when a local input is missing (remote URIs are checked by the reader)."""
    if path in BUILTIN_DATA or not is_local(path):
        return
    from sparkdl import fs
    local = fs.local_path(path)
    if glob.has_magic(local) and glob.glob(local):
        return
    if not os.path.exists(local):
        raise JobError(f"{option}: no such file or directory: {path!r}")


def guess_format(path, fmt=None):
    if fmt:
        return fmt
    p = str(path).rstrip("/").lower()
    if re.search(r"-ubyte(\.gz)?$|\.idx\d?(\.gz)?$", p):
        return "idx"
    if is_local(path):
        from sparkdl import fs
        local = fs.local_path(path)
        if os.path.isdir(local) and glob.glob(os.path.join(local, "*-ubyte*")):
            return "idx"
    return next((f for f in ("parquet", "csv", "json", "libsvm") if p.endswith("." + f)), "parquet")


def read_data(spark, path, fmt=None, features_col=None, label_col="label", split="train", num_features=None,
              need_labels=True, num_partitions=None):
    """(DataFrame, features column, image shape or None) from a path or URI in any supported format.

    IDX files are read by the executors (sparkdl.spark.readers), by ``num_partitions`` tasks (default: the default
    parallelism): on a cluster they must be where every host reads them (HDFS, S3, a shared mount)."""
    fmt = guess_format(path, fmt)
    if fmt == "idx":
        features_col = features_col or "features"
        if not isinstance(features_col, str):
            raise JobError(f"IDX data has one features column; --features-col must be one name. "
                           f"Received: {features_col!r}")
        images, labels = idx_paths(path, split, need_labels)
        df, shape = idx_frame(spark, images, labels, features_col, label_col, num_partitions)
        return df, features_col, shape
    if fmt == "csv":
        df = spark.read.option("header", True).option("inferSchema", True).csv(path)
    elif fmt == "libsvm":
        reader = spark.read.format("libsvm")
        if num_features:
            reader = reader.option("numFeatures", int(num_features))
        df = reader.load(path)
    elif fmt in ("parquet", "json"):
        df = spark.read.format(fmt).load(path)
    else:
        raise JobError(f"--data-format must be one of {FORMATS}. Received: {fmt!r}")
    return df, resolve_features(df, features_col, label_col), None


def resolve_features(df, features_col, label_col):
    if features_col:
        return features_col
    if "features" in df.columns:
        return "features"
    numeric = ("tinyint", "smallint", "int", "bigint", "float", "double")
    cols = [c for c, t in df.dtypes if c != label_col and (t in numeric or t.startswith("decimal"))]
    if not cols:
        raise JobError(f"no 'features' column and no numeric columns besides {label_col!r}; name them with "
                       f"--features-col. The columns are {df.columns}")
    return cols


def libsvm_size(df, features_col):
    """The feature count Spark's LibSVM reader found (kept in the column's ML metadata)."""
    try:
        return int(df.schema[features_col].metadata["ml_attr"]["num_attrs"])
    except (KeyError, TypeError):
        return None


def idx_paths(path, split="train", need_labels=True):
    """(images file, labels file or None) of an IDX images file (its labels file is found by name) or of a local
    directory of MNIST files (``split``: "train" or "test")."""
    from sparkdl import datasets
    if is_local(path) and os.path.isdir(path):
        try:
            return datasets.mnist_files(path, split)
        except FileNotFoundError as e:
            raise JobError(str(e)) from None
    labels_path = _labels_path(path)
    if labels_path is not None and _exists(labels_path):
        return path, labels_path
    if need_labels:
        expected = repr(labels_path) if labels_path else "a *-labels-idx1-ubyte file named like the images file"
        raise JobError(f"no IDX labels for {path!r}: expected {expected} beside it")
    return path, None


def idx_frame(spark, images, labels, features_col="features", label_col="label", num_partitions=None):
    """(DataFrame, image shape) of IDX files, read by the executors; a bad file is a JobError."""
    from sparkdl.spark.readers import read_idx
    try:
        return read_idx(spark, images, labels, features_col, label_col, num_partitions)
    except (ValueError, FileNotFoundError) as e:
        raise JobError(str(e)) from None


def _labels_path(path):
    base = str(path)
    head, name = base[:len(base) - len(os.path.basename(base))], os.path.basename(base)
    renamed = name.replace("images", "labels").replace("idx3", "idx1")
    return head + renamed if renamed != name else None


def _exists(path):
    from sparkdl import fs
    return fs.exists(path)


def builtin_frame(spark, name, split, features_col="features", label_col="label", seed=0, num_partitions=None):
    """(DataFrame, image shape) of a built-in dataset's split, read by the executors (``num_partitions`` tasks;
    default: the default parallelism): 'digits' (bundled) or 'mnist' (the IDX files in $SPARKDL_MNIST_DIR)."""
    from sparkdl import datasets
    if name == "digits":
        from sparkdl.spark.readers import read_digits
        return read_digits(spark, split, seed, features_col, label_col, num_partitions)
    directory = datasets.default_mnist_dir()
    if directory is None:
        raise JobError("--data mnist reads the MNIST IDX files in $SPARKDL_MNIST_DIR, which is not set")
    return idx_frame(spark, *idx_paths(directory, split), features_col, label_col, num_partitions)


def read_for_model(args, spark, model, need_labels=True):
    """(DataFrame, features column) of ``args.data`` for evaluating or applying a saved ``model`` (built-in data:
    the ``args.split`` split; LibSVM: as many features as the model takes)."""
    n_features = int(math.prod(model.input_shape))
    if args.data in BUILTIN_DATA:
        features_col = args.features_col or "features"
        return builtin_frame(spark, args.data, args.split, features_col, args.label_col)[0], features_col
    df, features_col, _ = read_data(spark, args.data, args.data_format, args.features_col, args.label_col,
                                    args.split, args.num_features or n_features, need_labels)
    return df, features_col


def load_model_file(path, need_loss=False):
    """A model saved by jobs/train.py or model.save(), from a local path or any Hadoop URI."""
    from sparkdl import fs, io
    check_input(path, "--model-file")
    try:
        with fs.open_input(path) as f:
            model = io.load_model(f)
    except ValueError as e:
        raise JobError(f"--model-file {path!r}: {e}") from None
    if need_loss and not getattr(model, "compiled", False):
        raise JobError(f"{path!r} holds a model saved without compile settings (a loss); it cannot be evaluated")
    if not hasattr(model, "input_shape") or isinstance(model.input_shape, dict):
        raise JobError(f"{path!r} holds a model with several inputs; the jobs take single-input models")
    return model


# -- model specs ------------------------------------------------------------------------------------------------
def builtin_models():
    if not os.path.isdir(MODELS_DIR):
        return []
    return sorted({os.path.splitext(f)[0] for f in os.listdir(MODELS_DIR) if f.endswith(SPEC_SUFFIXES)})


def spec_path(name):
    if os.path.exists(name) or not is_local(name):
        return name
    # conf/models beside jobs/, else the working directory (YARN cluster mode: specs shipped with --files)
    for directory in (MODELS_DIR, os.getcwd()):
        for suffix in SPEC_SUFFIXES:
            candidate = os.path.join(directory, name + suffix)
            if os.path.exists(candidate):
                return candidate
    raise JobError(f"--model must be one of {builtin_models()} or a JSON/YAML model spec file. Received: {name!r}")


def load_spec(name):
    """A model spec ``{"class_name": ..., "config": {...}}`` from a built-in name or a JSON/YAML file (local or
    remote), checked by constructing its layers (no input shape needed) before Spark starts."""
    path = spec_path(name)
    from sparkdl import fs
    try:
        with fs.open_input(path) as f:
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise JobError(f"cannot read model spec {path!r}: {e}") from None
    if path.lower().endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise JobError(f"model spec {path!r} is YAML, which needs PyYAML: pip install pyyaml") from None
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise JobError(f"model spec {path!r} is not valid YAML: {e}") from None
    else:
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as e:
            raise JobError(f"model spec {path!r} is not valid JSON: {e}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("class_name"), str) \
            or not isinstance(spec.get("config"), dict):
        raise JobError(f'model spec {path!r} must be {{"class_name": "Sequential", "config": {{"layers": [...]}}}} '
                       f"(as model.to_json() writes). Received: {one_line(repr(spec), 120)}")
    check = {"class_name": spec["class_name"], "config": {k: v for k, v in spec["config"].items() if k != "input_shape"}}
    from sparkdl.nn import model_from_config
    try:
        model_from_config(check)
    except (ValueError, TypeError, KeyError) as e:
        raise JobError(f"model spec {path!r}: {e}") from None
    return spec


def first_layer(spec):
    layers = spec.get("config", {}).get("layers") or [{}]
    return layers[0].get("class_name") if isinstance(layers[0], dict) else None


def input_shape_for(spec, image_shape=None, n_features=None):
    """The model input shape the spec wants for the data: images (H, W, 1) for convolutions, (steps, features)
    for recurrent layers, flat otherwise. Tabular data (n features) is read as a square image or sequence
    when n is a perfect square; else pass --input-shape."""
    kind = first_layer(spec)
    if image_shape is None:
        side = math.isqrt(n_features)
        if kind not in IMAGE_LAYERS + SEQUENCE_LAYERS:
            return (n_features,)
        if side * side != n_features:
            raise JobError(f"the model starts with {kind}, which needs an image or sequence input, and the data has "
                           f"{n_features} features per row: pass --input-shape (e.g. 28,28,1 or 28,28)")
        image_shape = (side, side)
    h, w = image_shape[0], int(math.prod(image_shape[1:]))
    if kind in IMAGE_LAYERS:
        return (h, w, 1) if len(image_shape) == 2 else tuple(image_shape)
    if kind in SEQUENCE_LAYERS:
        return (h, w)
    return (int(math.prod(image_shape)),)


# -- Spark --------------------------------------------------------------------------------------------------
def under_spark_submit():
    """spark-submit runs the job with a gateway to its own JVM; its --master and --conf must then win."""
    return bool(os.environ.get("PYSPARK_GATEWAY_PORT"))


def spark_session(master, app_name):
    """spark-submit's session as configured by spark-submit (its --master, --properties-file and --conf), with
    sparkdl's runtime defaults where they were left unset; else sparkdl's local session on ``master``."""
    from sparkdl.spark import local_session
    if master is not None or not under_spark_submit():
        return local_session(master or "local[2]", app_name=app_name)
    from pyspark.sql import SparkSession  # only here: a job started by spark-submit keeps spark-submit's settings
    spark = SparkSession.builder.appName(app_name).getOrCreate()
    conf = spark.sparkContext.getConf()
    for key, value in (("spark.sql.execution.arrow.pyspark.enabled", "true"),
                       ("spark.sql.shuffle.partitions", "4" if spark.sparkContext.master.startswith("local") else None)):
        if value is not None and not conf.contains(key):
            spark.conf.set(key, value)
    if not conf.contains("spark.log.level"):
        spark.sparkContext.setLogLevel("WARN")
    return spark


def stop_if_submitted(spark):
    """Stop the session a spark-submit run owns (flushes the event log); leave a caller's session alone."""
    if under_spark_submit():
        spark.stop()


# -- outputs --------------------------------------------------------------------------------------------------
def out_path(directory, name):
    from sparkdl import fs
    return fs.join(directory, name)


def write_bytes(path, data):
    from sparkdl import fs
    parent = os.path.dirname(fs.local_path(path)) if fs.is_local(path) else None
    if parent:
        os.makedirs(parent, exist_ok=True)
    with fs.open_output(path) as f:
        f.write(data)


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj):
    write_text(path, json.dumps(jsonable(obj), indent=1) + "\n")


def jsonable(obj):
    """Plain JSON values from metric results (numpy scalars and arrays, tuples, NaN as null)."""
    import numpy as np
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def format_metrics(metrics):
    return " - ".join(f"{k}: {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
