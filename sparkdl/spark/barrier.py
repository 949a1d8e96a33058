"""mode="barrier": one barrier stage per fit. Each task converts its partition to numpy once, keeps it for all
epochs, and every ``averaging_frequency`` minibatches the workers average their buffers (example-weighted): no
Spark job per round. Workers on the driver's host average among themselves through shared memory
(sparkdl.dist.peers) and only report losses to the driver; otherwise each trades its buffers with the driver's
averaging server over a socket. If a worker dies, Spark retries the whole stage and the new tasks resume from
the driver's latest average at the round where the fit stood."""
import os
import secrets
import socket
import sys
import threading
import time
import uuid

import numpy as np

from ..dist import schedule, wire
from ..dist.averaging import PARTS, Averager, Contribution
from ..dist.peers import PeerBlock
from ..dist.server import AveragingServer, WorkerLost


def check_cluster(sc, n_workers):
    conf = sc.getConf()
    if conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true":
        raise ValueError("barrier mode needs all workers at once and cannot run with "
                         "spark.dynamicAllocation.enabled=true; use ParameterAveraging(mode='jobs')")
    slots = sc.defaultParallelism // max(int(conf.get("spark.task.cpus", "1")), 1)
    if n_workers > slots:
        raise ValueError(f"barrier mode runs all {n_workers} workers at once, but the cluster has {slots} task "
                         f"slots now; use num_workers <= {slots} or ParameterAveraging(mode='jobs')")


def driver_host(sc):
    if sc.master.startswith("local"):
        return "127.0.0.1"
    return sc.getConf().get("spark.driver.bindAddress", sc.getConf().get("spark.driver.host", "127.0.0.1"))


def fit_barrier(master, run, prepared):
    sc = prepared.sparkSession.sparkContext
    n_workers, df = master.workers_for(prepared)
    check_cluster(sc, n_workers)
    secret = secrets.token_bytes(32)
    server = AveragingServer(secret, driver_host(sc), master.server_timeout)
    task = _barrier_task(server.host, server.port, secret, run.input_shape, run.n_features, run.label_dtype,
                         run.model_json, run.compile_json, master.backend, sc.master.startswith("local"),
                         master.seed, master.shuffle, master.batch_size_per_worker, master.averaging_frequency,
                         master.average_optimizer_state, master.server_timeout, getattr(master, "fail_once_at", None))
    group = f"sparkdl-barrier-{uuid.uuid4().hex[:8]}"
    failure, state = [], {"shared_memory": master.shared_memory}

    def serve():
        try:
            _serve(run, server, n_workers, state)
        except BaseException as e:  # surfaced by the main thread
            failure.append(e)
            _abort(server, state, f"{type(e).__name__}: {e}")
            sc.cancelJobGroup(group)

    thread = threading.Thread(target=serve, name="sparkdl-averaging-server", daemon=True)
    thread.start()
    sc.setJobGroup(group, f"sparkdl: barrier fit ({n_workers} workers, {run.epochs} epochs)", True)
    try:
        # the shuffle makes the barrier stage a ShuffleMapStage: Spark retries those (not barrier ResultStages)
        df.mapInArrow(task, "worker int, rows long", barrier=True).repartition(1).collect()
    except Exception:
        thread.join(timeout=30)
        if failure:
            raise failure[0] from None
        raise
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        thread.join(timeout=30)
        server.close(state.get("workers"))
        _drop_block(state)
    if failure:
        raise failure[0]
    run.history.refused_connections = server.refused
    run.history.shared_memory = state.get("peers_used", False)
    return run.finish()


def _abort(server, state, reason):
    block = state.get("block")
    if block is not None:
        block.abort[0] = 1
    server.abort(state.get("workers"), reason)


def _drop_block(state):
    block = state.pop("block", None)
    if block is not None:
        block.abort[0] = 1  # workers of a lost attempt still waiting on it give up
        block.close()


def _join(run, server, n_workers, state, min_attempt, round_):
    """Wait for a full set of workers, send them where the fit stands, and settle how they average: through
    shared memory when all of them are on this host and could map it, else through this server."""
    workers = server.wait_for_workers(n_workers, min_attempt)
    state["workers"] = workers
    state["attempt"] = max(h.get("attempt", 0) for h, _ in workers.values())
    sizes = [workers[w][0]["rows"] for w in range(n_workers)]
    if "sizes" not in state:
        run.start(sizes)
        state["sizes"] = sizes
    elif sizes != state["sizes"]:
        raise RuntimeError(f"the retried workers hold {sizes} rows, not {state['sizes']}: the partitioning changed")
    _drop_block(state)
    p = run.payload(copy=False)
    arrays = {k: p[k] for k in PARTS}
    total_rounds = run.epochs * run.rounds_per_epoch
    header = {"type": "start", "round": round_, "rounds_per_epoch": run.rounds_per_epoch, "total_rounds": total_rounds,
              "iterations": p["iterations"], "sizes": sizes}
    here = socket.gethostname()
    if state["shared_memory"] and all(h.get("host") == here for h, _ in workers.values()):
        block = PeerBlock.create(n_workers, arrays, round_, total_rounds - 1)
        if block is not None:
            state["block"] = block
            header["peers"] = block.offer()
    server.send_all(workers, header, arrays)
    answers = server.gather(workers, round_, kind="attached")
    block = state.get("block")
    if block is not None:
        block.region.unlink()  # every worker has mapped it or declined: the name can go, the mappings stay
        if not all(h.get("ok") for h, _, _ in answers.values()):
            _drop_block(state)
    server.send_all(workers, {"type": "go", "peers": "block" in state})
    state["peers_used"] = state.get("peers_used", False) or "block" in state
    return workers


def _serve(run, server, n_workers, state):
    workers = _join(run, server, n_workers, state, 0, run.resume_round)
    if "block" in state and sys.platform.startswith("linux"):
        # off the critical path now, this thread should not preempt a worker it wakes with a result: on a
        # 2-core box that took a worker's header send from ~0.6 to ~0.16 ms (Linux: the niceness of this thread only)
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    averager, out, last_records = Averager(), {}, {}
    batch, freq = run.master.batch_size_per_worker, run.master.averaging_frequency

    def peer_average(g):
        """Round g's average from the peers' slots (which hold it until the driver moves past round g + 1)."""
        ns = [schedule.round_examples(n, batch, freq, g % run.rounds_per_epoch) for n in state["sizes"]]
        return average(state["block"].sources(g), ns)

    def average(sources, ns):  # into buffers allocated at the first use
        for k, a in sources[0].items():
            if k not in out:
                out[k] = np.empty_like(a)
        return averager(out, sources, ns)

    g = run.resume_round - 1
    for epoch, r, g in run.rounds():
        while True:
            block = state.get("block")
            if block is not None:
                block.consumed[0] = g - 1  # done with round g - 1: the workers may reuse its slots after round g
            try:
                results = server.gather(workers, g)
                break
            except WorkerLost:
                # Spark retries the barrier stage: wait for the next attempt's workers, restart them at round g
                if block is not None and run.synced < g - 1:
                    run.load(peer_average(g - 1), g - 1)  # round g - 1's slots are intact while round g is open
                _abort(server, state, "a worker was lost; the stage is retried")
                workers = _join(run, server, n_workers, state, state["attempt"] + 1, g)
                run.start_clock()
        t0 = time.time()
        total = Contribution()
        for w in range(n_workers):  # in worker order: the same floats whatever the arrival order
            h = results[w][0]
            waited = h["stats"].pop("prev_wait_s", None)  # peers: their wait + averaging after the last round
            if waited is not None and w in last_records:
                last_records[w]["wait_s"] = waited
            last_records[w] = h["stats"]
            total.merge(Contribution(h["n"], loss_sum=h["loss_sum"], partials=wire.decode_partials(h["partials"]),
                                     steps=h["steps"], stats=[h["stats"]]))
        ns = [results[w][0]["n"] for w in range(n_workers)]
        if block is not None:  # the workers have averaged already; the model needs it only now and then
            expected = [schedule.round_examples(n, batch, freq, r) for n in state["sizes"]]
            if ns != expected:
                raise RuntimeError(f"round {g + 1}: the workers fitted {ns} examples, the schedule says {expected}")
            need = run.needs_model(r, g) and total.n
            averaged = run.average(total, epoch, r, g, peer_average(g) if need else None, skip=not need)
        else:
            sources = [results[w][1] for w in range(n_workers)]
            averaged = run.average(total, epoch, r, g, average(sources, ns) if total.n else None)
            server.send_all(workers, {"type": "params", "round": g + 1, "iterations": averaged["iterations"]},
                            {k: averaged[k] for k in PARTS})
            sent = time.time()
            for header, _, arrived in results.values():
                header["stats"]["wait_s"] = sent - arrived
        run.commit(total, averaged, epoch, r, g, t0)
    if run.stopped and g + 1 < run.epochs * run.rounds_per_epoch:
        block = state.get("block")
        if block is not None:
            block.stop[0] = g + 1  # the workers are already fitting round g + 1: it is their last
        try:  # take round g + 1's results, then tell the workers to stop
            server.gather(workers, g + 1)
        except (WorkerLost, TimeoutError):
            pass
        if block is None:
            server.send_all(workers, {"type": "done"})


def _barrier_task(host, port, secret, input_shape, n_features, label_dtype, model_json, compile_json, backend,
                  local, seed, shuffle, batch_size, freq, average_optimizer_state, timeout, fail_once_at):
    """The barrier task closure: plain values only (the secret travels here, never in logs or configs)."""
    def task(batches):
        import os
        import socket
        import time as _time

        import numpy as np
        import pyarrow as pa
        from pyspark import BarrierTaskContext

        from sparkdl.spark.data import batch_to_numpy
        from sparkdl.spark.gpu import task_backend
        from sparkdl.dist import schedule, wire as _wire
        from sparkdl.dist.averaging import Averager
        from sparkdl.dist.peers import PeerBlock
        from sparkdl.dist.worker import fit_round, worker_model

        ctx = BarrierTaskContext.get()
        worker, attempt = ctx.partitionId(), ctx.taskAttemptId()  # grows with every retry
        t0 = _time.time()
        xs, ys = [], []
        for b in batches:
            xb, yb = batch_to_numpy(b, n_features)
            xs.append(xb)
            ys.append(yb.astype(label_dtype))
        x = (np.concatenate(xs) if xs else np.zeros((0, n_features), np.float32)).reshape((-1,) + tuple(input_shape))
        y = np.concatenate(ys) if ys else np.zeros(0, label_dtype)
        model = worker_model(model_json, compile_json, task_backend(backend, local))
        opt = model.optimizer
        n_rows = len(x)
        x, y = model.xp.asarray(x), model.xp.asarray(y)  # resident for the whole fit (on the GPU with cupy)
        read_s = _time.time() - t0
        sock = socket.create_connection((host, port), timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _wire.respond(sock, secret)
        _wire.send(sock, {"type": "hello", "worker": worker, "attempt": attempt, "rows": n_rows,
                          "host": socket.gethostname()})
        sock.settimeout(None)
        header, arrays = _wire.recv(sock)
        if header["type"] != "start":
            raise RuntimeError(f"the averaging server refused worker {worker}: {header.get('reason', header['type'])}")
        g, per_epoch, total = header["round"], header["rounds_per_epoch"], header["total_rounds"]
        iterations, sizes = header["iterations"], header["sizes"]
        block = PeerBlock.attach(header["peers"]) if "peers" in header and model.xp is np else None
        _wire.send(sock, {"type": "attached", "round": g, "ok": block is not None})
        go, _ = _wire.recv(sock)
        if go["type"] != "go":
            raise RuntimeError(f"the driver aborted the fit: {go.get('reason')}")
        own = (model.params, model.state, opt.state_buffer)  # the model is cached in this process: restored below
        try:
            if block is not None and not go["peers"]:
                block.close()
                block = None
            if block is not None:  # train in place in this worker's slot of the shared block
                mine = block.slot(worker, g)
                for k, a in arrays.items():
                    np.copyto(mine[k], a)
                model.use_buffers(mine["params"], mine.get("state"))
                if average_optimizer_state:
                    opt.use_buffer(mine["opt"])
                arrays = None
            averager, res, order_epoch, synced = Averager(), None, None, None
            while g < total:
                if fail_once_at is not None and (worker, g) == tuple(fail_once_at[:2]) and not os.path.exists(fail_once_at[2]):
                    open(fail_once_at[2], "w").close()
                    os._exit(1)  # test hook: this Python worker dies mid-fit, once
                epoch, r = divmod(g, per_epoch)
                if epoch != order_epoch:  # one shuffle per epoch (0.5 ms for 30k rows: too much to redo every round)
                    order, order_epoch = schedule.epoch_order(n_rows, seed, epoch, worker, shuffle), epoch
                record = {"worker": worker, "round": g, "epoch": epoch, "start": _time.time(), "read_s": read_s}
                read_s = 0.0
                batches = schedule.round_batches(order, batch_size, freq, r)
                if block is None:
                    res = fit_round(model, x, y, batches, arrays["params"], arrays.get("state"), arrays.get("opt"),
                                    iterations, average_optimizer_state, record, copy=False)
                    _wire.send(sock, _round_header(g, res, record), {"params": res.params, "state": res.state,
                                                                    "opt": res.opt})
                    header, arrays = _wire.recv(sock)
                    if header["type"] == "params":
                        g, iterations = header["round"], header["iterations"]
                    elif header["type"] == "done":
                        break
                    else:
                        raise RuntimeError(f"the driver aborted the fit: {header.get('reason')}")
                    continue
                res = fit_round(model, x, y, batches, None, None, None, iterations, average_optimizer_state, record,
                                copy=False)
                block.done[worker] = g  # published: the slot holds this round's result
                record["prev_wait_s"] = synced
                header = _round_header(g, res, record)
                # the driver handles a result while other workers still fit, not while all of them average: a
                # worker that is not the last one sends it now, the last one once the round is averaged
                early = g + 1 >= total or block.done.min() < g
                if early:
                    _wire.send(sock, header)
                t_wait = _time.time()
                go_on = g + 1 < total and block.wait(g, timeout, sock)
                if go_on:
                    ns = [schedule.round_examples(n, batch_size, freq, r) for n in sizes]
                    nxt = block.average(worker, g, ns, averager, timeout, sock)
                    model.use_buffers(nxt["params"], nxt.get("state"))
                    if average_optimizer_state:
                        opt.use_buffer(nxt["opt"])
                    iterations += max(-(-n // batch_size) for n in ns)
                    synced = _time.time() - t_wait  # barrier + averaging: reported with the next round
                if not early:
                    _wire.send(sock, header)
                if not go_on:
                    break
                g += 1
        finally:
            model.use_buffers(own[0], own[1])
            if average_optimizer_state:
                opt.use_buffer(own[2])
            if block is not None:
                mine = nxt = res = None  # views of the block
                block.close()
        sock.close()
        yield pa.record_batch([pa.array([worker], pa.int32()), pa.array([n_rows], pa.int64())],
                              names=["worker", "rows"])
    return task


def _round_header(g, res, record):
    return {"type": "round", "round": g, "n": res.n, "loss_sum": res.loss_sum, "steps": res.steps,
            "partials": wire.encode_partials(res.partials), "stats": record}
