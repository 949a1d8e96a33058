"""The launcher a master (sparkdl.dist.master) runs its tasks through, on one prepared DataFrame laid out one
partition per worker (sparkdl.spark.prepared)."""
import uuid

from . import barrier, jobs


class Launcher:
    def __init__(self, options, entry):
        self.options, self.entry = options, entry
        self.session = entry.laid_out.sparkSession
        self.sc = self.session.sparkContext
        self.num_workers = entry.workers
        self.local = self.sc.master.startswith("local")
        self.bind_host, self.driver_host = barrier.driver_addresses(self.sc)
        self.group = f"sparkdl-{uuid.uuid4().hex[:8]}"
        self.paths = None

    def cancel(self):
        self.sc.cancelJobGroup(self.group)

    def check_barrier(self):
        barrier.check_cluster(self.sc, self.num_workers)

    def ports(self, given=None):
        return barrier.ports(self.session, given)

    def memory_budget(self, given=None):
        return given if given is not None else barrier.memory_budget(self.sc, self.num_workers)

    def run_barrier(self, spec, run):
        barrier.run_barrier(self, spec, run)

    def exported(self, run):
        return jobs.exported(self, run)

    def run_round(self, run, epoch, r, g):
        return jobs.run_round(self, run, epoch, r, g)
