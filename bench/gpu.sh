#!/usr/bin/env bash
# The GPU part of the speed benchmarks, as run on the lent GPU machine (see README, Performance).
#   bash bench/gpu.sh [slash5 folder] [output folder]
# Needs the project's packages importable (pip install -e . or PYTHONPATH) and a CUDA GPU.
set -u
ROOT=${1:-../shared/data/slash5}
OUTDIR=${2:-.}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
log="$OUTDIR/gpu_bench.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$log"
(cd bench && timeout 60 python gpu_syncs.py --steps 60) 2>&1 | tail -12 | tee -a "$log"
timeout 330 python bench/throughput.py --sections ceiling,plain,lightning,slash5 \
    --variants fp32,channels_last,channels_last+bf16,compile+bf16 --steps 25 --repeats 5 \
    --warmup 2 --slash5 "$ROOT" --workers 0,4 2>&1 | grep -v "Warning\|W1[0-9]* " | tee -a "$log"
timeout 190 python bench/epoch_time.py --root "$ROOT" --epochs 50 --cache both trainer=gpu \
    2>&1 | tee -a "$log"
