"""Sums: the loss and metric sums over some examples, the one mergeable form sparkdl keeps them in. Local
training keeps a running Sums per epoch, evaluation returns one per batch range (executors' are merged on the
driver), a worker's round result is one (sparkdl.dist.averaging.Contribution adds the weighted buffers to it).
Merging is addition, so the order and the grouping do not matter; ``results`` turns the sums into the numbers."""
from .base import merge


class Sums:
    def __init__(self, n=0, loss_sum=0.0, partials=None):
        self.n = int(n)
        self.loss_sum = loss_sum        # may stay a device scalar while training; float() reads it
        self.partials = dict(partials or {})   # metric name -> partial dict (sparkdl.metrics.base)

    def add(self, loss, y, probs=None, metrics=()):
        """One minibatch of targets ``y``: ``loss`` is its mean loss, ``probs`` what ``metrics`` read."""
        k = len(y)
        self.loss_sum = self.loss_sum + loss * k
        self.n += k
        for m in metrics:
            self.partials[m.name] = merge(self.partials.get(m.name, {}), m.partial(probs, y))
        return self

    def merge(self, other):
        """Add ``other``'s sums into these (``other`` is not changed); returns self."""
        self.n += other.n
        self.loss_sum = self.loss_sum + other.loss_sum
        for name, partial in other.partials.items():
            self.partials[name] = merge(self.partials.get(name, {}), partial)
        return self

    def sums(self):
        """A plain Sums of these numbers (of a subclass's too)."""
        return Sums(self.n, self.loss_sum, self.partials)

    def loss(self):
        return float(self.loss_sum) / max(self.n, 1)

    def results(self, metrics, empty=None):
        """{"loss": mean loss, metric name: result} for ``metrics``; a metric with no sums gives ``empty`` (None:
        left out)."""
        out = {"loss": self.loss()}
        for m in metrics:
            if self.partials.get(m.name):
                out[m.name] = m.result(self.partials[m.name])
            elif empty is not None:
                out[m.name] = empty
        return out
