"""Benchmarks: batchgen against the `LLM.generate` loop a user would write, on the same GPU and vLLM.

`python -m benchmarks.run --workload S` makes a synthetic workload, runs each method in its own
process and writes a table, JSON/Parquet and a chart. `python -m benchmarks.hostcost` measures
batchgen's own per-row cost with the instant engine. See docs/benchmarks.md.
"""
