"""The minibatch schedule of distributed training, shared by every master so that they visit the same
examples in the same order: worker ``w`` shuffles its shard once per epoch with a generator seeded by
(seed, epoch, w) and takes consecutive minibatches; round ``r`` of an epoch is minibatches
``[r * averaging_frequency, (r + 1) * averaging_frequency)`` of every worker; an epoch has as many rounds as
the largest shard needs, and a worker whose shard is used up sits the remaining rounds out (weight 0).
"""
import math

import numpy as np


def batches_per_epoch(n_rows, batch_size):
    return math.ceil(n_rows / batch_size)


def rounds_per_epoch(shard_sizes, batch_size, averaging_frequency):
    return math.ceil(max(batches_per_epoch(n, batch_size) for n in shard_sizes) / averaging_frequency)


def epoch_order(n_rows, seed, epoch, worker, shuffle=True):
    if not shuffle:
        return np.arange(n_rows)
    return np.random.default_rng([0 if seed is None else seed, epoch, worker]).permutation(n_rows)


def round_key(seed, worker, g):
    """What a worker's random draws in global round ``g`` (dropout masks, augmentation) come from: a function of
    the round, not of the draws before it, so that a fit resumed at round g draws what an uninterrupted one does."""
    return [0 if seed is None else seed, worker, g, 1]


def round_batches(order, batch_size, averaging_frequency, round_in_epoch):
    """The index arrays of this worker's minibatches in one round (empty when its shard is used up)."""
    start = round_in_epoch * averaging_frequency * batch_size
    stop = min(start + averaging_frequency * batch_size, len(order))
    return [order[i:min(i + batch_size, stop)] for i in range(start, stop, batch_size)]


def round_examples(n_rows, batch_size, averaging_frequency, round_in_epoch):
    """How many examples a worker with ``n_rows`` fits in this round (what ``round_batches`` covers)."""
    start = round_in_epoch * averaging_frequency * batch_size
    return max(0, min(n_rows, start + averaging_frequency * batch_size) - start)


def global_round(epoch, round_in_epoch, rounds_in_epoch):
    return epoch * rounds_in_epoch + round_in_epoch


def block_order(n_rows, batch_size, seed, epoch, worker, shuffle=True):
    """A spilled partition's epoch (sparkdl.dist.spill): the order of its minibatches, each a contiguous block of
    ``batch_size`` rows; the last, shorter block stays last, so each round covers as many rows as with
    ``epoch_order``."""
    n = batches_per_epoch(n_rows, batch_size)
    full = n - (1 if n_rows % batch_size else 0)
    head = np.random.default_rng([0 if seed is None else seed, epoch, worker]).permutation(full) if shuffle \
        else np.arange(full)
    return np.concatenate([head, np.arange(full, n)]).astype(np.int64)


def round_blocks(order, averaging_frequency, round_in_epoch):
    """The minibatch ids of a spilled partition for one round (``block_order``'s share of it)."""
    start = round_in_epoch * averaging_frequency
    return [int(k) for k in order[start:start + averaging_frequency]]
