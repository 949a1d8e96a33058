"""A real Spark standalone cluster on 127.0.0.1: one master and two workers started with pyspark's own
sbin/spark-daemon.sh, then `spark-submit --master spark://127.0.0.1:PORT` of jobs/train.py and jobs/predict.py
with conf/spark-defaults.standalone.conf and conf/log4j2.properties. The event log tells which executor ran each
task, the workers' work directories which worker each executor lives in: both workers must have run training
tasks. Every daemon is stopped by its pid in the fixture's teardown, also when the test fails.
"""
import glob
import json
import os
import platform

import numpy as np
import pytest

from sparkcluster import WORKERS, Cluster, log, spark_home, submit

pytestmark = [pytest.mark.spark, pytest.mark.slow]
# `make test-cluster` builds dist/ first and names it here: predict.py then runs its executors on the packed
# environment (--archives ...#environment, spark.pyspark.python=./environment/bin/python), as on YARN.
DIST = os.environ.get("SPARKDL_DIST")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = spark_home()
    c = Cluster(str(tmp_path_factory.mktemp("standalone")), home)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def tasks_per_worker(cluster, events, description_prefix):
    """{worker index: successful tasks} for the jobs whose description starts with ``description_prefix``,
    from the event log of the one application in ``events``."""
    # one plain JSON-lines file (app-ID), or a directory of rolled files (eventlog_v2_app-ID/events_N_app-ID)
    paths = glob.glob(os.path.join(events, "app-*")) + sorted(
        glob.glob(os.path.join(events, "eventlog_v2_*", "events_*")),
        key=lambda p: int(os.path.basename(p).split("_")[1]))
    assert paths, f"no event log in {events}: {os.listdir(events)}"
    records = [json.loads(line) for path in paths for line in open(path)]
    app_id = next(r["App ID"] for r in records if r["Event"] == "SparkListenerApplicationStart")
    worker_of = {}   # executor id -> worker index, from the executor directories each worker made
    for i, work in enumerate(cluster.work_dirs):
        for d in glob.glob(os.path.join(work, app_id, "*")):
            worker_of[os.path.basename(d)] = i
    stages = set()
    for r in records:
        if r["Event"] == "SparkListenerJobStart" and \
                (r.get("Properties") or {}).get("spark.job.description", "").startswith(description_prefix):
            stages.update(r["Stage IDs"])
    counts = {i: 0 for i in range(WORKERS)}
    for r in records:
        if r["Event"] == "SparkListenerTaskEnd" and r["Stage ID"] in stages \
                and r["Task End Reason"]["Reason"] == "Success":
            counts[worker_of[r["Task Info"]["Executor ID"]]] += 1
    return app_id, worker_of, counts


def test_barrier_fit_on_a_two_worker_standalone_cluster(cluster, tmp_path):
    """Two executors in two worker daemons on one host: their Python workers average through the driver's
    /dev/shm block (sparkdl.dist.peers) across processes that Spark started, not the test."""
    out = tmp_path / "out"
    events = tmp_path / "events"
    events.mkdir()
    submit(cluster, "train.py", ["--data", "digits", "--epochs", "3", "--num-workers", "2", "--mode", "barrier",
                                 "--batch-size-per-worker", "32", "--averaging-frequency", "4",
                                 "--output-dir", str(out)], events)
    metrics = json.loads((out / "metrics.json").read_text())
    log(f"barrier fit on the cluster: test accuracy {metrics['test']['accuracy']:.4f}, shared memory "
        f"{metrics['shared_memory']}, overhead {metrics['stats']['overhead_ms_mean']:.2f} ms per round")
    assert metrics["master"] == cluster.url and metrics["stats"]["workers"] == 2
    assert metrics["shared_memory"] is (os.path.isdir("/dev/shm") and platform.machine().lower() in ("x86_64", "amd64"))
    assert metrics["test"]["accuracy"] > 0.9, metrics["test"]


def test_train_and_predict_on_a_two_worker_standalone_cluster(cluster, tmp_path):
    out, train_events, predict_events = tmp_path / "out", tmp_path / "events-train", tmp_path / "events-predict"
    train_events.mkdir()
    predict_events.mkdir()
    submit(cluster, "train.py", ["--data", "digits", "--epochs", "2", "--num-workers", "2", "--mode", "jobs",
                                 "--batch-size-per-worker", "32", "--averaging-frequency", "8",
                                 "--export-dir", str(tmp_path / "shards"), "--output-dir", str(out)], train_events)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["master"] == cluster.url          # spark-submit's master, not a local one
    assert metrics["stats"]["workers"] == 2
    assert metrics["test"]["accuracy"] > 0.8, metrics["test"]
    assert metrics["history"]["loss"][-1] < metrics["history"]["loss"][0]

    app_id, executors, counts = tasks_per_worker(cluster, str(train_events), "sparkdl fit: epoch")
    log(f"{app_id}: training-round tasks per worker: " + ", ".join(
        f"worker-{i + 1} (executor {', '.join(e for e, w in sorted(executors.items()) if w == i)}): {n}"
        for i, n in counts.items()))
    assert sorted(executors.values()) == list(range(WORKERS)), executors   # one executor in each worker
    assert all(n > 0 for n in counts.values()), counts
    assert sum(counts.values()) >= 2 * metrics["stats"]["rounds"]      # each round: one task per training worker

    packed = ["--archives", os.path.join(DIST, "sparkdl-env.tar.gz") + "#environment",
              "--conf", "spark.pyspark.python=./environment/bin/python"] if DIST else []
    submit(cluster, "predict.py", ["--model-file", str(out / "model.npz"), "--data", "digits",
                                   "--output", str(out / "predictions.parquet")], predict_events, packed)
    import pyarrow.parquet as pq
    table = pq.read_table(str(out / "predictions.parquet"))
    assert set(table.column_names) == {"label", "probability", "prediction"}
    labels, predicted = table.column("label").to_numpy(), table.column("prediction").to_numpy()
    from sparkdl.datasets import load_digits
    np.testing.assert_array_equal(np.sort(labels), np.sort(load_digits("test")[1]))
    np.testing.assert_allclose((labels == predicted).mean(), metrics["test"]["accuracy"], atol=1e-9)
    app_id, executors, predict_counts = tasks_per_worker(cluster, str(predict_events), "")
    log(f"predict tasks per worker: {predict_counts}" + (" (executors on the packed environment)" if DIST else ""))
    if DIST:   # the relative python path only resolves inside the archive each executor unpacked
        for work in cluster.work_dirs:
            for executor in glob.glob(os.path.join(work, app_id, "*")):
                assert os.path.exists(os.path.join(executor, "environment", "bin", "python")), executor

