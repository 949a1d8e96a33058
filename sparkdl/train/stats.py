"""Training statistics: per round, the driver's times; per worker and round, the time spent reading data,
loading params, fitting, waiting and sending; per epoch, the logged loss and metrics (validation included); every
few rounds, per layer, the weights' norm and the mean update per round against it. ``to_html`` writes the report
(sparkdl.train.report), ``to_json`` the same data."""
import json

import numpy as np

from ..backend import to_numpy

MAX_LAYER_SAMPLES = 100   # per fit: sampling the layers costs a pass over the model, so it is bounded
# per barrier fit, the rounds fetched for the layer samples alone (a fetch moves the model to the driver); more come
# with the fetches validation and callbacks ask for
MAX_FETCHED_SAMPLES = 6


class TrainingStats:
    def __init__(self):
        self.rounds = []    # driver records: round, epoch, start, wall_s (end to end), merge_s (driver work), loss, n
        self.workers = []   # worker records: worker, round, start, read_s, load_s, fit_s, wait_s, ship_s, n, steps
        self.epochs = []    # epoch, round (its last), time (since the first round), and the epoch's logs
        self.layers = []    # round, {layer: {weight_norm, update_norm (per round since the last sample), ratio}}
        self.config = {}    # what the run was: model, master settings, Spark master and executors, mode
        self.startup = []   # [(step, seconds)] from the call of fit to the end of round 1 (FitRun.startup)
        self._last = None   # (round, params) of the last layer sample

    def add_round(self, record, worker_records=()):
        self.rounds.append(record)
        self.workers.extend(worker_records)

    def add_epoch(self, epoch, round_, logs):
        t0 = self.rounds[0]["start"] if self.rounds else 0.0
        end = self.rounds[-1]["start"] + self.rounds[-1]["wall_s"] if self.rounds else 0.0
        self.epochs.append({"epoch": epoch, "round": round_, "time_s": end - t0,
                            **{k: float(v) for k, v in logs.items() if np.ndim(v) == 0}})

    def sample_layers(self, model, round_, grad_norms=()):
        """Per layer: the norm of its weights and of their mean change per round since the last sample, and the
        ratio of the two (Deeplearning4j's update:parameter ratio; about 1e-3 is healthy); with ``grad_norms``
        (the workers' {layer: norm of the round's last gradient}), their mean. One pass over the model and one
        copy of it."""
        params = to_numpy(model.params).astype(np.float64)
        layers = {}
        for name, lo, hi in model.param_ranges():
            w = params[lo:hi]
            entry = {"weight_norm": float(np.linalg.norm(w))}
            if self._last is not None and round_ > self._last[0]:
                update = float(np.linalg.norm(w - self._last[1][lo:hi])) / (round_ - self._last[0])
                entry.update(update_norm=update, ratio=update / entry["weight_norm"] if entry["weight_norm"] else None)
            got = [g[name] for g in grad_norms if isinstance(g.get(name), (int, float))]
            if got:
                entry["grad_norm"] = float(np.mean(got))
            layers[name] = entry
        self._last = (round_, params)
        self.layers.append({"round": round_, "layers": layers})

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
        return {"summary": self.summary(), "config": self.config, "startup": self.startup, "epochs": self.epochs,
                "rounds": self.rounds,
                "workers": self.workers, "layers": self.layers}

    def to_json(self, path=None):
        text = json.dumps(self.to_dict(), default=float)
        if path:
            with open(path, "w") as f:
                f.write(text)
        return text

    def to_html(self, path=None, title="sparkdl training"):
        """A self-contained report (plotly, its JavaScript inline: it opens offline); written to ``path`` if given,
        returned as text."""
        from .report import render
        page = render(self, title)
        if path:
            with open(path, "w", encoding="utf-8") as f:
                f.write(page)
        return page
