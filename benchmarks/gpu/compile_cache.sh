#!/usr/bin/env bash
# vLLM's compile caches from one device machine to the next. A fresh machine compiles each model shape before its
# first engine starts (session 12: the 8B shape's first engine took 211 s to start, the next one 38 s), and a
# session's 30 device-minutes pay that again on every fresh machine. session4.sh packs the caches into $OUT after
# each call; the next session carries them back in one call of their own before the runs:
#
#     bash benchmarks/gpu/compile_cache.sh pack OUTDIR        # $HOME's caches -> OUTDIR/compile-cache.tgz.00, .01, ...
#     bash benchmarks/gpu/compile_cache.sh restore INDIR      # INDIR/compile-cache.tgz.* -> $HOME
#
# The caches: ~/.cache/vllm (torch.compile's artifacts, with the Inductor and Triton caches vLLM keeps inside them)
# and ~/.triton/cache (vLLM's own Triton kernels, JIT-compiled on first use). Parts are at most 15 MiB, as the
# device tool returns files of up to 16 MiB; more than S4_CACHE_PARTS parts (default 3) are not kept, and the
# size is said instead.
set -eu
cmd=${1:?usage: compile_cache.sh pack OUTDIR | restore INDIR}
dir=${2:?a folder}
home=${S4_CACHE_HOME:-$HOME}
max=${S4_CACHE_PARTS:-3}
case $cmd in
  pack)
    srcs=()
    for d in .cache/vllm .triton/cache; do [ -d "$home/$d" ] && srcs+=("$d"); done
    if [ ${#srcs[@]} = 0 ]; then echo "compile cache: nothing to pack under $home"; exit 0; fi
    mkdir -p "$dir"
    rm -f "$dir"/compile-cache.tgz.*
    tar -czf - -C "$home" "${srcs[@]}" | split -b 15m -d -a 2 - "$dir/compile-cache.tgz."
    n=$(ls "$dir"/compile-cache.tgz.* | wc -l)
    size=$(cat "$dir"/compile-cache.tgz.* | wc -c)
    if [ "$n" -gt "$max" ]; then
      rm -f "$dir"/compile-cache.tgz.*
      echo "compile cache: $((size / 1048576)) MiB packed is more than $max parts of 15 MiB; not kept"
    else
      echo "compile cache: ${srcs[*]} packed in $n part(s), $((size / 1048576)) MiB"
    fi ;;
  restore)
    if ! ls "$dir"/compile-cache.tgz.* >/dev/null 2>&1; then echo "compile cache: none in $dir"; exit 0; fi
    cat "$dir"/compile-cache.tgz.* | tar -xzf - -C "$home"
    echo "compile cache: restored into $home ($(du -sh "$home/.cache/vllm" 2>/dev/null | cut -f1) in .cache/vllm)" ;;
  *) echo "compile_cache.sh: no such command: $cmd" >&2; exit 2 ;;
esac
