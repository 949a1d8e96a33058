"""Reading Keras files for ``sparkdl.io.keras``: recognising a ``.keras`` zip or a legacy HDF5 ``.h5`` file by its
first bytes (``keras_format``), decoding their JSON and HDF5 string attributes, and the two weight stores that hand
out each layer's stored arrays in Keras's variable order: ``_Keras3Weights`` (a ``.keras`` file's
``layers/<class in snake case, numbered per class>/vars/<i>``) and ``_LegacyWeights`` (a legacy file's
``model_weights/<layer name>/`` at its ``weight_names``). Plain json, zipfile and re; the h5py groups come in
from the caller.
"""
import json
import re
import zipfile

import numpy as np

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

# -- recognising a Keras file ---------------------------------------------------------------------------------


def keras_format(path):
    """"keras" (a zip holding config.json), "h5" (an HDF5 file) or None, from the file's first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except (OSError, TypeError):
        return None
    if head == HDF5_SIGNATURE:
        return "h5"
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                return "keras" if "config.json" in z.namelist() else None
        except (zipfile.BadZipFile, OSError, ValueError):
            return None
    return None


def _text(value):
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _json(data, what, name):
    try:
        return json.loads(_text(data))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{name}: {what} is not valid JSON ({e})") from None


def _attr_list(group, key):
    """An HDF5 string-list attribute; Keras splits long ones into key0, key1, ..."""
    if key in group.attrs:
        return [_text(v) for v in group.attrs[key]]
    out, k = [], 0
    while f"{key}{k}" in group.attrs:
        out += [_text(v) for v in group.attrs[f"{key}{k}"]]
        k += 1
    return out


# -- weight stores --------------------------------------------------------------------------------------------


class _Keras3Weights:
    """``layers/<class in snake case, numbered per class>/vars/<i>`` of a .keras file's model.weights.h5."""

    def __init__(self, h5):
        self.root = h5["layers"] if "layers" in h5 else {}
        self.used = {}

    def take(self, class_name, layer_name):
        key = _snake(class_name)
        if key in self.used:
            self.used[key] += 1
            key = f"{key}_{self.used[key]}"
        else:
            self.used[key] = 0
        return [(None, a) for a in _vars(self.root[key])] if key in self.root else []


def _vars(group):
    """The group's vars/0, vars/1, ... then its sub-objects' (a recurrent layer's ``cell``)."""
    out = []
    if "vars" in group:
        out += [group["vars"][k][()] for k in sorted(group["vars"], key=int)]
    for k in sorted(group):
        if k != "vars" and hasattr(group[k], "keys"):
            out += _vars(group[k])
    return out


class _LegacyWeights:
    """``model_weights/<layer name>/<weight_names ...>`` of a legacy HDF5 file."""

    def __init__(self, group):
        self.root = group

    def take(self, class_name, layer_name):
        if layer_name not in self.root:
            return []
        group = self.root[layer_name]
        return [(path.split("/")[-1].split(":")[0], group[path][()]) for path in _attr_list(group, "weight_names")]


def _snake(name):
    """Keras's naming.to_snake_case: Conv2D -> conv2d, SimpleRNN -> simple_rnn, LeakyReLU -> leaky_re_lu."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
