"""Where the driver listens and what it tells the executors (sparkdl.spark.barrier): never a wildcard address,
ports from the configured range. No Spark needed: a stand-in for the SparkContext's configuration."""
import os
import socket

import pytest

from sparkdl.spark import barrier


class Context:
    def __init__(self, master="spark://10.0.0.1:7077", **conf):
        self.master, self._conf = master, {k.replace("_", "."): v for k, v in conf.items()}

    def getConf(self):
        return self

    def get(self, key, default=None):
        return self._conf.get(key, default)


class Session:
    def __init__(self, **conf):
        self.conf = Context(**conf)


def test_local_masters_listen_and_advertise_on_loopback():
    assert barrier.driver_addresses(Context("local[2]", spark_driver_host="10.1.2.3")) == ("127.0.0.1", "127.0.0.1")


def test_spark_driver_host_is_advertised_and_bound_without_a_bind_address():
    assert barrier.driver_addresses(Context(spark_driver_host="10.1.2.3")) == ("10.1.2.3", "10.1.2.3")


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::", "[::]", ""])
def test_a_wildcard_bind_address_binds_everywhere_and_advertises_the_driver_host(wildcard):
    bind, advertised = barrier.driver_addresses(Context(spark_driver_host="10.1.2.3", spark_driver_bindAddress=wildcard))
    assert advertised == "10.1.2.3"
    assert bind == (wildcard or "10.1.2.3")


def test_a_specific_bind_address_is_bound_and_the_driver_host_advertised():
    # containers: bind the container's interface, advertise the address the node forwards to it
    assert barrier.driver_addresses(Context(spark_driver_host="192.168.5.5", spark_driver_bindAddress="172.17.0.2")) \
        == ("172.17.0.2", "192.168.5.5")


def test_a_wildcard_driver_host_falls_back_to_a_concrete_bind_address():
    assert barrier.driver_addresses(Context(spark_driver_host="0.0.0.0", spark_driver_bindAddress="10.9.8.7")) \
        == ("10.9.8.7", "10.9.8.7")


def test_no_concrete_address_at_all_uses_this_hosts_address_or_says_what_to_set(monkeypatch):
    monkeypatch.setattr(socket, "gethostbyname", lambda name: "10.4.4.4")
    assert barrier.driver_addresses(Context(spark_driver_bindAddress="0.0.0.0")) == ("0.0.0.0", "10.4.4.4")
    monkeypatch.setattr(socket, "gethostbyname", lambda name: "127.0.1.1")
    with pytest.raises(ValueError, match="set spark.driver.host"):
        barrier.driver_addresses(Context(spark_driver_host="0.0.0.0", spark_driver_bindAddress="0.0.0.0"))


def test_ports_come_from_the_option_else_the_spark_setting_else_anywhere():
    assert barrier.ports(Session(), None) is None
    assert barrier.ports(Session(spark_sparkdl_ports="40000-40100"), None) == (40000, 40100)
    assert barrier.ports(Session(spark_sparkdl_ports="40000-40100"), "41000-41010") == (41000, 41010)
    assert barrier.ports(Session(spark_sparkdl_ports="40005"), None) == (40005, 40005)


@pytest.mark.parametrize("text", ["40100-40000", "0-10", "ports", "40000-70000"])
def test_a_bad_spark_setting_names_the_setting_and_the_value(text):
    with pytest.raises(ValueError, match=rf"spark\.sparkdl\.ports must be .* Received: ports='{text}'"):
        barrier.ports(Session(spark_sparkdl_ports=text), None)


# -- where jobs mode's shards go (sparkdl.spark.jobs.export_base) --------------------------------------------------
class Hadoop:
    def __init__(self, default_fs):
        self.default_fs = default_fs

    def hadoopConfiguration(self):
        return self

    def get(self, key):
        assert key == "fs.defaultFS"
        return self.default_fs


class Launcher:
    def __init__(self, export_dir=None, local=False, checkpoints=None, default_fs="file:///", **conf):
        from sparkdl.spark import ParameterAveraging
        self.options, self.local = ParameterAveraging(export_dir=export_dir), local
        self.session = Session(**conf)
        self.sc = Context()
        self.sc.getCheckpointDir = lambda: checkpoints
        self.sc._jsc = Hadoop(default_fs)


def test_the_shard_directory_is_the_option_else_the_setting_else_a_shared_default():
    from sparkdl.spark.jobs import export_base
    assert export_base(Launcher("hdfs:///given", spark_sparkdl_exportDir="hdfs:///set")) == ("hdfs:///given", False)
    assert export_base(Launcher(spark_sparkdl_exportDir="hdfs:///set")) == ("hdfs:///set", False)
    assert export_base(Launcher(checkpoints="hdfs://nn/checkpoints", default_fs="hdfs://nn")) \
        == ("hdfs://nn/checkpoints", False)
    assert export_base(Launcher(default_fs="hdfs://nn:8020/")) == ("hdfs://nn:8020/tmp", False)


def test_without_a_shared_default_the_shard_directory_is_a_temporary_local_one(tmp_path, monkeypatch):
    import tempfile
    from sparkdl.spark.jobs import export_base
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for launcher in (Launcher(local=True, checkpoints="hdfs://nn/c", default_fs="hdfs://nn"), Launcher()):
        base, made = export_base(launcher)
        assert made and base.startswith(str(tmp_path)) and os.path.isdir(base)


def test_the_barrier_stage_names_its_fit_as_the_compose_tests_event_log_check_reads_it():
    """docker/compose-test.sh finds the training jobs in the event logs by their description."""
    import re
    from types import SimpleNamespace

    class Frame:   # a stand-in DataFrame: the stage's calls, nothing run
        def mapInArrow(self, task, schema, barrier=False):
            assert barrier
            return self

        def repartition(self, n):
            return self

        def collect(self):
            return []

    said = {}
    sc = SimpleNamespace(setJobGroup=lambda group, text, interrupt: said.update(text=text),
                         setLocalProperty=lambda key, value: None)
    barrier._run_stage(SimpleNamespace(sc=sc, group="g", num_workers=2), SimpleNamespace(epochs=3), Frame(), None)
    check = open(os.path.join(os.path.dirname(__file__), "..", "docker", "compose-test.sh")).read()
    pattern = re.search(r're\.match\(r"(sparkdl fit: [^"]+)"', check).group(1)
    assert said["text"] == "sparkdl fit: 3 epochs in one barrier stage of 2 workers" and re.match(pattern, said["text"])
