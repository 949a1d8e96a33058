"""What jobs mode (sparkdl.dist.jobs) needs of Spark: the export of one shard per worker, and one job per
round (a broadcast of the round's starting buffers, a task per shard, a weighted treeAggregate)."""
import contextlib
import tempfile

from .. import fs
from ..dist.averaging import Contribution, add, merge


@contextlib.contextmanager
def exported(launcher, run):
    """Export the DataFrame into shards (into ``export_dir``, else a temporary local directory removed after
    the fit); yields the shards' row counts."""
    from .shards import export, new_export_dir
    options, sc = launcher.options, launcher.sc
    own_dir = options.export_dir is None
    base = tempfile.mkdtemp(prefix="sparkdl-") if own_dir else options.export_dir
    try:
        export_dir = new_export_dir(base)
        sc.setJobDescription("sparkdl: export training shards")
        shards = export(launcher.df, export_dir, run.n_features, run.label_dtype)
        launcher.paths = [p for p, _ in shards]
        yield [rows for _, rows in shards]
    finally:
        if own_dir:
            fs.remove_dir(base)


def run_round(launcher, run, epoch, r, g):
    options, sc = launcher.options, launcher.sc
    bc = sc.broadcast(run.payload())
    task = _round_task(launcher.paths, run.input_shape, run.model_json, run.compile_json, options.seed,
                       options.shuffle, options.batch_size_per_worker, options.averaging_frequency,
                       options.average_optimizer_state, epoch, r, g, bc, options.backend, launcher.local)
    sc.setJobDescription(f"sparkdl: epoch {epoch + 1}/{run.epochs}, round {r + 1}/{run.rounds_per_epoch}")
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
                        payload["iterations"], average_optimizer_state, record)
    return task
