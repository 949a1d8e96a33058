"""One worker's share of an averaging round, Spark-free: start from the driver's buffers, fit the round's
minibatches, return the resulting buffers (float32, unweighted: half the bytes of a weighted float64 copy;
the receiver weights them). Masters wrap this in a Spark task (jobs mode) or call it in a resident loop
(barrier mode); tests call it with plain numpy arrays."""
import json
import time
from dataclasses import dataclass, field

from ..backend import to_numpy
from ..nn.model import model_from_config
from ..train.loop import train_batches


@dataclass
class RoundResult:
    n: int
    params: object
    state: object
    opt: object
    loss_sum: float
    partials: dict
    steps: int
    stats: list = field(default_factory=list)

_MODELS = {}  # (model json, compile json, backend) -> model, reused by a Python worker across rounds


def worker_model(model_json, compile_json, backend="numpy"):
    """A compiled model for this spec, built once per process (weights are overwritten every round)."""
    key = (model_json, compile_json, backend)
    model = _MODELS.get(key)
    if model is None:
        model = model_from_config(json.loads(model_json), backend=backend).build()
        model.compile(**json.loads(compile_json), threads=1)   # a worker's parallelism is the other workers
        _MODELS.clear()  # one fit at a time per process: keep memory bounded
        _MODELS[key] = model
    return model


def fit_round(model, x, y, index_batches, params, state, opt_buffer, iterations, average_optimizer_state,
              record=None, copy=True, grad_norms=False, rng_key=None):
    """Load the driver's buffers into ``model`` (unless ``params`` is None), fit ``index_batches`` of (x, y), and
    return a RoundResult
    (params, state, optimizer state if averaged, loss/metric sums, a timing record). With ``copy=False`` the
    buffers are views of the model's, valid until the model trains again. ``grad_norms``: put the per-layer norms
    of the round's last gradient in the record. ``rng_key``: the round's random draws come from it
    (``schedule.round_key``)."""
    t0 = time.time()
    if rng_key is not None:
        model.reseed(rng_key)
    opt = model.optimizer
    if params is not None:  # None: the model already holds the round's starting point (barrier mode)
        model.set_flat_params(params)
        if model.state.size:
            model.set_flat_state(state)
    if not average_optimizer_state:  # every round starts from a fresh optimizer state (DL4J's saveUpdater=false)
        opt.build(model.params.size, model.xp, model.dtype)
    elif params is not None:
        opt.state_buffer[...] = model.xp.asarray(opt_buffer)
    opt.iterations = int(iterations)
    t1 = time.time()
    totals = train_batches(model, x, y, index_batches)
    loss_sum = float(totals.loss_sum)  # syncs a GPU before the clock stops
    t2 = time.time()
    host = (lambda a: to_numpy(a).copy()) if copy else to_numpy
    result = RoundResult(
        n=totals.n, params=host(model.params),
        state=host(model.state) if model.state.size else None,
        opt=host(opt.state_buffer) if average_optimizer_state else None,
        loss_sum=loss_sum, partials=totals.partials, steps=len(index_batches))
    t3 = time.time()
    if record is not None:
        record.setdefault("start", t0)
        record.update(load_s=t1 - t0, fit_s=t2 - t1, ship_s=t3 - t2, n=totals.n,
                      steps=len(index_batches))
        if grad_norms:
            record["grad_norms"] = model.layer_norms(model.grads)
        result.stats.append(record)
    return result
