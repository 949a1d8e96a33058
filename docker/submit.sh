#!/usr/bin/env bash
# The docker-compose `submit` service: wait until the workers have registered with the master, then train,
# evaluate and predict on the cluster with conf/spark-defaults.standalone.conf. Outputs go to /shared/out (the
# shared volume), each application's event log to /shared/events (which executor, on which worker, ran each task;
# SPARKDL_EVENTS= turns it off); extra arguments go to jobs/train.py, e.g.
# `docker compose run submit --model cnn --epochs 5`.
set -euo pipefail
master="${SPARK_MASTER_URL:-spark://spark-master:7077}"
master_ui="${SPARK_MASTER_UI:-http://spark-master:8080}"
workers="${SPARKDL_WORKERS:-2}"
out="${SPARKDL_OUTPUT:-/shared/out}"
events="${SPARKDL_EVENTS-/shared/events}"
event_log=()
if [[ -n "$events" ]]; then
  mkdir -p "$events"
  event_log=(--conf spark.eventLog.enabled=true --conf "spark.eventLog.dir=file://${events}"
             --conf spark.eventLog.compress=false --conf spark.eventLog.rolling.enabled=false)
fi

for _ in $(seq 120); do
  alive="$(python3 -c "import json, urllib.request; print(json.load(urllib.request.urlopen('${master_ui}/json/'))['aliveworkers'])" 2> /dev/null || echo 0)"
  if [[ "$alive" -ge "$workers" ]]; then break; fi
  sleep 1
done
echo "submit: ${alive} of ${workers} workers alive at ${master}"

submit() {
  /opt/spark/bin/spark-submit --master "$master" \
    --properties-file /opt/sparkdl/conf/spark-defaults.standalone.conf \
    --conf spark.driver.host="$(hostname)" "${event_log[@]}" "$@"
}
submit jobs/train.py --data digits --num-workers "$workers" --export-dir /shared/shards --output-dir "$out" "$@"
submit jobs/evaluate.py --model-file "$out/model.npz" --output "$out/evaluation.json"
submit jobs/predict.py --model-file "$out/model.npz" --output "$out/predictions.parquet"
