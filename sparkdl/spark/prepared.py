"""Prepared data, kept for the next fit on the same DataFrame.

A fit checks the DataFrame, converts its features to float32 and lays its rows out one partition per worker in
one Spark pass, where it first reads them: into shard files (jobs mode, and barrier mode on a local master, whose
workers memory-map them: sparkdl.spark.jobs.exported), or into blocks of packed float32 rows and float64 labels
(one binary value per block of about 4 MB) persisted at the fit's ``storage_level`` (barrier mode on a cluster:
Spark hands a binary column to Python 5-7x faster than the same floats as array<float>). Where a check fails,
``data.validate`` words the error.

The prepared data of the last ``LIMIT`` DataFrames stay after their fit (``reuse_prepared=True``, the default): a
fit on a DataFrame with the same plan (``DataFrame.sameSemantics``) and the same columns, checks and workers skips
the checks, the conversion and the repartition, as do the folds of a CrossValidator that fit several parameter
maps, and a fit resumed on the same data. As with ``DataFrame.cache``, data changed under the same plan (files
rewritten in place) is not seen until ``release`` drops what was kept. ``held()`` lists it.

Validation data of a barrier fit, which the driver evaluates, is kept as numpy arrays on the driver.
"""
import atexit
import collections
import json
import logging

import numpy as np
import pyarrow as pa

from ..dist.spill import local_dir, trim_heap
from ..errors import BadValues, DataError
from . import data
from .blocks import packed

log = logging.getLogger("sparkdl")

LIMIT = 4                 # DataFrames whose prepared data stay cached (the least recently used goes first)
BLOCK_BYTES = 4 << 20     # features per binary value
META = "__sparkdl_meta"   # one row per partition: its row count and what its checks found

_HELD = collections.OrderedDict()   # id -> Entry, least recently used first


class Entry:
    """The prepared form of one DataFrame (``source``): ``laid_out``, the prepared columns laid out one partition
    per worker (``workers`` of them; a plan, nothing computed), made ready by the first fit that needs it, in one
    Spark pass that also checks it: as shard files (``files``: jobs mode, and barrier mode on a local master,
    whose workers memory-map them) or as packed blocks cached in Spark (``packed``: barrier mode on a cluster);
    ``arrays`` (x, y) on the driver for validation data of a barrier fit."""

    def __init__(self, source, key, prepared, laid_out, workers, checks, level):
        self.source, self.key, self.prepared, self.laid_out = source, key, prepared, laid_out
        self.workers, self.checks, self.level = workers, checks, level
        self.app = source.sparkSession.sparkContext.applicationId
        self.hash = source.semanticHash()
        self.kept = False
        self.frame = self.arrays = self.shards = self.rows = self.dealt = None
        self._dirs = []

    @property
    def ready(self):
        return self.frame is not None or self.shards is not None or self.arrays is not None

    def packed(self):
        """The packed blocks, persisted at ``level`` (one Spark pass: converted, checked, cached)."""
        if self.frame is None:
            self.frame, self.rows = _pack(self)
        return self.frame

    def files(self, shards, *dirs):
        """Shard files [(path, rows)] of this data (sparkdl.spark.jobs.exported), in ``dirs`` (removed on release)."""
        self.shards, self.rows = shards, sum(rows for _, rows in shards)
        self._dirs = [d for d in dirs if d is not None]

    def check(self, metas):
        return check(self.prepared, self.checks, metas)

    def release(self):
        from .. import fs
        _HELD.pop(id(self), None)
        if self.frame is not None:
            try:
                self.frame.unpersist()
            except Exception:   # a stopped SparkContext has nothing left to free
                pass
        for d in self._dirs:
            try:
                fs.remove_dir(d)
            except OSError:
                log.warning("sparkdl: could not remove the shard directory %s", d, exc_info=True)
        self.frame = self.arrays = self.shards = self.dealt = None
        self._dirs = []

    def describe(self):
        where = ", ".join(w for w, have in (("cached in Spark", self.frame is not None),
                                             ("shard files", self.shards is not None),
                                             ("arrays on the driver", self.arrays is not None)) if have)
        parts = f"{self.workers} partitions" if self.workers else "its own partitions"
        return (f"{self.checks['what']} of {self.rows} rows, {parts}, features "
                f"{data.column_name(self.checks['features_col'])}, label {self.checks['label_col']}: {where}")


def check(prepared, checks, metas):
    """Raise the DataError the checks of a pass over ``prepared`` found (``metas``: per partition, its rows, the
    first problem with it and the null, NaN or infinite values found: ``checked_partition``); ``data.validate``
    runs for the message (the count of wrong rows and an example). ``checks``: validate's kwargs. Returns the
    rows."""
    rows = sum(m["rows"] for m in metas)
    problems = [m["problem"] for m in metas if m["problem"]]
    if not problems and rows and not any(m["found"] for m in metas):
        return rows
    data.validate(prepared, **checks)
    bad = BadValues.of([m["found"] for m in metas], rows)
    if bad is not None:
        raise bad.data_error(checks["what"], data.column_name(checks["features_col"]), checks["label_col"])
    raise DataError(checks["what"], data.column_name(checks["features_col"]), problems[0] if problems else "no rows")


def held():
    """What is kept: one line per DataFrame."""
    return [e.describe() for e in _HELD.values()]


def release(df=None):
    """Drop the prepared data kept for ``df`` (for every DataFrame when None); returns how many were dropped."""
    gone = [e for e in list(_HELD.values()) if df is None or _same(e, df)]
    for e in gone:
        e.release()
    return len(gone)


atexit.register(release)   # shard files kept on disk go when the program ends


def _same(entry, df):
    try:
        return (entry.app == df.sparkSession.sparkContext.applicationId and entry.hash == df.semanticHash()
                and entry.source.sameSemantics(df))
    except Exception:   # the entry's SparkContext is gone
        return False


def lookup(df, key):
    """The Entry kept for ``df`` under ``key`` and made ready by an earlier fit, or None."""
    for e in list(_HELD.values()):
        if e.key == key and e.ready and _same(e, df):
            _HELD.move_to_end(id(e))
            return e
    return None


def keep(entry):
    """Keep ``entry`` for later fits, dropping the least recently used past ``LIMIT``."""
    entry.kept = True
    _HELD[id(entry)] = entry
    while len(_HELD) > LIMIT:
        next(iter(_HELD.values())).release()


def _pack(entry):
    """(the packed blocks persisted, rows): ``entry.laid_out`` converted, checked and cached in one Spark pass."""
    n_features, kind, classes = (entry.checks[k] for k in ("n_features", "loss_kind", "num_classes"))
    per_block = max(1, BLOCK_BYTES // (4 * n_features))

    def pack(batches):
        from sparkdl.spark.prepared import pack_partition
        return pack_partition(batches, n_features, kind, classes, per_block)

    frame = entry.laid_out.mapInArrow(pack, f"`{data.X}` binary, `{data.Y}` binary, `{META}` string")
    frame = frame.persist(entry.level)
    from pyspark.sql import functions as F
    try:
        with data.task_errors():
            metas = [json.loads(r[0]) for r in frame.where(F.col(META).isNotNull()).select(META).collect()]
        return frame, entry.check(metas)
    except BaseException:
        frame.unpersist()
        raise


def checked_partition(batches, n_features, kind, num_classes):
    """(x float32, y float64, meta) for a partition of prepared Arrow batches (in ORDER where they have it): meta
    says its rows, the first problem found with them and the null, NaN or infinite values found (``Entry.check``
    reads it); x and y are None where something is wrong."""
    found, problem, x, y = {}, None, None, None
    try:   # the incoming rows wait on local disk until they are put in order: the partition is held once
        x, y = data.partition_to_numpy(batches, n_features, np.float64, found=found, stage=local_dir())
    except DataError as e:
        problem = str(e)
        for _ in batches:   # the rest of the partition, unread
            pass
    if x is not None:
        problem = label_problem(y, kind, num_classes)
    meta = {"rows": 0 if x is None else len(x), "problem": problem, "found": found}
    if problem is not None or found:
        x = y = None
    return x, y, meta


def pack_partition(batches, n_features, kind, num_classes, per_block):
    """A partition of prepared Arrow batches as blocks of ``per_block`` packed rows (none where something is
    wrong), then one META row: ``checked_partition``'s meta."""
    x, y, meta = checked_partition(batches, n_features, kind, num_classes)
    if x is not None:
        for a in range(0, len(x), per_block):
            yield _record(packed(x[a:a + per_block]), packed(y[a:a + per_block]), None)
    del x, y
    trim_heap()
    empty = pa.array([b""], pa.binary())
    yield _record(empty, empty, json.dumps(meta))


def label_problem(y, kind, num_classes):
    """What is wrong with the labels (a short text), or None: the label checks of ``data.validate``, whose
    message a fit then gives."""
    if not np.isfinite(y).all():
        return "labels are null, NaN or infinite"
    if kind == "multiclass" and ((y != np.floor(y)).any() or (y < 0).any() or (y >= num_classes).any()):
        return f"labels are not class indices in [0, {num_classes - 1}]"
    if kind == "binary" and ((y < 0).any() or (y > 1).any()):
        return "labels are outside [0, 1]"
    return None


def _record(x, y, meta):
    return pa.record_batch([x, y, pa.array([meta], pa.string())], names=[data.X, data.Y, META])
