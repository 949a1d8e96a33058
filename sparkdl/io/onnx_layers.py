"""The per-layer ONNX converters, for ``sparkdl.io.onnx``: ``_CONVERTERS`` maps each exportable sparkdl layer
class to a function ``(graph, layer, input value name(s)) -> output value name`` that adds the layer's nodes and
weights to an ``onnx_graph._Graph``: activations, core layers, image layers (NCHW transposes around Conv and
pooling), normalization (constants folded) and the recurrent layers (gates reordered to ONNX's order).
"""
import numpy as np

from ..backend import to_numpy
from ..nn import activations as acts
from ..nn.augment import RandomShift
from ..nn.conv import Conv2D
from ..nn.core import Dense, Dropout, Flatten, Reshape
from ..nn.embedding import Embedding
from ..nn.merge import Add, Concatenate
from ..nn.normalization import BatchNormalization, LayerNormalization
from ..nn.pooling import AveragePooling2D, GlobalAveragePooling2D, MaxPooling2D
from ..nn.recurrent import GRU, LSTM, SimpleRNN

# -- activations ----------------------------------------------------------------------------------------------
_SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))
_SQRT_2 = float(np.sqrt(2.0))


def _activation(g, act, x, hint, layer):
    """``act`` (an activation layer instance) applied to ``x``; elementwise ones run on an NCHW twin if any."""
    kind = type(act)
    if kind is acts.Linear:
        return x
    if kind is acts.Softmax:
        return g.op("Softmax", [x], hint, axis=-1)
    twin = g.nchw.get(x)
    if twin is not None:
        return g.from_nchw(_elementwise(g, act, twin, hint, layer), hint)
    return _elementwise(g, act, x, hint, layer)


def _elementwise(g, act, x, hint, layer):
    kind = type(act)
    if kind is acts.ReLU:
        return g.op("Relu", [x], hint)
    if kind is acts.LeakyReLU:
        return g.op("LeakyRelu", [x], hint, alpha=act.negative_slope)
    if kind is acts.ELU:
        return g.op("Elu", [x], hint, alpha=act.alpha)
    if kind is acts.Sigmoid:
        return g.op("Sigmoid", [x], hint)
    if kind is acts.Tanh:
        return g.op("Tanh", [x], hint)
    if kind is acts.GELU and not act.approximate:   # exact: 0.5 x (1 + erf(x / sqrt(2)))
        if g.opset >= 20:
            return g.op("Gelu", [x], hint, approximate="none")
        e = g.op("Erf", [g.op("Div", [x, g.const(_SQRT_2)], hint)], hint)
        return g.op("Mul", [g.op("Mul", [x, g.op("Add", [e, g.const(1.0)], hint)], hint), g.const(0.5)], hint)
    if kind is acts.GELU:
        if g.opset >= 20:
            return g.op("Gelu", [x], hint, approximate="tanh")
        cube = g.op("Mul", [g.op("Mul", [x, x], hint), x], hint)
        inner = g.op("Add", [x, g.op("Mul", [cube, g.const(0.044715)], hint)], hint)
        t = g.op("Tanh", [g.op("Mul", [inner, g.const(_SQRT_2_OVER_PI)], hint)], hint)
        half_x = g.op("Mul", [x, g.const(0.5)], hint)
        return g.op("Mul", [half_x, g.op("Add", [t, g.const(1.0)], hint)], hint)
    raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}): activation {type(act).__name__} cannot be "
                     f"exported to ONNX")


def _activation_layer(g, layer, x):
    return _activation(g, layer, x, layer.name, layer)


def _activation_wrapper(g, layer, x):
    return _activation(g, layer.activation, x, layer.name, layer)


# -- core layers ----------------------------------------------------------------------------------------------
def _param(layer, name):
    return to_numpy(layer.params[name])


def _dense(g, layer, x):
    y = g.op("MatMul", [x, g.weight(f"{layer.name}.kernel", _param(layer, "kernel"))], layer.name)
    if layer.use_bias:
        y = g.op("Add", [y, g.weight(f"{layer.name}.bias", _param(layer, "bias"))], layer.name)
    return _activation(g, layer.activation, y, layer.name, layer)


def _flatten(g, layer, x):
    return g.op("Flatten", [x], layer.name, axis=1)


def _reshape(g, layer, x):
    return g.op("Reshape", [x, g.ints([-1, *layer.output_shape])], layer.name)


def _identity(g, layer, x):   # what predict computes for Dropout and the augmentation layers
    return x


def _embedding(g, layer, x):
    idx = g.op("Cast", [x], layer.name, to=g.onnx.TensorProto.INT64)
    table = g.weight(f"{layer.name}.embeddings", _param(layer, "embeddings"))
    return g.op("Gather", [table, idx], layer.name, axis=0)


def _add(g, layer, xs):
    out = xs[0]
    for x in xs[1:]:
        out = g.op("Add", [out, x], layer.name)
    return out


def _concatenate(g, layer, xs):
    return g.op("Concat", list(xs), layer.name, axis=layer._ax)


# -- images ---------------------------------------------------------------------------------------------------
def _window_attrs(layer):
    (top, bottom), (left, right) = layer.windows.pads
    return {"kernel_shape": list(layer.windows.kernel), "strides": list(layer.windows.strides),
            "pads": [top, left, bottom, right]}


def _conv2d(g, layer, x):
    last = layer.data_format == "channels_last"
    inputs = [g.to_nchw(x, layer.name) if last else x,
              g.weight(f"{layer.name}.kernel", _param(layer, "kernel").transpose(3, 2, 0, 1))]
    if layer.use_bias:
        inputs.append(g.weight(f"{layer.name}.bias", _param(layer, "bias")))
    y = g.op("Conv", inputs, layer.name, **_window_attrs(layer))
    return _activation(g, layer.activation, g.from_nchw(y, layer.name) if last else y, layer.name, layer)


def _pooling(op_type, **extra):
    def convert(g, layer, x):
        last = layer.data_format == "channels_last"
        y = g.op(op_type, [g.to_nchw(x, layer.name) if last else x], layer.name, **_window_attrs(layer), **extra)
        return g.from_nchw(y, layer.name) if last else y
    return convert


def _global_average_pooling(g, layer, x):
    return g.reduce_mean(x, layer._axes, layer.name, keepdims=layer.keepdims)


# -- normalization --------------------------------------------------------------------------------------------
def _batch_norm(g, layer, x):
    shape = layer._bshape
    mean = to_numpy(layer.state["moving_mean"]).astype(np.float32)
    var = to_numpy(layer.state["moving_variance"]).astype(np.float32)
    scale = 1.0 / np.sqrt(var + np.float32(layer.epsilon))
    if layer.scale:
        scale = scale * _param(layer, "gamma").astype(np.float32)
    y = g.op("Sub", [x, g.weight(f"{layer.name}.moving_mean", mean.reshape(shape))], layer.name)
    y = g.op("Mul", [y, g.weight(f"{layer.name}.scale", scale.reshape(shape))], layer.name)
    if layer.center:
        y = g.op("Add", [y, g.weight(f"{layer.name}.beta", _param(layer, "beta").reshape(shape))], layer.name)
    return y


def _layer_norm(g, layer, x):
    axes, rank = layer._param_axes, len(layer.input_shape) + 1
    gamma = _param(layer, "gamma") if layer.scale else None
    beta = _param(layer, "beta") if layer.center else None
    if g.opset >= 17 and axes == tuple(range(axes[0], rank)):
        normalized = tuple(layer.input_shape[a - 1] for a in axes)
        inputs = [x, g.weight(f"{layer.name}.gamma", gamma if gamma is not None else np.ones(normalized))]
        if beta is not None:
            inputs.append(g.weight(f"{layer.name}.beta", beta))
        return g.op("LayerNormalization", inputs, layer.name, axis=axes[0], epsilon=layer.epsilon)
    centered = g.op("Sub", [x, g.reduce_mean(x, axes, layer.name)], layer.name)
    var = g.reduce_mean(g.op("Mul", [centered, centered], layer.name), axes, layer.name)
    std = g.op("Sqrt", [g.op("Add", [var, g.const(layer.epsilon)], layer.name)], layer.name)
    y = g.op("Div", [centered, std], layer.name)
    if gamma is not None:
        y = g.op("Mul", [y, g.weight(f"{layer.name}.gamma", gamma.reshape(layer._bshape))], layer.name)
    if beta is not None:
        y = g.op("Add", [y, g.weight(f"{layer.name}.beta", beta.reshape(layer._bshape))], layer.name)
    return y


# -- recurrent ------------------------------------------------------------------------------------------------
# sparkdl activation -> (ONNX recurrent activation name, alpha attribute or None)
_RNN_ACTIVATIONS = {acts.Tanh: ("Tanh", None), acts.Sigmoid: ("Sigmoid", None), acts.ReLU: ("Relu", None),
                    acts.LeakyReLU: ("LeakyRelu", "negative_slope"), acts.ELU: ("Elu", "alpha")}


def _rnn_activations(layer, functions):
    """The ``activations`` / ``activation_alpha`` attributes (alphas only for the functions that take one)."""
    names, alphas = [], []
    for act in functions:
        if type(act) not in _RNN_ACTIVATIONS:
            raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}): activation {type(act).__name__} has "
                             f"no ONNX {type(layer).__name__} equivalent; exportable: tanh, sigmoid, relu, "
                             f"leaky_relu, elu")
        name, alpha = _RNN_ACTIVATIONS[type(act)]
        names.append(name)
        if alpha:
            alphas.append(float(getattr(act, alpha)))
    return {"activations": names, **({"activation_alpha": alphas} if alphas else {})}


def _gate_rows(kernel, units, order):
    """A Keras (in, gates*units) kernel as ONNX's (1, gates*units, in), gate blocks taken in ``order``."""
    blocks = kernel.T.reshape(-1, units, kernel.shape[0])
    return blocks[list(order)].reshape(1, -1, kernel.shape[0])


def _recurrent(g, layer, x, op_type, order, input_bias, recurrent_bias, functions, **attrs):
    units = layer.units
    inputs = [g.op("Transpose", [x], layer.name, perm=[1, 0, 2])]   # time-major
    if layer.go_backwards:  # sparkdl returns the states in processing order: reverse the input, run forward
        inputs = [g.op("Slice", [inputs[0], g.ints([-1]), g.ints([np.iinfo(np.int64).min]), g.ints([0]),
                                 g.ints([-1])], layer.name)]
    inputs.append(g.weight(f"{layer.name}.W", _gate_rows(_param(layer, "kernel"), units, order)))
    inputs.append(g.weight(f"{layer.name}.R", _gate_rows(_param(layer, "recurrent_kernel"), units, order)))
    if input_bias is not None:
        n = len(order) * units
        blocks = [b.reshape(len(order), units)[list(order)].reshape(n) if b is not None else np.zeros(n)
                  for b in (input_bias, recurrent_bias)]
        inputs.append(g.weight(f"{layer.name}.B", np.concatenate(blocks)[None]))
    seq = layer.return_sequences
    y, y_h = g.op(op_type, inputs, layer.name, outputs=[seq, not seq], hidden_size=units, direction="forward",
                  **_rnn_activations(layer, functions), **attrs)
    if seq:   # Y (T, 1, B, u) -> (B, T, u)
        return g.op("Transpose", [g.squeeze(y, 1, layer.name)], layer.name, perm=[1, 0, 2])
    return g.squeeze(y_h, 0, layer.name)   # Y_h (1, B, u)


def _bias(layer):
    return _param(layer, "bias") if layer.use_bias else None


def _simple_rnn(g, layer, x):
    return _recurrent(g, layer, x, "RNN", [0], _bias(layer), None, [layer.activation])


def _lstm(g, layer, x):
    act, ract = layer.activation, layer.recurrent_activation
    return _recurrent(g, layer, x, "LSTM", [0, 3, 1, 2], _bias(layer), None, [ract, act, act])


def _gru(g, layer, x):
    bias = _bias(layer)
    if bias is not None and layer.reset_after:
        input_bias, recurrent_bias = bias[0], bias[1]
    else:
        input_bias, recurrent_bias = bias, None
    return _recurrent(g, layer, x, "GRU", [0, 1, 2], input_bias, recurrent_bias,
                      [layer.recurrent_activation, layer.activation], linear_before_reset=int(layer.reset_after))


_CONVERTERS = {
    Dense: _dense, Flatten: _flatten, Reshape: _reshape, Dropout: _identity, RandomShift: _identity, Embedding: _embedding,
    Add: _add, Concatenate: _concatenate,
    Conv2D: _conv2d, MaxPooling2D: _pooling("MaxPool"),
    AveragePooling2D: _pooling("AveragePool", count_include_pad=0),
    GlobalAveragePooling2D: _global_average_pooling,
    BatchNormalization: _batch_norm, LayerNormalization: _layer_norm,
    SimpleRNN: _simple_rnn, LSTM: _lstm, GRU: _gru,
    acts.Activation: _activation_wrapper,
    **{cls: _activation_layer for cls in (acts.Linear, acts.ReLU, acts.LeakyReLU, acts.ELU, acts.GELU, acts.Sigmoid,
                                          acts.Tanh, acts.Softmax)},
}
