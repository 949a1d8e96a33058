"""ONNX export: a sparkdl model as a graph of standard ONNX operators (default opset 17, any from 13 up).

The graph computes what ``model.predict`` computes (inference: Dropout and RandomShift are the identity, BatchNormalization uses
its moving statistics) on float32 inputs and outputs laid out as sparkdl's, with a dynamic batch dimension
("batch"). Weights become initializers named ``"<layer name>.<weight name>"``.

How layers map:
- Dense: MatMul (+ Add); Flatten, Reshape, Dropout, RandomShift (nothing), Embedding: Cast to int64 + Gather; Add: Add;
  Concatenate: Concat.
- Conv2D, MaxPooling2D, AveragePooling2D: Conv / MaxPool / AveragePool, which take NCHW. Channels-last layers
  get a Transpose on each side; consecutive image layers share them (a value remembers its NCHW twin, and
  elementwise activations run on the twin), and transposes nobody reads are pruned. "same" padding is the
  explicit TensorFlow padding (odd pixel bottom/right); AveragePool averages real pixels only, as sparkdl.
- GlobalAveragePooling2D: ReduceMean.
- BatchNormalization: (x - moving_mean) * (gamma / sqrt(moving_variance + epsilon)) + beta, constants folded.
- LayerNormalization: the LayerNormalization operator (opset >= 17, trailing axes), else its decomposition.
- SimpleRNN, LSTM, GRU: the RNN / LSTM / GRU operators (gates reordered from Keras's i, f, c, o to ONNX's
  i, o, f, c; GRU ``reset_after`` is ``linear_before_reset``; ``go_backwards`` reverses the input, as sparkdl
  returns the sequence in processing order). Their activations must be ones those operators define (tanh,
  sigmoid, relu, leaky_relu, elu); gelu or softmax inside a recurrent layer is not exportable.
- Activations: Relu, LeakyRelu, Elu, Sigmoid, Tanh, Softmax (last axis); GELU (``"gelu"``, the tanh
  approximation) is the Gelu operator with approximate="tanh" from opset 20, else its decomposition into Tanh, Mul
  and Add; the exact GELU (``GELU(approximate=False)``, ``"gelu_exact"``) is Gelu with approximate="none" from
  opset 20, else 0.5 x (1 + Erf(x / sqrt(2))) in Div, Erf, Add and Mul.

The work is split by job: ``onnx_graph`` holds the graph under construction (``_Graph``), ``onnx_layers`` the
per-layer converters (``_CONVERTERS``); this module holds the entry point and walks the model's layers.
"""
import os

import numpy as np

from ..nn.graph import GraphModel
from ..nn.sequential import Sequential
from ..version import __version__
from .onnx_graph import _Graph
from .onnx_layers import _CONVERTERS

DEFAULT_OPSET = 17
MIN_OPSET = 13       # Squeeze/Slice/Softmax with the semantics used here


def _import_onnx():
    try:
        import onnx  # the onnx package (absolute import: not this module)
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install sparkdl[onnx]") from None
    return onnx


def export_onnx(model, path=None, opset=DEFAULT_OPSET, input_name="input", output_name="output"):
    """Write ``model`` (Sequential or GraphModel, built) as an ONNX model and return the ``onnx.ModelProto``.

    ``path``: a local file path, a writable binary file, or None (only return the proto). ``opset``: the ONNX
    default-domain opset, 17 unless given (13 or later). ``input_name`` names the graph input of a single-input
    model; a model with several inputs keeps its own input names unless ``input_name`` is a list of as many.
    ``output_name`` names the graph output. Inputs, output and weights are float32 (a float64 model's weights
    are rounded) with a dynamic batch dimension ("batch").
    A layer or option with no ONNX equivalent raises ValueError naming the layer.
    """
    onnx = _import_onnx()
    max_opset = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not MIN_OPSET <= opset <= max_opset:
        raise ValueError(f"opset must be an int from {MIN_OPSET} to {max_opset}. Received: opset={opset!r}")
    if not isinstance(model, (Sequential, GraphModel)):
        raise ValueError(f"export_onnx takes a Sequential or GraphModel. Received: {type(model).__name__}")
    model.build()
    inputs = _input_specs(model, input_name)
    if not isinstance(output_name, str) or not output_name or output_name in dict(inputs):
        raise ValueError(f"output_name must be a non-empty str other than the input names. "
                         f"Received: output_name={output_name!r}")
    g = _Graph(onnx, int(opset), reserved=[name for name, _ in inputs] + [output_name])
    out = _convert_model(g, model, [name for name, _ in inputs])
    g.finish(out, output_name)
    h = onnx.helper
    graph = h.make_graph(g.nodes, model.name or type(model).__name__,
                         [_value_info(h, onnx, name, shape) for name, shape in inputs],
                         [_value_info(h, onnx, output_name, model.output_shape)], g.initializers)
    opsets = [h.make_opsetid("", int(opset))]
    proto = h.make_model(graph, opset_imports=opsets, producer_name="sparkdl", producer_version=__version__,
                         ir_version=h.find_min_ir_version_for(opsets),
                         doc_string=f"sparkdl {type(model).__name__} exported with ONNX opset {opset}")
    onnx.checker.check_model(proto)
    if path is not None:
        data = proto.SerializeToString()
        if hasattr(path, "write"):
            path.write(data)
        else:
            with open(os.fspath(path), "wb") as f:
                f.write(data)
    return proto


def _input_specs(model, input_name):
    """[(graph input name, shape without batch)] in the model's input order."""
    if isinstance(model, Sequential):
        names, shapes = ["input"], [model.input_shape]
    else:
        names, shapes = model.input_names, [model.input_shapes[n] for n in model.input_names]
    if isinstance(input_name, (list, tuple)):
        given = list(input_name)
    elif len(names) == 1:
        given = [input_name]
    else:
        given = names
    if len(given) != len(names) or not all(isinstance(n, str) and n for n in given) or len(set(given)) != len(given):
        raise ValueError(f"input_name must be a non-empty str (or a list of {len(names)} distinct ones for this "
                         f"model's inputs {names}). Received: input_name={input_name!r}")
    return list(zip(given, shapes))


def _value_info(h, onnx, name, shape):
    return h.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch"] + [int(d) for d in shape])


def _convert_model(g, model, input_names):
    if isinstance(model, Sequential):
        x = input_names[0]
        for layer in model.layers:
            x = _convert_layer(g, layer, x)
        return x
    values = list(input_names)
    for node, wiring in zip(model.layer_nodes, model._wiring):
        args = [values[j] for j in wiring]
        values.append(_convert_layer(g, node.layer, args if node.is_list else args[0]))
    return values[-1]


def _convert_layer(g, layer, x):
    convert = _CONVERTERS.get(type(layer))
    if convert is None:
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) cannot be exported to ONNX; supported "
                         f"layers: {sorted(cls.__name__ for cls in _CONVERTERS)}")
    return convert(g, layer, x)
