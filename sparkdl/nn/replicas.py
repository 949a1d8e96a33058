"""Training steps split over threads (``compile(threads=N)``): each batch is cut into N contiguous parts whose
forward and backward passes run in parallel threads on replicas of the model that share its ``params``, each
with one BLAS thread; their gradients add up to the gradient of the whole batch's mean loss, and one optimizer
step follows. ``ThreadedSteps`` is that part of sparkdl.nn.model.Model."""
import contextlib

import numpy as np

from ..backend import blas_threads, make_rng


def _take(x, start, stop):
    """Rows start:stop of a batch (an array, an InputBatch or a dict of arrays)."""
    if isinstance(x, dict):
        return {k: v[start:stop] for k, v in x.items()}
    return x[start:stop]


def _one_blas_thread():
    """A context manager that holds BLAS to one thread (a no-op without threadpoolctl)."""
    return blas_threads(1) or contextlib.nullcontext()


class ThreadedSteps:
    """Mixin of Model: the replicas and the step over parts (needs the Model's config, buffers and loss)."""

    def _make_replicas(self):
        """``threads - 1`` models of the same config whose params are views into ``self.params`` (their own
        ``grads`` and layer caches), with the loss bound as here and their own dropout generators."""
        from concurrent.futures import ThreadPoolExecutor
        seqs = np.random.SeedSequence(self.seed).spawn(3 + self.threads)[3:]
        replicas = []
        for k in range(1, self.threads):
            r = type(self).from_config(self.get_config(), dtype=self.dtype.name, backend=self.backend)
            r.build()
            r.rng = make_rng(r.xp, seqs[k])
            for layer in r.layers:
                layer.place(r.xp, r.dtype, r.rng)
            r.params = self.params
            r._point_views(self.params)
            r.loss = self.loss
            act, ract = self.output_activation, r.output_activation
            if ract is not None:
                ract.fused_with_loss = bool(act is not None and act.fused_with_loss)
            replicas.append(r)
        self._replicas = replicas
        self._pool = ThreadPoolExecutor(max_workers=self.threads - 1, thread_name_prefix="sparkdl-part")

    def _part_step(self, x, y, weight):
        """Forward and backward on one part, the loss gradient scaled by the part's share of the batch, so
        that the parts' parameter gradients add up to the gradient of the whole batch's mean loss."""
        out = self._forward(self._device(x), True)
        loss, grad = self.loss_and_grad(out, self._device(y))
        self._backward(grad * weight)
        return loss, out

    def _train_on_parts(self, x, y):
        if self._replicas is None:
            self._make_replicas()
        n, parts = len(y), self.threads
        bounds = [k * (n // parts) + min(k, n % parts) for k in range(parts + 1)]
        workers = [self] + self._replicas
        jobs = [(workers[k], bounds[k], bounds[k + 1]) for k in range(parts) if bounds[k + 1] > bounds[k]]
        with _one_blas_thread():
            futures = [self._pool.submit(m._part_step, _take(x, a, b), y[a:b], (b - a) / n)
                       for m, a, b in jobs[1:]]
            try:
                results = [self._part_step(_take(x, jobs[0][1], jobs[0][2]), y[jobs[0][1]:jobs[0][2]],
                                           (jobs[0][2] - jobs[0][1]) / n)]
            finally:  # never leave a part running into the next step
                others = [f.result() for f in futures]
            results += others
            for m, _, _ in jobs[1:]:
                self.grads += m.grads
        loss = sum(l * ((b - a) / n) for (l, _), (_, a, b) in zip(results, jobs))
        out = self.xp.concatenate([o for _, o in results])
        self.optimizer.step(self.params, self.grads)
        return loss, out
