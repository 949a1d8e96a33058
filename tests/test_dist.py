"""The distributed runtime without Spark: barrier fits with every worker a plain process (sparkdl.dist.procs),
on every topology the runtime knows (one host sharing memory, one worker per host in a TCP ring, hosts of
several workers), the jobs master's loop with an in-process launcher, a worker killed from outside, stopping at
an epoch end, and what the driver receives."""
import os
import signal
import time

import numpy as np
import pytest

from sparkdl import optim
from sparkdl.datasets import load_digits
from sparkdl.dist import modes as masters
from sparkdl.dist import schedule
from sparkdl.dist.averaging import Contribution
from sparkdl.dist.options import Options
from sparkdl.dist.procs import ProcessLauncher
from sparkdl.dist.run import FitRun
from sparkdl.dist.worker import fit_round, worker_model
from sparkdl.nn import Dense, Sequential
from sparkdl.train import Callback

WORKERS = 4


def mlp():
    m = Sequential([Dense(32, activation="relu"), Dense(10, activation="softmax")], input_shape=(64,), seed=0)
    return m.compile(optim.Adam(0.01), "sparse_categorical_crossentropy", ["accuracy"])


@pytest.fixture(scope="module")
def shards():
    x, y = load_digits("train")
    out = [(x[i::WORKERS], y[i::WORKERS]) for i in range(WORKERS)]
    out[3] = (out[3][0][:200], out[3][1][:200])  # unequal shards: weights matter
    return out


def fit(mode, shards, epochs=2, callbacks=(), launcher=None, **kw):
    options = Options(num_workers=len(shards), batch_size_per_worker=32, averaging_frequency=4, seed=3, mode=mode,
                      **kw)
    model = mlp()
    run = FitRun(model, options, epochs, list(callbacks), None, 0, 0)
    launcher = launcher or (ProcessLauncher(shards) if mode == "barrier" else InProcessJobs(shards))
    try:
        history = masters.get(mode).fit(options, run, launcher)
    finally:
        launcher.close()
    return model, history


class InProcessJobs:
    """A jobs-mode launcher without Spark: every round's tasks run here, one after the other."""

    def __init__(self, shards):
        self.shards = shards

    def exported(self, run):
        import contextlib
        return contextlib.nullcontext([len(x) for x, _ in self.shards])

    def run_round(self, run, epoch, r, g):
        options, payload, total = run.master, run.payload(), Contribution()
        model = worker_model(run.model_json, run.compile_json)
        for w, (x, y) in enumerate(self.shards):
            order = schedule.epoch_order(len(x), options.seed, epoch, w, options.shuffle)
            batches = schedule.round_batches(order, options.batch_size_per_worker, options.averaging_frequency, r)
            res = fit_round(model, x.astype(np.float32), y.astype(np.int32), batches, payload["params"],
                            payload["state"], payload["opt"], payload["iterations"], options.average_optimizer_state)
            total.merge(Contribution.of(res))
        return total

    def close(self):
        pass


@pytest.mark.parametrize("hosts", [None, "a,b,c,d", "a,a,b,b", "a,b,b,b"])
def test_every_topology_ends_with_the_jobs_modes_weights(shards, hosts):
    reference, hj = fit("jobs", shards)
    launcher = ProcessLauncher(shards, hosts=hosts.split(",") if hosts else None)
    model, hb = fit("barrier", shards, launcher=launcher)
    groups = {None: [[0, 1, 2, 3]], "a,b,c,d": [[0], [1], [2], [3]], "a,a,b,b": [[0, 1], [2, 3]],
              "a,b,b,b": [[0], [1, 2, 3]]}[hosts]
    assert hb.placement["groups"] == groups and hb.placement["lost"] == []
    np.testing.assert_allclose(model.get_flat_params(), reference.get_flat_params(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.optimizer.state_buffer, reference.optimizer.state_buffer, rtol=1e-5, atol=1e-7)
    assert [r["loss"] for r in hb.rounds] == pytest.approx([r["loss"] for r in hj.rounds], rel=1e-6)
    assert hb.history["accuracy"] == pytest.approx(hj.history["accuracy"])


def test_the_driver_hears_one_tally_per_round_and_the_model_once_per_epoch(shards):
    _, history = fit("barrier", shards, shared_memory=False)
    stats = history.stats
    model_bytes = 4 * (2 * mlp().params.size + mlp().params.size)  # params and Adam's m, v, in float32
    fetched = [r["driver_model_bytes"] for r in stats.rounds if r["driver_model_bytes"]]
    assert len(fetched) == 2                                  # the two epoch ends
    assert all(model_bytes <= b < model_bytes + 1024 for b in fetched)   # the leaders' ranges: the model once
    control = [r["driver_control_bytes"] for r in stats.rounds]   # tallies (batched), verdicts: not the model
    assert sum(control) / len(control) < 300 and max(control) < 64 * 1024
    assert len(stats.workers) == WORKERS * len(stats.rounds)   # every worker's timing record, by the epoch ends
    assert {w["worker"] for w in stats.workers} == set(range(WORKERS))
    ring_bytes = [w["sent"] for w in stats.workers if w["round"] == 1]
    s = model_bytes
    assert all(b <= 1.1 * 2 * (WORKERS - 1) / WORKERS * s + 1024 for b in ring_bytes), (ring_bytes, s)


class EpochEnds(Callback):
    """A callback of a user's: it may read the model at epoch ends (the default)."""

    def on_epoch_end(self, epoch, logs=None):
        self.seen = self.model.get_flat_params().copy()


def test_the_driver_fetches_epoch_ends_only_where_something_reads_the_model_there(shards):
    """12 epochs of 3 rounds: without validation or a callback that reads the model at epoch ends, the driver fetches
    it for the layer samples only (every 6 rounds); with one, at every epoch end."""
    _, history = fit("barrier", shards, epochs=12)
    fetched = [r["round"] for r in history.stats.rounds if r["driver_model_bytes"]]
    assert fetched == [5, 11, 17, 23, 29, 35]
    assert len(history.history["loss"]) == 12 and len(history.stats.layers) == 1 + len(fetched)
    reader = EpochEnds()
    model, history = fit("barrier", shards, epochs=12, callbacks=[reader])
    fetched = [r["round"] for r in history.stats.rounds if r["driver_model_bytes"]]
    assert fetched == [3 * e + 2 for e in range(12)]
    assert np.array_equal(reader.seen, model.get_flat_params())   # the last epoch end's model is the fit's


class Kill(Callback):
    def __init__(self, launcher, worker, at_round):
        self.launcher, self.worker, self.at_round, self.killed = launcher, worker, at_round, None

    def reads_model_at_round(self, round):
        return False

    def on_round_end(self, round, logs=None):
        if round == self.at_round and self.killed is None:
            self.killed = self.launcher.pids()[self.worker]
            os.kill(self.killed, signal.SIGKILL)


@pytest.mark.parametrize("hosts", ["a,a,b,b", "a,b,c,d"])
def test_a_worker_killed_from_outside_is_retried_and_the_weights_are_as_if_nothing_happened(shards, hosts):
    clean, _ = fit("barrier", shards, epochs=3, launcher=ProcessLauncher(shards, hosts=hosts.split(",")))
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else None
    launcher = ProcessLauncher(shards, hosts=hosts.split(","))
    kill = Kill(launcher, worker=2, at_round=3)   # workers are at most one epoch and a round ahead: mid-fit
    resumed, history = fit("barrier", shards, epochs=3, callbacks=[kill], launcher=launcher)
    assert kill.killed is not None and len(history.placement["lost"]) == 1
    assert [r["round"] for r in history.rounds] == list(range(1, len(history.rounds) + 1))
    assert history.epoch == [0, 1, 2]
    np.testing.assert_allclose(resumed.get_flat_params(), clean.get_flat_params(), rtol=1e-5, atol=1e-6)
    if before is not None:   # worker 2 led the shared memory of its host (a,a,b,b): its killed process left no region behind
        assert {f for f in os.listdir("/dev/shm") if f.startswith("sparkdl-")} <= before


class StopAfter(Callback):
    def __init__(self, epoch, sleep=0.0):
        self.epoch, self.sleep = epoch, sleep

    def on_epoch_end(self, epoch, logs=None):
        time.sleep(self.sleep)   # a slow epoch end: the workers go on fitting meanwhile
        if epoch == self.epoch:
            self.model.stop_training = True


def test_stopping_at_an_epoch_end_keeps_that_epochs_average(shards):
    two, h2 = fit("barrier", shards, epochs=2)
    stopped, hs = fit("barrier", shards, epochs=5, callbacks=[StopAfter(1)])
    assert hs.epoch == [0, 1] and len(hs.rounds) == len(h2.rounds)
    np.testing.assert_array_equal(stopped.get_flat_params(), two.get_flat_params())


def test_workers_that_ran_past_a_stop_end_with_that_epochs_average(shards):
    """The workers do not wait for the driver's epoch-end work (here 0.3 s a callback sleeps); the rounds they fit
    past the epoch the driver stops at are not used, and they all end quietly."""
    two, h2 = fit("barrier", shards, epochs=2)
    stopped, hs = fit("barrier", shards, epochs=5, callbacks=[StopAfter(1, sleep=0.3)])
    assert hs.epoch == [0, 1] and len(hs.rounds) == len(h2.rounds)
    np.testing.assert_array_equal(stopped.get_flat_params(), two.get_flat_params())


class _Inbox:
    """Control's side of the verdicts: the driver's messages, in order."""

    def __init__(self, verdicts):
        self.verdicts, self.read_at = list(verdicts), []

    def expect(self, kind, round_, timeout):
        header = self.verdicts.pop(0)
        assert kind == "verdict" and header["round"] == round_
        self.read_at.append(round_)
        return header, None


def test_a_verdict_is_read_lag_rounds_late_or_at_the_next_fetched_round():
    from sparkdl.dist.barrier import _Verdicts
    inbox = _Inbox([{"round": 4, "stop": False, "lag": 2}, {"round": 9, "stop": False, "lag": 2},
                    {"round": 14, "stop": True}])
    verdicts = _Verdicts(inbox, [4, 9, 14, 19], total=20, lag=16, timeout=1.0)
    read = {g: (verdicts.due(g), list(inbox.read_at)) for g in range(20)}
    assert read[8] == (False, []) and read[9] == (False, [4])      # lag 16: read at the next fetched round
    assert read[10] == (False, [4]) and read[11] == (False, [4, 9])   # lag 2, from the last verdict
    assert read[15] == (False, [4, 9]) and read[16] == (True, [4, 9, 14])   # stop: every worker at round 17


def test_ports_come_from_the_configured_range(shards):
    _, history = fit("barrier", shards[:2], epochs=1, shared_memory=False, ports="42100-42140")
    used = [int(a.rsplit(":", 1)[1]) for a in history.placement["listening"].values()]
    used.append(int(history.placement["driver"].rsplit(":", 1)[1]))
    assert all(42100 <= p <= 42140 for p in used), used


def test_block_order_visits_every_row_once_with_the_short_block_last():
    order = schedule.block_order(1000, 64, seed=1, epoch=2, worker=0)
    assert sorted(order.tolist()) == list(range(16)) and order[-1] == 15 and order[:15].tolist() != list(range(15))
    assert order.tolist() == schedule.block_order(1000, 64, seed=1, epoch=2, worker=0).tolist()
    per_round = [sum(min(64, 1000 - 64 * k) for k in schedule.round_blocks(order, 5, r)) for r in range(4)]
    assert per_round == [schedule.round_examples(1000, 64, 5, r) for r in range(4)]   # same weights as rows


@pytest.mark.parametrize("budget", [None, 1000])   # in memory; spilled to a memory-mapped file
def test_a_partition_is_put_in_the_order_given_however_its_rows_came(shards, tmp_path, budget):
    from sparkdl.dist.spill import Spiller, is_spilled
    x, y = shards[0]
    order = np.random.default_rng(4).permutation(len(x))
    spiller = Spiller(64, np.int32, budget=budget, batch_size=32, directory=str(tmp_path))
    for start in range(0, len(x), 96):
        spiller.add(x[start:start + 96], y[start:start + 96])
    fx, fy = spiller.finish((64,), order)
    if budget is not None:
        assert is_spilled(fx) and os.listdir(tmp_path) == []   # the rewritten file too: mapped, then unlinked
        assert [len(fy[k]) for k in range(len(fy.parts))] == [32] * (len(x) // 32) + [len(x) % 32] * (len(x) % 32 > 0)
        fx, fy = (np.concatenate([c[k] for k in range(len(c.parts))]) for c in (fx, fy))
    np.testing.assert_array_equal(fx, x[order].astype(np.float32))
    np.testing.assert_array_equal(fy, y[order])


def test_a_partition_over_its_memory_budget_trains_from_a_memory_mapped_file(shards, tmp_path):
    from sparkdl.dist.spill import Spiller, is_spilled
    x, y = shards[0]
    spiller = Spiller(64, np.int32, budget=1000, batch_size=32, directory=str(tmp_path))
    for start in range(0, len(x), 100):
        spiller.add(x[start:start + 100], y[start:start + 100])
    fx, fy = spiller.finish((64,))
    assert is_spilled(fx) and len(fx) == len(x) and os.listdir(tmp_path) == []   # mapped, then unlinked
    np.testing.assert_array_equal(np.concatenate([fx[k] for k in range(len(fx.parts))]), x.astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([fy[k] for k in range(len(fy.parts))]), y)
    kept = Spiller(64, np.int32, budget=10 ** 9, batch_size=32, directory=str(tmp_path))
    kept.add(x, y)
    assert not is_spilled(kept.finish((64,))[0])
    # a whole fit with every partition spilled: each epoch shuffles minibatch blocks, and it learns as well
    spilled, hs = fit("barrier", shards, epochs=4, memory_budget=0)
    rows, hr = fit("barrier", shards, epochs=4)
    xte, yte = load_digits("test")
    assert [r["examples"] for r in hs.rounds] == [r["examples"] for r in hr.rounds]
    assert spilled.evaluate(xte, yte)["accuracy"] > 0.9
    assert abs(spilled.evaluate(xte, yte)["accuracy"] - rows.evaluate(xte, yte)["accuracy"]) < 0.03


def test_the_driver_relays_the_rendezvous_and_a_worker_lost_in_it_makes_the_stage_start_again():
    """The rendezvous goes through the driver: every worker hears where all are (peers), the host leaders' offers
    go round where a host has several workers (offers), and the start comes once all are ready. A worker lost in
    between makes the driver abort that attempt and wait for a newer one, which then starts."""
    import threading

    from sparkdl.dist.control import Control
    from sparkdl.dist.driver import BarrierDriver
    options = Options(num_workers=2, batch_size_per_worker=32, averaging_frequency=4, seed=3, mode="barrier")
    run = FitRun(mlp(), options, 1, [], None, 0, 0)
    driver = BarrierDriver(run, 2, timeout=20.0)
    joined = threading.Thread(target=driver._join, args=(0, 0), daemon=True)
    joined.start()

    def hello(w, attempt, host):
        return Control.connect(driver.server.host, driver.server.port, driver.secret, {
            "type": "hello", "worker": w, "attempt": attempt, "rows": 100, "host": host, "address": "127.0.0.1",
            "port": 5000 + w, "pid": 1, "share": True}, timeout=10.0)

    try:
        a, b = hello(0, 1, "h"), hello(1, 2, "h")   # one host: the leader's offer goes round
        peers = [c.expect("peers", timeout=10.0)[0] for c in (a, b)]
        assert peers[0] == peers[1] and peers[0]["share"] is True
        assert [(i["worker"], i["attempt"], i["port"]) for i in peers[0]["infos"]] == [(0, 1, 5000), (1, 2, 5001)]
        a.send({"type": "offer", "offer": {"region": "r"}})
        b.close()   # lost before its offer
        with pytest.raises(Exception, match="a worker was lost; the stage is retried"):
            a.expect("offers", timeout=10.0)
        a.close()
        c, d = hello(1, 4, "h2"), hello(0, 3, "h1")   # the retried stage: now one worker per host
        for ctl in (c, d):
            assert ctl.expect("peers", timeout=10.0)[0]["infos"][0]["attempt"] == 3
            ctl.send({"type": "ready"})   # no offers: no host has two workers
        starts = [ctl.expect("start", timeout=10.0)[0] for ctl in (d, c)]
        joined.join(10.0)
        assert not joined.is_alive()
        assert [s["round"] for s in starts] == [0, 0] and len(driver.lost) == 1
        assert [h["group"] for _, h in sorted(driver.hellos.items())] == [[0], [1]]
        assert [driver.hellos[w]["leader_rank"] for w in (0, 1)] == [0, 1]
        for ctl in (c, d):
            ctl.close()
    finally:
        driver.close()
