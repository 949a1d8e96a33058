"""Progress (sparkdl.train.progress): a tqdm bar where someone watches (a terminal, a notebook's kernel), one line per
epoch elsewhere (logs, spark-submit's piped output), nothing with verbose=0."""
import io
import sys
import types

from sparkdl.train.progress import Progress


def epoch(progress, title="Epoch 1/2"):
    progress.start(title)
    progress.update(50, lambda: {"loss": 0.5}, force=True)
    progress.end(100, {"loss": 0.25, "accuracy": 0.9})


def test_one_line_per_epoch_where_nobody_watches():
    out = io.StringIO()
    epoch(Progress(100, "auto", stream=out))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Epoch 1/2 100/100 - ")
    assert "ex/s - loss: 0.2500 - accuracy: 0.9000" in lines[0] and "\r" not in out.getvalue()


def test_an_imported_ipykernel_is_not_a_notebook(monkeypatch):
    """plotly and others import ipykernel in plain scripts: without an IPython kernel the output stays lines."""
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    assert Progress(100, "auto", stream=sys.stdout).verbose == 2


def test_a_bar_in_a_notebook_kernel(monkeypatch):
    shell = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    assert Progress(100, "auto", stream=sys.stdout).verbose == 1
    assert Progress(100, "auto", stream=io.StringIO()).verbose == 2   # only the notebook's own streams


def test_a_bar_shows_examples_per_second_and_the_loss():
    out = io.StringIO()
    epoch(Progress(100, 1, stream=out, every=0.0))
    text = out.getvalue()
    assert "Epoch 1/2" in text and "100/100" in text and "ex/s" in text and "loss=0.2500" in text


def test_silent():
    out = io.StringIO()
    epoch(Progress(100, 0, stream=out))
    assert out.getvalue() == ""
