#!/usr/bin/env bash
# The GPU checks in one go, for a device machine (CuPy, PyTorch CUDA, pytest installed; pyspark not needed):
#   bash bench/gpu_check.sh            (from the repository root)
# 1. the numeric core on CuPy against NumPy (every layer, loss, optimizer; float32 to 1e-4) and GPU metrics;
# 2. throughput: MLP and CNN samples/s, sparkdl on CuPy vs PyTorch CUDA on the same card.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import cupy; print('GPU:', cupy.cuda.runtime.getDeviceProperties(0)['name'].decode())"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_metrics.py -m gpu
python3 bench/gpu.py
