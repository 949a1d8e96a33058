"""The training report (sparkdl.train.report): a 2-epoch fit's page holds the validation curve and the per-layer
update ratios and gradient norms in its data, opens offline (no script or style from elsewhere), and renders in a real headless browser
(Chromium, where installed: .ci/run installs Debian's)."""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from sparkdl import optim
from sparkdl.datasets import load_digits
from sparkdl.nn import Dense, Sequential
from sparkdl.spark import ParameterAveraging, SparkTrainer

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module", params=["barrier", "jobs"])
def fitted(request, spark, tmp_path_factory):
    x, y = load_digits("train")
    xv, yv = load_digits("test")
    schema = "features array<float>, label int"
    df = spark.createDataFrame([(a.tolist(), int(b)) for a, b in zip(x, y)], schema)
    val = spark.createDataFrame([(a.tolist(), int(b)) for a, b in zip(xv, yv)], schema)
    m = Sequential([Dense(32, activation="relu"), Dense(10, activation="softmax")], input_shape=(64,), seed=0)
    m.compile(optim.Adam(0.005), "sparse_categorical_crossentropy", ["accuracy"])
    t = SparkTrainer(m, ParameterAveraging(num_workers=2, batch_size_per_worker=32, mode=request.param, seed=0))
    history = t.fit(df, epochs=2, validation_df=val, verbose=0)
    path = tmp_path_factory.mktemp(f"report-{request.param}") / "stats.html"
    history.stats.to_html(str(path), title=f"digits, {request.param}")
    return history, path


def test_the_report_holds_the_validation_curve_and_the_per_layer_ratios(fitted):
    history, path = fitted
    data = json.loads(history.stats.to_json())
    epochs = data["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1] and all("val_loss" in e and "val_accuracy" in e for e in epochs)
    assert epochs[1]["val_loss"] == pytest.approx(history.history["val_loss"][1])
    ratios = [s for s in data["layers"] if any("ratio" in v for v in s["layers"].values())]
    assert len(ratios) >= 2                                   # at least one sample an epoch after the start
    for sample in ratios:
        assert set(sample["layers"]) == {"dense", "dense_1"}
        for layer in sample["layers"].values():
            assert 0 < layer["ratio"] < 1 and layer["weight_norm"] > 0
            assert 0 < layer["grad_norm"] < 100                     # the workers' last gradients, averaged
    assert data["config"]["mode"] in ("barrier", "jobs") and data["config"]["master"]["batch_size_per_worker"] == 32
    page = path.read_text()
    for title in ("Loss", "Metrics per epoch", "Throughput per worker", "Timeline per worker", "Per layer",
                  "Configuration"):
        assert f"<h2>{title}" in page, title
    assert "val_loss per epoch" in page and "update : parameter ratio" in page and "gradients' L2 norm" in page and '"type":"log"' in page
    assert re.search(r"worker time fitting</th><td>\d+\.\d%", page)       # human units
    # offline: no script, stylesheet or font from elsewhere
    assert not re.search(r"<(script|link)[^>]+(src|href)=[\"']?(https?:)?//", page)
    assert page.count("<script") >= 6 and len(page) > 1_000_000     # plotly's JavaScript is inline


CHROMIUM = next((c for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (.ci/run installs Debian's chromium)")
def test_the_report_renders_in_a_headless_browser(fitted, tmp_path):
    """Chromium opens the page with the network off and takes a screenshot: the page draws (plotly's charts are SVG
    elements in the DOM, which --dump-dom shows once its scripts have run)."""
    _, path = fitted
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--proxy-server=127.0.0.1:9", "--window-size=1400,3000"]
    shot = tmp_path / "report.png"
    r = subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", f"file://{path}"], capture_output=True, text=True,
                       timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000, r.stderr[-2000:]
    with open(shot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    dom = subprocess.run([CHROMIUM, *flags, "--virtual-time-budget=5000", "--dump-dom", f"file://{path}"],
                         capture_output=True, text=True, timeout=120).stdout
    assert dom.count('class="main-svg"') >= 6, dom[:500]      # every chart drawn by plotly, offline
    pixels = _png_colors(shot)
    assert pixels > 50, pixels                                   # not a blank page
    if os.environ.get("SPARKDL_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["SPARKDL_KEEP_SCREENSHOT"])


def _png_colors(path):
    """How many distinct colours the screenshot has (a blank or error page has a handful)."""
    import zlib
    data = open(path, "rb").read()
    chunks, i = [], 8
    width = height = None
    while i < len(data):
        n = int.from_bytes(data[i:i + 4], "big")
        kind, body = data[i + 4:i + 8], data[i + 8:i + 8 + n]
        if kind == b"IHDR":
            width, height, ctype = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big"), body[9]
        elif kind == b"IDAT":
            chunks.append(body)
        i += 12 + n
    raw = zlib.decompress(b"".join(chunks))
    channels = {2: 3, 6: 4}[ctype]
    stride = 1 + width * channels
    rows = np.frombuffer(raw, np.uint8)[:stride * height].reshape(height, stride)
    # filter bytes aside, count distinct byte triples in a sample of rows (unfiltered or not, varied content shows)
    sample = rows[::max(height // 50, 1), 1:].reshape(-1, channels)[:, :3]
    return len({tuple(p) for p in sample[::7]})


def test_the_start_up_steps_add_up_to_the_time_from_fit_to_the_end_of_round_one():
    from sparkdl.dist.run import FitRun
    from sparkdl.nn import Dense, Sequential
    from sparkdl.spark import ParameterAveraging
    model = Sequential([Dense(2)], input_shape=(3,)).compile("sgd", "mse")
    run = FitRun(model, ParameterAveraging(), 1, [], None, 0, 0)
    run.marks.update(fit=100.0, checked=100.5, mode=100.75)
    run.mark("launched", 101.0)
    run.mark("launched", 999.0)   # only the first time counts
    run.mark("started", 102.0)
    run.mark("loaded", 101.5)     # a worker's clock behind the driver's: a step never goes negative
    run.mark("built", 102.25)
    run.mark("ready", 104.0)
    run.mark("round 1", 104.5)
    steps = dict(run.startup())
    assert steps == {"data checked and converted (one Spark pass)": 0.5, "mode chosen, validation data ready": 0.25, "launch": 0.25,
                     "partitions loaded": 0.5, "workers' tasks begun": 0.5, "models built": 0.25,
                     "workers ready (barrier: the rendezvous; jobs: the export)": 1.75, "first round": 0.5}
    assert sum(steps.values()) == 4.5
