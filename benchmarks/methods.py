"""The methods compared, by the short names `--methods` takes, and the order they run in.

raw1        raw one call: `LLM.generate(all_prompts)` with batchgen's engine options (read back from its engine)
rawN        raw calls of N: `LLM.generate` on N prompts at a time, batchgen's engine options
raw1d       raw one call with vLLM's defaults (what a user gets without tuning)
rawNd       raw calls of N with vLLM's defaults
runbatch    vLLM's run_batch on the same prompts as an OpenAI batch file, vLLM's defaults (as a user runs it)
runbatcht   the same with batchgen's engine options as flags
batchgen    `batchgen run job.yaml`: Parquet in, a commit every 5 s, Parquet out
batchgen1   the same with a single commit at the end (what checkpointing costs)
LABEL       a batchgen variant given with `--variant LABEL=KEY=VALUE[;KEY=VALUE...]` (job overrides)

Each round runs every method once, in the order given, and rounds repeat (A B C A B C ...). Adjacent raw
methods of the same kind (raw1,rawN) share one process and engine, the order of their calls swapped
every other round. Methods "with batchgen's options" take them from plain batchgen's latest run of
the workload, so plain batchgen must come before them in the list (or `--options-from` a results file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.workloads import Workload

PLAIN = "batchgen"


@dataclass(frozen=True)
class Method:
    name: str  # as the table shows it
    kind: str  # "raw", "run_batch" or "batchgen"
    chunk: int = 0  # raw: prompts per generate call (0: all in one)
    tuned: bool = False  # raw, run_batch: batchgen's engine options (else vLLM's defaults)
    commit_seconds: float | None = 5.0  # batchgen: commit every N seconds; None: one commit at the end
    sets: tuple[str, ...] = ()  # batchgen: job overrides of a variant

    @property
    def plain(self) -> bool:
        """batchgen as a user runs it: the reference whose engine options the tuned methods copy."""
        return self.kind == "batchgen" and not self.sets and self.commit_seconds is not None

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")[:80]


@dataclass(frozen=True)
class Setup:
    """What every method of one workload shares."""

    workload: Workload
    model: Path
    prompts: Path
    requests: Path | None  # the prompts as an OpenAI batch requests file (run_batch); None for structured workloads
    work: Path
    engine: dict  # vLLM engine options for every method (job `model:` section; the raw loop's LLM(...))
    batchgen_sets: list[str] = field(default_factory=list)  # `--set` overrides for every batchgen method


def registry(chunk: int, variants: dict[str, tuple[str, ...]]) -> dict[str, Method]:
    methods = {
        "raw1": Method("raw one call", "raw", tuned=True),
        "rawN": Method(f"raw calls of {chunk}", "raw", chunk=chunk, tuned=True),
        "raw1d": Method("raw one call, vLLM defaults", "raw"),
        "rawNd": Method(f"raw calls of {chunk}, vLLM defaults", "raw", chunk=chunk),
        "runbatch": Method("vLLM run_batch", "run_batch"),
        "runbatcht": Method("vLLM run_batch, batchgen's options", "run_batch", tuned=True),
        "batchgen": Method(PLAIN, "batchgen"),
        "batchgen1": Method("batchgen 1 commit", "batchgen", commit_seconds=None),
    }
    for label, sets in variants.items():
        if label in methods:
            raise SystemExit(f"variant name {label!r} is taken by a method; choose another")
        methods[label] = Method(f"batchgen {label} [{'; '.join(sets)}]", "batchgen", sets=sets)
    return methods


def parse_variants(items: list[str]) -> dict[str, tuple[str, ...]]:
    """`e2=runtime.engines_per_gpu=2;model.max_num_seqs=256` -> {"e2": ("runtime.engines_per_gpu=2", ...)}."""
    out: dict[str, tuple[str, ...]] = {}
    for item in items:
        label, sep, sets = item.partition("=")
        if not sep or not label.strip() or "=" not in sets:
            raise SystemExit(f"--variant expects LABEL=KEY=VALUE[;KEY=VALUE], got {item!r}")
        out[label.strip()] = tuple(s.strip() for s in sets.split(";") if s.strip())
    return out


def pick(spec: str, chunk: int, variants: dict[str, tuple[str, ...]], options_given: bool) -> list[Method]:
    every = registry(chunk, variants)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in every]
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(every)}")
    todo = [every[n] for n in names]
    first_plain = next((i for i, m in enumerate(todo) if m.plain), None)
    early = [m.name for i, m in enumerate(todo) if m.tuned and (first_plain is None or i < first_plain)]
    if early and not options_given:
        raise SystemExit(f"{', '.join(early)} use batchgen's engine options: put `batchgen` before them in --methods, "
                         "or pass --options-from RESULTS.json")
    return todo


def groups(todo: list[Method], round_index: int) -> list[list[Method]]:
    """One round's processes: adjacent raw methods of one kind share a process (calls swapped every other round)."""
    out: list[list[Method]] = []
    for m in todo:
        last = out[-1] if out else None
        if last and m.kind == "raw" and last[0].kind == "raw" and last[0].tuned == m.tuned:
            last.append(m)
        else:
            out.append([m])
    return [g[::-1] if len(g) > 1 and round_index % 2 == 0 else g for g in out]
