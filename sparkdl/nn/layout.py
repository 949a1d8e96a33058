"""The flat buffers of a model: every trainable weight of every layer is a view into ``model.params`` (one
contiguous 1-D array), gradients views into ``model.grads`` (same layout), non-trainable layer state (BatchNorm
running statistics) views into ``model.state``. Distributed masters move, average and save these buffers whole.
Layer views are named ``"<layer name>.<weight name>"``; ``get_weights`` / ``set_weights`` use those names.
``FlatBuffers`` is the part of sparkdl.nn.model.Model that lays them out and reads and writes them."""
import numpy as np

from ..backend import to_numpy
from . import initializers

ALIGN = 16  # each weight starts on a 64-byte boundary (float32) for aligned vector loads


def layout(specs):
    """Offsets for a list of (name, shape, init) specs, each aligned; returns (offsets, total size)."""
    offsets, total = [], 0
    for _, shape, _ in specs:
        offsets.append(total)
        size = int(np.prod(shape))
        total += -(-size // ALIGN) * ALIGN
    return offsets, total


class FlatBuffers:
    """Mixin of Model: the flat ``params`` / ``grads`` / ``state`` buffers and the layers' views into them (needs
    ``self.layers``, ``self.xp``, ``self.dtype``, ``self._view_layouts`` and ``_ensure_built``)."""

    def _point_views(self, flat, spec_attr="param_specs", view_attr="params"):
        """Re-point the layers' ``view_attr`` views into ``flat`` (laid out as ``_allocate`` does)."""
        key = (spec_attr, view_attr)
        cached = self._view_layouts.get(key)
        if cached is None:  # the layout is fixed once built; barrier peers re-point every round
            entries = [(layer, spec) for layer in self.layers for spec in getattr(layer, spec_attr)]
            offsets, total = layout([spec for _, spec in entries])
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
        cached = self._view_layouts.get("ranges")   # fixed once built; the stats read it every epoch
        if cached is None:
            entries = [(layer.name, spec) for layer in self.layers for spec in layer.param_specs]
            offsets, _ = layout([spec for _, spec in entries])
            ranges = {}
            for (name, (_, shape, _)), off in zip(entries, offsets):
                lo, hi = ranges.get(name, (off, off))
                ranges[name] = (min(lo, off), max(hi, off + int(np.prod(shape))))
            cached = self._view_layouts["ranges"] = [(name, lo, hi) for name, (lo, hi) in ranges.items()]
        return list(cached)

    def layer_norms(self, flat):
        """{layer name: L2 norm of its part of ``flat``}, a buffer laid out as ``params`` (``grads`` after a step:
        the norms of the last minibatch's gradients)."""
        return {name: float(self.xp.linalg.norm(flat[lo:hi])) for name, lo, hi in self.param_ranges()}

    def _allocate(self, spec_attr, view_attr, rng, with_grads):
        entries = [(layer, spec) for layer in self.layers for spec in getattr(layer, spec_attr)]
        offsets, total = layout([spec for _, spec in entries])
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
