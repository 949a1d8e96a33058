"""The model base: one flat parameter buffer, compile / train step / evaluate / predict / summary.

Every trainable weight of every layer is a view into ``model.params`` (one contiguous 1-D array); gradients are
views into ``model.grads`` (same layout); non-trainable layer state (BatchNorm running statistics) into
``model.state``. Distributed masters move, average and save these buffers whole. Layer views are named
``"<layer name>.<weight name>"``; ``get_weights`` / ``set_weights`` use those names.
"""
import contextlib
import json
import re

import numpy as np

from .. import losses as losses_mod
from .. import metrics as metrics_mod
from .. import optim
from ..backend import blas_threads, check_dtype, get_xp, make_rng, to_numpy
from ..registry import Registry
from . import initializers
from .layer import Layer

ALIGN = 16  # each weight starts on a 64-byte boundary (float32) for aligned vector loads

MODEL_CLASSES = Registry("model class_name")


def register_model(cls):
    return MODEL_CLASSES.register(cls)


def _snake(name):
    """Keras's layer naming: Conv2D -> conv2d, MaxPooling2D -> max_pooling2d, SimpleRNN -> simple_rnn."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _layout(specs):
    """Offsets for a list of (name, shape, init) specs, each aligned; returns (offsets, total size)."""
    offsets, total = [], 0
    for _, shape, _ in specs:
        offsets.append(total)
        size = int(np.prod(shape))
        total += -(-size // ALIGN) * ALIGN
    return offsets, total


def _batches(n, batch_size):
    return range(0, n, batch_size)


def _check_threads(threads):
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive int. Received: threads={threads!r}")
    return int(threads)


def _take(x, start, stop):
    """Rows start:stop of a batch (an array, an InputBatch or a dict of arrays)."""
    if isinstance(x, dict):
        return {k: v[start:stop] for k, v in x.items()}
    return x[start:stop]


def _one_blas_thread():
    """A context manager that holds BLAS to one thread (a no-op without threadpoolctl)."""
    return blas_threads(1) or contextlib.nullcontext()


class Model:
    """Base class for Sequential and GraphModel. Subclasses set ``self.layers`` (in execution order), build
    them in ``_build_layers()`` and implement ``_forward`` / ``_backward`` and ``get_config``."""

    def __init__(self, name=None, seed=None, dtype="float32", backend="numpy"):
        self.name = name
        self.seed = seed
        self.dtype = np.dtype(check_dtype(dtype))
        self.backend = backend
        self.xp = get_xp(backend)
        self.layers = []
        self.built = False
        self.optimizer = None
        self.loss = None
        self.metrics = []
        self.compiled = False
        self.stop_training = False
        self.history = None
        self.threads = 1
        self._replicas = None   # threads > 1: models sharing self.params, one per extra part (built lazily)
        self._view_layouts = {}
        self._pool = None

    # -- building -----------------------------------------------------------------------------------------
    def build(self, input_shape=None):
        if self.built:
            return self
        self._build_layers(input_shape)
        self._name_layers()
        seeds = np.random.SeedSequence(self.seed).spawn(3)
        init_rng = np.random.default_rng(seeds[0])
        self.rng = make_rng(self.xp, seeds[1])            # dropout masks
        self.shuffle_rng = np.random.default_rng(seeds[2])  # minibatch order in fit
        for layer in self.layers:
            layer.place(self.xp, self.dtype, self.rng)
        self.params, self.grads = self._allocate("param_specs", "params", init_rng, with_grads=True)
        self.state, _ = self._allocate("state_specs", "state", init_rng, with_grads=False)
        self.built = True
        return self

    def _ensure_built(self):
        if not self.built:
            self.build()

    def _name_layers(self):
        seen, counts = set(), {}
        for layer in self.layers:
            if layer.name is None:
                base = _snake(type(layer).__name__)
                k = counts.get(base, 0)
                while (name := base if k == 0 else f"{base}_{k}") in seen:
                    k += 1
                counts[base] = k + 1
                layer.name = name
            if layer.name in seen:
                raise ValueError(f"layer names must be unique in a model. Received: two layers named {layer.name!r}")
            seen.add(layer.name)

    def _point_views(self, flat, spec_attr="param_specs", view_attr="params"):
        """Re-point the layers' ``view_attr`` views into ``flat`` (laid out as ``_allocate`` does)."""
        key = (spec_attr, view_attr)
        cached = self._view_layouts.get(key)
        if cached is None:  # the layout is fixed once built; barrier peers re-point every round
            entries = [(layer, spec) for layer in self.layers for spec in getattr(layer, spec_attr)]
            offsets, total = _layout([spec for _, spec in entries])
            cached = self._view_layouts[key] = (total, [(getattr(layer, view_attr), name, off, int(np.prod(shape)), shape)
                                                        for (layer, (name, shape, _)), off in zip(entries, offsets)])
        total, views = cached
        if flat.shape != (total,):
            raise ValueError(f"a flat buffer of shape ({total},) is needed; received {flat.shape}")
        for target, name, off, size, shape in views:
            target[name] = flat[off:off + size].reshape(shape)

    def param_ranges(self):
        """[(layer name, start, stop)]: where each layer's weights lie in the flat ``params`` (layers without
        weights left out)."""
        self._ensure_built()
        entries = [(layer.name, spec) for layer in self.layers for spec in layer.param_specs]
        offsets, _ = _layout([spec for _, spec in entries])
        ranges = {}
        for (name, (_, shape, _)), off in zip(entries, offsets):
            lo, hi = ranges.get(name, (off, off))
            ranges[name] = (min(lo, off), max(hi, off + int(np.prod(shape))))
        return [(name, lo, hi) for name, (lo, hi) in ranges.items()]

    def layer_norms(self, flat):
        """{layer name: L2 norm of its part of ``flat``}, a buffer laid out as ``params`` (``grads`` after a step:
        the norms of the last minibatch's gradients)."""
        return {name: float(self.xp.linalg.norm(flat[lo:hi])) for name, lo, hi in self.param_ranges()}

    def _allocate(self, spec_attr, view_attr, rng, with_grads):
        entries = [(layer, spec) for layer in self.layers for spec in getattr(layer, spec_attr)]
        offsets, total = _layout([spec for _, spec in entries])
        host = np.zeros(total, self.dtype)
        for (layer, (name, shape, init)), off in zip(entries, offsets):
            host[off:off + int(np.prod(shape))] = initializers.get(init)(rng, shape).ravel()
        flat = self.xp.asarray(host)
        self._point_views(flat, spec_attr, view_attr)
        grads = None
        if with_grads:
            grads = self.xp.zeros_like(flat)
            self._point_views(grads, spec_attr, "grads")
        return flat, grads

    # -- weights --------------------------------------------------------------------------------------------
    def count_params(self):
        self._ensure_built()
        return sum(layer.count_params() for layer in self.layers)

    def get_flat_params(self):
        """A host copy of the flat parameter buffer."""
        self._ensure_built()
        return to_numpy(self.params).copy()

    def set_flat_params(self, flat):
        self._ensure_built()
        self.params[...] = self._checked_flat(flat, self.params, "params")

    def get_flat_state(self):
        self._ensure_built()
        return to_numpy(self.state).copy()

    def set_flat_state(self, flat):
        self._ensure_built()
        self.state[...] = self._checked_flat(flat, self.state, "state")

    def use_buffers(self, params, state=None):
        """Train in ``params`` (and ``state``) from now on: the layers' views are re-pointed into these flat arrays
        (shared memory, for instance), nothing is copied. Shapes and dtypes must match the model's buffers."""
        self._ensure_built()
        pairs = [("params", params, "param_specs")] + ([("state", state, "state_specs")] if self.state.size else [])
        for what, flat, _ in pairs:
            target = getattr(self, what)
            if flat is None or flat.shape != target.shape or flat.dtype != target.dtype:
                raise ValueError(f"use_buffers: {what} must be a {target.dtype} array of shape {target.shape}; "
                                 f"received {None if flat is None else (flat.dtype, flat.shape)}")
        for model in [self] + (self._replicas or []):
            for what, flat, specs in pairs:
                setattr(model, what, flat)
                model._point_views(flat, specs, what)

    def _checked_flat(self, flat, target, what):
        flat = self.xp.asarray(flat)
        if flat.shape != target.shape:
            raise ValueError(f"flat {what} must have shape {target.shape} for this model; "
                             f"received shape {flat.shape}")
        return flat

    def _named(self, attr):
        return {f"{layer.name}.{k}": v for layer in self.layers for k, v in getattr(layer, attr).items()}

    def get_weights(self):
        """{"layer.weight": host array} for params and state."""
        self._ensure_built()
        return {k: to_numpy(v).copy() for k, v in {**self._named("params"), **self._named("state")}.items()}

    def set_weights(self, weights):
        self._ensure_built()
        views = {**self._named("params"), **self._named("state")}
        missing, unexpected = sorted(set(views) - set(weights)), sorted(set(weights) - set(views))
        if missing or unexpected:
            raise ValueError(f"set_weights needs exactly this model's weights; missing {missing}, "
                             f"unexpected {unexpected}")
        for k, v in weights.items():
            if tuple(np.shape(v)) != views[k].shape:
                raise ValueError(f"weight {k!r} must have shape {views[k].shape}; received {np.shape(v)}")
            views[k][...] = self.xp.asarray(v)

    # -- compile / loss ----------------------------------------------------------------------------------------
    @property
    def output_activation(self):
        return getattr(self._output_layer(), "output_activation", None)

    def compile(self, optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=(), threads=1):
        """``threads`` > 1 (numpy backend, no non-trainable state such as BatchNormalization): each training
        batch is split into ``threads`` contiguous parts whose forward and backward passes run in parallel
        threads, each with one BLAS thread; their gradients are combined (weighted by part size, i.e. the
        gradient of the mean loss over the whole batch) and one optimizer step follows. The same step as
        ``threads=1`` up to rounding; worth it where much of the step is single-threaded numpy work (CNNs)."""
        self._ensure_built()
        threads = _check_threads(threads)
        if threads > 1:
            if self.state.size:
                raise ValueError(f"threads={threads} needs a model without non-trainable state; this one has "
                                 f"{self.state.size} state values (BatchNormalization?), whose batch statistics "
                                 f"would be computed per part. Use threads=1")
            if self.xp is not np:
                raise ValueError(f"threads={threads} is for the numpy backend; this model uses {self.backend!r}. "
                                 f"Use threads=1")
        self.optimizer = optim.get(optimizer)
        self.optimizer.build(self.params.size, self.xp, self.dtype)
        self.loss = losses_mod.get(loss)
        act = self.output_activation
        if act is not None:
            act.fused_with_loss = False
        if self.loss.bind(act) == "fused":
            act.fused_with_loss = True
        if isinstance(metrics, (str, dict)):
            metrics = [metrics]
        self.metrics = [metrics_mod.get(m) for m in metrics]
        self.threads = threads
        self._replicas = None
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        self.compiled = True
        return self

    def _make_replicas(self):
        """``threads - 1`` models of the same config whose params are views into ``self.params`` (their own
        ``grads`` and layer caches), with the loss bound as here and their own dropout generators."""
        from concurrent.futures import ThreadPoolExecutor
        seqs = np.random.SeedSequence(self.seed).spawn(3 + self.threads)[3:]
        replicas = []
        for k in range(1, self.threads):
            r = model_from_config({"class_name": type(self).__name__, "config": self.get_config()},
                                  dtype=self.dtype.name, backend=self.backend)
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

    def _check_compiled(self, what):
        if not self.compiled:
            raise RuntimeError(f"call model.compile(optimizer, loss, metrics) before model.{what}()")

    def loss_and_grad(self, out, y):
        """The mean loss (0-d array) and its gradient w.r.t. the model output (or the fused logits)."""
        if self.loss.mode == "fused":
            return self.loss(self.output_activation.logits, y)
        return self.loss(out, y)

    def probabilities(self, out):
        """Outputs as the metrics read them: class probabilities for the cross-entropies, else raw."""
        if self.loss is None or self.loss.mode != "logits":
            return out
        xp = self.xp
        if self.loss.kind == "binary":
            return 1.0 / (1.0 + xp.exp(-out))
        e = xp.exp(out - out.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    # -- data checks --------------------------------------------------------------------------------------
    def check_inputs(self, x, what="x"):
        """Host arrays of the model's dtype, shape-checked against the input shape(s)."""
        self._ensure_built()
        x = np.asarray(to_numpy(x))
        if x.dtype.kind not in "fiub":
            raise ValueError(f"{what} must be a numeric array; received dtype {x.dtype}")
        if x.shape[1:] != tuple(self.input_shape):
            raise ValueError(f"{what} must have shape (n, {', '.join(map(str, self.input_shape))}) for this model's "
                             f"input_shape={tuple(self.input_shape)}; received {what} of shape {x.shape}")
        return x.astype(self.dtype, copy=False)

    def check_data(self, x, y):
        x = self.check_inputs(x)
        y = self.loss.check_targets(y, self.output_shape, self.dtype)
        if len(x) != len(y):
            raise ValueError(f"x and y must have the same number of examples; received {len(x)} and {len(y)}")
        return x, y

    def _device(self, a):
        return self.xp.asarray(a)

    # -- steps ----------------------------------------------------------------------------------------------
    def forward(self, x, training=False):
        return self._forward(x, training)

    def backward(self, grad):
        return self._backward(grad)

    def train_on_batch(self, x, y):
        """One optimizer step on one (already checked) minibatch; returns (loss as 0-d array, outputs)."""
        if self.threads > 1 and len(y) > 1:
            return self._train_on_parts(x, y)
        out = self._forward(self._device(x), True)
        loss, grad = self.loss_and_grad(out, self._device(y))
        self._backward(grad)
        self.optimizer.step(self.params, self.grads)
        return loss, out

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

    def fit(self, x, y, epochs=1, batch_size=32, validation_data=None, shuffle=True, callbacks=(),
            verbose="auto", initial_epoch=0):
        """Train on host arrays; returns a History (``history.history[name]`` per epoch, Keras-style)."""
        from ..train import loop
        return loop.fit(self, x, y, epochs=epochs, batch_size=batch_size, validation_data=validation_data,
                        shuffle=shuffle, callbacks=callbacks, verbose=verbose, initial_epoch=initial_epoch)

    def predict(self, x, batch_size=256):
        """Model outputs for host inputs, as a host array (probabilities when the model ends in softmax)."""
        x = self.check_inputs(x)
        outs = [to_numpy(self._forward(self._device(x[i:i + batch_size]), False))
                for i in _batches(len(x), batch_size)]
        if not outs:
            return np.zeros((0,) + tuple(self.output_shape), self.dtype)
        return np.concatenate(outs)

    def evaluate_partials(self, x, y, batch_size=256):
        """Mergeable sums for the loss and every metric over (x, y): {"loss": [sum, count], name: partial}."""
        self._check_compiled("evaluate")
        x, y = self.check_data(x, y)
        totals = {"loss": np.zeros(2)}
        for m in self.metrics:
            totals[m.name] = {}
        for i in _batches(len(x), batch_size):
            xb, yb = self._device(x[i:i + batch_size]), self._device(y[i:i + batch_size])
            out = self._forward(xb, False)
            loss, _ = self.loss_and_grad(out, yb)
            totals["loss"] += (float(loss) * len(xb), len(xb))
            probs = self.probabilities(out)
            for m in self.metrics:
                totals[m.name] = metrics_mod.merge(totals[m.name], m.partial(probs, yb))
        return totals

    def results_from_partials(self, totals):
        out = {"loss": float(totals["loss"][0] / max(totals["loss"][1], 1))}
        for m in self.metrics:
            out[m.name] = m.result(totals[m.name]) if totals[m.name] else float("nan")
        return out

    def evaluate(self, x, y, batch_size=256):
        """{"loss": ..., <metric>: ...} over (x, y)."""
        return self.results_from_partials(self.evaluate_partials(x, y, batch_size))

    # -- description --------------------------------------------------------------------------------------
    def summary(self, print_fn=print):
        self._ensure_built()
        rows = [(f"{layer.name} ({type(layer).__name__})", str((None,) + tuple(layer.output_shape)),
                 str(layer.count_params())) for layer in self.layers]
        head = ("Layer (type)", "Output shape", "Params")
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(3)]
        line = "-" * (sum(widths) + 4)
        fmt = lambda r: f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}"
        text = "\n".join([f'Model: "{self.name or type(self).__name__}"', line, fmt(head), line]
                         + [fmt(r) for r in rows]
                         + [line, f"Trainable params: {self.count_params():,}",
                            f"Non-trainable params: {int(sum(np.prod(s) for l in self.layers for _, s, _ in l.state_specs)):,}",
                            f"Flat buffer: {self.params.size:,} x {self.dtype.name} ({self.params.nbytes:,} bytes)"])
        if print_fn:
            print_fn(text)
        return text

    def compile_config(self):
        if not self.compiled:
            return None
        return {"optimizer": optim.serialize(self.optimizer), "loss": losses_mod.serialize(self.loss),
                "metrics": [metrics_mod.to_config(m) for m in self.metrics]}

    def to_json(self):
        return json.dumps({"class_name": type(self).__name__, "config": self.get_config()})

    def save(self, path):
        from .. import io
        io.save_model(self, path)


def model_from_config(spec, **kwargs):
    """A model from ``{"class_name": "Sequential"|"GraphModel", "config": {...}}`` (a dict or JSON string)."""
    if isinstance(spec, str):
        spec = json.loads(spec)
    name = spec.get("class_name") if isinstance(spec, dict) else None
    if name not in MODEL_CLASSES:
        raise ValueError(f"model class_name must be one of {MODEL_CLASSES.choices()}. Received: {name!r}")
    return MODEL_CLASSES[name].from_config(spec["config"], **kwargs)


def check_layer(layer, where):
    if not isinstance(layer, Layer):
        raise TypeError(f"{where} must be a sparkdl layer; received {type(layer).__name__}: {layer!r}")
    return layer
