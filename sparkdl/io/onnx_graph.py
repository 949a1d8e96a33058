"""The ONNX graph under construction, for ``sparkdl.io.onnx``: ``_Graph`` holds the nodes and initializers with
unique value names, shared constants, the opset-dependent forms of ReduceMean and Squeeze, the channels-last /
NCHW transposes (a value remembers its NCHW twin so that consecutive image layers share them) and, when done,
names the output and prunes what it does not need. It takes the imported onnx package from the caller.
"""
import numpy as np

_TO_NCHW, _TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


class _Graph:
    """Nodes and initializers under construction, with unique value names."""

    def __init__(self, onnx, opset, reserved):
        self.onnx, self.h, self.opset = onnx, onnx.helper, opset
        self.nodes, self.initializers = [], []
        self.used = set(reserved)
        self.inputs = set(reserved[:-1])
        self.consts = {}
        self.nchw = {}   # value name -> the same tensor as NCHW (channels-last images only)

    def fresh(self, hint):
        name, k = hint, 1
        while name in self.used:
            name, k = f"{hint}_{k}", k + 1
        self.used.add(name)
        return name

    def op(self, op_type, inputs, hint, outputs=1, **attrs):
        """Add a node; returns its output name (or the list of names when ``outputs`` is a list of flags
        saying which outputs are wanted: unwanted ones are left unnamed)."""
        if isinstance(outputs, int):
            names = [self.fresh(f"{hint}/{op_type}") for _ in range(outputs)]
        else:
            names = [self.fresh(f"{hint}/{op_type}:{i}") if want else "" for i, want in enumerate(outputs)]
        self.nodes.append(self.h.make_node(op_type, list(inputs), names, name=self.fresh(f"{hint}/{op_type}#"),
                                           **attrs))
        return names[0] if isinstance(outputs, int) and outputs == 1 else names

    def weight(self, name, array, dtype=np.float32):
        name = self.fresh(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array, dtype), name))
        return name

    def const(self, values, dtype=np.float32):
        """A shared constant initializer (a scalar or a list)."""
        key = (np.dtype(dtype).name, repr(values))
        if key not in self.consts:
            self.consts[key] = self.weight(f"const_{len(self.consts)}", np.asarray(values, dtype), dtype)
        return self.consts[key]

    def ints(self, values):
        return self.const(list(values), np.int64)

    # -- opset-dependent forms ----------------------------------------------------------------------------
    def reduce_mean(self, x, axes, hint, keepdims=True):
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.ints(axes)], hint, keepdims=int(keepdims))
        return self.op("ReduceMean", [x], hint, axes=list(axes), keepdims=int(keepdims))

    def squeeze(self, x, axis, hint):
        return self.op("Squeeze", [x, self.ints([axis])], hint)

    # -- layouts ------------------------------------------------------------------------------------------
    def to_nchw(self, x, hint):
        if x not in self.nchw:
            self.nchw[x] = self.op("Transpose", [x], hint, perm=_TO_NCHW)
        return self.nchw[x]

    def from_nchw(self, y, hint):
        x = self.op("Transpose", [y], hint, perm=_TO_NHWC)
        self.nchw[x] = y
        return x

    # -- closing ------------------------------------------------------------------------------------------
    def finish(self, out, output_name):
        """Name the result ``output_name`` and drop the nodes and initializers it does not need."""
        if out in self.inputs:
            self.nodes.append(self.h.make_node("Identity", [out], [output_name], name=self.fresh("output/Identity")))
        else:
            for node in self.nodes:
                node.input[:] = [output_name if v == out else v for v in node.input]
                node.output[:] = [output_name if v == out else v for v in node.output]
        needed, kept = {output_name}, []
        for node in reversed(self.nodes):
            if any(v in needed for v in node.output):
                kept.append(node)
                needed.update(v for v in node.input if v)
        self.nodes = kept[::-1]
        self.initializers = [t for t in self.initializers if t.name in needed]
