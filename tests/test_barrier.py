"""Barrier mode on local[2]: same result as jobs mode, authentication, recovery from a killed worker."""
import os
import signal
import socket

import numpy as np
import pytest

from sparkdl import optim
from sparkdl.datasets import load_digits
from sparkdl.nn import Dense, Sequential
from sparkdl.train import Callback

pytestmark = pytest.mark.spark
SCHEMA = "features array<float>, label int"


@pytest.fixture(scope="module")
def data(spark):
    x, y = load_digits("train")
    xte, yte = load_digits("test")
    parts = [[(a.tolist(), int(b)) for a, b in zip(x[i::2], y[i::2])] for i in (0, 1)]
    parts[1] = parts[1][:500]  # unequal shards
    df = spark.createDataFrame(spark.sparkContext.parallelize([0, 1], 2).flatMap(lambda i: parts[i]), SCHEMA)
    return df.cache(), xte, yte


def mlp(seed=0):
    m = Sequential([Dense(32, activation="relu"), Dense(10, activation="softmax")], input_shape=(64,), seed=seed)
    return m.compile(optim.Adam(0.01), "sparse_categorical_crossentropy", ["accuracy"])


def fit(df, mode, epochs=2, callbacks=(), **kw):
    from sparkdl.spark import ParameterAveraging, SparkTrainer
    master = ParameterAveraging(num_workers=2, batch_size_per_worker=32, averaging_frequency=4, repartition="never",
                                seed=3, mode=mode, **kw)
    model = mlp()
    history = SparkTrainer(model, master).fit(df, epochs=epochs, callbacks=callbacks, verbose=0)
    return model, history


class KillWorker(Callback):
    """Kills one barrier worker's Python process (by the pid its hello gave) when the driver reaches a round:
    the fault comes from outside the worker, as a crash or an OOM kill would."""

    def __init__(self, worker, at_round):
        self.worker, self.at_round, self.killed = worker, at_round, None

    def on_train_begin(self, logs=None):
        self.pids = {w["worker"]: w["pid"] for w in (logs or {})["workers"]}

    def reads_model_at_round(self, round):
        return False

    def on_round_end(self, round, logs=None):
        if round == self.at_round and self.killed is None:
            self.killed = self.pids[self.worker]
            os.kill(self.killed, signal.SIGKILL)


def test_barrier_and_jobs_modes_end_with_the_same_params(data):
    df, xte, yte = data
    jobs, hj = fit(df, "jobs")
    barrier, hb = fit(df, "barrier")
    np.testing.assert_allclose(barrier.get_flat_params(), jobs.get_flat_params(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(barrier.optimizer.get_state()["buffer"], jobs.optimizer.get_state()["buffer"],
                               rtol=1e-5, atol=1e-6)
    assert [r["loss"] for r in hb.rounds] == pytest.approx([r["loss"] for r in hj.rounds], rel=1e-6)
    assert hb.history["accuracy"] == pytest.approx(hj.history["accuracy"])
    summary = hb.stats.summary()
    assert summary["workers"] == 2 and summary["rounds"] == len(hb.rounds)
    assert len(hb.stats.workers) == 2 * summary["rounds"] and all("wait_s" in w for w in hb.stats.workers)
    assert hb.shared_memory is True  # local[2]: the workers averaged among themselves through /dev/shm
    assert hb.placement["groups"] == [[0, 1]]
    assert summary["driver_control_bytes_max"] < 1024   # one tally per round, not the model
    page = hb.stats.to_html()
    assert '"worker 1"' in page and "waiting" in page   # the barrier waits reach the timeline
    assert any(w["round"] == 2 and w["wait_s"] > 0 for w in hb.stats.workers)


@pytest.mark.parametrize("average_optimizer_state", [True, False])
def test_workers_averaging_through_shared_memory_equal_workers_averaging_in_a_tcp_ring(data, average_optimizer_state):
    df = data[0]
    shared, hs = fit(df, "barrier", average_optimizer_state=average_optimizer_state)
    ring, hr = fit(df, "barrier", shared_memory=False, average_optimizer_state=average_optimizer_state)
    assert hs.shared_memory is True and hr.shared_memory is False and hr.placement["groups"] == [[0], [1]]
    # two workers: w0 * x0 + w1 * x1 either way round is the same float32 sum, bitwise
    np.testing.assert_array_equal(shared.get_flat_params(), ring.get_flat_params())
    np.testing.assert_array_equal(shared.optimizer.state_buffer, ring.optimizer.state_buffer)
    assert [r["loss"] for r in hs.rounds] == [r["loss"] for r in hr.rounds]


def test_round_checkpoints_of_a_shared_memory_fit_hold_that_rounds_average(data, tmp_path):
    from sparkdl import load_model
    from sparkdl.train import RoundCheckpoint
    df = data[0]
    ckpts = {mode: RoundCheckpoint(tmp_path / f"{mode}-{{round}}.npz", every=2) for mode in ("jobs", "barrier")}
    _, hb = fit(df, "barrier", epochs=1, callbacks=[ckpts["barrier"]])
    fit(df, "jobs", epochs=1, callbacks=[ckpts["jobs"]])
    assert hb.shared_memory is True and len(ckpts["barrier"].saved) == len(ckpts["jobs"].saved) >= 2
    for b, j in zip(ckpts["barrier"].saved, ckpts["jobs"].saved):  # the driver averaged exactly those rounds
        np.testing.assert_allclose(load_model(b).get_flat_params(), load_model(j).get_flat_params(),
                                   rtol=1e-5, atol=1e-6)


def test_unauthenticated_connections_are_refused_and_do_not_disturb_the_fit(data, monkeypatch):
    from sparkdl.dist import driver, wire
    df, xte, yte = data
    intruders = []

    class Attacked(driver.ControlServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            wrong = socket.create_connection((self.host, self.port))
            wrong.recv(32)
            wrong.sendall(b"\0" * 32)      # a wrong HMAC
            garbage = socket.create_connection((self.host, self.port))
            garbage.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 64)
            forged = socket.create_connection((self.host, self.port))
            wire.send(forged, {"type": "hello", "worker": 0, "attempt": 10 ** 9, "rows": 1})  # no handshake
            intruders.extend([wrong, garbage, forged])

    monkeypatch.setattr(driver, "ControlServer", Attacked)
    attacked, history = fit(df, "barrier")
    monkeypatch.undo()
    clean, _ = fit(df, "barrier")
    np.testing.assert_array_equal(attacked.get_flat_params(), clean.get_flat_params())
    assert history.refused_connections == 3
    for s in intruders:
        s.close()


@pytest.mark.parametrize("shared_memory", [True, False])
def test_a_killed_worker_is_retried_and_the_fit_ends_as_if_nothing_happened(data, shared_memory):
    df, xte, yte = data
    clean, _ = fit(df, "barrier", epochs=3, shared_memory=shared_memory)
    kill = KillWorker(worker=1, at_round=9)
    resumed, history = fit(df, "barrier", epochs=3, callbacks=[kill], shared_memory=shared_memory)
    assert kill.killed is not None
    assert history.shared_memory is shared_memory and len(history.placement["lost"]) == 1
    assert "worker" in history.placement["lost"][0]
    assert [r["round"] for r in history.rounds] == list(range(1, len(history.rounds) + 1))
    assert history.epoch == [0, 1, 2]
    # the retried stage starts from the last model the driver holds: the weights are those of the clean fit
    np.testing.assert_allclose(resumed.get_flat_params(), clean.get_flat_params(), rtol=1e-5, atol=1e-5)
    assert resumed.evaluate(xte, yte)["accuracy"] == pytest.approx(clean.evaluate(xte, yte)["accuracy"], abs=0.003)


def test_barrier_mode_refuses_more_workers_than_slots(data):
    from sparkdl.spark import ParameterAveraging, SparkTrainer
    df, *_ = data
    trainer = SparkTrainer(mlp(), ParameterAveraging(num_workers=3, batch_size_per_worker=8, mode="barrier"))
    with pytest.raises(ValueError, match=r"runs all 3 workers at once, but the cluster has 2 task slots.*mode='jobs'"):
        trainer.fit(df, verbose=0)


def test_barrier_mode_refuses_dynamic_allocation(spark):
    from pyspark import SparkConf
    from sparkdl.spark.barrier import check_cluster

    class FakeContext:
        defaultParallelism = 8

        def getConf(self):
            return SparkConf(loadDefaults=False).set("spark.dynamicAllocation.enabled", "true")

    with pytest.raises(ValueError, match=r"dynamicAllocation.*mode='jobs'"):
        check_cluster(FakeContext(), 2)


def test_the_spark_setting_sparkdl_ports_places_every_listener_in_its_range(data, spark):
    spark.conf.set("spark.sparkdl.ports", "42200-42260")
    try:
        _, history = fit(data[0], "barrier", epochs=1, shared_memory=False)
    finally:
        spark.conf.unset("spark.sparkdl.ports")
    ports = [int(a.rsplit(":", 1)[1]) for a in [history.placement["driver"], *history.placement["listening"].values()]]
    assert len(ports) == 3 and all(42200 <= p <= 42260 for p in ports), history.placement


def test_a_bad_sparkdl_ports_setting_names_it(data, spark):
    spark.conf.set("spark.sparkdl.ports", "70000-70001")
    try:
        with pytest.raises(ValueError, match=r"spark\.sparkdl\.ports must be .*Received: ports='70000-70001'"):
            fit(data[0], "barrier", epochs=1)
    finally:
        spark.conf.unset("spark.sparkdl.ports")
