#!/usr/bin/env bash
# The issue-6 runs of 2026-11-22 (session 2), on nvidia-h200-x2 after ../shared/gpu/stage.sh's parts:
# two queues at once, one per GPU (each method still runs alone on its GPU, one after the other):
#   GPU 0: workload S (raw one call, batchgen, batchgen with max_num_seqs 1024, batchgen with one commit)
#   GPU 1: W1 then W3 (raw one call, batchgen)
# Results land in $OUT/<name>/ (table.md, results.json, chart.png); method logs in $OUT/logs/.
set -u
export PYTHONPATH=/tmp/gpu-site:$PWD PYTHONUNBUFFERED=1
out=${OUT:-/tmp/out}
mkdir -p "$out/logs"
run() { python3 -m benchmarks.run "$@"; }
(
  export CUDA_VISIBLE_DEVICES=0
  run -w S --methods raw1,batchgen --work /tmp/b0 --out "$out/S" --budget 330
  run -w S --methods batchgen --work /tmp/b0 --out "$out/S1024" --budget 120 \
      --set model.max_num_seqs=1024 --set 'model.engine_kwargs={max_cudagraph_capture_size: 1024}'
  run -w S --methods batchgen1 --work /tmp/b0 --out "$out/S1c" --budget 70
  run -w S --methods batchgen --work /tmp/b0 --out "$out/Svllmdec" --budget 60 --set runtime.text_decoding=vllm
) >"$out/gpu0.log" 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  run -w W1 --methods raw1,batchgen --work /tmp/b1 --out "$out/W1" --budget 330
  run -w W3 --methods raw1,batchgen --work /tmp/b1 --out "$out/W3" --budget 220
) >"$out/gpu1.log" 2>&1 &
wait
for d in /tmp/b0/runs/* /tmp/b1/runs/*; do
  [ -f "$d/log.txt" ] && grep -v "it/s\]$" "$d/log.txt" | tail -c 60000 >"$out/logs/$(basename "$(dirname "$(dirname "$d")")")-$(basename "$d").txt"
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.csv" 2>&1
tail -5 "$out"/gpu*.log
