import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests import the shared helpers (sparkcluster.py, simhosts.py, waiting.py)

# MNIST for the optional tests: the checkout's neighbour ../shared/data/mnist, when there is one (the product itself
# reads only $SPARKDL_MNIST_DIR; subprocesses the tests start inherit it)
_MNIST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "mnist")
if os.path.isdir(_MNIST):
    os.environ.setdefault("SPARKDL_MNIST_DIR", os.path.normpath(_MNIST))


@pytest.fixture
def socks():
    """Sockets a test opens, closed afterwards even when it fails."""
    opened = []
    try:
        yield opened
    finally:
        for s in opened:
            s.close()


@pytest.fixture(scope="session")
def spark():
    """One local[2] SparkSession for every Spark test."""
    pytest.importorskip("pyspark")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("Spark tests need Java")
    from sparkdl.spark import local_session
    session = local_session("local[2]", app_name="sparkdl-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session", autouse=True)
def _cluster_log(pytestconfig):
    """Lets sparkcluster.log() write to the terminal while pytest captures output."""
    import sparkcluster
    sparkcluster._CONFIG.append(pytestconfig)
    yield
    sparkcluster._CONFIG.clear()


@pytest.fixture(autouse=True)
def _release_prepared():
    """Each test starts without the prepared data (sparkdl.spark.prepared) an earlier test's fits kept."""
    yield
    if "sparkdl.spark.prepared" in sys.modules:
        sys.modules["sparkdl.spark.prepared"].release()
