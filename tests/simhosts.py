"""Simulated hosts on one machine: Linux network namespaces on a bridge, each with its own address, hostname and
/dev/shm, for the multi-host tests and bench/scale.py. Root only. The directories ``private_dirs`` (which must
exist) are each host's own, empty, there: what this namespace writes in them no host sees.

    with SimulatedHosts(3) as hosts:          # 3 namespaces on a bridge in a fresh 10.x.y.0/24 test subnet
        hosts.driver_ip                        # the bridge's address, in this (the root) namespace
        hosts.ips[i], hosts.names[i]           # host i's address and hostname
        hosts.prefix(i)                        # a command prefix that runs a command on host i
        hosts.pids(i)                          # the processes now running on host i

The hosts and this namespace meet on a bridge in a switch namespace of its own, whose bridged frames skip
iptables, so the machine's firewall is neither met (once a Docker daemon has run, FORWARD is DROP) nor changed.
Everything is removed on exit, also after a failure: processes started on the hosts (by pid), namespaces and
links. Traffic goes only to the test subnet, which the hosts have as their only route.
"""
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time


def available():
    """None when simulated hosts can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "simulated hosts need root (network namespaces)"
    for tool in ("ip", "unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"simulated hosts need {tool!r}"
    name = f"sdlprobe{os.getpid() % 100000}"
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if probe.returncode:
        return f"cannot create a network namespace: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def _run(*cmd, check=True):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if check and out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip()}")
    return out


def _free_subnet():
    used = _run("ip", "-4", "-o", "addr").stdout + _run("ip", "-4", "route").stdout
    rng = random.Random(os.getpid() ^ int(time.time()))
    for _ in range(100):
        net = f"10.{rng.randint(200, 250)}.{rng.randint(1, 254)}"
        if f"{net}." not in used:
            return net
    raise RuntimeError("no free 10.x.y.0/24 test subnet")


class SimulatedHosts:
    def __init__(self, n, private_dirs=()):
        self.n, self.private_dirs = n, list(private_dirs)
        tag = f"{os.getpid() % 10000}{random.Random().randint(0, 99):02d}"
        self.net = _free_subnet()
        self.bridge = f"sdlb{tag}"   # this namespace's link to the switch
        self.switch = f"sdl-{tag}-sw"
        self.namespaces = [f"sdl-{tag}-{i}" for i in range(n)]
        self.links = [f"sdl{tag}h{i}" for i in range(n)]
        self.names = [f"simhost{i}-{tag}" for i in range(n)]
        self.driver_ip = f"{self.net}.1"
        self.ips = [f"{self.net}.{10 + i}" for i in range(n)]
        self.made = []
        self.holders = []   # one process per host that holds its namespaces (hostname, /dev/shm)

    def __enter__(self):
        try:
            self._make()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _make(self):
        # the switch: a bridge in a namespace of its own, whose bridged frames skip iptables (a per-namespace
        # setting), so the host's firewall (FORWARD DROP once a Docker daemon has run) is neither met nor changed
        sw = ("ip", "netns", "exec", self.switch)
        _run("ip", "netns", "add", self.switch)
        self.made.append(("netns", self.switch))
        _run(*sw, "ip", "link", "add", "br0", "type", "bridge")
        _run(*sw, "ip", "link", "set", "br0", "up")
        _run(*sw, "ip", "link", "set", "lo", "up")
        for table in ("iptables", "ip6tables", "arptables"):
            _run(*sw, "sh", "-c", f"f=/proc/sys/net/bridge/bridge-nf-call-{table}; [ ! -e $f ] || echo 0 > $f")
        # this namespace (the driver, the master) reaches the switch through one link
        _run("ip", "link", "add", self.bridge, "type", "veth", "peer", "name", f"{self.bridge}p")
        self.made.append(("link", self.bridge))
        _run("ip", "link", "set", f"{self.bridge}p", "netns", self.switch)
        _run(*sw, "ip", "link", "set", f"{self.bridge}p", "master", "br0", "up")
        _run("ip", "addr", "add", f"{self.driver_ip}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for ns, link, ip in zip(self.namespaces, self.links, self.ips):
            _run("ip", "netns", "add", ns)
            self.made.append(("netns", ns))
            _run("ip", "link", "add", link, "type", "veth", "peer", "name", f"{link}p")
            self.made.append(("link", link))
            _run("ip", "link", "set", f"{link}p", "netns", ns)
            _run("ip", "link", "set", link, "netns", self.switch)
            _run(*sw, "ip", "link", "set", link, "master", "br0", "up")
            inside = ("ip", "netns", "exec", ns, "ip")
            _run(*inside, "link", "set", "lo", "up")
            _run(*inside, "link", "set", f"{link}p", "name", "eth0")
            _run(*inside, "addr", "add", f"{ip}/24", "dev", "eth0")
            _run(*inside, "link", "set", "eth0", "up")
        for i, ns in enumerate(self.namespaces):
            hidden = "".join(f" && mount -t tmpfs -o size=64m,mode=1777 tmpfs {d}" for d in self.private_dirs)
            script = (f"hostname {self.names[i]} && mount -t tmpfs -o size=512m,mode=1777 tmpfs /dev/shm{hidden} && "
                      f"exec sleep infinity")
            self.holders.append(subprocess.Popen(["ip", "netns", "exec", ns, "unshare", "--uts", "--mount",
                                                  "--propagation", "private", "sh", "-c", script]))
        for i, holder in enumerate(self.holders):   # until its hostname is set: the namespaces are ready
            deadline = time.time() + 10
            while _run(*self.prefix(i), "hostname", check=False).stdout.strip() != self.names[i]:
                if holder.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"simulated host {i} did not start (exit status {holder.poll()})")
                time.sleep(0.05)
        self._wait_reachable()

    def _wait_reachable(self, timeout=20):
        """Until each host accepts a TCP connection from here (the links need a moment to come up)."""
        deadline = time.time() + timeout
        for i, ip in enumerate(self.ips):
            probe = ["ip", "netns", "exec", self.namespaces[i], sys.executable, "-c",
                     "import socket; s = socket.create_server(('0.0.0.0', 0)); print(s.getsockname()[1], flush=True); "
                     "s.settimeout(20); s.accept()"]
            server = subprocess.Popen(probe, stdout=subprocess.PIPE, text=True)
            try:
                port = int(server.stdout.readline())
                while True:
                    try:
                        socket.create_connection((ip, port), timeout=1).close()
                        break
                    except OSError:
                        if time.time() > deadline:
                            raise RuntimeError(f"simulated host {ip} is not reachable on bridge {self.bridge}")
                        time.sleep(0.1)
            finally:
                server.kill()
                server.wait()

    def prefix(self, i):
        """Run a command on host i: its network namespace, its own hostname and its own /dev/shm."""
        return ["nsenter", "-t", str(self.holders[i].pid), "--net", "--uts", "--mount", "--"]

    def pids(self, i):
        out = _run("ip", "netns", "pids", self.namespaces[i], check=False).stdout.split()
        return [int(p) for p in out if p.isdigit()]

    def kill_all(self, sig=signal.SIGKILL):
        for i in range(self.n):
            for pid in self.pids(i):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass

    def close(self):
        if len([kind for kind, _ in self.made if kind == "netns"]) > 1:
            self.kill_all(signal.SIGTERM)
            deadline = time.time() + 10
            while time.time() < deadline and any(self.pids(i) for i in range(self.n)):
                time.sleep(0.1)
            self.kill_all(signal.SIGKILL)
        for holder in self.holders:
            holder.wait()
        self.holders = []
        for kind, name in reversed(self.made):
            if kind == "netns":
                _run("ip", "netns", "del", name, check=False)
            else:
                _run("ip", "link", "del", name, check=False)
        self.made = []
