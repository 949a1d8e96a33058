"""MLWritable / MLReadable for the sparkdl estimators and models.

``<path>/metadata`` holds the Params as Spark's DefaultParamsWriter writes them (so PipelineModel and
CrossValidatorModel find the class and the uid); a fitted model also writes ``<path>/model.npz``, the sparkdl
model file (JSON config + flat weights + optimizer state, ``allow_pickle=False``), readable on its own with
``sparkdl.load_model``. ``path`` may be local or on any Hadoop-compatible filesystem that pyarrow.fs knows.
"""
import importlib
import sys

from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReadable, MLReader, MLWritable, MLWriter

from .. import fs, io

MODEL_FILE = "model.npz"


def _qualified(path, spark):
    """``path`` as Spark resolves it (a scheme-less path is on the default filesystem, which may be HDFS), so
    the model file lands next to the metadata Spark wrote."""
    try:
        sc = spark.sparkContext
        jpath = sc._jvm.org.apache.hadoop.fs.Path(path)
        return str(jpath.getFileSystem(sc._jsc.hadoopConfiguration()).makeQualified(jpath).toString())
    except Exception:  # no JVM at hand (Spark Connect): take the path as given
        return path


def _class_name(cls):
    """The public name (sparkdl.ml.X) when the class is exported there, so saved files survive refactors. (The
    package is in sys.modules: it was imported before any of its modules.)"""
    if getattr(sys.modules["sparkdl.ml"], cls.__name__, None) is cls:
        return f"sparkdl.ml.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _resolve(name):
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


class SparkdlWriter(MLWriter):
    def __init__(self, instance):
        super().__init__()
        self.instance = instance

    def saveImpl(self, path):
        network = getattr(self.instance, "_network", None)
        extra = {"class": _class_name(type(self.instance))}
        if network is not None:
            extra["sparkdl"] = {"modelFile": MODEL_FILE, "formatVersion": io.FORMAT_VERSION}
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession, extraMetadata=extra)
        if network is not None:
            with fs.open_output(fs.join(_qualified(path, self.sparkSession), MODEL_FILE)) as f:
                io.save_model(network, f)


class SparkdlReader(MLReader):
    def __init__(self, cls):
        super().__init__()
        self.cls = cls

    def load(self, path):
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        try:
            cls = _resolve(metadata["class"])
        except (ImportError, AttributeError, ValueError) as e:
            raise ValueError(f"{path!r} holds a {metadata['class']!r}, which cannot be imported ({e})") from None
        if not (isinstance(cls, type) and issubclass(cls, self.cls)):
            raise ValueError(f"{path!r} holds a {metadata['class']}, not a {self.cls.__name__}; load it with "
                             f"{metadata['class'].rpartition('.')[2]}.load")
        instance = cls()
        if "sparkdl" in metadata:
            model_path = fs.join(_qualified(path, self.sparkSession), metadata["sparkdl"]["modelFile"])
            with fs.open_input(model_path) as f:
                instance._network = io.load_model(f)
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        return instance


class SparkdlPersistence(MLWritable, MLReadable):
    """``save(path)``, ``write().overwrite().save(path)``, ``Cls.load(path)``, ``Cls.read().load(path)``."""

    def write(self):
        return SparkdlWriter(self)

    @classmethod
    def read(cls):
        return SparkdlReader(cls)
