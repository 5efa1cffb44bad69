"""How far a measured throughput is from what the GPU can do at all: FLOPs and bytes of a workload
against the device's peak compute and memory bandwidth.

    python -m benchmarks.roofline -w W1 --req-s 24.0        # H200 defaults: 790 TFLOP/s bf16, 4.3 TB/s
    python -m benchmarks.roofline -w S -w W1 -w W3 --json

The model (a lower bound on time, so an upper bound on req/s; real kernels reach a fraction of it):
  compute  every prompt token not served from the prefix cache is a forward pass (2 x active parameters
           FLOPs, plus attention over its context: 4 x layers x heads x head_dim x context), and so is every
           generated token;
  memory   each decode step reads the weights once and every running sequence's KV cache; the steps are
           output tokens / batch, the batch being max_num_seqs or what the KV cache holds, if less;
  bound    time >= max(total FLOPs / peak FLOP/s, total bytes / bandwidth): the larger names the limit.
Prefill weight reads and activations are left out (small beside these for the shapes here).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from batchgen.engine.dims import ModelDims
from benchmarks.workloads import WORKLOADS, ModelShape, Workload

H200_TFLOPS_BF16 = 790.0  # dense bf16, as measured on this project's H200 (the figure)
H200_TB_S = 4.3
H200_MEMORY_GIB = 139.0
BYTES = 2  # bf16 weights and KV cache


def dims_of(shape: ModelShape) -> ModelDims:
    return ModelDims(hidden=shape.hidden, layers=shape.layers, heads=shape.heads, kv_heads=shape.kv_heads,
                     head_dim=shape.head_dim, intermediate=shape.intermediate, vocab=shape.vocab,
                     tied_embeddings=shape.tie_embeddings)


@dataclass
class Roofline:
    workload: str
    batch: int  # sequences per decode step
    flops_per_row: float
    bytes_per_row: float
    compute_s_per_row: float
    memory_s_per_row: float

    @property
    def limit(self) -> str:
        return "compute" if self.compute_s_per_row >= self.memory_s_per_row else "memory"

    @property
    def max_req_s(self) -> float:
        return 1.0 / max(self.compute_s_per_row, self.memory_s_per_row)


def roofline(wl: Workload, *, tflops: float = H200_TFLOPS_BF16, tb_s: float = H200_TB_S, memory_gib: float = H200_MEMORY_GIB,
             mem_util: float = 0.9, max_num_seqs: int = 512, hit: float | None = None) -> Roofline:
    d = dims_of(wl.shape)
    n = int(wl.sampling.get("n", 1))
    p, o = wl.prompt_tokens, wl.output_tokens
    if hit is None:  # the shared prefixes, less each one's first pass (the measured rate is close to it)
        hit = wl.prefix_tokens / p * (1 - wl.prefixes / wl.rows) if wl.prefix_tokens else 0.0
    attn = 4 * d.layers * d.heads * d.head_dim  # FLOPs per token per unit of context
    computed = p * (1 - hit)
    prefill = 2 * d.active_params() * computed + attn * (p * p - (p * hit) ** 2) / 2  # new tokens over their context
    decode = n * (2 * d.active_params() * o + attn * (o * p + o * o / 2))
    weights = d.params() * BYTES
    kv_tok = d.kv_bytes_per_token(BYTES)
    capacity = (mem_util * memory_gib * 2**30 - weights - 2 * 2**30) / kv_tok  # 2 GiB for activations and graphs
    batch = max(1, min(max_num_seqs, int(capacity // (p + o))))
    # Per row: its share of the decode steps' weight reads, and its own KV reads at each of its steps.
    bytes_row = n * o * (weights / batch + kv_tok * (p + o / 2))
    flops = prefill + decode
    return Roofline(wl.name, batch, flops, bytes_row, flops / (tflops * 1e12), bytes_row / (tb_s * 1e12))


def describe(r: Roofline, wl: Workload, req_s: float | None) -> str:
    out_tok = wl.output_tokens * int(wl.sampling.get("n", 1))
    line = (f"{r.workload}: {r.flops_per_row / 1e12:.3f} TFLOP and {r.bytes_per_row / 1e9:.3f} GB per row "
            f"(decode batch {r.batch}); bound by {r.limit}: at most {r.max_req_s:,.1f} req/s "
            f"({r.max_req_s * out_tok:,.0f} output tok/s); compute {r.compute_s_per_row * 1e3:.2f} ms, "
            f"memory {r.memory_s_per_row * 1e3:.2f} ms per row")
    if req_s:
        line += f"; measured {req_s:,.1f} req/s = {req_s / r.max_req_s:.0%} of it"
    return line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.roofline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", "-w", action="append", choices=list(WORKLOADS), help="repeatable; default: W1")
    p.add_argument("--req-s", type=float, action="append", default=[], help="measured req/s, one per --workload, in order")
    p.add_argument("--tflops", type=float, default=H200_TFLOPS_BF16)
    p.add_argument("--tb-s", type=float, default=H200_TB_S)
    p.add_argument("--memory-gib", type=float, default=H200_MEMORY_GIB)
    p.add_argument("--mem-util", type=float, default=0.9, help="gpu_memory_utilization (the KV cache's share)")
    p.add_argument("--max-num-seqs", type=int, default=512)
    p.add_argument("--hit", type=float, default=None, help="prefix-cache hit rate (default: from the workload's shared prefixes)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    names = args.workload or ["W1"]
    rows = []
    for i, name in enumerate(names):
        wl = WORKLOADS[name]
        r = roofline(wl, tflops=args.tflops, tb_s=args.tb_s, memory_gib=args.memory_gib, mem_util=args.mem_util,
                     max_num_seqs=args.max_num_seqs, hit=args.hit)
        req_s = args.req_s[i] if i < len(args.req_s) else None
        rows.append({"workload": name, "batch": r.batch, "tflop_per_row": r.flops_per_row / 1e12,
                     "gb_per_row": r.bytes_per_row / 1e9, "limit": r.limit, "max_req_s": r.max_req_s,
                     "measured_req_s": req_s, "of_roofline": req_s / r.max_req_s if req_s else None})
        if not args.json:
            print(describe(r, wl, req_s))
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
