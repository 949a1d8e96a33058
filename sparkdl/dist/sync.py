"""A barrier worker's part in averaging its block every round: within its host through the shared memory of its
group (sparkdl.dist.host), between hosts through the leaders' TCP mesh (sparkdl.dist.mesh), as the placement
(sparkdl.dist.rendezvous) says; it also adds up the workers' tally rows on the way."""
import time

import numpy as np


class _Sync:
    """One worker's part in averaging its block: group (shared memory) and mesh (TCP) as the topology says."""

    def __init__(self, rank, topo, group, mesh, block, tally, timeout, control):
        self.rank, self.topo, self.group, self.mesh, self.block = rank, topo, group, mesh, block
        self.tally, self.timeout, self.control = tally, timeout, control
        self.local = topo.group_of[rank]
        self.alone = len(topo.leaders) == 1   # one group: no mesh
        self.j = self.local.index(rank)
        self.leader = self.j == 0
        self.solo = all(len(g) == 1 for g in topo.groups)   # one worker per host: the mesh may scale the sums
        self.buf = group.partial if group is not None else block   # what the leaders' mesh sums

    def distribute(self, round_, chunk, lo, hi):
        """Start of the fit: the leaders hold their range of the driver's model; afterwards every block holds
        all of it."""
        if self.leader:
            self.buf[lo:hi] = chunk
            if self.mesh is not None:
                self.mesh.allgather(self.buf)
                self._prepare()
            if self.group is not None:
                self.group.mesh_done(round_ - 1)
        if self.group is not None:
            self.group.wait_mesh(round_ - 1, self.timeout, self.control)
            np.copyto(self.block, self.group.partial)

    def _prepare(self):
        """The other hosts' parts of the next round start coming in while this worker fits it."""
        self.mesh.prepare(self.buf.size, self.buf.dtype, self.tally.width)

    def __call__(self, round_, weights, row, report=None):
        """Average the blocks of ``round_`` (``weights[w]`` = worker w's examples / all examples); returns the
        mesh's share of the time. ``report(total_row)`` gets the tally row summed over all workers (called at
        worker 0 only, where it would otherwise wait, if there is such a moment)."""
        group, mesh, mesh_s = self.group, self.mesh, 0.0
        report = report if self.rank == 0 else None
        if group is None and self.alone:
            report and report(row)
            return 0.0
        if group is None:
            w, scale = weights[self.rank], None
            if self.solo and all(v == w for v in weights):   # the usual round: the owners scale the sums (S / K)
                scale = w
            elif w:
                self.block *= self.block.dtype.type(w)
            else:
                self.block[...] = 0
            t = time.perf_counter()
            rows = mesh.allreduce(self.block, row, scale)
            self._prepare()
            mesh_s = time.perf_counter() - t
            report and report(self.tally.combine(rows))
            return mesh_s
        group.publish(self.j, round_, row)
        group.wait_published(round_, self.timeout, self.control)
        host_row = self.tally.combine(group.rows) if self.leader else None
        local_weights = [weights[w] for w in self.local]
        if self.alone:
            group.average_shares(self.j, round_, local_weights, self.timeout, self.control,
                                 (lambda: report(host_row)) if report else None)
            return 0.0
        group.partial_shares(self.j, round_, local_weights, self.timeout, self.control)
        if self.leader:
            t = time.perf_counter()
            rows = mesh.allreduce(group.partial, host_row)
            self._prepare()
            mesh_s = time.perf_counter() - t
            group.mesh_done(round_)
            report and report(self.tally.combine(rows))
        else:
            group.wait_mesh(round_, self.timeout, self.control)
        np.copyto(self.block, group.partial)
        return mesh_s
