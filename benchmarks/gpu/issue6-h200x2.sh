#!/usr/bin/env bash
# Session 2026-11-22 (2), nvidia-h200-x2, after ../shared/gpu/stage.sh's parts. Each block is one `run`
# call (`bash benchmarks/gpu/issue6-h200x2.sh A|B|C|D`); every method runs alone on its GPU, one after the
# other, and everything comes back as one tarball ($OUT/<block>.tgz: results under out/, logs under work/).
#   A  two queues at once, one per GPU: S (GPU 0) beside W1 then W3 (GPU 1). Shown to distort S (below).
#   B  workload S alone on GPU 0: raw one call, batchgen, batchgen decoding in vLLM, batchgen with one commit
#   C  scale-out: S with 40,000 rows, one engine on one GPU, then two engines on two GPUs (issue 5)
#   D  W1 alone on GPU 0: raw one call, batchgen (not run: device time)
# A and B ran at commit 333899e, where batchgen decoded text itself by default (runtime.text_decoding:
# batchgen); measured slower than vLLM's decoding (docs/benchmarks.md), that option was removed after.
set -u
export PYTHONPATH=/tmp/gpu-site:$PWD PYTHONUNBUFFERED=1
block=${1:?block A, B, C or D}
res=/tmp/res-$block work=/tmp/work-$block
mkdir -p "$res"
run() { python3 -m benchmarks.run --work "$work" "$@" 2>&1 | grep -E "^==|req/s|skipped|failed|Error"; }
case $block in
A)
  ( export CUDA_VISIBLE_DEVICES=0
    run -w S --methods raw1,batchgen --out "$res/S" --budget 330
    run -w S --methods batchgen --out "$res/S1024" --budget 120 \
        --set model.max_num_seqs=1024 --set 'model.engine_kwargs={max_cudagraph_capture_size: 1024}'
    run -w S --methods batchgen1 --out "$res/S1c" --budget 70
    run -w S --methods batchgen --out "$res/Svdec" --budget 60 --set runtime.text_decoding=vllm ) >"$res/gpu0.log" &
  ( export CUDA_VISIBLE_DEVICES=1 work=$work-1
    run -w W1 --methods raw1,batchgen --out "$res/W1" --budget 330
    run -w W3 --methods raw1,batchgen --out "$res/W3" --budget 220 ) >"$res/gpu1.log" &
  wait ;;
B)
  export CUDA_VISIBLE_DEVICES=0
  run -w S --methods raw1 --out "$res/raw"
  run -w S --methods batchgen --out "$res/bg"
  run -w S --methods batchgen --out "$res/vdec" --set runtime.text_decoding=vllm
  run -w S --methods batchgen1 --out "$res/1c" ;;
C)
  run -w S --rows 40000 --methods batchgen --out "$res/e1" --set runtime.num_engines=1
  run -w S --rows 40000 --methods batchgen --out "$res/e2" --set runtime.num_engines=2 ;;
D)
  export CUDA_VISIBLE_DEVICES=0
  run -w W1 --methods raw1,batchgen --out "$res/W1" ;;
esac
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$res/gpu.csv" 2>&1
find "$work"* -name log.txt -exec sh -c 'grep -v "it/s\]$" "$1" | tail -c 80000 >"$1.tail"' _ {} \;
tar -C /tmp -czf "$OUT/$block.tgz" "res-$block" $(cd /tmp && find "work-$block"* -name "*.tail" -o -name "summary-*.json" -o -name "result.json" -o -name "job.yaml")
