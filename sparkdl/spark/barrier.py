"""mode="barrier": one barrier stage per fit. Each task converts its partition to numpy once, keeps it for all
epochs, and every ``averaging_frequency`` minibatches trades its buffers with the driver's averaging server for
the example-weighted average: no Spark job per round. If a worker dies, Spark retries the whole stage and the
new tasks resume from the driver's latest average at the round where the fit stood."""
import secrets
import threading
import time
import uuid

from ..train import wire
from ..train.averaging import PARTS, OrderedSum
from ..train.server import AveragingServer, WorkerLost


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
    server = AveragingServer(secret, driver_host(sc), master.server_timeout, shared_memory=master.shared_memory)
    task = _barrier_task(server.host, server.port, secret, run.input_shape, run.n_features, run.label_dtype,
                         run.model_json, run.compile_json, master.backend, sc.master.startswith("local"),
                         master.seed, master.shuffle,
                         master.batch_size_per_worker, master.averaging_frequency, master.average_optimizer_state,
                         getattr(master, "fail_once_at", None))
    group = f"sparkdl-barrier-{uuid.uuid4().hex[:8]}"
    failure, state = [], {}

    def serve():
        try:
            _serve(run, server, n_workers, state)
        except BaseException as e:  # surfaced by the main thread
            failure.append(e)
            server.abort(state.get("workers"), f"{type(e).__name__}: {e}")
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
    if failure:
        raise failure[0]
    run.history.refused_connections = server.refused
    return run.finish()


def _adder(total):
    """on_result for server.gather: each result is weighted and summed as it arrives (in worker order), while
    slower workers are still fitting."""
    def add(w, header, arrays):
        total.add(w, header["n"], arrays, header["loss_sum"], wire.decode_partials(header["partials"]),
                  header["steps"], [header["stats"]])
    return add


def _join(run, server, n_workers, state, min_attempt, round_):
    """Wait for a full set of workers and send them where the fit stands."""
    workers = server.wait_for_workers(n_workers, min_attempt)
    state["workers"] = workers
    state["attempt"] = max(h.get("attempt", 0) for h, _ in workers.values())
    sizes = [workers[w][0]["rows"] for w in range(n_workers)]
    if "sizes" not in state:
        run.start(sizes)
        state["sizes"] = sizes
    elif sizes != state["sizes"]:
        raise RuntimeError(f"the retried workers hold {sizes} rows, not {state['sizes']}: the partitioning changed")
    p = run.payload(copy=False)
    server.start(workers, {"type": "start", "round": round_, "rounds_per_epoch": run.rounds_per_epoch,
                              "total_rounds": run.epochs * run.rounds_per_epoch, "iterations": p["iterations"]},
                    {"params": p["params"], "state": p["state"], "opt": p["opt"]})
    return workers


def _serve(run, server, n_workers, state):
    workers = _join(run, server, n_workers, state, 0, run.resume_round)
    g = run.resume_round - 1
    summed = OrderedSum()
    for epoch, r, g in run.rounds():
        summed.begin()
        while True:
            try:
                results = server.gather(workers, g, _adder(summed))
                break
            except WorkerLost:
                # Spark retries the barrier stage: wait for the next attempt's workers, restart them at round g
                workers = _join(run, server, n_workers, state, state["attempt"] + 1, g)
                summed.begin()
                run.start_clock()
        t0 = time.time()
        total = summed.result()
        # averaged straight into the shared region the workers read (written once for all of them), sent, and
        # only then loaded into the driver's model, while the workers fit the next round
        averaged = run.average(total, epoch, r, g, out=server.outbox())
        server.send_all(workers, {"type": "params", "round": g + 1, "iterations": averaged["iterations"]},
                        {k: averaged[k] for k in PARTS})
        sent = time.time()
        for header, _, arrived in results.values():
            header["stats"]["wait_s"] = sent - arrived
        run.commit(total, averaged, epoch, r, g, t0)
    if run.stopped and g + 1 < run.epochs * run.rounds_per_epoch:
        try:  # the workers are already fitting the next round: take it, then tell them to stop
            server.gather(workers, g + 1)
        except (WorkerLost, TimeoutError):
            pass
        server.send_all(workers, {"type": "done"})


def _barrier_task(host, port, secret, input_shape, n_features, label_dtype, model_json, compile_json, backend,
                  local, seed, shuffle, batch_size, freq, average_optimizer_state, fail_once_at):
    """The barrier task closure: plain values only (the secret travels here, never in logs or configs)."""
    def task(batches):
        import os
        import socket
        import time as _time

        import numpy as np
        import pyarrow as pa
        from pyspark import BarrierTaskContext

        from sparkdl.spark.data import batch_to_numpy
        from sparkdl.train import schedule, wire as _wire
        from sparkdl.train.shm import Region
        from sparkdl.spark.gpu import task_backend
        from sparkdl.train.worker import fit_round, worker_model

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
        offer = header.get("shm") or {}
        down, up = (Region.attach(**offer[k]) if k in offer else None for k in ("down", "up"))
        if down is None or up is None:  # not on the driver's host after all: everything goes through the socket
            for region in (down, up):
                if region is not None:
                    region.close()
            down = up = None
        g, per_epoch, total = header["round"], header["rounds_per_epoch"], header["total_rounds"]
        iterations = header["iterations"]
        res = result = order_epoch = None
        while g < total:
            if fail_once_at is not None and (worker, g) == tuple(fail_once_at[:2]) and not os.path.exists(fail_once_at[2]):
                open(fail_once_at[2], "w").close()
                os._exit(1)  # test hook: this Python worker dies mid-fit, once
            epoch, r = divmod(g, per_epoch)
            if epoch != order_epoch:  # one shuffle per epoch (0.5 ms for 30k rows: too much to redo every round)
                order, order_epoch = schedule.epoch_order(n_rows, seed, epoch, worker, shuffle), epoch
            record = {"worker": worker, "round": g, "epoch": epoch, "start": _time.time(), "read_s": read_s}
            read_s = 0.0
            res = fit_round(model, x, y, schedule.round_batches(order, batch_size, freq, r), arrays["params"],
                            arrays.get("state"), arrays.get("opt"), iterations, average_optimizer_state, record,
                            copy=False)
            result = {"params": res.params, "state": res.state, "opt": res.opt}
            _wire.send(sock, {"type": "round", "round": g, "n": res.n, "loss_sum": res.loss_sum, "steps": res.steps,
                              "partials": _wire.encode_partials(res.partials), "stats": record, "shm": up is not None},
                       result if up is None else None, up.put(result) if up is not None else ())
            header, arrays = _wire.recv(sock, region=down)
            if header["type"] == "params":
                g, iterations = header["round"], header["iterations"]
            elif header["type"] == "done":
                break
            else:
                raise RuntimeError(f"the driver aborted the fit: {header.get('reason')}")
        sock.close()
        arrays = res = result = None  # views of the regions
        for region in (down, up):
            if region is not None:
                region.close()
        yield pa.record_batch([pa.array([worker], pa.int32()), pa.array([n_rows], pa.int64())],
                              names=["worker", "rows"])
    return task
