"""Barrier mode across hosts, for real: three simulated hosts (network namespaces on a bridge in a test subnet,
each with its own hostname and /dev/shm: simhosts.py), a standalone master in this namespace, one Spark worker
daemon on each host, and spark-submit of jobs/train.py --mode barrier with the driver here. The workers average
in a TCP ring between the hosts; the driver hears one tally per round. A second fit kills the Python worker of
one host mid-fit: Spark retries the barrier stage and the fit still ends well.

Skips, with the reason, where namespaces cannot be made (not root, no iproute2); everything it made is removed
afterwards, also when it fails.
"""
import json
import os
import signal

import pytest

from sparkcluster import Cluster, log, spark_home, submit

pytestmark = [pytest.mark.spark, pytest.mark.slow]
HOSTS = 3


@pytest.fixture(scope="module")
def hosts():
    import simhosts
    reason = simhosts.available()
    if reason:
        pytest.skip(reason)
    with simhosts.SimulatedHosts(HOSTS) as h:
        log(f"simulated hosts {h.names} at {h.ips}, driver and master at {h.driver_ip} ({h.bridge})")
        yield h


@pytest.fixture(scope="module")
def cluster(hosts, tmp_path_factory):
    home = spark_home()
    c = Cluster(str(tmp_path_factory.mktemp("multihost")), home, host=hosts.driver_ip,
                workers=[(ip, hosts.prefix(i)) for i, ip in enumerate(hosts.ips)], memory="768m")
    try:
        c.start()
        yield c
    finally:
        c.stop()


def train(cluster, tmp_path, epochs, extra_args=(), on_line=None):
    out, events = tmp_path / "out", tmp_path / "events"
    events.mkdir()
    submit(cluster, "train.py", ["--data", "digits", "--mode", "barrier", "--num-workers", str(HOSTS),
                                 "--epochs", str(epochs), "--batch-size-per-worker", "32", *extra_args,
                                 "--output-dir", str(out)], events,
           ["--conf", "spark.executor.memory=512m", "--conf", "spark.task.maxFailures=1",
            "--conf", "spark.stage.maxConsecutiveAttempts=4"], timeout=420, on_line=on_line)
    return json.loads((out / "metrics.json").read_text())


def test_a_barrier_fit_averages_across_three_hosts(cluster, hosts, tmp_path):
    metrics = train(cluster, tmp_path, epochs=8, extra_args=["--averaging-frequency", "4"])
    placement, stats = metrics["placement"], metrics["stats"]
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
        if b"pyspark.daemon" in cmdline or b"pyspark/daemon.py" in cmdline:
            daemons[pid] = ppid
    return [pid for pid, ppid in daemons.items() if ppid in daemons]
