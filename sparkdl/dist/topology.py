"""Who averages with whom in barrier mode, as the driver and every worker compute it from the rendezvous (the
workers' hellos, relayed by the driver): the hosts' groups, their leaders, and the token of one attempt."""
import hashlib
import json


class Topology:
    """Who averages with whom, as every worker computes it from the rendezvous: ``infos[w]`` is worker w's
    {"host", "address", "port"}; ``offers[w]`` what a group leader offered (None: no shared memory there)."""

    def __init__(self, infos, share_memory, offers=None):
        by_host = {}
        for w, info in enumerate(infos):
            by_host.setdefault(info["host"] if share_memory else f"worker-{w}", []).append(w)
        groups = []
        for members in by_host.values():
            members = sorted(members)
            if offers is not None and len(members) > 1 and not offers[members[0]]:
                groups.extend([m] for m in members)  # that host could not share memory
            else:
                groups.append(members)
        self.groups = sorted(groups)
        self.leaders = [g[0] for g in self.groups]
        self.group_of = {w: g for g in self.groups for w in g}
        self.leader_rank = {w: k for k, w in enumerate(self.leaders)}
        self.infos = infos

    def name(self, w):
        return f"worker {w} ({self.infos[w]['address']})"


def attempt_token(infos):
    """The same bytes for every worker of one attempt of the stage, other bytes for any other attempt."""
    return hashlib.sha256(json.dumps(sorted((i["worker"], i["attempt"]) for i in infos)).encode()).digest()
