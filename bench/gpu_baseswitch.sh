#!/usr/bin/env bash
# The base switch on a GPU: an SDXL-shaped pipeline (UNet + both text encoders, fp16) moved from
# pinned host memory to the device and back (bench/baseswitch.py). Prepared on a CPU-only machine,
# not yet run: until it is, every GPU switch time in docs/ is an estimate (bytes over 25 GB/s).
#
#   bash bench/gpu_baseswitch.sh [OUT_DIR]     # needs a CUDA torch and about 16 GB of host memory
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PY:-.venv/bin/python}"
OUT="${1:-${OUT:-test-artifacts/baseswitch}}"
mkdir -p "$OUT"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,pcie.link.gen.current,pcie.link.width.current,memory.total --format=csv | tee "$OUT/gpu.csv"
"$PY" -m bench.baseswitch --device cuda --dtype fp16 --text-encoders --repeats 10 --json "$OUT/pipeline.json" \
  | tee "$OUT/pipeline.md"
"$PY" -m bench.baseswitch --device cuda --dtype fp16 --repeats 10 --cold --json "$OUT/unet-cold.json" \
  | tee "$OUT/unet-cold.md"
