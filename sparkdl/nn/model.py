"""The model base: building, compile, the train step, fit / evaluate / predict, summary, config and save.

Its weights live in flat buffers (sparkdl.nn.layout: ``model.params``, ``model.grads``, ``model.state``); a step
may be split over threads (sparkdl.nn.replicas); the loop of ``fit`` is sparkdl.train.loop's, the file format
sparkdl.nn.saving's. Sequential and GraphModel (sparkdl.nn.graph) subclass it.
"""
import json
import re

import numpy as np

from .. import losses as losses_mod
from .. import metrics as metrics_mod
from .. import optim
from ..backend import LazyRng, check_dtype, get_xp, make_rng, to_numpy
from ..checks import positive_int
from ..registry import Registry
from ..train import loop
from . import saving
from .layout import FlatBuffers
from .replicas import ThreadedSteps

MODEL_CLASSES = Registry("model class_name")


def register_model(cls):
    return MODEL_CLASSES.register(cls)


def _snake(name):
    """Keras's layer naming: Conv2D -> conv2d, MaxPooling2D -> max_pooling2d, SimpleRNN -> simple_rnn."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _batches(n, batch_size):
    return range(0, n, batch_size)


class Model(FlatBuffers, ThreadedSteps):
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
        self.threads, self._auto = 1, None
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

    def reseed(self, key):
        """Draw the layers' random numbers (dropout masks, augmentation) from a generator of ``key`` (a list of
        ints) from now on; replicas get keys of their own."""
        self._ensure_built()
        for k, model in enumerate([self] + (self._replicas or [])):
            model.rng = LazyRng(model.xp, list(key) + ([k] if k else []))
            for layer in model.layers:
                layer.place(model.xp, model.dtype, model.rng)

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

    # -- compile / loss ----------------------------------------------------------------------------------------
    @property
    def output_activation(self):
        return getattr(self._output_layer(), "output_activation", None)

    def compile(self, optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=(), threads="auto"):
        """``threads`` > 1 (numpy backend; BatchNormalization keeps whole-batch statistics): each training
        batch is split into ``threads`` contiguous parts whose forward and backward passes run in parallel
        threads, each with one BLAS thread; their gradients are combined (weighted by part size, i.e. the
        gradient of the mean loss over the whole batch) and one optimizer step follows. The same step as
        ``threads=1`` up to rounding; worth it where much of the step is single-threaded numpy work (CNNs).
        ``"auto"`` (the default) chooses at the first training step: 2 for a model with convolutions where this
        process may use 2 CPUs and 2 BLAS threads (``bench/README.md``: 1.4-1.6x the LeNet step), else 1 (an MLP's
        step is all GEMMs, which BLAS threads better)."""
        self._ensure_built()
        if threads != "auto":
            threads = positive_int("threads", threads)
            if threads > 1:
                self._check_parts(threads)
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
        self.threads, self._auto = threads, None
        self._replicas = None
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        self.compiled = True
        return self

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
        if self.parts() > 1 and len(y) > 1:
            return self._train_on_parts(x, y)
        out = self._forward(self._device(x), True)
        loss, grad = self.loss_and_grad(out, self._device(y))
        self._backward(grad)
        self.optimizer.step(self.params, self.grads)
        return loss, out

    def fit(self, x, y, epochs=1, batch_size=32, validation_data=None, shuffle=True, callbacks=(),
            verbose="auto", initial_epoch=0):
        """Train on host arrays; returns a History (``history.history[name]`` per epoch, Keras-style)."""
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

    def evaluate_sums(self, x, y, batch_size=256):
        """The loss and metric Sums over (x, y), mergeable with others' (distributed evaluation)."""
        self._check_compiled("evaluate")
        x, y = self.check_data(x, y)
        sums = metrics_mod.Sums()
        for i in _batches(len(x), batch_size):
            xb, yb = self._device(x[i:i + batch_size]), self._device(y[i:i + batch_size])
            out = self._forward(xb, False)
            loss, _ = self.loss_and_grad(out, yb)
            sums.add(float(loss), yb, self.probabilities(out), self.metrics)
        return sums

    def evaluate_results(self, sums):
        """{"loss": ..., <metric>: ...} of evaluation Sums (NaN for a metric over no examples)."""
        return sums.results(self.metrics, empty=float("nan"))

    def evaluate(self, x, y, batch_size=256):
        """{"loss": ..., <metric>: ...} over (x, y)."""
        return self.evaluate_results(self.evaluate_sums(x, y, batch_size))

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

    def save(self, path, meta=None):
        """Write the model file (config, weights, compile settings, optimizer state): ``sparkdl.load_model``
        reads it back."""
        saving.save_model(self, path, meta)


def model_from_config(spec, **kwargs):
    """A model from ``{"class_name": "Sequential"|"GraphModel", "config": {...}}`` (a dict or JSON string)."""
    if isinstance(spec, str):
        spec = json.loads(spec)
    name = spec.get("class_name") if isinstance(spec, dict) else None
    if name not in MODEL_CLASSES:
        raise ValueError(f"model class_name must be one of {MODEL_CLASSES.choices()}. Received: {name!r}")
    return MODEL_CLASSES[name].from_config(spec["config"], **kwargs)
