"""The image's HEALTHCHECK. One image runs every role of docker-compose.yml, so the check asks PID 1's command line
which Spark daemon this container runs (the official image starts it under tini, the stand-in directly) and probes
that daemon's web UI: a master is healthy when http://127.0.0.1:<webui-port>/json/ says ALIVE, a worker when its
UI names the master it registered with. Anything else (the submit service, a shell) has nothing to probe and is healthy.
Standard library only: the image has python3, not necessarily curl."""
import json
import sys
import urllib.request


def web_ui_port(args, default):
    return int(args[args.index("--webui-port") + 1]) if "--webui-port" in args[:-1] else default


def main():
    try:
        with open("/proc/1/cmdline", "rb") as f:
            args = f.read().decode(errors="replace").split("\0")
    except OSError:
        return 0
    if "org.apache.spark.deploy.master.Master" in args:
        url = f"http://127.0.0.1:{web_ui_port(args, 8080)}/json/"
        with urllib.request.urlopen(url, timeout=3) as r:
            status = json.load(r).get("status")
        if status != "ALIVE":
            print(f"master status {status!r} at {url}")
            return 1
        print(f"master ALIVE at {url}")
    elif "org.apache.spark.deploy.worker.Worker" in args:
        url = f"http://127.0.0.1:{web_ui_port(args, 8081)}/json/"
        with urllib.request.urlopen(url, timeout=3) as r:
            state = json.load(r)
        if not state.get("masterurl"):       # empty until the worker has registered with a master
            print(f"worker {state.get('id')} not registered with a master yet ({url})")
            return 1
        print(f"worker {state.get('id')} of {state.get('masterurl')} up at {url}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:   # connection refused while the daemon starts, a timeout, bad JSON: unhealthy
        print(f"unhealthy: {type(e).__name__}: {e}")
        sys.exit(1)
