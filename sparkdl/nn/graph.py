"""A graph model in the Keras functional style, for residual and multi-branch nets.

    inp = Input(shape=(16,), name="features")
    h = Dense(16, activation="relu")(inp)
    out = Dense(10, activation="softmax")(Add()([inp, Dense(16)(h)]))
    model = GraphModel(inputs=inp, outputs=out)

Calling a layer on a symbolic :class:`Tensor` (or a list of them, for Add/Concatenate) builds the layer at once,
so shape errors surface where the layer is called, and returns the tensor it produces. A layer is called once
(no shared layers: each layer owns one set of weight views and one forward cache). The tensor a layer produces
is its node: it knows the layer and the tensors that went in, which is all the wiring there is.

With several inputs, ``x`` is a dict ``{input name: array}``; ``check_inputs`` wraps it in an :class:`InputBatch`,
which slices all arrays by rows together, so the base Model's predict/evaluate and the training loop need no
change.
"""
import numpy as np

from ..backend import to_numpy
from .layer import Input, Tensor, connect, layer_from_config, layer_to_config, shape_str, topological
from .model import Model, register_model


class InputBatch:
    """Named input arrays sliced by rows together: ``len`` is the row count, ``batch[idx]`` slices every array."""

    def __init__(self, arrays):
        self.arrays = dict(arrays)

    def __len__(self):
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, idx):
        return InputBatch({k: v[idx] for k, v in self.arrays.items()})


@register_model
class GraphModel(Model):
    """A model from its input tensor(s) to one output tensor. ``inputs`` is one Input or a list of them."""

    def __init__(self, inputs, outputs, name=None, seed=None, dtype="float32", backend="numpy"):
        super().__init__(name=name, seed=seed, dtype=dtype, backend=backend)
        inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if isinstance(outputs, (list, tuple)):
            if len(outputs) != 1:
                raise ValueError(f"GraphModel supports exactly one output. Received: {len(outputs)} outputs")
            outputs = outputs[0]
        for t in inputs + [outputs]:
            if not isinstance(t, Tensor):
                raise TypeError(f"GraphModel inputs and outputs must be symbolic tensors. Received: {t!r}")
        if not inputs or any(t.layer is not None for t in inputs):
            raise ValueError(f"GraphModel inputs must be tensors made by Input(...). Received: inputs={inputs}")
        if len({id(t) for t in inputs}) != len(inputs):
            raise ValueError(f"GraphModel inputs lists the same Input twice. Received: inputs={inputs}")
        nodes = topological(outputs)
        used = {id(t) for t in nodes if t.layer is None}
        given = {id(t) for t in inputs}
        stray = [t for t in nodes if t.layer is None and id(t) not in given]
        if stray:
            raise ValueError(f"the output is not connected to the given inputs only: it depends on {stray}, "
                             f"which is not in inputs={inputs}")
        unused = [t for t in inputs if id(t) not in used]
        if unused:
            raise ValueError(f"inputs {unused} are not connected to the output {outputs!r}")
        if not any(t.layer is not None for t in nodes):
            raise ValueError("GraphModel needs at least one layer between its inputs and its output")
        owned = [t for t in nodes if t.model is not None]
        if owned:
            raise ValueError(f"layer {owned[0].name!r} already belongs to another GraphModel; a layer lives in one "
                             f"model (to copy a model, use model_from_config(model.to_json()))")
        self.inputs, self.output = inputs, outputs
        self.layer_nodes = [t for t in nodes if t.layer is not None]
        self.layers = [t.layer for t in self.layer_nodes]
        self._name_graph()
        for t in self.layer_nodes:
            t.model = self
        self.build()

    # -- structure ---------------------------------------------------------------------------------------
    def _name_graph(self):
        names = set()
        for t in self.inputs:
            if t.name is not None and t.name in names:
                raise ValueError(f"input names must be unique in a model. Received: two inputs named {t.name!r}")
            names.add(t.name)
        names.discard(None)
        k = 0
        for t in self.inputs:
            while t.name is None:
                name = "input" if k == 0 else f"input_{k}"
                k += 1
                if name not in names:
                    t._input_name = name
                    names.add(name)
        self._name_layers()
        clash = sorted(names & {layer.name for layer in self.layers})
        if clash:
            raise ValueError(f"an input and a layer share the name(s) {clash}; give them different names")
        self.input_names = [t.name for t in self.inputs]
        self.input_shapes = {t.name: t.shape for t in self.inputs}
        self.input_shape = self.inputs[0].shape if len(self.inputs) == 1 else None
        self.output_shape = self.output.shape
        # positions: inputs first, then layer nodes in execution order (the order of self.layers)
        position = {id(t): i for i, t in enumerate(self.inputs + self.layer_nodes)}
        self._wiring = [[position[id(u)] for u in t.inbound] for t in self.layer_nodes]

    def _build_layers(self, input_shape):
        """The layers were built when called (shapes come from the Inputs): mark where input grads are needed."""
        upstream = [False] * len(self.inputs)   # per position: any params at or above this tensor
        for layer, wiring in zip(self.layers, self._wiring):
            layer.need_input_grad = any(upstream[j] for j in wiring)
            upstream.append(layer.need_input_grad or bool(layer.param_specs))

    def _output_layer(self):
        return self.output.layer

    # -- steps -------------------------------------------------------------------------------------------
    def _forward(self, x, training):
        if isinstance(x, InputBatch):
            x = x.arrays
        if isinstance(x, dict):
            values = [x[name] for name in self.input_names]
        elif len(self.inputs) == 1:
            values = [x]
        else:
            raise ValueError(f"this model has inputs {self.input_names}: pass x as a dict {{name: array}}")
        for t, wiring in zip(self.layer_nodes, self._wiring):
            args = [values[j] for j in wiring]
            values.append(t.layer.forward(args if t.is_list else args[0], training))
        return values[-1]

    def _backward(self, grad):
        n_in = len(self.inputs)
        grads = [None] * (n_in + len(self.layer_nodes))
        grads[-1] = grad
        for k in range(len(self.layer_nodes) - 1, -1, -1):
            g, grads[n_in + k] = grads[n_in + k], None
            if g is None:   # nothing downstream needed it: no params at or above this node
                continue
            t = self.layer_nodes[k]
            g_in = t.layer.backward(g)
            if g_in is None:
                continue
            for j, gj in zip(self._wiring[k], g_in if t.is_list else [g_in]):
                if gj is not None:   # a tensor feeding several layers gets the sum (never in place: shared arrays)
                    grads[j] = gj if grads[j] is None else grads[j] + gj
        if n_in == 1:
            return grads[0]
        return dict(zip(self.input_names, grads[:n_in]))

    # -- data ----------------------------------------------------------------------------------------------
    def check_inputs(self, x, what="x"):
        """One input: as Model. Several: a dict with exactly the input names, shapes checked, same row counts;
        returned as an InputBatch."""
        if len(self.inputs) == 1:
            if isinstance(x, dict) and set(x) == set(self.input_names):
                x = x[self.input_names[0]]
            return super().check_inputs(x, what)
        if isinstance(x, InputBatch):
            x = x.arrays
        if not isinstance(x, dict):
            raise ValueError(f"{what} must be a dict {{input name: array}} for this model's inputs "
                             f"{self.input_names}; received {type(x).__name__}")
        missing = [k for k in self.input_names if k not in x]
        unexpected = sorted(set(x) - set(self.input_names))
        if missing or unexpected:
            raise ValueError(f"{what} must hold exactly the inputs {self.input_names}; missing {missing}, "
                             f"unexpected {unexpected}")
        out = {}
        for name in self.input_names:
            a = np.asarray(to_numpy(x[name]))
            shape = self.input_shapes[name]
            if a.dtype.kind not in "fiub":
                raise ValueError(f"{what}[{name!r}] must be a numeric array; received dtype {a.dtype}")
            if a.shape[1:] != shape:
                raise ValueError(f"{what}[{name!r}] must have shape {shape_str(shape).replace('None', 'n')} "
                                 f"for input {name!r}; received shape {a.shape}")
            out[name] = a.astype(self.dtype, copy=False)
        rows = {name: len(a) for name, a in out.items()}
        if len(set(rows.values())) > 1:
            raise ValueError(f"the inputs in {what} must have the same number of rows; received {rows}")
        return InputBatch(out)

    def _device(self, a):
        if isinstance(a, InputBatch):
            return InputBatch({k: self.xp.asarray(v) for k, v in a.arrays.items()})
        return self.xp.asarray(a)

    # -- config ----------------------------------------------------------------------------------------------
    def get_config(self):
        """Inputs, then the layers in execution order, each with the name(s) of what feeds it (a str for a
        single tensor, a list for a list call), then the output layer's name."""
        names = self.input_names + [layer.name for layer in self.layers]
        layers = []
        for t, wiring in zip(self.layer_nodes, self._wiring):
            inbound = [names[j] for j in wiring]
            layers.append({**layer_to_config(t.layer), "inbound": inbound if t.is_list else inbound[0]})
        return {"name": self.name, "dtype": self.dtype.name,
                "inputs": [{"name": t.name, "shape": list(t.shape)} for t in self.inputs],
                "layers": layers, "output": self.output.name}

    @classmethod
    def from_config(cls, config, **kwargs):
        config = dict(config)
        tensors = {}
        inputs = []
        for spec in config.pop("inputs"):
            inputs.append(Input(spec["shape"], name=spec["name"]))
            tensors[spec["name"]] = inputs[-1]
        for spec in config.pop("layers"):
            layer = layer_from_config(spec)
            inbound = spec["inbound"]
            try:
                args = [tensors[n] for n in inbound] if isinstance(inbound, list) else tensors[inbound]
            except KeyError as e:
                raise ValueError(f"GraphModel config: layer {layer.name!r} is fed by {e.args[0]!r}, which is "
                                 f"not an input or an earlier layer") from None
            tensors[layer.name] = connect(layer, args)
        output = config.pop("output")
        if output not in tensors:
            raise ValueError(f"GraphModel config: output {output!r} is not an input or a layer")
        config.update(kwargs)
        return cls(inputs, tensors[output], **config)
