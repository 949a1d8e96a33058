#!/usr/bin/env bash
# `make compose-test`: runs docker-compose.yml for real. Builds the project image (docker/Dockerfile), starts the
# master and both workers, runs train, evaluate and predict through the submit service, checks that both workers'
# executors ran training tasks (the applications' event logs) and that the outputs are in the shared volume, and
# tears everything down again, also on failure or Ctrl-C, checking that no container, network or volume of the
# compose project (-p sparkdl-compose-test) is left.
#
# The base image (SPARK_IMAGE) is the official Spark image where it can be pulled; elsewhere (no Docker Hub) a
# stand-in built here: Debian bookworm from debootstrap --variant=minbase, imported, plus Java 17, python3 and
# pyspark from PyPI at the version the tests use (docker/Dockerfile.standin), with this machine's extra CA
# certificates trusted (for TLS-inspecting proxies; they go into the image's root filesystem in a temporary
# directory, never into the repository). The stand-in is kept as sparkdl-spark-base:standin-pyspark<version> and
# reused by later runs.
#
# Needs docker (a daemon: the one that answers, else dockerd started here as root and stopped again by its pid),
# docker-compose (or `docker compose`) and, for the stand-in, debootstrap. Missing tools are installed with apt-get
# when running as root (Debian's docker.io, docker-compose, debootstrap), else named. Where it cannot run at all it
# says why and exits 77, or 1 under CI=true.
# Settings (environment): SPARK_IMAGE (a base image to use instead), SPARKDL_STANDIN=1 (the stand-in even where the
# official image can be pulled), SPARKDL_PYSPARK_VERSION (the stand-in's pyspark), DEBIAN_MIRROR,
# COMPOSE_TEST_EPOCHS (2), COMPOSE_TEST_SUBMIT_TIMEOUT (seconds, 900).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
PROJECT=sparkdl-compose-test
STARTED=$(date +%s)
OFFICIAL_IMAGE="$(sed -n 's/.*SPARK_IMAGE:-\([^}]*\)}.*/\1/p' docker-compose.yml | head -n 1)"
ROOTFS_IMAGE=sparkdl-debian:bookworm-minbase
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
EPOCHS="${COMPOSE_TEST_EPOCHS:-2}"

say() { echo "compose-test: $*"; }
elapsed() { local s=$(( $(date +%s) - ${1:-$STARTED} )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
cannot_run() {
  say "cannot run here: $*"
  if [[ "${CI:-}" == true ]]; then exit 1; fi
  exit 77
}

TMP="$(mktemp -d /tmp/sparkdl-compose-test.XXXXXX)"
DOCKERD_PID=""
COMPOSE_USED=""
cleanup() {
  local rc=$? leftovers
  trap - EXIT INT TERM
  set +e
  if [[ -n "$COMPOSE_USED" ]]; then
    say "tearing down: docker-compose -p $PROJECT down -v --remove-orphans"
    compose down -v --remove-orphans --timeout 20 2>&1 | sed 's/^/  /'
    leftovers="$(project_leftovers)"
    echo "$leftovers" | sed 's/^/compose-test: teardown check: /'
    if ! echo "$leftovers" | grep -q '^nothing of project'; then
      say "FAILED: the teardown left parts of project $PROJECT behind"
      [[ $rc -eq 0 ]] && rc=1
    fi
    say "images kept for the next run: $(docker images --format '{{.Repository}}:{{.Tag}} ({{.Size}})' \
      | grep -E '^sparkdl-(spark|spark-base|debian):' | tr '\n' ' ')"
  fi
  # the stand-in's root filesystem: nothing may still be mounted in it before it is removed
  if [[ -d "$TMP" ]]; then
    awk -v dir="$TMP/" 'index($2, dir) == 1 {print $2}' /proc/self/mounts | sort -r | xargs -r -n 1 umount -l
    rm -rf --one-file-system "$TMP"
  fi
  if [[ -n "$DOCKERD_PID" ]]; then
    kill -TERM "$DOCKERD_PID" 2> /dev/null
    for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2> /dev/null || break; sleep 1; done
    kill -0 "$DOCKERD_PID" 2> /dev/null && kill -KILL "$DOCKERD_PID"
    wait "$DOCKERD_PID" 2> /dev/null
    if [[ $rc -eq 0 ]]; then
      rm -f "$DOCKERD_LOG"
      say "stopped the Docker daemon this run started (pid $DOCKERD_PID)"
    else
      say "stopped the Docker daemon this run started (pid $DOCKERD_PID); its log: $DOCKERD_LOG"
    fi
  fi
  if [[ $rc -eq 0 ]]; then
    say "PASSED in $(elapsed) (from the start of this script to the end of the teardown)"
  elif [[ $rc -ne 77 ]]; then
    say "FAILED (exit status $rc) after $(elapsed)"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# -- tools --------------------------------------------------------------------------------------------------------
install_packages() {   # apt-get install, as root, of the Debian packages named; else say what is missing
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get > /dev/null; then
    cannot_run "missing: $* (Debian packages; install them as root, e.g. apt-get install -y $*)"
  fi
  say "installing missing Debian packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -q "$@" || { apt-get update -q && apt-get install -y -q "$@"; }; } > "$TMP/apt.log" 2>&1 \
    || { tail -n 20 "$TMP/apt.log"; cannot_run "apt-get install $* failed"; }
}
command -v docker > /dev/null || install_packages docker.io
if command -v docker-compose > /dev/null; then
  COMPOSE=(docker-compose)
elif docker compose version > /dev/null 2>&1; then
  COMPOSE=(docker compose)
else
  install_packages docker-compose
  COMPOSE=(docker-compose)
fi
compose() { "${COMPOSE[@]}" -p "$PROJECT" -f "$REPO/docker-compose.yml" "$@"; }
project_leftovers() {   # the compose project's containers, networks and volumes, by compose's label and by name
  local label="label=com.docker.compose.project=$PROJECT" c n v
  if ! timeout 20 docker info > /dev/null 2>&1; then
    echo "cannot check: no Docker daemon answers"
    return
  fi
  c="$( { docker ps -aq --filter "$label"; docker ps -aq --filter "name=${PROJECT}_"; } | sort -u)"
  n="$( { docker network ls -q --filter "$label"; docker network ls -q --filter "name=${PROJECT}_"; } | sort -u)"
  v="$( { docker volume ls -q --filter "$label"; docker volume ls -q --filter "name=${PROJECT}_"; } | sort -u)"
  if [[ -z "$c$n$v" ]]; then
    echo "nothing of project $PROJECT remains: 0 containers, 0 networks, 0 volumes (docker ps -a, network ls," \
         "volume ls; by label and by name)"
  else
    echo "left behind: containers [$(echo $c)], networks [$(echo $n)], volumes [$(echo $v)]"
  fi
}

# -- the daemon ---------------------------------------------------------------------------------------------------
phase=$(date +%s)
if timeout 20 docker info > /dev/null 2>&1; then
  say "using the Docker daemon that answers ($(docker info --format '{{.ServerVersion}}, {{.Driver}}' 2> /dev/null))"
else
  [[ "$(id -u)" == 0 ]] || cannot_run "no Docker daemon answers, and only root can start one (dockerd)"
  command -v dockerd > /dev/null || install_packages docker.io
  DOCKERD_LOG="$(mktemp /tmp/sparkdl-dockerd.XXXXXX.log)"
  # its own session, so that a Ctrl-C of this script reaches the script (which tears down) and not the daemon
  setsid -w dockerd > "$DOCKERD_LOG" 2>&1 < /dev/null &
  DOCKERD_PID=$!
  sleep 0.5   # where setsid had to fork (under job control), $! is setsid waiting for it: take the daemon's pid
  [[ "$(cat "/proc/$DOCKERD_PID/comm" 2> /dev/null)" == dockerd ]] \
    || DOCKERD_PID="$(pgrep -n -x dockerd -P "$DOCKERD_PID" || echo "$DOCKERD_PID")"
  for _ in $(seq 60); do
    timeout 10 docker info > /dev/null 2>&1 && break
    kill -0 "$DOCKERD_PID" 2> /dev/null || break
    sleep 0.5
  done
  if ! timeout 10 docker info > /dev/null 2>&1; then
    tail -n 15 "$DOCKERD_LOG"
    cannot_run "dockerd (pid $DOCKERD_PID) did not answer within 30 s; its log: $DOCKERD_LOG"
  fi
  say "started dockerd, pid $DOCKERD_PID, log $DOCKERD_LOG ($(docker info --format '{{.ServerVersion}}, {{.Driver}}'))"
fi
t_daemon=$(elapsed "$phase")

# -- the base image -----------------------------------------------------------------------------------------------
proxy_args=()
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
  [[ -n "${!v:-}" ]] && proxy_args+=(--build-arg "$v")
done

# The CA certificates this machine trusts beyond Debian's set: those of update-ca-certificates' local directory,
# certificate files dropped into /etc/ssl/certs, and the bundles that the environment and pip's configuration name.
# The stand-in keeps a hash of them and is rebuilt when they change.
host_ca_sources() {
  local f
  {
    find /usr/local/share/ca-certificates -type f -name '*.crt' 2> /dev/null
    find /etc/ssl/certs -maxdepth 1 -type f -name '*.pem' 2> /dev/null
    for f in /etc/ssl/certs/ca-certificates.crt "${SSL_CERT_FILE:-}" "${REQUESTS_CA_BUNDLE:-}" "${PIP_CERT:-}" \
             "${CURL_CA_BUNDLE:-}" "${NODE_EXTRA_CA_CERTS:-}"; do echo "$f"; done
    sed -n 's/^[[:space:]]*cert[[:space:]]*=[[:space:]]*//p' /etc/pip.conf /etc/xdg/pip/pip.conf \
      "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf" 2> /dev/null || true   # some of them do not exist
  } | while read -r f; do [[ -n "$f" && -f "$f" ]] && readlink -f "$f"; done | sort -u
}
host_ca_hash() { host_ca_sources | xargs -r cat | sha256sum | cut -c1-16; }

build_rootfs() {   # debootstrap minbase bookworm, the host's extra CAs trusted, imported as $ROOTFS_IMAGE
  command -v debootstrap > /dev/null || install_packages debootstrap
  [[ "$(id -u)" == 0 ]] || cannot_run "debootstrap needs root"
  local rootfs="$TMP/rootfs" t
  t=$(date +%s)
  say "debootstrap --variant=minbase bookworm from $DEBIAN_MIRROR (log: $TMP/debootstrap.log)"
  debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$DEBIAN_MIRROR" \
    > "$TMP/debootstrap.log" 2>&1 || { tail -n 20 "$TMP/debootstrap.log"; say "debootstrap failed"; return 1; }
  cat > "$rootfs/etc/apt/sources.list" << EOF
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
  # every certificate of the host's trust sources that Debian's own bundle lacks, as a local CA of the image
  host_ca_sources | python3 -c '
import re, sys
pem = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")
body = lambda c: "".join(c.split("-----")[2].split())
known = {body(c) for c in pem.findall(open(sys.argv[1]).read())}
extra = {}
for path in sys.stdin.read().split():
    for c in pem.findall(open(path, errors="replace").read()):
        if body(c) not in known:
            extra.setdefault(body(c), c)
for i, c in enumerate(extra.values()):
    with open(f"{sys.argv[2]}/sparkdl-host-ca-{i}.crt", "w") as f:
        f.write(c + "\n")
' "$rootfs/etc/ssl/certs/ca-certificates.crt" "$rootfs/usr/local/share/ca-certificates"
  local extra
  extra=$(find "$rootfs/usr/local/share/ca-certificates" -name 'sparkdl-host-ca-*.crt' | sort)
  if [[ -n "$extra" ]]; then
    say "trusting $(echo "$extra" | wc -l) extra CA certificate(s) of this machine in the stand-in:" \
        "$(for c in $extra; do openssl x509 -in "$c" -noout -subject 2> /dev/null; done | tr '\n' ';')"
    chroot "$rootfs" /usr/sbin/update-ca-certificates > "$TMP/update-ca.log" 2>&1 \
      || { cat "$TMP/update-ca.log"; say "update-ca-certificates failed in the root filesystem"; return 1; }
  else
    say "this machine trusts no CA certificates beyond Debian's"
  fi
  tar -C "$rootfs" -c --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' \
      --exclude='./var/cache/apt/archives/*.deb' --exclude='./var/lib/apt/lists/*' . \
    | docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' --change "LABEL org.sparkdl.host-ca=$(host_ca_hash)" - "$ROOTFS_IMAGE" > /dev/null
  rm -rf --one-file-system "$rootfs"
  say "imported the root filesystem as $ROOTFS_IMAGE in $(elapsed "$t")"
}

pyspark_version() {   # the version the test suite runs with: .venv's, else the newest that setup.cfg admits
  if [[ -n "${SPARKDL_PYSPARK_VERSION:-}" ]]; then echo "$SPARKDL_PYSPARK_VERSION"; return; fi
  if [[ -x .venv/bin/python ]] && \
     .venv/bin/python -c 'import importlib.metadata as m; print(m.version("pyspark"))' 2> /dev/null; then return; fi
  python3 -m pip index versions pyspark 2> /dev/null | sed -n '1s/^pyspark (\(.*\))$/\1/p'
}

label() { docker image inspect --format "{{index .Config.Labels \"$2\"}}" "$1" 2> /dev/null || true; }

phase=$(date +%s)
if [[ -n "${SPARK_IMAGE:-}" ]]; then
  BASE="$SPARK_IMAGE"
  docker image inspect "$BASE" > /dev/null 2>&1 || docker pull "$BASE"
  say "base image: $BASE (SPARK_IMAGE)"
elif [[ "${SPARKDL_STANDIN:-0}" != 1 ]] && { docker image inspect "$OFFICIAL_IMAGE" > /dev/null 2>&1 || \
        { timeout 20 docker manifest inspect "$OFFICIAL_IMAGE" > /dev/null 2>&1 && \
          timeout 900 docker pull "$OFFICIAL_IMAGE"; }; }; then
  BASE="$OFFICIAL_IMAGE"
  say "base image: the official $BASE"
else
  [[ "${SPARKDL_STANDIN:-0}" == 1 ]] && why="SPARKDL_STANDIN=1" || why="$OFFICIAL_IMAGE cannot be pulled here"
  version="$(pyspark_version)"
  [[ -n "$version" ]] || cannot_run "no pyspark version: neither .venv's nor PyPI's (set SPARKDL_PYSPARK_VERSION)"
  BASE="sparkdl-spark-base:standin-pyspark$version"
  ca="$(host_ca_hash)"
  if docker image inspect "$BASE" > /dev/null 2>&1 && [[ "$(label "$BASE" org.sparkdl.host-ca)" == "$ca" ]]; then
    say "base image: the stand-in $BASE, cached ($why)"
  else
    say "base image: building the stand-in $BASE ($why)"
    if ! docker image inspect "$ROOTFS_IMAGE" > /dev/null 2>&1 || \
       [[ "$(label "$ROOTFS_IMAGE" org.sparkdl.host-ca)" != "$ca" ]]; then
      build_rootfs
    else
      say "root filesystem: $ROOTFS_IMAGE, cached"
    fi
    t=$(date +%s)
    docker build -t "$BASE" --build-arg "ROOTFS_IMAGE=$ROOTFS_IMAGE" --build-arg "PYSPARK_VERSION=$version" \
      "${proxy_args[@]}" - < docker/Dockerfile.standin > "$TMP/standin-build.log" 2>&1 \
      || { tail -n 30 "$TMP/standin-build.log"; say "building the stand-in failed"; exit 1; }
    say "built the stand-in $BASE in $(elapsed "$t")"
  fi
  docker run --rm "$BASE" bash -c 'echo "  stand-in: $(java -version 2>&1 | head -n 1), $(python3 --version),
    pyspark $(python3 -c "import pyspark; print(pyspark.__version__)"), $(id),
    SPARK_HOME=$SPARK_HOME -> $(readlink -f $SPARK_HOME)"' | tr -s ' \n' ' '; echo
fi
t_base=$(elapsed "$phase")

# docker/constraints.txt pins the image's dependencies to the tests' versions: say where .venv has moved on
if [[ -x .venv/bin/python ]]; then
  .venv/bin/python - docker/constraints.txt << 'EOF' || true
import importlib.metadata as m, sys
from packaging.requirements import Requirement
drift = []
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    r = Requirement(line)
    if r.marker and not r.marker.evaluate():
        continue
    pinned = str(r.specifier).removeprefix("==")
    try:
        used = m.version(r.name)
    except m.PackageNotFoundError:
        used = "not installed"
    if used != pinned:
        drift.append(f"{r.name} {pinned} (docker/constraints.txt) vs {used} (.venv)")
print("compose-test: " + ("WARNING: the image's pins differ from the tests' .venv: " + "; ".join(drift) if drift
                          else "docker/constraints.txt pins the versions of .venv"))
EOF
fi

# -- the project image and the cluster ----------------------------------------------------------------------------
export SPARK_IMAGE="$BASE" SPARKDL_TAG=compose-test
SPARK_MASTER_UI_PORT="$(python3 -c '
import socket
s = socket.socket()
try:
    s.bind(("127.0.0.1", 8080))
except OSError:
    s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')"
export SPARK_MASTER_UI_PORT
COMPOSE_USED=1
compose down -v --remove-orphans > /dev/null 2>&1 || true   # what an interrupted run may have left

phase=$(date +%s)
say "building sparkdl-spark:$SPARKDL_TAG from docker/Dockerfile on $BASE (log: $TMP/build.log)"
previous="$(docker image inspect --format '{{.Id}}' "sparkdl-spark:$SPARKDL_TAG" 2> /dev/null || true)"
compose build "${proxy_args[@]}" spark-master > "$TMP/build.log" 2>&1 \
  || { tail -n 40 "$TMP/build.log"; say "docker-compose build failed"; exit 1; }
# the image this build replaced (the code changed): removed, so that reruns do not pile up untagged images
built="$(docker image inspect --format '{{.Id}}' "sparkdl-spark:$SPARKDL_TAG")"
if [[ -n "$previous" && "$previous" != "$built" ]]; then
  docker image rm "$previous" > /dev/null 2>&1 || true
fi
grep -E '^sparkdl [0-9]' "$TMP/build.log" | sed 's/^/  /' || true
t_image=$(elapsed "$phase")

phase=$(date +%s)
say "starting the master and two workers (master UI on http://127.0.0.1:$SPARK_MASTER_UI_PORT)"
compose up -d --no-build spark-master spark-worker-1 spark-worker-2 2>&1 | sed 's/^/  /'
for service in spark-master spark-worker-1 spark-worker-2; do
  id="$(compose ps -q "$service")"
  for _ in $(seq 90); do
    health="$(docker inspect --format '{{.State.Health.Status}}' "$id")"
    [[ "$health" == healthy || "$health" == unhealthy ]] && break
    sleep 2
  done
  [[ "$health" == healthy ]] || { compose logs --tail 40 "$service"; say "$service is $health"; exit 1; }
  say "$service: healthy ($(docker inspect --format '{{range .State.Health.Log}}{{.Output}}{{end}}' "$id" \
    | grep -v '^$' | tail -n 1))"
done
t_up=$(elapsed "$phase")

phase=$(date +%s)
say "docker-compose run --rm submit --epochs $EPOCHS (train, evaluate, predict on the cluster)"
timeout "${COMPOSE_TEST_SUBMIT_TIMEOUT:-900}" "${COMPOSE[@]}" -p "$PROJECT" -f "$REPO/docker-compose.yml" \
  run --rm -T submit --epochs "$EPOCHS" 2>&1 | tee "$TMP/submit.log" | sed 's/^/  | /' \
  || { say "the submit service failed"; exit 1; }
t_submit=$(elapsed "$phase")

# -- the checks ---------------------------------------------------------------------------------------------------
say "the workers' logs:"
for service in spark-worker-1 spark-worker-2; do
  compose logs --no-color "$service" | grep -E 'Successfully registered with master|Asked to launch executor' \
    | sed 's/^/  /' || true
done
say "checking the outputs and the event logs in the shared volume"
read -r -d '' CHECK << 'EOF' || true
import glob, json, os, re, sys
import pyarrow.parquet as pq
out, events, failures = "/shared/out", "/shared/events", []
for name in ("model.npz", "metrics.json", "stats.html", "evaluation.json", "predictions.parquet"):
    path = os.path.join(out, name)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) \
        if os.path.isdir(path) else os.path.getsize(path) if os.path.exists(path) else 0
    print(f"output {path}: {size} bytes" if size else f"output {path}: MISSING")
    if not size:
        failures.append(f"{path} missing or empty")
if not failures:
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    print(f"metrics.json: master {metrics.get('master')}, mode {metrics.get('mode')}, "
          f"workers {metrics['stats']['workers']}, rounds {metrics['stats']['rounds']}, test {metrics.get('test')}")
    print(f"evaluation.json: {json.load(open(os.path.join(out, 'evaluation.json')))}")
    table = pq.read_table(os.path.join(out, "predictions.parquet"))
    print(f"predictions.parquet: {table.num_rows} rows, columns {table.column_names}")
trained = None
for path in sorted(glob.glob(os.path.join(events, "app-*"))):
    records = [json.loads(line) for line in open(path)]
    start = next(r for r in records if r["Event"] == "SparkListenerApplicationStart")
    executors = {r["Executor ID"]: r["Executor Info"]["Host"] for r in records
                 if r["Event"] == "SparkListenerExecutorAdded"}
    training_stages = set()
    for r in records:
        # the training jobs: jobs mode's rounds ("sparkdl fit: epoch 1/2, round 3/5"), barrier mode's one stage
        # ("sparkdl fit: 2 epochs in one barrier stage of 2 workers ..."); not the shard export or the checks
        description = (r.get("Properties") or {}).get("spark.job.description", "")
        if r["Event"] == "SparkListenerJobStart" and re.match(r"sparkdl fit: (epoch |\d+ epochs? in one barrier)",
                                                           description):
            training_stages.update(r["Stage IDs"])
    tasks, training = {}, {}
    for r in records:
        if r["Event"] == "SparkListenerTaskEnd" and r["Task End Reason"]["Reason"] == "Success":
            host = r["Task Info"]["Host"]
            tasks[host] = tasks.get(host, 0) + 1
            if r["Stage ID"] in training_stages:
                training[host] = training.get(host, 0) + 1
    print(f"event log {os.path.basename(path)} ({start['App Name']}): executors "
          + ", ".join(f"{e} on {h}" for e, h in sorted(executors.items()))
          + "; successful tasks per host: " + ", ".join(f"{h}: {n}" for h, n in sorted(tasks.items()))
          + ("; training tasks per host: " + ", ".join(f"{h}: {n}" for h, n in sorted(training.items()))
             if training_stages else ""))
    if training_stages:
        trained = training
if trained is None:
    failures.append(f"no event log of a training application in {events}: {os.listdir(events)}")
else:
    for worker in ("spark-worker-1", "spark-worker-2"):
        if not trained.get(worker):
            failures.append(f"{worker} ran no training task (training tasks per host: {trained})")
if failures:
    print("FAILED: " + "; ".join(failures))
    sys.exit(1)
print("both workers ran training tasks; all outputs are in the shared volume")
EOF
compose run --rm -T --no-deps --entrypoint python3 submit -c "$CHECK" 2>&1 | sed 's/^/  /' \
  || { say "the checks failed"; exit 1; }

say "times: daemon $t_daemon, base image $t_base, project image $t_image, cluster up $t_up," \
    "train+evaluate+predict $t_submit"
