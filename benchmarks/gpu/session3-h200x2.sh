#!/usr/bin/env bash
# Written in session 3 (2026-12-02) for nvidia-h200-x2 and NOT RUN there: the session had 175 s of device
# time and only nvidia-h200 (one GPU) was lent. The next session's first GPU work.
# After ../shared/gpu/stage.sh's parts, each block is one `run`
# call (`bash benchmarks/gpu/session3-h200x2.sh A|B|C`); every method runs alone, one after the other;
# everything comes back as one tarball ($OUT/<block>.tgz: results under res-*, logs under work-*).
#   A  workload S on GPU 0, raw one call and batchgen alternating, three times each (issue 6: spread)
#   B  scale-out, S with 40,000 rows: one engine, two engines pinned to their cores (runtime.cpu_affinity
#      auto, the default), two engines free to run anywhere (off) (issue 5)
#   C  B's one engine and two pinned engines again, in the other order
# Block A also records the node's topology (nvidia-smi topo -m, lscpu).
set -u
export PYTHONPATH=/tmp/gpu-site:$PWD PYTHONUNBUFFERED=1
block=${1:?block A, B or C}
res=/tmp/res-$block work=/tmp/work
mkdir -p "$res" && touch "/tmp/stamp-$block"
run() { python3 -m benchmarks.run --work "$work" "$@" 2>&1 | grep -E "^==|req/s|skipped|failed|Error"; }
case $block in
A)
  { nvidia-smi topo -m; lscpu; nproc; } >"$res/topology.txt" 2>&1
  export CUDA_VISIBLE_DEVICES=0
  for i in 1 2 3; do
    run -w S --methods raw1 --out "$res/raw-$i" --budget 150
    run -w S --methods batchgen --out "$res/bg-$i" --budget 150
  done ;;
B)
  run -w S --rows 40000 --methods batchgen --out "$res/e1" --set runtime.num_engines=1
  run -w S --rows 40000 --methods batchgen --out "$res/e2" --set runtime.num_engines=2
  run -w S --rows 40000 --methods batchgen --out "$res/e2off" --set runtime.num_engines=2 --set runtime.cpu_affinity=off ;;
C)
  run -w S --rows 40000 --methods batchgen --out "$res/e2" --set runtime.num_engines=2
  run -w S --rows 40000 --methods batchgen --out "$res/e1" --set runtime.num_engines=1 ;;
esac
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$res/gpu.csv" 2>&1
find "$work" -name log.txt -newer "/tmp/stamp-$block" -exec sh -c 'grep -v "it/s\]$" "$1" | tail -c 80000 >"$1.$0.tail"' "$block" {} \;
tar -C /tmp -czf "$OUT/$block.tgz" "res-$block" $(cd /tmp && find work -newer "stamp-$block" \( -name "*.$block.tail" -o -name "summary-*.json" -o -name "result.json" \))
