#!/usr/bin/env bash
# Spark resource discovery script for GPUs (spark.executor.resource.gpu.discoveryScript on YARN and standalone,
# spark.worker.resource.gpu.discoveryScript for standalone workers). Prints the one JSON object Spark expects:
#   {"name": "gpu", "addresses": ["0", "1"]}
# Addresses are CUDA device ordinals, what a task passes to cupy.cuda.Device: when YARN or Docker restricts the
# container with CUDA_VISIBLE_DEVICES (indexes or UUIDs), CUDA renumbers the visible GPUs 0..n-1, so those
# ordinals are reported; otherwise the indexes nvidia-smi lists. No GPU (or no nvidia-smi) prints an empty
# list, so Spark reports too few GPUs instead of failing on malformed output.
set -euo pipefail

addresses=()
if [[ -n "${CUDA_VISIBLE_DEVICES:-}" && "${CUDA_VISIBLE_DEVICES}" != "NoDevFiles" ]]; then
  IFS=',' read -r -a visible <<< "${CUDA_VISIBLE_DEVICES// /}"
  for i in "${!visible[@]}"; do
    if [[ -n "${visible[$i]}" ]]; then addresses+=("${#addresses[@]}"); fi
  done
elif command -v nvidia-smi > /dev/null 2>&1; then
  while IFS= read -r index; do
    index="${index//[[:space:]]/}"
    if [[ -n "$index" ]]; then addresses+=("$index"); fi
  done < <(nvidia-smi --query-gpu=index --format=csv,noheader 2> /dev/null || true)
fi

json=""
for a in "${addresses[@]+"${addresses[@]}"}"; do
  json+="${json:+, }\"${a}\""
done
echo "{\"name\": \"gpu\", \"addresses\": [${json}]}"
