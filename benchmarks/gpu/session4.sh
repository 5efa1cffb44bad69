#!/usr/bin/env bash
# Issue 16 (session 4): the fair table on one H200 (nvidia-h200, vLLM 0.26.0, dummy weights), after
# ../shared/gpu/stage.sh's parts. Every call is the same command and continues a queue where the last
# call stopped (results and the machine's compile cache stay in /tmp and ~/.cache between calls):
#
#     bash benchmarks/gpu/session4.sh          # one device call: ~8.5 min of runs, then packs $OUT
#     bash benchmarks/gpu/session4.sh --tiny   # the same on the CPU build (tests/test_benchmarks.py)
#
# Each call runs blocks in order, each one interleaved rounds (A B C A B C ...) of
# `python -m benchmarks.run --resume`, which skips what an earlier call finished and any process that would
# not fit the time left, and saves results after every process. Then it packs $OUT: session4-callN.tgz
# (results of every block so far, the runs' logs, summaries and job files, machine info), table.md and
# runs.md (all blocks merged: median and min-max per method, every run) and progress.log.
#
# Minutes, estimated from docs/benchmarks.md and ../shared/gpu/README.md (H200, warm compile cache): a
# process costs ~35-45 s beside its generation (imports ~10 s, engine start 15-20 s for the 0.6B shape,
# 20-30 s for the 8B, tokenizer, exit); the first engine of each shape on a fresh machine compiles,
# +100-120 s (S in block A, the 8B in block B; run_batch's defaults (2048 batched tokens) compile again).
#   A  S (12,000 rows; ~39 s at 310 req/s): batchgen | raw one call + calls of 512 (one process) |
#      batchgen, 2 engines on the GPU; 3 rounds of ~75 + 120 + 75 s      ~14 min (+2 cold)   calls 1-2
#   B  W1 (1,000 rows; ~42 s at 24 req/s): batchgen | raw one call; 3 x (85 + 90 s)
#                                                                        ~9 min (+2 cold)    calls 2-3
#   G  issue 13's structured workloads on the 8B shape, one round: CH (jobs/label.yaml's choice of 3 labels
#      with label scores, 4,000 rows) and JS (a JSON schema, 1,000 rows): batchgen | raw one call with the
#      same SamplingParams; 2 x (70 + 70 s)                              ~5 min              call 3
#   C  S-T (10,000 rows) and SYN (4,000 rows, n=4): batchgen | raw + raw of 512; 3 x (80 + 120) each
#                                                                        ~19 min             calls 3-4
#   D  S: batchgen | run_batch as a user runs it (vLLM's defaults) | run_batch with batchgen's options (the goal's
#      ratio); 3 x (75 + 115 + 80 s)                                     ~14 min (+2 cold for run_batch)
#   D2 (split from D in session 10) S: batchgen | raw one call with vLLM's defaults | max_num_seqs 512 (S's default
#      before session 6; 1024 since) | async scheduling off; 2 x (75 + 95 + 80 + 80 s)      ~11 min
#   E  W3 (1,200 rows; ~30 s at 40 req/s): batchgen | raw + raw of 512    ~10 min
#   F  S, 30,000 rows (~100 s for one engine): batchgen | 2 and 3 engines | 2 engines, cores not pinned.
#      A second engine starts ~20 s after the first (one after another on a GPU), so with 12,000 rows it
#      joins late and a third not at all; 30,000 rows show what they do for a long job   ~25 min
#   M  (session 6) S: batchgen | 2 engines on the GPU under MPS (runtime.mps: on; without MPS engines on one GPU
#      take turns) | max_num_seqs 1024 with CUDA graphs up to 1024; 2 rounds of ~75 + 80 + 80 s   ~9 min (+2 cold)
#   H  (session 6) CH with 12,000 rows (≥ 30 s windows; G's 4,000 gave 14 s): batchgen | raw one call; 2 rounds
#                                                                        ~7 min (+2 cold)
#   N  (for session 7) CH, 12,000 rows: batchgen | runtime.window auto | wall, every row in flight (window 12,000, as
#      LLM.generate queues them; added in session 12) | raw one call; 2 rounds: does a reserve above max_num_seqs keep
#      CH's engine full (its completions are <= 8 tokens)?                ~11 min (+2 cold)
#   P  (for session 7) S, 30,000 rows: batchgen (1024 sequences for this size since session 6) | window auto |
#      2 engines under MPS | raw one call; 2 rounds: the steady state of two engines on the new default, and
#      what window auto costs where completions are long                                  ~18 min
#   Q  (session 7) S, 20,000 rows (~60 s for one engine): batchgen (since session 7 two engines under MPS for
#      this size, started together, each with an explicit KV share; until session 6 the second started once the
#      first was ready, 21 s late) | e1, one engine | raw one call; 2 rounds            ~10 min (+2 cold)
#   T  (session 7) SYN (4,000 rows, n=4) and S-T (10,000 rows): batchgen | e1 | raw one call; 2 rounds  ~14 min
#   K  (session 9) S, 12,000 rows: batchgen (a commit every 5 s) | batchgen1 (one commit at the end): what
#      checkpointing costs (goal <= 2%); 3 rounds                        ~9 min
#   R  (session 8) S, 20,000 rows: batchgen (two engines under MPS) | e1 | e3, three engines | raw one call;
#      2 rounds. With each run's GPU busy share (NVML) and busiest host threads: is a third engine the lever
#      left, or is the GPU already busy?                                  ~13 min (+2 cold)
#   Y  (session 8) SYN (4,000 rows since session 10, n=4): batchgen | e1 | raw one call; 2 rounds      ~8 min
#   V  (for session 10) S, 20,000 rows, where two engines make the GPU the limit (session 8): batchgen | s768, two
#      engines of 768 sequences (on an H100 each engine's 30.7 GiB of KV cache holds ~900 sequences of S's
#      mean length, not 1024: does vLLM preempt and recompute?) | kvfp8, an fp8 KV cache (half the bytes
#      each decode step reads; changes numerics, so never a default) | raw one call; 2 rounds   ~11 min
#   Z  (for session 11) SYN (4,000 rows, n=4): batchgen (since session 10 its window is 256 rows, max_num_seqs / n,
#      and its units 256 rows) | w1024, the window before (1024 rows: 4096 sequences, three waves queued inside one
#      engine that the other cannot take) | e1 | e1all, one engine with every row in flight (runtime.window 4000, as LLM.generate queues every prompt
#      at once) | raw one call; 2 rounds. Sessions 7 and 10 found one batchgen engine 0.90x and 0.81x of the raw
#      loop on SYN (GPU 59-64% busy against 73-82%, vLLM's engine-core thread >= 0.93 busy in both): do requests
#      arriving while the engine core runs cost it?                      ~12 min; it took ~17 min in session 11
#   ST (for session 12) S-T (10,000 rows, temperature 0.8, a seed per row): batchgen (two engines under MPS) | wauto,
#      runtime.window auto (added in session 12: does auto's reserve cost anything where completions are long, before it
#      could become the default?) | raw one call; 3 rounds. S-T was last measured against the raw loop in session 6,
#      when batchgen ran one engine; C also runs SYN, which Z measured in session 11      ~13 min
# Session 10 ran `S4_BLOCKS="V Y"` (calls of 534, 473 and 114 s after ~9 minutes of refused starts; blocks then ran in
# this file's order, so Y first; now in the order S4_BLOCKS names them): Y whole, one round of V.
# Session 11 ran the queue `Z D E ...` (calls of 507, 529 and 508 s, no refused start; the third as `S4_BLOCKS="D E"`):
# Z whole, two of D's three rounds.
# Session 12 ran `S4_BLOCKS="N E ST D" S4_SECONDS=520` (504 s after two refused starts): N's batchgen and wauto, one run each
# (the first 8B engine compiled for 211 s); the second call was cut off when the machine was taken back, and the time
# left could not start another. Next session: the default queue, `N ST E ...` (N: is auto's +3.4% on CH real, and how
# far are wall and the raw loop; ST: S-T against the raw loop, not measured since session 6, and what auto does where
# completions are long; W3 has never been measured).
# Session 8 asked for `S4_BLOCKS="R K Y N"` (R and Y in place of Q and T, K at 12,000 rows); only R ran (device
# time lost to refused starts). Session 9 ran `S4_BLOCKS="K V Y"` (calls of 558, 487 and 149 s after ~8 minutes of
# refused starts): K whole, one run each of V and Y. Session 9's engine options show each of the two engines on an
# H100 holds 287,712 KV tokens, fewer than 1024 x S's 384: V's s768 is the question. Next session: `S4_BLOCKS="V Y N"`,
# then D E C (the default queue).
# Session 7 ran `S4_BLOCKS="Q T N"` (4 calls after the transfers; N got no time) when one engine was still the
# default, as `--methods batchgen,e2mps,raw1` with e2mps = engines_per_gpu 2 under MPS: the same three set-ups.
# Three calls of ~8.5 min reach block G; the rest waits for a later session (same command: a fresh
# machine starts the queue again from A unless /tmp/s4 is carried back). Priorities are the issue's: S and
# W1 first. Since session 7 plain batchgen runs the 0.6B shape (S, S-T, SYN) as two engines under MPS by default
# (engines_per_gpu: auto), so in the older blocks above "batchgen" and an e2 variant are the same set-up.
# Since session 12 every call also packs vLLM's compile caches into $OUT (compile-cache.tgz.00, ...): a fresh machine
# compiles each shape before its first engine (the 8B shape's first start took 211 s, the next 38 s). Next session,
# copy those parts into .gpu/cache and, after the three transfers, send them in a call of their own:
# `bash benchmarks/gpu/compile_cache.sh restore .gpu/cache` (carry .gpu/cache), then the runs as before.
# Say `S4_BLOCKS="A D"` to pick blocks (they run in that order); `S4_SECONDS` is the time for runs in one call (default 470).
# stream_interval is not measured: with FINAL_ONLY outputs (batchgen's) vLLM 0.26 skips the per-step output
# before it would apply (v1/engine/output_processor.py:285-300), so it cannot change anything here.
set -u
mode=gpu
[ "${1:-}" = --tiny ] && mode=tiny
state=${S4_STATE:-/tmp/s4}
out=${OUT:-$state/out}
blocks=${S4_BLOCKS:-N ST E D C D2 V T Q A B G F M H P R K Y Z}
seconds=${S4_SECONDS:-470}
mkdir -p "$state/res" "$state/logs" "$out"
if [ "$mode" = gpu ]; then
  export PYTHONPATH=/tmp/gpu-site:$PWD PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
  py=python3 rounds=3 rounds_a=3 guess=150 dry_blocks=""
  size=()
else  # CPU build, tiny model: block A for real (two rounds: the interleaving), the others only checked
  py=${PYTHON:-python3} rounds=1 rounds_a=2 guess=40 dry_blocks=${S4_DRY_BLOCKS:-"R Y V Z Q T K B G C D D2 E F M H N P ST"}
  size=(--tiny --rows 16 --chunk 8)
fi
call=$(( $(cat "$state/calls" 2>/dev/null || echo 0) + 1 ))
echo "$call" >"$state/calls"
start=$(date +%s)
deadline=$((start + seconds))
say() { echo "[call $call, $(( $(date +%s) - start ))s] $*" | tee -a "$state/progress.log"; }
say "start: blocks $blocks, $seconds s for runs, mode $mode"
if [ "$call" = 1 ]; then
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nvidia-smi topo -m; lscpu; nproc
    $py -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"; } >"$state/res/machine.txt" 2>&1
fi

# bench BLOCK ROUNDS ARGS...: one harness invocation, resumed; stops by the deadline (its --budget), with a
# `timeout` behind it in case a process hangs, so that packing always happens.
bench() {
  local block=$1 r=$2; shift 2
  local left=$((deadline - $(date +%s)))
  local dry=()
  case " $dry_blocks " in *" $block "*) dry=(--dry-run) ;; esac
  if [ ${#dry[@]} = 0 ] && [ "$left" -lt 60 ]; then say "$block: no time left in this call"; return; fi
  timeout -k 10 $((left + 20)) $py -m benchmarks.run "${size[@]}" "${dry[@]}" --rounds "$r" --resume \
      --budget "$left" --first-guess "$guess" --work "$state/work" --out "$state/res/$block" "$@" \
      >>"$state/logs/$block.log" 2>&1
  say "$block${dry:+ (dry run)}: exit $?"
}

# Row counts beyond the workloads' own (none on the CPU build: --tiny's 16 rows).
e1='e1=runtime.engines_per_gpu=1'
q20=(--rows 20000) k12=(--rows 12000) ch=(--rows 12000) p30=(--rows 30000)
[ "$mode" = tiny ] && q20=() k12=() ch=() p30=()

# block NAME: its harness invocation. Blocks run in the order $blocks names them.
block() {
  case $1 in
    R) bench R 2 -w S "${q20[@]}" --methods batchgen,e1,e3,raw1 --variant "$e1" --variant 'e3=runtime.engines_per_gpu=3' ;;
    K) bench K "$rounds" -w S "${k12[@]}" --methods batchgen,batchgen1 ;;
    Y) bench Y 2 -w SYN --methods batchgen,e1,raw1 --variant "$e1" ;;
    V) bench V 2 -w S "${q20[@]}" --methods batchgen,s768,kvfp8,raw1 --variant 's768=model.max_num_seqs=768' \
         --variant 'kvfp8=model.engine_kwargs.kv_cache_dtype=fp8' ;;
    Z) bench Z 2 -w SYN --methods batchgen,w1024,e1,e1all,raw1 --variant 'w1024=runtime.window=1024' --variant "$e1" \
         --variant 'e1all=runtime.engines_per_gpu=1;runtime.window=4000' ;;
    Q) bench Q "$rounds" -w S "${q20[@]}" --methods batchgen,e1,raw1 --variant "$e1" ;;
    T) bench T "$rounds" -w SYN -w S-T --methods batchgen,e1,raw1 --variant "$e1" ;;
    M) bench M 2 -w S --methods batchgen,e2mps,s1024 --variant 'e2mps=runtime.engines_per_gpu=2;runtime.mps=on' \
         --variant 's1024=model.max_num_seqs=1024;model.engine_kwargs.max_cudagraph_capture_size=1024' ;;
    A) bench A "$rounds_a" -w S --methods batchgen,raw1,rawN,e2 --variant 'e2=runtime.engines_per_gpu=2' ;;
    B) bench B "$rounds" -w W1 --methods batchgen,raw1 ;;
    G) bench G 1 -w CH -w JS --methods batchgen,raw1 ;;
    H) bench H 2 -w CH "${ch[@]}" --methods batchgen,raw1 ;;
    N) bench N 2 -w CH "${ch[@]}" --methods batchgen,wauto,wall,raw1 --variant 'wauto=runtime.window=auto' \
         --variant 'wall=runtime.window=12000' ;;
    P) bench P 2 -w S "${p30[@]}" --methods batchgen,wauto,e2mps,raw1 --variant 'wauto=runtime.window=auto' \
         --variant 'e2mps=runtime.engines_per_gpu=2;runtime.mps=on' ;;
    C) bench C "$rounds" -w S-T -w SYN --methods batchgen,raw1,rawN ;;
    ST) bench ST "$rounds" -w S-T --methods batchgen,wauto,raw1 --variant 'wauto=runtime.window=auto' ;;
    D) bench D "$rounds" -w S --methods batchgen,runbatch,runbatcht ;;
    D2) bench D2 2 -w S --methods batchgen,raw1d,s512,noasync --variant 's512=model.max_num_seqs=512' \
         --variant 'noasync=model.engine_kwargs.async_scheduling=false' ;;
    E) bench E "$rounds" -w W3 --methods batchgen,raw1,rawN ;;
    F) bench F "$rounds" -w S "${p30[@]}" --methods batchgen,e2,e3,e2free --variant 'e2=runtime.engines_per_gpu=2' \
         --variant 'e3=runtime.engines_per_gpu=3' --variant 'e2free=runtime.engines_per_gpu=2;runtime.cpu_affinity=off' ;;
    *) say "$1: no such block" ;;
  esac
}
for b in $blocks; do block "$b"; done

# Pack: everything measured so far (every call's tarball holds all blocks), logs cut to their tails.
merged=$(ls "$state"/res/*/results.json 2>/dev/null | grep -v "/res/all/")  # not the previous merge
if [ -n "$merged" ]; then
  $py -m benchmarks.report "$state/res/all" $merged >>"$state/logs/report.log" 2>&1
  cp "$state/res/all/table.md" "$state/res/all/runs.md" "$out/" 2>/dev/null
fi
find "$state/work/runs" -name log.txt 2>/dev/null | while read -r f; do
  grep -v "it/s\]$" "$f" | tail -c 60000 >"${f%.txt}.tail"
done
( cd "$state" && find res logs progress.log work/runs \( -name "*.tail" -o -name "summary-*.json" -o -name "result.json" \
    -o -name "job.yaml" -o -name "config.json" -o -path "res/*" -o -path "logs/*" -o -name progress.log \) -type f 2>/dev/null \
    | tar -czf "$out/session4-call$call.tgz" -T - )
say "packed $out/session4-call$call.tgz ($(du -h "$out/session4-call$call.tgz" | cut -f1))"
# vLLM's compile caches, for the next fresh machine (benchmarks/gpu/compile_cache.sh says how they go back).
[ "$mode" = gpu ] && say "$(bash benchmarks/gpu/compile_cache.sh pack "$out" 2>&1 | tail -1)"
cp "$state/progress.log" "$out/progress.log"
