"""The flat block of barrier mode: the one array a worker trains in and the workers average (params, layer state,
optimizer state, in that order), laid out the same way by the driver (sparkdl.dist.driver) and every worker, and
the copies between the block and a model on a device (cupy), whose buffers cannot be views of host memory."""


def block_parts(model, average_optimizer_state):
    """[(part, size)] of the flat block a worker trains in and the workers average: params, layer state (when the
    model has any), optimizer state (when it is averaged)."""
    parts = [("params", int(model.params.size))]
    if model.state.size:
        parts.append(("state", int(model.state.size)))
    if average_optimizer_state:
        parts.append(("opt", int(model.optimizer.state_buffer.size)))
    return parts


def split(block, parts):
    views, offset = {}, 0
    for name, size in parts:
        views[name] = block[offset:offset + size]
        offset += size
    return views


def _to_block(model, views):
    from ..backend import to_numpy
    views["params"][...] = to_numpy(model.params)
    if "state" in views:
        views["state"][...] = to_numpy(model.state)
    if "opt" in views:
        views["opt"][...] = to_numpy(model.optimizer.state_buffer)


def _to_model(model, views):
    model.set_flat_params(views["params"])
    if "state" in views:
        model.set_flat_state(views["state"])
    if "opt" in views:
        model.optimizer.state_buffer[...] = model.xp.asarray(views["opt"])
