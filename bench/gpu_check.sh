#!/usr/bin/env bash
# The GPU checks, as one short script (under ~10 minutes on one H200), for a session that is lent
# a GPU machine (the device tool's `run`, which sets $OUT and runs in the repository root):
#
#   run(command="bash bench/gpu_check.sh", timeout_s=590)
#
# Anywhere else: OUT=bench/out/gpu_check bash bench/gpu_check.sh
#
# 1. the environment (GPU, driver, torch, the packages this project needs that are missing);
# 2. one real-size ViT-S -> ViT-T Stage-I and Stage-II step (configs/imnet100_vit.yaml, random
#    teachers) at the main config's per-GPU batch (256 over 8 GPUs = 32) under bf16: seconds,
#    FLOPs, fraction of the measured bf16 matmul peak (≈ MFU) and peak GPU memory
#    (bench/throughput.py on CUDA);
# 3. the same Stage-I and Stage-II steps with distributed.compile=default beside the eager ones:
#    the warm-up (compilation) and the compiled_speedup ratios;
# 4. the tests with a CUDA branch (tests/test_device_parity.py: one recommended Stage-II step on
#    CUDA fp32, bf16 and compiled bf16 against the CPU fp32 step).
# Results land in $OUT: env.txt, tests.log, throughput.json/.md, gpu_check.log.
# Copy the figures into docs/performance.md ("GPU") with the date.
set -uo pipefail
OUT=${OUT:-bench/out/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
exec > >(tee "$OUT/gpu_check.log") 2>&1

echo "== environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.txt"
$PY - <<'EOF' | tee -a "$OUT/env.txt"
import importlib.util, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0))
missing = [m for m in ("timm", "accelerate", "safetensors", "yaml", "pytest") if importlib.util.find_spec(m) is None]
print("missing:", missing or "none")
EOF

echo "== real-size ViT steps, bf16, batch 32 per GPU (eager)"
timeout 120 $PY bench/throughput.py --recipes vit_real --threads 16 --precisions bf16 --batch 32 --steps 5 \
    --out "$OUT/throughput.json"
bench_rc=$?

echo "== real-size ViT steps under torch.compile (default), bf16, batch 32"
# The same --out: the eager rows above are kept and paired with the compiled ones.
timeout 300 $PY bench/throughput.py --recipes vit_real --threads 16 --precisions bf16 --batch 32 --steps 5 \
    --compile default --out "$OUT/throughput.json"
compile_rc=$?

echo "== tests with a CUDA branch"
timeout 150 $PY -m pytest -q -rs -p no:cacheprovider tests/test_device_parity.py 2>&1 | tee "$OUT/tests.log"
tests_rc=${PIPESTATUS[0]}

echo "== done: tests rc=$tests_rc, throughput rc=$bench_rc, compile rc=$compile_rc"
exit $(( tests_rc || bench_rc || compile_rc ))
