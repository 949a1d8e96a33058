"""Example-weighted parameter averaging as jobs mode merges it (Contribution), and the Tally of a round's numbers
that barrier workers add up on the way (sparkdl.dist.host and sparkdl.dist.mesh do their averaging in place).

A worker's contribution is ``n * params`` (and ``n * state``, ``n * optimizer state``) with ``n`` the number of
examples it fitted in the round; contributions add up (so they merge in any tree order), and the average is
``sum(n_i * p_i) / sum(n_i)``. An unweighted mean would over-weight small shards.
"""
import numpy as np

from ..metrics import Sums


class Contribution(Sums):
    """A summable worker result: the loss and metric Sums, weighted flat buffers, and timings."""

    def __init__(self, n=0, params=None, state=None, opt=None, loss_sum=0.0, partials=None, steps=0,
                 stats=None):
        super().__init__(n, float(loss_sum), partials)
        self.steps = int(steps)
        self.params, self.state, self.opt = (_weighted(a, n) for a in (params, state, opt))
        self.stats = list(stats or [])   # per-worker timing records, concatenated on merge

    @classmethod
    def of(cls, result):
        """The weighted contribution of a worker's RoundResult."""
        return cls(result.n, result.params, result.state, result.opt, result.loss_sum, result.partials,
                   result.steps, result.stats)

    def merge(self, other):
        """Add ``other`` into self (in place; ``other`` is consumed) and return self."""
        if other.n == 0 and not other.stats:
            return self
        self.params = _add(self.params, other.params)
        self.state = _add(self.state, other.state)
        self.opt = _add(self.opt, other.opt)
        super().merge(other)
        self.steps = max(self.steps, other.steps)
        self.stats.extend(other.stats)
        return self

    def average(self, dtype=np.float32):
        """(params, state, optimizer state) averaged by examples; None for absent parts."""
        if self.n == 0:
            raise ValueError("no worker fitted any example in this round; nothing to average")
        scale = 1.0 / self.n
        avg = lambda a: None if a is None else np.multiply(a, scale, out=np.empty(a.shape, dtype), casting="same_kind")
        return avg(self.params), avg(self.state), avg(self.opt)


def _weighted(a, n):
    """n * a, one allocation, in the buffer's own float type: float32 sums of a few workers' buffers lose
    ~1e-7 relative, and halve the memory traffic of a float64 accumulator (measured 2.5 -> 1.0 ms per
    round for two workers' Adam buffers of a 235k-parameter MLP)."""
    return None if a is None or np.size(a) == 0 else np.multiply(a, np.float32(n) if a.dtype == np.float32 else float(n))


def _add(a, b):
    if a is None:
        return b  # take ownership: contributions are temporaries
    if b is None:
        return a
    a += b
    return a


def merge(a, b):
    """combOp for Spark's treeAggregate."""
    return a.merge(b)


def add(total, result):
    """seqOp for Spark's treeAggregate: weight a RoundResult into the running total."""
    return total.merge(Contribution.of(result))


class Tally:
    """A round's numbers as one float64 row, so that workers can add them up on the way (host group, mesh) and
    the driver hears one row per round whatever the number of workers: examples, loss sum, metric partial sums
    (summed); steps and the slowest worker's fitting time (max); the fitting time over all workers (summed).
    The layout of the metric partials is read off the model's metrics once (``Tally(model)``)."""

    HEAD = ("n", "loss_sum", "steps", "fit_s_max", "fit_s_sum", "workers")
    _MAX = (2, 3)

    def __init__(self, model):
        xp = model.xp
        probe = model.probabilities(xp.asarray(model.predict(np.zeros((1,) + tuple(model.input_shape), model.dtype))))
        labels = xp.zeros((1,) + tuple(probe.shape[1:]), probe.dtype) if model.loss.kind != "multiclass" \
            else xp.zeros(1, xp.int32)
        self.layout = []
        for m in model.metrics:
            for key, value in m.partial(probe, labels).items():
                self.layout.append((m.name, key, tuple(np.shape(value))))
        self.width = len(self.HEAD) + sum(int(np.prod(s)) for _, _, s in self.layout)

    def row(self, n, loss_sum, steps, fit_s, partials):
        out = np.zeros(self.width)
        out[:len(self.HEAD)] = (n, loss_sum, steps, fit_s, fit_s, 1)
        i = len(self.HEAD)
        for name, key, shape in self.layout:
            size = int(np.prod(shape))
            if partials.get(name):
                out[i:i + size] = np.ravel(np.asarray(partials[name][key], np.float64))
            i += size
        return out

    def combine(self, rows):
        """One row for several, in the given order (so every worker that combines the same rows gets the same)."""
        rows = np.asarray(rows, np.float64).reshape(-1, self.width)
        out = rows.sum(axis=0)
        for i in self._MAX:
            out[i] = rows[:, i].max()
        return out

    def read(self, row):
        """(examples, loss sum, steps, {metric: partials}, {fit_s_max, fit_s_sum, workers})."""
        partials, i = {}, len(self.HEAD)
        for name, key, shape in self.layout:
            size = int(np.prod(shape))
            value = row[i:i + size]
            partials.setdefault(name, {})[key] = float(value[0]) if shape == () else value.reshape(shape).copy()
            i += size
        if not row[0]:
            partials = {}
        return (int(row[0]), float(row[1]), int(row[2]), partials,
                {"fit_s_max": float(row[3]), "fit_s_sum": float(row[4]), "workers": int(row[5])})
