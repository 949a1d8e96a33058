"""A barrier worker from joining to the end of its fit: the rendezvous through the driver (the hello says where the
worker is; the driver answers with where every worker is, relays the host leaders' offers of their shared memory
regions where some host has several workers, and sends the start message once every worker is ready), the mesh
between the hosts' leaders, then its rounds (sparkdl.dist.rounds), and on a failure or a stop the way out
that lets the other workers and the driver know."""
import os
import time

import numpy as np

from . import shm, wire
from .averaging import Tally
from .block import _to_model, block_parts, split
from .control import Control, Stopped
from .host import HostGroup
from .mesh import Mesh
from .rounds import _train
from .spill import is_spilled
from .sync import _Sync
from .topology import Topology, attempt_token


def worker_main(ctx, spec, x, y, read_s=0.0, started=None):
    """One barrier worker, from joining to the end of the fit; returns the rows it held.

    ``ctx``: ``rank`` (worker id), ``attempt`` (unique per task attempt), ``address`` (where peers reach this
    worker), ``host`` (which memory it can share: ``host_key()``); ``spec``: the plain values BarrierDriver.worker_spec made; (x, y): the worker's partition, loaded
    in ``read_s`` seconds from ``started`` (when the task began: the driver's breakdown of the fit's start-up)."""
    from .worker import worker_model
    loaded = time.time()
    started = loaded - read_s if started is None else started
    model = worker_model(spec["model"], spec["compile"], spec["backend"])
    opt, aos, timeout = model.optimizer, spec["average_optimizer_state"], spec["timeout"]
    device = model.xp is not np
    parts = block_parts(model, aos)
    size = sum(n for _, n in parts)
    tally = Tally(model)
    n_rows = len(x)
    if not is_spilled(x):
        x, y = model.xp.asarray(x), model.xp.asarray(y)   # resident for the whole fit (on the GPU with cupy)
    own = (model.params, model.state, opt.state_buffer)   # the model is cached in this process: restored below
    built = time.time()
    listener = group = control = mesh = None
    try:
        listener = _listen(ctx.address, spec["ports"])
        share = spec["shared_memory"] and not device and shm.ORDERED_STORES
        secret = bytes.fromhex(spec["secret"])
        # the rendezvous goes through the driver (Spark's BarrierTaskContext.allGather takes a second a call): the
        # hello says where this worker is, the driver answers with every worker's place once all have said it
        control = Control.connect(spec["driver"][0], spec["driver"][1], secret, {
            "type": "hello", "worker": ctx.rank, "attempt": ctx.attempt, "rows": n_rows, "host": ctx.host,
            "address": ctx.address, "port": listener.getsockname()[1], "pid": os.getpid(), "share": bool(share),
            "started": started, "loaded": loaded, "built": built}, timeout=min(timeout, 60.0))
        peers, _ = control.expect(("peers", "done"), timeout=timeout)
        if peers["type"] == "done":   # a retried task after the driver had every round: nothing left to do
            return n_rows
        infos, share = peers["infos"], peers["share"]
        tentative = Topology(infos, share)
        local = tentative.group_of[ctx.rank]
        if len(local) > 1 and local[0] == ctx.rank:
            group = HostGroup.create(len(local), size, model.dtype, tally.width)
        if any(len(g) > 1 for g in tentative.groups):   # some host shares memory: its leader's offer goes round
            control.send({"type": "offer", "offer": group.offer() if group is not None else None})
            offers = control.expect("offers", timeout=timeout)[0]["offers"]
        else:   # every worker alone on its host (or no shared memory): nothing to offer
            offers = [None] * len(infos)
        topo = Topology(infos, share, offers)
        local = topo.group_of[ctx.rank]
        if len(local) > 1 and group is None:
            group = HostGroup.attach(offers[local[0]])
            if group is None:
                path = str((offers[local[0]].get("region") or {}).get("path"))
                why = "it is gone: that worker ended before this one mapped it" if not os.path.exists(path) else \
                    "it is not the region offered (size, layout or token)"
                raise RuntimeError(f"worker {ctx.rank} could not map the shared memory of {topo.name(local[0])} on "
                                   f"its host, {path}: {why}; use ParameterAveraging(shared_memory=False) if this "
                                   f"host cannot share memory between Spark's Python workers")
        if group is not None:   # before ready: every worker of the host knows the others' threads from round 1
            group.bind(local.index(ctx.rank), spec.get("bind_cpus", True))
        control.send({"type": "ready"})
        start, arrays = control.expect(("start", "done"), timeout=timeout)
        if group is not None:
            # every worker of the host mapped the region before saying it was ready, and the driver starts no one
            # before all have: the name can go now, so that a killed worker leaves nothing behind in /dev/shm
            group.region.unlink()
        if start["type"] == "done":   # a retried task after the driver had every round: nothing left to do
            return n_rows
        if ctx.rank in topo.leader_rank and len(topo.leaders) > 1:
            mesh = Mesh.connect(topo.leader_rank[ctx.rank], [(infos[w]["address"], infos[w]["port"])
                                                           for w in topo.leaders],
                                listener, secret, attempt_token(infos), [topo.name(w) for w in topo.leaders],
                                timeout, control)
        listener.close()
        listener = None
        block = group.slots[local.index(ctx.rank)] if group is not None else np.empty(size, model.dtype)
        views = split(block, parts)
        sync = _Sync(ctx.rank, topo, group, mesh, block, tally, timeout, control)
        sync.distribute(start["round"], arrays.get("chunk"), start.get("lo", 0), start.get("hi", 0))
        if device:
            _to_model(model, views)
        else:
            model.use_buffers(views["params"], views.get("state"))
            if aos:
                opt.use_buffer(views["opt"])
        _train(ctx.rank, model, x, y, spec, start, sync, control, views, read_s, device)
    except BaseException as e:
        if group is not None:
            group.abort()   # the other workers of this host stop waiting for this one
        if isinstance(e, Stopped) or (control is not None and isinstance(e, Exception) and control.stopped(1.0)):
            return n_rows   # the fit was interrupted: the task ends quietly, as the fit does
        if control is not None:
            try:
                control.send({"type": "error", "reason": f"{type(e).__name__}: {e}"})
            except OSError:
                pass
        raise
    finally:
        model.use_buffers(own[0], own[1])
        if aos:
            opt.use_buffer(own[2])
        for resource in (mesh, control, listener):
            if resource is not None:
                resource.close()
        if group is not None:
            block = views = sync = None
            group.close()
    return n_rows


def _listen(address, ports):
    try:
        return wire.listen(address, ports)
    except OSError:   # the address peers reach this worker on is not one of its interfaces (NAT, containers)
        return wire.listen("0.0.0.0", ports)
