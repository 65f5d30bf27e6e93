#!/usr/bin/env bash
# bench/xdevice.py on a CUDA machine: cohorts of virtual clients on the GPU (fractional GPUs
# through Ray: 4 workers share one GPU, each with one CPU). Prints bench/xdevice.py's JSON
# line (with "device" and "clients_on_cuda") and fails unless the clients ran on CUDA.
# Records go to bench/results/xdevice-gpu/ (a rerun reuses them). Sized to finish inside one
# 10-minute call of the device tool: 2 search rounds, 3 training rounds, 2 stock-Flower rounds.
#   usage: bash bench/gpu.sh [extra bench/xdevice.py arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "bench/gpu.sh: no CUDA device visible")'
line=$("$PY" bench/xdevice.py --out-dir bench/results/xdevice-gpu --rounds 2 --subnet-rounds 3 \
    --flower-rounds 2 --search-floor-clients 40 \
    --set federation.client-gpus=0.25 --set federation.client-cpus=1 --set runtime.device=cuda "$@" | tail -n 1)
echo "$line"
"$PY" - "$line" <<'PYEOF'
import json, sys
figures = json.loads(sys.argv[1])
if figures.get("device") != "cuda" or not figures.get("clients_on_cuda"):
    sys.exit("bench/gpu.sh: clients.jsonl shows no client on CUDA")
PYEOF
