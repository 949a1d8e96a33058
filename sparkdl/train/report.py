"""The training report: one self-contained HTML page (plotly, its JavaScript inline once, so it opens offline)
from a TrainingStats: the run's numbers in human units and its configuration; loss and metrics per epoch
(validation included) and per round, on a round axis and a time axis; each worker's throughput over time; each
worker's timeline (fitting, waiting, sending); per layer, the update:parameter ratio (log scale), the weights'
norm and the gradients' norm. The data behind it is ``stats.to_json()``."""
import html

import numpy as np

MAX_TIMELINE_ROUNDS = 300   # the timeline draws three bars per worker and round: the page stays small
_PHASES = (("fit_s", "fitting", "#1e88e5"), ("wait_s", "waiting", "#bdbdbd"),
           ("mesh_s", "averaging with other hosts", "#fb8c00"), ("ship_s", "sending", "#e53935"),
           ("read_s", "reading data", "#8d6e63"), ("load_s", "loading the model", "#ffb74d"))


def _ms(s):
    return f"{1000 * s:,.1f} ms" if s < 10 else f"{s:,.1f} s"


def _bytes(n):
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024


def _numbers(stats):
    """(label, value) rows of the run's summary, in human units."""
    s, rows = stats.summary(), []
    if not s:
        return rows
    examples = sum(r.get("n", 0) for r in stats.rounds)
    rows += [("rounds", f"{s['rounds']:,}"), ("workers", f"{s['workers']}"),
             ("training time (rounds end to end)", _ms(s["wall_s"])),
             ("examples per second", f"{examples / max(s['wall_s'], 1e-9):,.0f}"),
             ("worker time fitting", f"{100 * s['fit_fraction']:.1f}%"),
             ("round time (mean)", _ms(s["round_s_mean"])),
             ("overhead per round (round less its slowest worker's fitting)",
              f"{s['overhead_ms_mean']:,.2f} ms ({100 * s['overhead_fraction']:.1f}%)")]
    if stats.startup:
        rows.append(("from fit() to the end of round 1", _ms(sum(t for _, t in stats.startup))))
        rows += [(f"start-up: {step}", _ms(t)) for step, t in stats.startup]
    for kind, what in (("control", "driver's control bytes per round"), ("stats", "driver's timing records per round"),
                       ("model", "driver's model bytes per round")):
        if f"driver_{kind}_bytes_per_round" in s:
            rows.append((what, f"{_bytes(s[f'driver_{kind}_bytes_per_round'])} (at most "
                               f"{_bytes(s[f'driver_{kind}_bytes_max'])})"))
    if stats.epochs:
        last = stats.epochs[-1]
        rows += [(f"last epoch {k}", f"{v:.4f}") for k, v in last.items() if k not in ("epoch", "round", "time_s")]
    return rows


def _table(rows):
    return "<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                               for k, v in rows) + "</table>"


def _config(stats):
    c = dict(stats.config)
    parts = []
    if "model" in c:
        parts.append(f"<h3>Model</h3><pre>{html.escape(c.pop('model'))}</pre>")
    master = c.pop("master", None)
    if c:
        parts.append("<h3>Run</h3>" + _table(sorted((k, v) for k, v in c.items() if not isinstance(v, dict))))
    if master:
        parts.append("<h3>Master settings</h3>" + _table(sorted(master.items())))
    return "".join(parts)


def _figures(stats):
    """[(title, plotly figure)] for what the stats hold."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    figs = []
    rounds = [r for r in stats.rounds if r.get("loss") is not None]
    t0 = stats.rounds[0]["start"] if stats.rounds else 0.0
    if rounds:
        fig = make_subplots(rows=1, cols=2, subplot_titles=("by round", "by time"), shared_yaxes=True)
        x_round = [r["round"] + 1 for r in rounds]
        x_time = [r["start"] + r["wall_s"] - t0 for r in rounds]
        for col, x, unit in ((1, x_round, "round"), (2, x_time, "s")):
            fig.add_trace(go.Scatter(x=x, y=[r["loss"] for r in rounds], mode="lines", name="loss per round",
                                     line={"color": "#1e88e5", "width": 1}, showlegend=col == 1,
                                     hovertemplate=f"%{{x:,.{0 if unit == 'round' else 2}f}} {unit}: "
                                                   f"loss %{{y:.4f}}<extra></extra>"), row=1, col=col)
        for key, color in (("loss", "#0d47a1"), ("val_loss", "#e53935")):
            points = [e for e in stats.epochs if key in e]
            if points:
                for col, x in ((1, [e["round"] + 1 for e in points]), (2, [e["time_s"] for e in points])):
                    fig.add_trace(go.Scatter(x=x, y=[e[key] for e in points], mode="lines+markers",
                                             name=f"{key} per epoch", line={"color": color}, showlegend=col == 1,
                                             hovertemplate=f"epoch %{{text}}: {key} %{{y:.4f}}<extra></extra>",
                                             text=[e["epoch"] + 1 for e in points]), row=1, col=col)
        fig.update_xaxes(title_text="round", row=1, col=1)
        fig.update_xaxes(title_text="seconds since the first round", row=1, col=2)
        fig.update_yaxes(title_text="loss", row=1, col=1)
        figs.append(("Loss", fig))
    metrics = sorted({k for e in stats.epochs for k in e
                      if k not in ("epoch", "round", "time_s", "loss", "val_loss") and not k.startswith("val_")})
    if metrics:
        fig = go.Figure()
        for m in metrics:
            for key, dash in ((m, "solid"), (f"val_{m}", "dash")):
                points = [e for e in stats.epochs if key in e]
                if points:
                    fig.add_trace(go.Scatter(x=[e["epoch"] + 1 for e in points], y=[e[key] for e in points],
                                             mode="lines+markers", name=key, line={"dash": dash},
                                             hovertemplate=f"epoch %{{x}}: {key} %{{y:.4f}}<extra></extra>"))
        fig.update_layout(xaxis_title="epoch", yaxis_title="value")
        figs.append(("Metrics per epoch (dashed: validation)", fig))
    workers = sorted({w["worker"] for w in stats.workers})
    if workers:
        fig = go.Figure()
        for wid in workers:
            recs = [w for w in stats.workers if w["worker"] == wid and w.get("fit_s", 0) > 0 and w.get("n")]
            fig.add_trace(go.Scatter(x=[w["start"] - t0 for w in recs], y=[w["n"] / w["fit_s"] for w in recs],
                                     mode="lines", name=f"worker {wid}",
                                     hovertemplate="%{x:.2f} s: %{y:,.0f} examples/s<extra>worker " + str(wid)
                                                   + "</extra>"))
        fig.update_layout(xaxis_title="seconds since the first round", yaxis_title="examples per second fitted")
        figs.append(("Throughput per worker", fig))
        figs.append(("Timeline per worker", _timeline(stats, workers, t0)))
    samples = [s for s in stats.layers if any("ratio" in v for v in s["layers"].values())]
    if samples:
        from plotly.colors import qualitative
        names = list(samples[-1]["layers"])
        colors = {name: qualitative.Plotly[i % len(qualitative.Plotly)] for i, name in enumerate(names)}
        grads = any("grad_norm" in v for s in stats.layers for v in s["layers"].values())
        panels = [("ratio", "update : parameter ratio (mean update per round / weights' norm)", "%{y:.2e}"),
                  ("weight_norm", "weights' L2 norm", "%{y:.4g}")]
        if grads:
            panels.append(("grad_norm", "gradients' L2 norm (the round's last minibatch, mean over workers)",
                           "%{y:.4g}"))
        fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[1] for p in panels])
        for name in names:
            for col, (key, _, fmt) in enumerate(panels, 1):
                pts = [(s["round"] + 1, s["layers"][name][key]) for s in stats.layers
                       if s["layers"].get(name, {}).get(key)]
                fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                         name=name, legendgroup=name, showlegend=col == 1,
                                         line={"color": colors[name]}, marker={"size": 4},
                                         hovertemplate=f"round %{{x}}: {fmt}<extra>{name}</extra>"), row=1, col=col)
        fig.update_yaxes(type="log", title_text="ratio", row=1, col=1)
        fig.update_yaxes(title_text="L2 norm", row=1, col=2)
        if grads:
            fig.update_yaxes(type="log", title_text="L2 norm", row=1, col=3)
        fig.update_xaxes(title_text="round")
        figs.append(("Per layer", fig))
    return figs


def _timeline(stats, workers, t0):
    """Horizontal bars per worker: each round's phases one after the other from the round's start (the first and
    the last rounds when there are more than MAX_TIMELINE_ROUNDS)."""
    import plotly.graph_objects as go
    rounds = sorted({w["round"] for w in stats.workers})
    if len(rounds) > MAX_TIMELINE_ROUNDS:
        half = MAX_TIMELINE_ROUNDS // 2
        rounds = rounds[:half] + rounds[-half:]
    keep = set(rounds)
    recs = [w for w in stats.workers if w["round"] in keep]
    fig = go.Figure()
    for key, label, color in _PHASES:
        rows = [w for w in recs if w.get(key, 0) > 0]
        if not rows:
            continue
        offset = {id(w): sum(w.get(k, 0) for k, _, _ in _PHASES[:[p[0] for p in _PHASES].index(key)]) for w in rows}
        fig.add_trace(go.Bar(
            y=[f"worker {w['worker']}" for w in rows], x=[1000 * w[key] for w in rows],
            base=[1000 * (w["start"] - t0 + offset[id(w)]) for w in rows], orientation="h", name=label,
            marker={"color": color}, customdata=np.array([[w["round"] + 1, 1000 * w[key]] for w in rows]),
            hovertemplate=f"round %{{customdata[0]}}: {label} %{{customdata[1]:.2f}} ms<extra></extra>"))
    fig.update_layout(barmode="overlay", xaxis_title="milliseconds since the first round",
                      yaxis={"categoryorder": "category descending"}, height=140 + 40 * len(workers))
    return fig


def render(stats, title="sparkdl training"):
    import plotly.io as pio
    figs = _figures(stats)
    parts = []
    for i, (name, fig) in enumerate(figs):
        fig.update_layout(margin={"l": 60, "r": 20, "t": 40, "b": 50}, template="plotly_white")
        parts.append(f"<h2>{html.escape(name)}</h2>" + pio.to_html(fig, include_plotlyjs=i == 0, full_html=False,
                                                                    config={"displaylogo": False}))
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}td,th{padding:2px 10px;"
             "text-align:left}th{font-weight:normal;color:#555}pre{background:#f5f5f5;padding:8px}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<h2>Summary</h2>{_table(_numbers(stats)) or '<p>no rounds</p>'}{''.join(parts)}"
            f"<h2>Configuration</h2>{_config(stats)}</body></html>")
