"""Keras model import: ``load_keras(path)`` reads a Keras 3 ``.keras`` file (a zip of ``config.json`` and
``model.weights.h5``) or a legacy HDF5 ``.h5`` file (``model.save("x.h5")``, Keras 2 or 3) into a sparkdl
Sequential or GraphModel, with its weights and, where the file has them, its compile settings. It reads the
file with json, zipfile and h5py only; Keras itself is never imported.

Each Keras layer becomes one sparkdl layer, followed by an activation layer where Keras's activation of that name
differs from sparkdl's (``leaky_relu``: slope 0.2 in Keras's function, 0.3 in sparkdl's default). Keras's
``gelu`` is the exact (erf) GELU: sparkdl's ``"gelu_exact"`` (its ``"gelu"`` is the tanh approximation). A layer class,
option or value sparkdl cannot reproduce exactly raises a ValueError that names the Keras layer, its class and
the option: never a silently different model. Options that change training only (regularizers, constraints,
recurrent dropout, frozen layers) are warned about, as the imported model predicts the same without them.

Weights: a ``.keras`` file stores each layer's variables as ``layers/<key>/vars/<i>`` (a recurrent layer's under
``cell/vars``), where ``<key>`` is NOT the layer's name but its class name in snake case, numbered per class in
the order of ``model.layers`` (``dense``, ``dense_1``, ...). A legacy file stores them under
``model_weights/<layer name>/`` at the paths its ``weight_names`` attribute lists, in the layer's order. Both
orders are Keras's variable order, which ``keras_layers._LAYERS`` maps onto sparkdl's weight names; Keras and sparkdl
share the layouts (Dense kernel (in, units), Conv2D kernel (kh, kw, in, filters), LSTM gates i, f, c, o and GRU
gates z, r, h side by side, GRU ``reset_after`` bias (2, 3 units)), so no array is transposed or reordered.

The work is split by job: ``keras_files`` reads the file formats and weight stores, ``keras_layers`` converts
layer configs to sparkdl layers, ``keras_graph`` builds the Sequential or GraphModel and ``keras_compile`` maps
the compile settings; this module holds the entry point.
"""
import io as _io
import os
import zipfile

from .keras_compile import _compile_settings
from .keras_files import HDF5_SIGNATURE, _json, _Keras3Weights, _LegacyWeights, keras_format
from .keras_graph import _Converter, _functional, _sequential

__all__ = ["HDF5_SIGNATURE", "keras_format", "load_keras"]


def _build(spec, compile_config, weights, name, backend):
    cls = spec.get("class_name") if isinstance(spec, dict) else None
    config = spec.get("config") if isinstance(spec, dict) else None
    if cls not in ("Sequential", "Functional", "Model") or not isinstance(config, (dict, list)):
        raise ValueError(f"{name}: the Keras model is a {cls!r}; sparkdl imports Sequential and functional "
                         f"(Functional / Model) models, not subclassed ones")
    layer_specs = config if isinstance(config, list) else config.get("layers") or []
    conv = _Converter(weights, [(s.get("config") or {}).get("name", s.get("name")) for s in layer_specs])
    model = (_sequential if cls == "Sequential" else _functional)(config, conv, backend)
    try:
        model.set_weights(conv.values)
    except ValueError as e:
        raise ValueError(f"{name}: the Keras weights do not fit the converted model: {e}") from None
    settings = _compile_settings(compile_config, name)
    if settings is not None:
        try:
            model.compile(**settings)
        except ValueError as e:
            raise ValueError(f"{name}: the Keras compile settings {settings} do not apply: {e}") from None
    return model


def load_keras(path, backend="numpy"):
    """A sparkdl model (Sequential or GraphModel, float32) from a Keras ``.keras`` or legacy ``.h5`` file, with its
    weights, BatchNormalization's moving statistics and, where the file has them, its compile settings
    (optimizer and learning rate, loss, metrics; no optimizer state)."""
    try:
        import h5py
    except ImportError:
        raise ImportError("reading Keras files needs h5py: pip install h5py (or sparkdl[keras])") from None
    name = repr(os.fspath(path))
    kind = keras_format(path)
    if kind is None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such Keras file: {name}")
        raise ValueError(f"{name} is not a Keras model file: expected a .keras zip holding config.json or an "
                         f"HDF5 .h5 file")
    try:
        if kind == "keras":
            with zipfile.ZipFile(path) as z:
                config = _json(z.read("config.json"), "config.json", name)
                if "model.weights.h5" not in z.namelist():
                    raise ValueError(f"{name}: the .keras zip has no model.weights.h5; found {z.namelist()}")
                data = z.read("model.weights.h5")
            with h5py.File(_io.BytesIO(data), "r") as h5:
                return _build(config, config.get("compile_config"), _Keras3Weights(h5), name, backend)
        with h5py.File(path, "r") as f:
            if "model_config" not in f.attrs:
                raise ValueError(f"{name} is an HDF5 file without a model_config attribute: not a Keras model file "
                                 f"(a save_weights file holds no architecture)")
            config = _json(f.attrs["model_config"], "model_config", name)
            training = _json(f.attrs["training_config"], "training_config", name) \
                if "training_config" in f.attrs else None
            group = f["model_weights"] if "model_weights" in f else f
            return _build(config, training, _LegacyWeights(group), name, backend)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"{name} is not a readable Keras file ({type(e).__name__}: {e})") from None
