"""The Spark-free pieces of distributed training: schedule, weighted averaging, one worker round."""
import numpy as np
import pytest

from sparkdl import optim
from sparkdl.datasets import load_digits
from sparkdl.nn import Dense, Sequential
from sparkdl.dist import schedule
from sparkdl.dist.averaging import Contribution, merge
from sparkdl.dist.worker import fit_round, worker_model


def test_schedule_covers_every_row_once_per_epoch():
    order = schedule.epoch_order(103, seed=7, epoch=2, worker=1)
    assert sorted(order) == list(range(103))
    assert np.array_equal(order, schedule.epoch_order(103, 7, 2, 1))
    assert not np.array_equal(order, schedule.epoch_order(103, 7, 3, 1))
    rounds = schedule.rounds_per_epoch([103, 40], batch_size=10, averaging_frequency=3)
    assert rounds == 4  # 11 minibatches in the larger shard
    seen = [i for r in range(rounds) for b in schedule.round_batches(order, 10, 3, r) for i in b]
    assert sorted(seen) == list(range(103))
    small = schedule.epoch_order(40, 7, 2, 0)
    last = schedule.round_batches(small, 10, 3, 1)
    assert len(last) == 1 and np.array_equal(last[0], small[30:40])
    assert schedule.round_batches(small, 10, 3, 2) == []


def test_average_is_weighted_by_examples():
    def a():
        return Contribution(n=30, params=np.full(4, 1.0), state=np.full(2, 2.0), opt=np.full(3, 3.0), loss_sum=30.0)

    def b():
        return Contribution(n=10, params=np.full(4, 5.0), state=np.full(2, 6.0), opt=np.full(3, 7.0), loss_sum=50.0)

    total = merge(merge(Contribution(), a()), b())
    params, state, opt = total.average()
    np.testing.assert_allclose(params, (30 * 1 + 10 * 5) / 40)   # 2.0, not the unweighted 3.0
    np.testing.assert_allclose(state, (30 * 2 + 10 * 6) / 40)
    np.testing.assert_allclose(opt, (30 * 3 + 10 * 7) / 40)
    assert total.n == 40 and total.loss_sum == 80.0 and params.dtype == np.float32
    # zero contributions (a worker that sat the round out) change nothing, in any merge order
    again = merge(merge(Contribution(), Contribution(n=0)), merge(b(), a()))
    np.testing.assert_allclose(again.average()[0], params)
    with pytest.raises(ValueError, match="no worker fitted"):
        Contribution().average()


def test_optimizer_state_left_out_when_not_averaged():
    a = Contribution(n=3, params=np.ones(2), opt=None)
    b = Contribution(n=1, params=np.ones(2), opt=None)
    assert merge(a, b).average()[2] is None


def test_fit_round_equals_local_steps():
    """A worker round is exactly the local train_on_batch steps from the same start."""
    x, y = load_digits("train")
    model = Sequential([Dense(16, activation="relu"), Dense(10, activation="softmax")], input_shape=(64,), seed=1)
    model.compile(optim.SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy", ["accuracy"])
    start = model.get_flat_params()
    worker = worker_model(model.to_json(), __import__("json").dumps(model.compile_config()))
    order = schedule.epoch_order(len(x), 3, 0, 0)
    batches = schedule.round_batches(order, 32, 4, 0)
    record = {"worker": 0, "round": 0}
    result = fit_round(worker, x, y, batches, start, None, np.zeros(model.params.size, np.float32), 0, True, record)
    c = Contribution.of(result)
    for b in batches:
        model.train_on_batch(x[b], y[b])
    params, _, opt = c.average()
    np.testing.assert_allclose(params, model.get_flat_params(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(opt, model.optimizer.get_state()["buffer"], rtol=1e-6, atol=1e-7)
    assert c.n == 128 and c.steps == 4 and record["fit_s"] > 0 and c.stats == [record]
    assert c.partials["accuracy"]["count"] == 128
