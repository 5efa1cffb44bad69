#!/usr/bin/env bash
# Issue 13, for the lead to run on one H200 (`run` kind nvidia-h200): structured decoding through batchgen vs
# the same SamplingParams through a hand-written LLM.generate loop, on the 8B shape with dummy weights.
#   bash benchmarks/gpu/issue13-structured.sh        (about 10 min: 4 engine starts, a ~20 s BPE training once)
# Workloads (benchmarks/workloads.py): CH = jobs/label.yaml's shape (choice of 3 labels + label scores,
# 4000 rows), JS = a JSON question/answer schema (1000 rows, max 320 tokens). Each method runs alone, one
# after the other. The figure is `× raw one call` of batchgen per workload (table.md): structured decoding
# must not cost batchgen more than it costs the raw loop, i.e. it should be ~1.0 as for the plain workloads.
# Everything comes back as $OUT/issue13.tgz (results under res-issue13/, logs and job files under work-issue13/).
set -u
export PYTHONPATH=/tmp/gpu-site:$PWD PYTHONUNBUFFERED=1
res=/tmp/res-issue13 work=/tmp/work-issue13
mkdir -p "$res"
python3 -m benchmarks.run --work "$work" -w CH -w JS --methods raw1,batchgen --out "$res" --timeout 420 --budget 560 2>&1 \
  | grep -E "^==|req/s|skipped|failed|Error|^\|" | tee "$res/run.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$res/gpu.csv" 2>&1
find "$work" -name log.txt -exec sh -c 'grep -v "it/s\]$" "$1" | tail -c 80000 >"$1.tail"' _ {} \;
tar -C /tmp -czf "${OUT:-/tmp}/issue13.tgz" res-issue13 $(cd /tmp && find work-issue13 -name "*.tail" -o -name "summary-*.json" -o -name "result.json" -o -name "job.yaml")
