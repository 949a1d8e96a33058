"""What jobs mode (sparkdl.dist.jobs) needs of Spark: the export of one shard per worker, and one job per
round (a broadcast of the round's starting buffers, a task per shard, a weighted treeAggregate)."""
import contextlib
import logging
import tempfile

from .. import fs
from ..dist.averaging import Contribution, add, merge

log = logging.getLogger("sparkdl")


@contextlib.contextmanager
def exported(launcher, run):
    """Export the DataFrame into shards (into ``export_dir``, else a temporary local directory removed after
    the fit); yields the shards' row counts."""
    from .shards import export, new_export_dir
    options, sc = launcher.options, launcher.sc
    own_dir = options.export_dir is None
    base = tempfile.mkdtemp(prefix="sparkdl-") if own_dir else options.export_dir
    # every job of the fit in one group: a signal cancels the running one (Launcher.cancel)
    sc.setJobGroup(launcher.group, "sparkdl fit: export training shards", True)
    try:
        export_dir = new_export_dir(base)
        shards = export(launcher.df, export_dir, run.n_features, run.label_dtype)
        launcher.paths = [p for p, _ in shards]
        yield [rows for _, rows in shards]
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        if own_dir:
            fs.remove_dir(base)


def spark_retries(sc):
    """How often Spark itself tries a failed task: local[N] masters try once (local[N,F]: F times)."""
    import re
    local = re.fullmatch(r"local\[(\d+|\*)(?:,\s*(\d+))?\]|local", sc.master)
    if local:
        return int(local.group(2)) if local.group(2) else 1
    return int(sc.getConf().get("spark.task.maxFailures", "4"))


def run_round(launcher, run, epoch, r, g):
    """One round's job; where Spark would not retry a failed task (local mode), the round is run again up to
    ``round_retries`` times (a round is a pure function of the broadcast buffers and the shards)."""
    from ..errors import from_task_failure
    retries = launcher.options.round_retries if spark_retries(launcher.sc) < 2 else 0
    for attempt in range(retries + 1):
        try:
            return _run_round(launcher, run, epoch, r, g)
        except Exception as e:
            if attempt == retries or run.stop_signal is not None or from_task_failure(e) is not None:
                raise
            log.warning("sparkdl: round %d (epoch %d) failed (%s); running it again (%d of %d)", g + 1, epoch + 1,
                        _reason(e), attempt + 1, retries)


def _reason(error):
    """The line of a Spark failure that says what went wrong (py4j's first line only names the call)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    for ln in lines[1:]:
        if "Exception: " in ln or "Error: " in ln:
            return ln.split(": ", 1)[1][:300]
    return lines[0][:300] if lines else type(error).__name__


def _run_round(launcher, run, epoch, r, g):
    options, sc = launcher.options, launcher.sc
    bc = sc.broadcast(run.payload())
    task = _round_task(launcher.paths, run.input_shape, run.model_json, run.compile_json, options.seed,
                       options.shuffle, options.batch_size_per_worker, options.averaging_frequency,
                       options.average_optimizer_state, epoch, r, g, bc, options.backend, launcher.local)
    sc.setJobDescription(f"sparkdl fit: epoch {epoch + 1}/{run.epochs}, round {r + 1}/{run.rounds_per_epoch}")
    rdd = sc.parallelize(range(len(launcher.paths)), len(launcher.paths)).mapPartitionsWithIndex(task)
    total = rdd.treeAggregate(Contribution(), add, merge, depth=options.aggregation_depth)
    bc.destroy()
    return total


def _round_task(paths, input_shape, model_json, compile_json, seed, shuffle, batch_size, freq,
                average_optimizer_state, epoch, r, g, bc, backend, local):
    """The task closure: only plain values and a broadcast handle."""
    def task(worker, _):
        import time as _time
        from sparkdl.dist import schedule as _schedule
        from sparkdl.dist.worker import fit_round, worker_model
        from sparkdl.spark.gpu import task_backend
        from sparkdl.spark.shards import read_shard
        record = {"worker": worker, "round": g, "epoch": epoch, "start": _time.time()}
        model = worker_model(model_json, compile_json, task_backend(backend, local))
        x, y = read_shard(paths[worker], input_shape, model.xp)
        payload = bc.value
        order = _schedule.epoch_order(len(x), seed, epoch, worker, shuffle)
        batches = _schedule.round_batches(order, batch_size, freq, r)
        record["read_s"] = _time.time() - record["start"]
        yield fit_round(model, x, y, batches, payload["params"], payload["state"], payload["opt"],
                        payload["iterations"], average_optimizer_state, record, grad_norms=True)
    return task
