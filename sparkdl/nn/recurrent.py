"""SimpleRNN, LSTM, GRU with Keras semantics and weight layouts.

Input (batch, timesteps, features), zero initial state. ``kernel`` is (features, gates * units),
``recurrent_kernel`` (units, gates * units), gates side by side in Keras order (LSTM: i, f, c, o; GRU: z, r, h).
The time loop is a Python loop over steps; the input projection ``x @ kernel`` is one matmul for all steps
before the loop, and every weight gradient is one matmul over all steps after the backward loop.

Internally everything runs time-major, (steps, batch, ...), in processing order (reversed when
``go_backwards``), so each step reads and writes contiguous slices. ``h[0]`` is the zero initial state.
Activations are the layers of ``activations.py``, used through their elementwise ``f`` / ``df``; a gate block is
viewed as (batch, gates, units) so an activation over the last axis (softmax) sees one gate at a time, as in Keras.

This module is the layers' entry point: rnn.py holds the shared machinery and SimpleRNN, lstm.py LSTM, gru.py GRU.
"""
from .rnn import SimpleRNN   # SimpleRNN, LSTM, GRU: the order they register in
from .lstm import LSTM
from .gru import GRU

__all__ = ["GRU", "LSTM", "SimpleRNN"]
