"""examples/quickstart.ipynb runs headlessly, top to bottom, in a fresh kernel on this Python (so it cannot rot):
local-mode PySpark, fit, evaluate, the loss curve (a picture with matplotlib, text without), save and reload."""
import ast
import os
import shutil

import pytest

pytestmark = [pytest.mark.spark, pytest.mark.slow]

NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "quickstart.ipynb")


def outputs(cell):
    text = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            text.append(out["text"])
        elif "data" in out:
            text.append(out["data"].get("text/plain", ""))
    return "\n".join(text)


def tagged(nb, tag):
    (cell,) = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    return cell


def test_quickstart_notebook_runs_end_to_end(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("the notebook needs Java")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    env_keys = ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET")   # the kernel starts its own Spark
    saved = {k: os.environ.pop(k) for k in env_keys if k in os.environ}
    try:
        client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute()   # raises CellExecutionError, with the failing cell's traceback, if any cell fails
    finally:
        os.environ.update(saved)

    metrics = ast.literal_eval(outputs(tagged(nb, "evaluate")).strip())
    assert set(metrics) >= {"loss", "accuracy"} and metrics["accuracy"] > 0.85, metrics
    plot = tagged(nb, "plot")
    pictures = [o for o in plot.outputs if "image/png" in o.get("data", {})]
    assert pictures or "round   1" in outputs(plot)
    assert "validation accuracy per epoch" in outputs(plot)
    assert (tmp_path / "quickstart-model.npz").exists() and (tmp_path / "quickstart-stats.html").exists()
