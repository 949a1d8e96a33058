import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests import the shared helpers in layer_check.py


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
