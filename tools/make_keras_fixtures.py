"""Write the Keras fixtures of tests/test_keras.py (run by hand; the tests themselves never import Keras).

    python3 -m venv /tmp/kerasenv && /tmp/kerasenv/bin/pip install keras jax jaxlib h5py numpy
    KERAS_BACKEND=jax /tmp/kerasenv/bin/python tools/make_keras_fixtures.py [out_dir]

For every model below it writes ``<name>.keras`` (Keras 3: a zip of config.json and model.weights.h5),
``<name>.h5`` (the legacy HDF5 format) and ``<name>.npz``: the inputs (``x``, or ``x.<input name>`` for several
inputs, their names in ``input_names``) and Keras's predictions on them (``y``). Every weight is set to a seeded
random value (biases, BatchNormalization's moving statistics included) so that a weight read into the wrong place
shows up in the predictions. Layers are tiny: the whole directory stays small enough to commit.
"""
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

SEED = 1234
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "data", "keras")


def randomize(model, rng):
    """Every weight to a random value; variances (BatchNormalization's moving_variance) positive."""
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        names = [w.path.split("/")[-1] for w in layer.weights]
        new = [rng.uniform(0.5, 2.0, w.shape) if name == "moving_variance" else rng.normal(0.0, 0.5, w.shape)
               for name, w in zip(names, weights)]
        layer.set_weights([w.astype(np.float32) for w in new])


def seq(input_shape, *stack, dtype="float32"):
    return keras.Sequential([keras.Input(input_shape, dtype=dtype), *stack])


def dense_activations():
    return seq((5,), layers.Dense(4, activation="relu"), layers.Dense(4, activation="sigmoid"),
               layers.Dense(4, activation="tanh"), layers.Dense(4, activation="elu"),
               layers.Dense(4, activation="leaky_relu"), layers.Dense(4, use_bias=False),
               layers.Dense(4, activation="linear"), layers.Dense(3, activation="softmax"))


def activation_layers():
    return seq((6,), layers.Activation("relu"), layers.Dense(6), layers.Activation("sigmoid"), layers.Dense(6),
               layers.Activation("tanh"), layers.Dense(6), layers.Activation("elu"), layers.Dense(6),
               layers.Activation("leaky_relu"), layers.Activation("linear"), layers.Dense(6), layers.ReLU(),
               layers.Dense(6), layers.LeakyReLU(negative_slope=0.1), layers.Dense(6), layers.ELU(alpha=0.5),
               layers.Dense(6), layers.LeakyReLU(), layers.Dense(4), layers.Activation("softmax"), layers.Dense(3),
               layers.Softmax())


def dense_gelu():
    return seq((5,), layers.Dense(4, activation="gelu"))


def conv_model(padding, strides, use_bias=True):
    def build():
        return seq((7, 7, 3), layers.Conv2D(4, 3, strides=strides, padding=padding, use_bias=use_bias,
                                            activation="relu"), layers.Conv2D(2, (2, 3), padding=padding))
    return build


def channels_first():
    cf = "channels_first"
    return seq((3, 6, 6), layers.Conv2D(4, 3, padding="same", data_format=cf), layers.BatchNormalization(axis=1),
               layers.MaxPooling2D(2, data_format=cf), layers.Conv2D(2, 2, strides=2, data_format=cf),
               layers.AveragePooling2D(2, strides=1, padding="same", data_format=cf),
               layers.GlobalAveragePooling2D(data_format=cf))


def pooling():
    return seq((8, 8, 2), layers.MaxPooling2D(2), layers.AveragePooling2D(3, strides=1, padding="same"),
               layers.MaxPooling2D(2, strides=1, padding="same"), layers.AveragePooling2D(2),
               layers.GlobalAveragePooling2D())


def flatten_reshape_dropout():
    return seq((12,), layers.Reshape((3, 4)), layers.Dense(5), layers.Flatten(), layers.Dropout(0.5),
               layers.Dense(3))


def batch_norm():
    return seq((4, 4, 3), layers.BatchNormalization(), layers.Conv2D(2, 2), layers.BatchNormalization(epsilon=0.01),
               layers.Flatten(), layers.Dense(5), layers.BatchNormalization(center=False, momentum=0.9))


def layer_norm():
    return seq((3, 6), layers.LayerNormalization(), layers.Dense(4), layers.LayerNormalization(epsilon=1e-5),
               layers.Flatten(), layers.LayerNormalization(scale=False))


def embedding():
    return seq((6,), layers.Embedding(11, 3), layers.Flatten(), dtype="int32")


def recurrent(kind, **options):
    def build():
        return seq((5, 3), getattr(layers, kind)(4, **options))
    return build


def add_concat():
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    ha = layers.Dense(3, activation="tanh")(a)
    joined = layers.Concatenate()([ha, b, layers.Dense(2)(b)])
    out = layers.Add()([layers.Dense(4)(joined), layers.Dense(4)(a), layers.Dense(4, activation="relu")(joined)])
    return keras.Model([a, b], out)


# -- realistic models ---------------------------------------------------------------------------------------
def mlp():
    model = seq((10,), layers.Dense(16, activation="relu"), layers.Dropout(0.2), layers.Dense(8, activation="relu"),
                layers.Dense(3, activation="softmax"))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.003), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def cnn():
    model = seq((8, 8, 1), layers.Conv2D(4, 3, padding="same", activation="relu"), layers.BatchNormalization(),
                layers.MaxPooling2D(2), layers.Conv2D(6, 3, strides=2, padding="same"), layers.ReLU(),
                layers.GlobalAveragePooling2D(), layers.Dense(4, activation="softmax"))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def text_lstm():
    model = seq((7,), layers.Embedding(20, 4), layers.LSTM(5), layers.Dense(1, activation="sigmoid"), dtype="int32")
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=0.002), loss="binary_crossentropy",
                  metrics=["accuracy"])
    return model


def residual():
    inp = keras.Input((6,), name="features")
    h = layers.Dense(6, activation="relu")(inp)
    h = layers.Dense(6)(h)
    h = layers.Activation("relu")(layers.Add()([inp, h]))
    h = layers.LayerNormalization()(h)
    model = keras.Model(inp, layers.Dense(2)(h))
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=0.01, weight_decay=0.001), loss="mse",
                  metrics=["mae"])
    return model


MODELS = {
    "dense_activations": dense_activations, "activation_layers": activation_layers, "dense_gelu": dense_gelu,
    "conv_valid_s1": conv_model("valid", 1), "conv_same_s1": conv_model("same", 1),
    "conv_valid_s2": conv_model("valid", 2), "conv_same_s2_nobias": conv_model("same", 2, use_bias=False),
    "channels_first": channels_first, "pooling": pooling, "flatten_reshape_dropout": flatten_reshape_dropout,
    "batch_norm": batch_norm, "layer_norm": layer_norm, "embedding": embedding,
    "simple_rnn": recurrent("SimpleRNN"), "simple_rnn_seq": recurrent("SimpleRNN", return_sequences=True),
    "lstm": recurrent("LSTM"), "lstm_seq": recurrent("LSTM", return_sequences=True),
    "gru_reset_after": recurrent("GRU", reset_after=True),
    "gru_reset_before_seq": recurrent("GRU", reset_after=False, return_sequences=True),
    "add_concat": add_concat, "mlp": mlp, "cnn": cnn, "text_lstm": text_lstm, "residual": residual,
}


def inputs_for(model, rng, n=6):
    arrays = {}
    for tensor in model.inputs:
        shape = (n,) + tuple(tensor.shape[1:])
        if "int" in str(tensor.dtype):
            embedding = next(layer for layer in model.layers if isinstance(layer, layers.Embedding))
            arrays[tensor.name] = rng.integers(0, embedding.input_dim, shape).astype(np.int32)
        else:
            arrays[tensor.name] = rng.normal(0.0, 1.0, shape).astype(np.float32)
    return arrays


def main():
    os.makedirs(OUT, exist_ok=True)
    for k, (name, build) in enumerate(sorted(MODELS.items())):
        keras.utils.set_random_seed(SEED + k)
        rng = np.random.default_rng(SEED + k)
        model = build()
        randomize(model, rng)
        x = inputs_for(model, rng)
        names = list(x)
        y = model.predict([x[n] for n in names] if len(names) > 1 else x[names[0]], verbose=0)
        model.save(os.path.join(OUT, f"{name}.keras"))
        model.save(os.path.join(OUT, f"{name}.h5"))
        feeds = {"x": x[names[0]]} if len(names) == 1 else {f"x.{n}": a for n, a in x.items()}
        np.savez(os.path.join(OUT, f"{name}.npz"), y=np.asarray(y, np.float32), input_names=np.array(names), **feeds)
        print(f"{name}: inputs {[a.shape for a in x.values()]} -> {np.shape(y)}")


if __name__ == "__main__":
    main()
