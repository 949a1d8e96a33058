"""Layers and models (the numeric core). Imports neither pyspark nor cupy."""
from .activations import ELU, GELU, Activation, LeakyReLU, Linear, ReLU, Sigmoid, Softmax, Tanh
from .augment import RandomShift
from .conv import Conv2D
from .core import Dense, Dropout, Flatten, Reshape
from .embedding import Embedding
from .graph import GraphModel
from .layer import Input, Layer, layer_from_config, layer_to_config, register
from .merge import Add, Concatenate
from .model import Model, model_from_config
from .normalization import BatchNormalization, LayerNormalization
from .pooling import AveragePooling2D, GlobalAveragePooling2D, MaxPooling2D
from .recurrent import GRU, LSTM, SimpleRNN
from .sequential import Sequential
