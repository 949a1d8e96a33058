"""Faults on local[2], in both modes: a killed Python worker, SIGINT / SIGTERM during a fit (in this process and to
jobs/train.py), a killed driver then --resume. Each ends with the weights an undisturbed run ends with and leaves no
process behind. (A killed barrier worker: tests/test_barrier.py.)"""
import glob
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from sparkdl import FitInterrupted, optim
from sparkdl.datasets import load_digits
from sparkdl.nn import Dense, Sequential
from sparkdl.spark import ParameterAveraging, SparkTrainer
from sparkdl.train import Callback, RoundCheckpoint

pytestmark = [pytest.mark.spark, pytest.mark.slow]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ["jobs", "barrier"]


@pytest.fixture(scope="module")
def digits(spark):
    x, y = load_digits("train")
    return spark.createDataFrame([(a.tolist(), int(b)) for a, b in zip(x, y)], "features array<float>, label int")


def mlp():
    m = Sequential([Dense(32, activation="relu"), Dense(10, activation="softmax")], input_shape=(64,), seed=0)
    return m.compile(optim.Adam(0.005), "sparse_categorical_crossentropy", ["accuracy"])


def fit(df, mode, epochs, callbacks=(), resume_from=None, model=None):
    model = model or mlp()
    t = SparkTrainer(model, ParameterAveraging(num_workers=2, batch_size_per_worker=32, averaging_frequency=5,
                                               mode=mode, seed=0))
    history = t.fit(df, epochs=epochs, callbacks=list(callbacks), resume_from=resume_from, verbose=0)
    return model, history


def python_workers():
    """The pids of pyspark's Python workers (forked by a pyspark.daemon, or sparkdl_daemon, whose parent is not
    itself a daemon)."""
    procs = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            pid = int(stat.split("/")[2])
            with open(stat) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            procs[pid] = (ppid, b"pyspark.daemon" in cmdline or b"\x00sparkdl_daemon\x00" in cmdline)
        except (OSError, ValueError, IndexError):
            continue
    daemons = {p for p, (pp, d) in procs.items() if d and not procs.get(pp, (0, False))[1]}
    return [p for p, (pp, d) in procs.items() if d and pp in daemons]


class KillWorkers(Callback):
    """After round ``at``, SIGKILL every Python worker there is until the sparkdl log says a round failed and runs
    again (a worker killed while idle is only replaced, so the killing goes on until a round's task dies), or
    ``window`` seconds have passed: on a loaded machine the next round may start late."""

    def __init__(self, at, window=10.0):
        self.at, self.window, self.killed = at, window, []
        self.failed = threading.Event()
        self.watch = logging.Handler()
        self.watch.emit = lambda record: "running it again" in record.getMessage() and self.failed.set()

    def on_round_end(self, round, logs=None):
        if round == self.at:
            logging.getLogger("sparkdl").addHandler(self.watch)
            threading.Thread(target=self._kill, daemon=True).start()

    def _kill(self):
        deadline = time.monotonic() + self.window
        try:
            while time.monotonic() < deadline and not self.failed.is_set():
                for pid in python_workers():
                    try:
                        os.kill(pid, signal.SIGKILL)
                        self.killed.append(pid)
                    except ProcessLookupError:
                        pass
                time.sleep(0.002)
        finally:
            logging.getLogger("sparkdl").removeHandler(self.watch)


def test_a_killed_python_worker_reruns_its_round_in_local_mode(digits, caplog):
    """local[2] never retries a task; jobs mode runs the failed round again itself (round_retries)."""
    undisturbed, _ = fit(digits, "jobs", 2)
    kill = KillWorkers(at=3)
    with caplog.at_level("WARNING", logger="sparkdl"):
        model, history = fit(digits, "jobs", 2, [kill])
    assert kill.killed, "no Python worker found to kill"
    assert any("failed" in r.getMessage() and "running it again (1 of 3)" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(model.get_flat_params(), undisturbed.get_flat_params(), rtol=1e-5, atol=1e-6)


class SignalAt(Callback):
    """Send ``sig`` to this process from another thread right after round ``at`` (as a user's Ctrl-C would come)."""

    def __init__(self, at, sig=signal.SIGINT):
        self.at, self.sig, self.sent = at, sig, None

    def on_round_end(self, round, logs=None):
        if round == self.at:
            self.sent = time.monotonic()
            threading.Thread(target=os.kill, args=(os.getpid(), self.sig)).start()

    def reads_model_at_round(self, round):
        return False


@pytest.mark.parametrize("mode, sig", [("jobs", signal.SIGINT), ("barrier", signal.SIGTERM)])
def test_a_signal_stops_the_fit_and_resume_ends_with_the_uninterrupted_weights(digits, tmp_path, spark, mode, sig):
    undisturbed, _ = fit(digits, mode, 6)
    handler = signal.getsignal(sig)
    checkpoint = str(tmp_path / "checkpoint.npz")
    interrupt = SignalAt(at=17, sig=sig)            # rounds of 5 batches of 32 per worker: 5 rounds an epoch
    with pytest.raises(FitInterrupted) as e:
        fit(digits, mode, 6, [RoundCheckpoint(checkpoint, every="epoch"), interrupt])
    stopped = time.monotonic() - interrupt.sent
    assert stopped < 5.0, f"the fit took {stopped:.1f} s to stop"
    assert e.value.signal == signal.Signals(sig).name and e.value.rounds == 30 and 18 <= e.value.round <= 20, e.value
    assert signal.getsignal(sig) is handler                 # the fit gave the handler back
    tracker, deadline = spark.sparkContext.statusTracker(), time.monotonic() + 10
    while tracker.getActiveJobsIds() and time.monotonic() < deadline:
        time.sleep(0.05)   # the tracker hears of a job's end asynchronously
    assert tracker.getActiveJobsIds() == [] and spark.range(3).count() == 3
    assert not glob.glob("/dev/shm/sparkdl-*")
    resumed, _ = fit(digits, mode, 6, resume_from=checkpoint)
    np.testing.assert_allclose(resumed.get_flat_params(), undisturbed.get_flat_params(), rtol=1e-5, atol=1e-6)


# -- the command line --------------------------------------------------------------------------------------------------
def _train(out, mode, epochs, *extra):
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    return subprocess.Popen([sys.executable, os.path.join(REPO, "jobs", "train.py"), "--mode", mode, "--epochs",
                             str(epochs), "--num-workers", "2", "--output-dir", str(out), *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _left_in(session):
    """Live processes (not zombies) of a process session."""
    left = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            left.append(int(stat.split("/")[2]))
    return left


def _wait_for(path, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def _finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    lines = [ln for ln in err.splitlines() if ln.startswith("jobs/train.py")]
    return proc.returncode, lines


def _weights(out):
    from sparkdl import load_model
    return load_model(os.path.join(out, "model.npz")).get_flat_params()


@pytest.mark.parametrize("mode, epochs", [("jobs", 6), ("barrier", 60)])
def test_the_cli_stops_on_sigint_in_one_line_and_a_killed_one_resumes(tmp_path, mode, epochs):
    """jobs/train.py: SIGINT ends it within 5 s with status 130 and one line that says where it stopped, nothing left
    running; SIGKILL to its whole process group mid-fit, then --resume: the weights of an undisturbed run."""
    proc = _train(tmp_path / "whole", mode, epochs)
    assert _finish(proc) == (0, []), proc.stderr
    whole = _weights(tmp_path / "whole")

    proc = _train(tmp_path / "int", mode, epochs * 20)
    _wait_for(tmp_path / "int" / "checkpoint.npz", proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    status, lines = _finish(proc, timeout=30)
    took = time.monotonic() - sent
    assert status == 130 and took < 5.0, (status, took, lines)
    assert len(lines) == 1 and lines[0].startswith("jobs/train.py: interrupted (SIGINT) at epoch "), lines
    assert "checkpoint.npz: resume with --resume" in lines[0], lines
    time.sleep(0.5)
    assert _left_in(proc.pid) == [], "processes were left running"

    checkpoints = f"file://{tmp_path / 'checkpoints'}"     # a URI, as on a cluster's filesystem
    proc = _train(tmp_path / "kill", mode, epochs, "--checkpoint-dir", checkpoints, "--checkpoint-every", "epoch")
    _wait_for(tmp_path / "checkpoints" / "checkpoint.npz", proc)
    os.killpg(proc.pid, signal.SIGKILL)                     # the driver and everything it started
    proc.communicate()
    assert not os.path.exists(tmp_path / "kill" / "model.npz")
    proc = _train(tmp_path / "kill", mode, epochs, "--checkpoint-dir", checkpoints, "--resume")
    assert _finish(proc)[0] == 0, proc.stderr
    np.testing.assert_allclose(_weights(tmp_path / "kill"), whole, rtol=1e-6, atol=1e-7)
    assert not os.path.exists(tmp_path / "checkpoints" / "checkpoint.npz")   # removed once the run is complete
