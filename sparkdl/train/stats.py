"""Training statistics: per round, the driver's times; per worker and round, the time spent reading data,
loading params, fitting and shipping results. ``to_html`` draws a per-worker timeline and the loss curve in
one self-contained file (inline SVG, no scripts, no downloads)."""
import html
import json

_COLORS = {"read_s": "#9e9e9e", "load_s": "#ffb74d", "fit_s": "#1e88e5", "ship_s": "#e53935", "wait_s": "#e0e0e0"}


class TrainingStats:
    def __init__(self):
        self.rounds = []    # driver records: round, epoch, start, wall_s (end to end), merge_s (driver work), loss, n
        self.workers = []   # worker records: worker, round, start, read_s, load_s, fit_s, ship_s, n, steps

    def add_round(self, record, worker_records=()):
        self.rounds.append(record)
        self.workers.extend(worker_records)

    def summary(self):
        """Totals the benchmarks report: fraction of worker time fitting, driver overhead per round (the round's
        wall time less its slowest worker's fitting time), and, where the master counted them, the driver's
        bytes per round."""
        if not self.rounds:
            return {}
        wall = sum(r["wall_s"] for r in self.rounds)
        slowest, fit = {}, 0.0
        for w in self.workers:
            slowest[w["round"]] = max(slowest.get(w["round"], 0.0), w.get("fit_s", 0.0))
            fit += w.get("fit_s", 0.0)
        if all("fit_s_max" in r for r in self.rounds):   # the master summed the workers' times on the way
            slowest = {r["round"]: r["fit_s_max"] for r in self.rounds}
            fit = sum(r["fit_s_sum"] for r in self.rounds)
        n_workers = max([1, len({w["worker"] for w in self.workers})] + [r.get("workers", 1) for r in self.rounds])
        overhead = [r["wall_s"] - slowest.get(r["round"], 0.0) for r in self.rounds]
        out = {"rounds": len(self.rounds), "workers": n_workers, "wall_s": wall,
               "fit_fraction": fit / max(wall * n_workers, 1e-12),
               "round_s_mean": wall / len(self.rounds),
               "overhead_ms_mean": 1000 * sum(overhead) / len(overhead),
               "overhead_fraction": sum(overhead) / max(wall, 1e-12)}
        for kind in ("control", "stats", "model"):
            counts = [r[f"driver_{kind}_bytes"] for r in self.rounds if f"driver_{kind}_bytes" in r]
            if counts:
                out[f"driver_{kind}_bytes_per_round"] = sum(counts) / len(counts)
                out[f"driver_{kind}_bytes_max"] = max(counts)
        return out

    def to_dict(self):
        return {"rounds": self.rounds, "workers": self.workers, "summary": self.summary()}

    def to_json(self, path=None):
        text = json.dumps(self.to_dict(), default=float)
        if path:
            with open(path, "w") as f:
                f.write(text)
        return text

    def to_html(self, path=None, title="sparkdl training"):
        page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}</style>"
                f"</head><body><h1>{html.escape(title)}</h1>{self._summary_table()}"
                f"<h2>Worker timeline</h2>{self._timeline()}<h2>Loss per round</h2>{self._loss_curve()}"
                "</body></html>")
        if path:
            with open(path, "w", encoding="utf-8") as f:
                f.write(page)
        return page

    def _summary_table(self):
        rows = "".join(f"<tr><th>{k}</th><td>{v:.4g}</td></tr>" for k, v in self.summary().items())
        return f"<table>{rows}</table>"

    def _timeline(self, width=1000, row=22):
        if not self.workers:
            return "<p>no worker records</p>"
        t0 = min(min(w["start"] for w in self.workers), min(r["start"] for r in self.rounds))
        t1 = max(r["start"] + r["wall_s"] for r in self.rounds)
        scale = width / max(t1 - t0, 1e-9)
        ids = sorted({w["worker"] for w in self.workers})
        parts = []
        for i, wid in enumerate(ids):
            y = 20 + i * row
            parts.append(f"<text x='0' y='{y + 14}' font-size='12'>worker {wid}</text>")
            for w in (w for w in self.workers if w["worker"] == wid):
                x = 80 + (w["start"] - t0) * scale
                for key in _COLORS:
                    d = w.get(key, 0.0) * scale
                    parts.append(f"<rect x='{x:.1f}' y='{y}' width='{max(d, 0.5):.1f}' height='{row - 4}' "
                                 f"fill='{_COLORS[key]}'><title>round {w['round']} {key[:-2]} "
                                 f"{w.get(key, 0.0) * 1000:.1f} ms</title></rect>")
                    x += d
        y = 20 + len(ids) * row
        parts.append(f"<text x='0' y='{y + 14}' font-size='12'>driver</text>")
        for r in self.rounds:
            x = 80 + (r["start"] - t0) * scale
            parts.append(f"<rect x='{x:.1f}' y='{y}' width='{max(r['wall_s'] * scale, 0.5):.1f}' height='{row - 4}' "
                         f"fill='none' stroke='#555'><title>round {r['round']} (epoch {r['epoch']}): "
                         f"{r['wall_s'] * 1000:.1f} ms, merge {r.get('merge_s', 0) * 1000:.1f} ms</title></rect>")
        legend = " ".join(f"<span style='color:{c}'>&#9632; {k[:-2]}</span>" for k, c in _COLORS.items())
        return (f"<p>{legend}</p><svg width='{width + 100}' height='{y + row + 10}' "
                f"xmlns='http://www.w3.org/2000/svg'>{''.join(parts)}</svg>")

    def _loss_curve(self, width=800, height=240):
        losses = [(r["round"], r["loss"]) for r in self.rounds if r.get("loss") is not None]
        if not losses:
            return "<p>no loss records</p>"
        lo, hi = min(l for _, l in losses), max(l for _, l in losses)
        n = max(len(losses) - 1, 1)
        pts = " ".join(f"{40 + i * (width - 50) / n:.1f},{10 + (hi - l) / max(hi - lo, 1e-12) * (height - 30):.1f}"
                       for i, (_, l) in enumerate(losses))
        return (f"<svg width='{width}' height='{height}' xmlns='http://www.w3.org/2000/svg'>"
                f"<polyline fill='none' stroke='#1e88e5' stroke-width='2' points='{pts}'/>"
                f"<text x='0' y='14' font-size='11'>{hi:.3g}</text>"
                f"<text x='0' y='{height - 18}' font-size='11'>{lo:.3g}</text>"
                f"<text x='{width / 2:.0f}' y='{height - 2}' font-size='11'>round</text></svg>")
