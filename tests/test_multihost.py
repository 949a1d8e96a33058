"""Barrier mode across hosts, for real: three simulated hosts (network namespaces on a bridge in a test subnet,
each with its own hostname and /dev/shm: simhosts.py), a standalone master in this namespace, one Spark worker
daemon on each host, and spark-submit of jobs/train.py with the driver here, its temporary directory ($TMPDIR)
one the hosts do not see. The workers average over TCP
between the hosts; the driver hears one tally per round. A second fit kills the Python worker of one host
mid-fit: Spark retries the barrier stage and the fit still ends well. Then what a real cluster needs: jobs mode
refuses a shard directory the hosts do not share within a second or two, two identical fits end with identical
weights in both modes, and IDX files are read by the executors (the driver's tasks stay small).

Skips, with the reason, where namespaces cannot be made (not root, no iproute2); everything it made is removed
afterwards, also when it fails.
"""
import json
import os
import re
import shutil
import signal
import tempfile
import time

import numpy as np
import pytest

from sparkcluster import Cluster, log, spark_home, submit

pytestmark = [pytest.mark.spark, pytest.mark.slow]
HOSTS = 3


def _scratch(prefix):
    """A fresh directory under /var/tmp (not under the test's /tmp: see ``driver_tmp``), removed afterwards."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/var/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def driver_tmp():
    """The driver's $TMPDIR: on each simulated host the same path is an empty directory of the host's own."""
    yield from _scratch("sparkdl-driver-tmp-")


@pytest.fixture(scope="module")
def hosts(driver_tmp):
    import simhosts
    reason = simhosts.available()
    if reason:
        pytest.skip(reason)
    with simhosts.SimulatedHosts(HOSTS, private_dirs=[driver_tmp]) as h:
        log(f"simulated hosts {h.names} at {h.ips}, driver and master at {h.driver_ip} ({h.bridge})")
        yield h


@pytest.fixture(scope="module")
def shared():
    """A directory every simulated host sees (as a shared filesystem would be): the cluster's and the shards'."""
    yield from _scratch("sparkdl-multihost-")


@pytest.fixture(scope="module")
def cluster(hosts, shared):
    home = spark_home()
    c = Cluster(os.path.join(shared, "cluster"), home, host=hosts.driver_ip,
                workers=[(ip, hosts.prefix(i)) for i, ip in enumerate(hosts.ips)], memory="768m",
                info_loggers=["org.apache.spark.scheduler.TaskSetManager"])   # the size of every task it sends
    try:
        c.start()
        yield c
    finally:
        c.stop()


def train(cluster, tmp_path, epochs, extra_args=(), on_line=None, mode="barrier", data="digits", status=0,
          driver_tmp=None):
    out, events = tmp_path / "out", tmp_path / "events"
    events.mkdir()
    output = submit(cluster, "train.py", ["--data", data, "--mode", mode, "--num-workers", str(HOSTS),
                                          "--epochs", str(epochs), "--batch-size-per-worker", "32", *extra_args,
                                          "--output-dir", str(out)], events,
                    ["--conf", "spark.executor.memory=512m", "--conf", "spark.task.maxFailures=1",
                     "--conf", "spark.stage.maxConsecutiveAttempts=4"], timeout=420, on_line=on_line, status=status,
                    env={"TMPDIR": driver_tmp} if driver_tmp else None)
    if status:
        return output
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["startup"] = next((ln.strip() for ln in output.splitlines() if ln.startswith("start-up:")), None)
    return metrics


def test_a_barrier_fit_averages_across_three_hosts(cluster, hosts, tmp_path):
    metrics = train(cluster, tmp_path, epochs=8, extra_args=["--averaging-frequency", "4"])
    placement, stats = metrics["placement"], metrics["stats"]
    log(metrics["startup"])
    log(f"3 hosts: test accuracy {metrics['test']['accuracy']:.4f}, groups {placement['groups']}, hosts "
        f"{placement['hosts']}, driver bytes per round: control {stats['driver_control_bytes_per_round']:.0f} "
        f"(max {stats['driver_control_bytes_max']}), timing records {stats['driver_stats_bytes_per_round']:.0f}, "
        f"model {stats['driver_model_bytes_per_round']:.0f}; overhead {100 * stats['overhead_fraction']:.0f}%")
    names = {h.split("|")[0] for h in placement["hosts"].values()}
    assert names == set(hosts.names)              # every host trained one worker
    assert placement["groups"] == [[0], [1], [2]]  # one worker per host: all three in the ring
    assert metrics["shared_memory"] is False and placement["lost"] == []
    assert stats["workers"] == HOSTS
    assert metrics["test"]["accuracy"] > 0.9, metrics["test"]
    assert metrics["history"]["loss"][-1] < metrics["history"]["loss"][0]
    # per round the driver hears one tally and sends nothing; the model (29 KB here) travels only at epoch ends
    assert stats["driver_control_bytes_max"] < 64 * 1024, stats
    assert stats["driver_stats_bytes_per_round"] < 64 * 1024, stats


def test_a_killed_worker_on_one_host_is_retried_and_the_fit_recovers(cluster, hosts, tmp_path):
    killed = []

    def kill_at_epoch(line):
        # once the driver reports epoch 4, SIGKILL the Python workers the executor on host 1 forked
        if line.startswith("Epoch 4/") and not killed:
            killed.extend(_python_workers(hosts.pids(1)))
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
            log(f"killed the Python workers {killed} on {hosts.names[1]}")

    metrics = train(cluster, tmp_path, epochs=40, extra_args=["--averaging-frequency", "1"], on_line=kill_at_epoch)
    placement = metrics["placement"]
    log(f"after the kill: test accuracy {metrics['test']['accuracy']:.4f}, lost {placement['lost']}")
    assert killed, "no Python worker was found to kill on host 1"
    assert len(placement["lost"]) >= 1
    assert {h.split("|")[0] for h in placement["hosts"].values()} == set(hosts.names)
    assert len(metrics["history"]["loss"]) == 40          # every epoch ran once
    assert metrics["test"]["accuracy"] > 0.9, metrics["test"]


def _python_workers(pids):
    """The pids among ``pids`` of Python workers forked by a pyspark daemon (a daemon process's children)."""
    daemons = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if b"pyspark.daemon" in cmdline or b"pyspark/daemon.py" in cmdline or b"\x00sparkdl_daemon\x00" in cmdline:
            daemons[pid] = ppid
    return [pid for pid, ppid in daemons.items() if ppid in daemons]


@pytest.mark.parametrize("given", [False, True])
def test_jobs_mode_refuses_a_shard_directory_the_hosts_do_not_share(cluster, driver_tmp, tmp_path, given):
    """No shared directory set: the driver's temporary directory is refused at once. A directory of the driver's
    own given: the executors' probe finds it missing."""
    seen = {}

    def stamp(line):
        for key in ("jobs mode", "error:"):
            if key in line and key not in seen:
                seen[key] = time.time()

    extra = ["--export-dir", os.path.join(driver_tmp, "given")] if given else []
    output = train(cluster, tmp_path, epochs=1, mode="jobs", on_line=stamp, status=2, extra_args=extra,
                   driver_tmp=driver_tmp)
    error = next(line for line in output.splitlines() if "train.py: error:" in line)
    took = seen["error:"] - seen["jobs mode"]
    log(f"jobs mode, {'--export-dir on the driver' if given else 'no --export-dir'}: {took:.2f}s from choosing the "
        f"mode to: {error}")
    assert "is not shared with the executors on" in error and "spark.sparkdl.exportDir" in error
    assert "--export-dir" in error and "mode='barrier'" in error
    assert given or took < 2.0
    assert "shard-0" not in output   # nothing was exported


@pytest.mark.parametrize("mode", ["barrier", "jobs"])
def test_two_identical_fits_on_three_hosts_end_with_identical_weights(cluster, shared, tmp_path, mode):
    extra = ["--averaging-frequency", "4", "--seed", "7"]
    if mode == "jobs":
        extra += ["--export-dir", os.path.join(shared, "shards")]
    weights, losses = [], []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        metrics = train(cluster, tmp_path / run, epochs=2, mode=mode, extra_args=extra)
        with np.load(tmp_path / run / "out" / "model.npz", allow_pickle=False) as f:
            weights.append({k: f[k] for k in f.files})
        losses.append(metrics["history"]["loss"])
    log(f"{mode} mode, two identical fits: losses {losses[0]} and {losses[1]}")
    assert losses[0] == losses[1]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        np.testing.assert_array_equal(weights[0][name], weights[1][name], err_msg=name)


def test_idx_files_are_read_by_the_executors_and_the_tasks_carry_no_data(cluster, tmp_path):
    mnist = os.environ.get("SPARKDL_MNIST_DIR")
    if not mnist or not os.path.isdir(mnist):
        pytest.skip("MNIST IDX files not found ($SPARKDL_MNIST_DIR)")
    sizes = []

    def task_size(line):   # TaskSetManager: "Starting task 0.0 in stage 3.0 (TID 5) (host, executor 1, ..., N bytes)"
        found = re.search(r"Starting task .*, (\d+) bytes\)", line)
        if found:
            sizes.append(int(found.group(1)))

    metrics = train(cluster, tmp_path, epochs=1, data=mnist, on_line=task_size,
                    extra_args=["--model", "mlp", "--averaging-frequency", "8"])
    log(f"MNIST IDX (60,000 + 10,000 images) on 3 hosts: {len(sizes)} tasks sent, {sum(sizes)} bytes in all "
        f"(largest {max(sizes)}), test accuracy {metrics['test']['accuracy']:.4f}")
    assert metrics["stats"]["rounds"] == -(-20000 // (32 * 8))   # 60,000 images: 20,000 per worker
    assert sizes and sum(sizes) < 1 << 20
    assert metrics["test"]["accuracy"] > 0.9, metrics["test"]
