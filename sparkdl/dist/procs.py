"""Barrier fits without Spark: every worker a plain process (``python -m sparkdl.dist.procs DIR RANK ...``), the
shards as .npy files in DIR. The tests and benchmarks run the runtime this way;
on a real cluster sparkdl.spark launches the same ``worker_main`` in a barrier stage.

A worker may run behind a command prefix (``ip netns exec ...`` for a simulated host), on an address and with a
host identity of its own. Like Spark with a barrier stage, a failed attempt is stopped and retried as a whole.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np


class ProcessContext:
    def __init__(self, rank, attempt, address, host):
        from .host import host_key
        self.rank, self.attempt, self.address = rank, attempt, address
        self.host = host or host_key()


class ProcessLauncher:
    """Runs a barrier master's workers as local processes: ``shards[w]`` = (x, y) of worker w, ``addresses[w]``
    where it listens (127.0.0.1), ``hosts[w]`` its host identity (default: its real one), ``prefixes[w]`` a
    command prefix (e.g. a network namespace), ``attempts`` how often a failed stage is tried (Spark: 4)."""

    def __init__(self, shards, addresses=None, hosts=None, prefixes=None, driver_host="127.0.0.1", attempts=2,
                 env=None, directory=None):
        n = len(shards)
        self.shards, self.num_workers = shards, n
        self.addresses = addresses or ["127.0.0.1"] * n
        self.hosts, self.prefixes = hosts or [None] * n, prefixes or [[]] * n
        self.bind_host = self.driver_host = driver_host
        self.attempts, self.env = attempts, env
        self.directory = directory or tempfile.mkdtemp(prefix="sparkdl-procs-")
        self.own_directory = directory is None
        self.procs, self.failures, self.cancelled = [], [], False
        self._attempt = 0

    def check_barrier(self):
        pass

    def ports(self, given=None):
        return given

    def memory_budget(self, given=None):
        return given   # None: every shard stays in memory

    def cancel(self):
        self.cancelled = True
        self._stop()

    def run_barrier(self, spec, run):
        for w, (x, y) in enumerate(self.shards):
            np.save(os.path.join(self.directory, f"x-{w}.npy"), np.ascontiguousarray(x).reshape((-1,) + tuple(run.input_shape)))
            np.save(os.path.join(self.directory, f"y-{w}.npy"), np.asarray(y, run.label_dtype))
        with open(os.path.join(self.directory, "spec.json"), "w") as f:
            json.dump(spec, f)
        for _ in range(self.attempts):
            if self._run_attempt():
                return
            if self.cancelled:
                break
        raise RuntimeError(f"the barrier stage failed {len(self.failures)} time(s): " + " | ".join(self.failures))

    def _run_attempt(self):
        self._attempt += 1
        logs = os.path.join(self.directory, f"attempt-{self._attempt}")
        os.makedirs(logs)
        env = dict(os.environ, **(self.env or {}))
        env["PYTHONPATH"] = os.pathsep.join(p for p in [_source_root(), env.get("PYTHONPATH")] if p)
        self.procs = []
        for w in range(self.num_workers):
            args = [self.directory, str(w), str(self._attempt * 1000 + w), self.addresses[w], self.hosts[w] or ""]
            log = open(os.path.join(logs, f"worker-{w}.log"), "w")
            self.procs.append(subprocess.Popen([*self.prefixes[w], sys.executable, "-m", "sparkdl.dist.procs", *args],
                                               env=env, stdout=log, stderr=subprocess.STDOUT))
            log.close()
        while True:
            codes = [p.poll() for p in self.procs]
            if all(c == 0 for c in codes):
                return True
            if any(c not in (None, 0) for c in codes) or self.cancelled:
                bad = [w for w, c in enumerate(codes) if c not in (None, 0)]
                self._stop()
                tails = []
                for w in bad:
                    with open(os.path.join(logs, f"worker-{w}.log")) as f:
                        lines = f.read().strip().splitlines()
                    tails.append(f"worker {w} exited with {codes[w]}: {lines[-1] if lines else ''}")
                self.failures.append("; ".join(tails) or "cancelled")
                return False
            time.sleep(0.01)

    def _stop(self):
        """Like Spark with a failed barrier stage: every task of the attempt is killed."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()

    def pids(self):
        return [p.pid for p in self.procs]

    def close(self):
        self._stop()
        if self.own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def _source_root():
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv):
    directory, rank, attempt, address, host = argv
    rank, attempt = int(rank), int(attempt)
    with open(os.path.join(directory, "spec.json")) as f:
        spec = json.load(f)
    x = np.load(os.path.join(directory, f"x-{rank}.npy"), allow_pickle=False, mmap_mode="r")
    y = np.load(os.path.join(directory, f"y-{rank}.npy"), allow_pickle=False)
    if spec.get("memory_budget") is None:
        x = np.array(x)
    else:   # as a Spark task would: the shard arrives in batches, kept in memory up to the budget
        from .spill import Spiller
        spiller = Spiller(int(np.prod(x.shape[1:])), y.dtype, spec["memory_budget"], spec["batch_size_per_worker"],
                          os.path.join(directory, f"spill-{rank}"))
        for start in range(0, len(x), 10000):
            spiller.add(x[start:start + 10000], y[start:start + 10000])
        x, y = spiller.finish(x.shape[1:])
    from ..backend import resolve
    from .barrier import worker_main
    spec["backend"] = resolve(spec["backend"], (), local=True)
    worker_main(ProcessContext(rank, attempt, address, host or None), spec, x, y)


if __name__ == "__main__":
    main(sys.argv[1:])
