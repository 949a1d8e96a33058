"""Training steps split over threads (``compile(threads=N)``): each batch is cut into N contiguous parts whose
forward and backward passes run in parallel threads on replicas of the model that share its ``params``, each
with one BLAS thread; their gradients add up to the gradient of the whole batch's mean loss, and one optimizer
step follows. ``ThreadedSteps`` is that part of sparkdl.nn.model.Model."""
import threading

import numpy as np

from ..backend import make_rng, one_blas_thread, usable_cpus


def _take(x, start, stop):
    """Rows start:stop of a batch (an array, an InputBatch or a dict of arrays)."""
    if isinstance(x, dict):
        return {k: v[start:stop] for k, v in x.items()}
    return x[start:stop]


class PartSync:
    """The parts of one threaded step meeting inside a layer whose forward or backward needs sums over the whole
    batch (BatchNormalization's batch statistics): ``allsum(k, a)`` returns the sum of every part's ``a``, the
    same array in every part (added in part order). A part that fails breaks the barrier (``abort``), so that the
    others raise instead of waiting for it."""

    def __init__(self, parts):
        self.parts = parts
        self._barrier = threading.Barrier(parts)
        self._slots = ([None] * parts, [None] * parts)   # alternate calls use alternate slots
        self._calls = [0] * parts

    def allsum(self, k, a):
        slots = self._slots[self._calls[k] % 2]
        self._calls[k] += 1
        slots[k] = a
        self._barrier.wait()
        total = slots[0].copy()
        for other in slots[1:]:
            total += other
        return total

    def abort(self):
        self._barrier.abort()


def _synced_layers(model):
    return [layer for layer in model.layers if hasattr(layer, "part_sync")]


class ThreadedSteps:
    """Mixin of Model: the replicas and the step over parts (needs the Model's config, buffers and loss)."""

    def _check_parts(self, threads):
        unsynced = [layer.name for layer in self.layers if layer.state_specs and not hasattr(layer, "part_sync")]
        if unsynced:
            raise ValueError(f"threads={threads} needs a model whose non-trainable state is in BatchNormalization "
                             f"layers (their statistics are the whole batch's); {unsynced} hold state of their own. "
                             f"Use threads=1")
        if self.xp is not np:
            raise ValueError(f"threads={threads} is for the numpy backend; this model uses {self.backend!r}. "
                             f"Use threads=1")

    def parts(self):
        """How many parts a training step runs in: ``threads``, or what ``"auto"`` chose at the first step."""
        if self.threads != "auto":
            return self.threads
        if self._auto is None:
            from .conv import Conv2D
            self._auto = 1
            if any(isinstance(layer, Conv2D) for layer in self.layers):
                try:
                    self._check_parts(2)
                    self._auto = max(1, min(2, usable_cpus()))
                except ValueError:
                    pass
        return self._auto

    def _make_replicas(self):
        """``threads - 1`` models of the same config whose params are views into ``self.params`` (their own
        ``grads`` and layer caches), with the loss bound as here and their own dropout generators."""
        from concurrent.futures import ThreadPoolExecutor
        parts = self.parts()
        seqs = np.random.SeedSequence(self.seed).spawn(3 + parts)[3:]
        replicas = []
        for k in range(1, parts):
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
        self._pool = ThreadPoolExecutor(max_workers=parts - 1, thread_name_prefix="sparkdl-part")

    def _part_step(self, x, y, weight):
        """Forward and backward on one part, the loss gradient scaled by the part's share of the batch, so
        that the parts' parameter gradients add up to the gradient of the whole batch's mean loss."""
        out = self._forward(self._device(x), True)
        loss, grad = self.loss_and_grad(out, self._device(y))
        self._backward(grad * weight)
        return loss, out

    def _synced_part_step(self, sync, x, y, weight):
        try:
            return self._part_step(x, y, weight)
        except BaseException:
            sync.abort()
            raise

    def _train_on_parts(self, x, y):
        if self._replicas is None:
            self._make_replicas()
        n, parts = len(y), self.parts()
        bounds = [k * (n // parts) + min(k, n % parts) for k in range(parts + 1)]
        workers = [self] + self._replicas
        jobs = [(workers[k], bounds[k], bounds[k + 1]) for k in range(parts) if bounds[k + 1] > bounds[k]]
        sync = PartSync(len(jobs))
        for k, (m, _, _) in enumerate(jobs):
            for layer in _synced_layers(m):
                layer.part_sync = (sync, k)
        with one_blas_thread():
            futures = [self._pool.submit(m._synced_part_step, sync, _take(x, a, b), y[a:b], (b - a) / n)
                       for m, a, b in jobs[1:]]
            results, errors = [], []
            try:
                results.append(self._synced_part_step(sync, _take(x, jobs[0][1], jobs[0][2]),
                                                      y[jobs[0][1]:jobs[0][2]], (jobs[0][2] - jobs[0][1]) / n))
            except BaseException as e:
                errors.append(e)
            for f in futures:   # never leave a part running into the next step
                try:
                    results.append(f.result())
                except BaseException as e:
                    errors.append(e)
            for m, _, _ in jobs:
                for layer in _synced_layers(m):
                    layer.part_sync = None
            if errors:   # the part's own error, not the broken barrier it left the others
                raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
            for m, _, _ in jobs[1:]:
                self.grads += m.grads
        loss = sum(l * ((b - a) / n) for (l, _), (_, a, b) in zip(results, jobs))
        out = self.xp.concatenate([o for _, o in results])
        self.optimizer.step(self.params, self.grads)
        return loss, out
