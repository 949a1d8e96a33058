"""mode="barrier": every worker stays resident for the whole fit and the workers average among themselves;
the driver only follows. Spark-free: sparkdl.spark.barrier launches ``worker_main`` in one barrier stage,
tests launch it in plain processes.

Placement. The workers find each other through the driver (sparkdl.dist.rendezvous; not Spark's
BarrierTaskContext.allGather, which takes a second a call): each says which host it is on (hostname and /dev/shm)
and where it listens, and hears the same of all the others.
The workers of one host form a group that shares one region of memory (sparkdl.dist.host), its leader being
the one with the lowest id; the leaders of all hosts all-reduce over TCP, fully connected (sparkdl.dist.mesh). With
``shared_memory=False`` (or on a GPU, or where the host cannot share memory) every worker is a group of its own.

A round. Every worker fits ``averaging_frequency`` minibatches in place in its flat block (params, layer
state, optimizer state), then the block is averaged, weighted by the examples each worker fitted:
- within a group: each worker sums 1/L of the elements over the group's blocks (weights n_i / N);
- between groups: the leaders all-reduce those partial sums (2 (K - 1) / K of the block per leader);
- within a group again: every worker copies the result into its block.
Each worker's tally row (examples, loss and metric sums, timings) is added up on the same way, so worker 0
sends the driver one row per round: the driver's bytes per round depend neither on the model nor on the
number of workers.

The driver needs the model only at some rounds (the last, those callbacks read it at, epoch ends where there
is validation or a callback wants it, a few for the stats' layer samples: ``FitRun.needs_model``), listed in
advance; there every leader sends it its summed range (the model once in all), every worker its timing records,
and the driver answers with a verdict (go on, or stop: then the model is that round's average). Workers wait for
the verdict only some rounds later, so the driver's epoch-end work (validation, callbacks) overlaps the next
rounds.

Faults. A lost worker fails its barrier task (its peers fail fast, see sparkdl.dist.mesh); Spark retries the
whole stage and the new workers start from the model the driver holds (the last round it fetched), so a
retried fit ends with the same weights as one that was never interrupted.

Where it lives: this module holds the master; the driver's side is sparkdl.dist.driver; a worker joins in
sparkdl.dist.rendezvous (``worker_main``), runs its rounds in sparkdl.dist.rounds and averages its block in
sparkdl.dist.sync; the block's layout, which both sides share, is in sparkdl.dist.block.
"""
import threading

from .driver import BarrierDriver
from .master import Master, register
from .rendezvous import worker_main
from .rounds import _Verdicts

__all__ = ["Barrier", "BarrierDriver", "worker_main", "_Verdicts"]


@register
class Barrier(Master):
    """One barrier stage per fit; the workers average among themselves (see the module's text)."""
    mode = "barrier"
    order = 1

    def fit(self, options, run, launcher):
        launcher.check_barrier()
        ports = launcher.ports(options.ports)
        driver = BarrierDriver(run, launcher.num_workers, launcher.bind_host, ports, options.server_timeout,
                               options.shared_memory, options.collect_stats, advertise=launcher.driver_host,
                               memory_budget=launcher.memory_budget(options.memory_budget),
                               bind_cpus=options.bind_cpus)
        failure = []
        # on a signal: first the workers end their tasks quietly, then the launcher cancels what is left
        run.stoppers.insert(0, lambda: driver.stop(f"the fit was interrupted ({run.stop_signal})"))

        def serve():
            try:
                driver.serve()
                driver.dismiss_late_workers()
            except BaseException as e:   # surfaced by the caller's thread, unless the stage failed first
                if driver.server.closed:
                    return
                failure.append(e)
                driver.abort(f"{type(e).__name__}: {e}")
                launcher.cancel()

        thread = threading.Thread(target=serve, name="sparkdl-barrier-driver", daemon=True)
        thread.start()
        run.mark("launched")
        try:
            launcher.run_barrier(driver.worker_spec(ports), run)
            driver.stage_done = True
            thread.join()
        except BaseException:
            driver.abort("the barrier stage failed")
            driver.close()
            thread.join(timeout=5)
            if failure:
                raise failure[0] from None
            raise
        finally:
            driver.close()
        if failure:
            raise failure[0]
        run.history.refused_connections = driver.server.refused
        run.history.shared_memory = any(len(g) > 1 for g in driver.groups)
        run.history.placement = {"groups": [list(g) for g in driver.groups],
                                 "hosts": {w: h.get("host") for w, h in sorted(driver.hellos.items())},
                                 "listening": {w: f"{h.get('address')}:{h.get('port')}"
                                               for w, h in sorted(driver.hellos.items())},
                                 "driver": f"{driver.server.host}:{driver.server.port}", "lost": driver.lost}
        return run.finish()
