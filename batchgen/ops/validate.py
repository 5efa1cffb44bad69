"""`batchgen validate`: everything that can be checked without a GPU, before a night's run.

Each check adds `Problem`s instead of stopping at the first, so one call lists everything to fix.
A *blocking* problem is one `batchgen run` would refuse to start with (spec, input, columns, output,
engine options) or that breaks exactly-once by id (duplicate ids); the others are rows that a run
would write as error rows. `batchgen run` itself repeats only the cheap, per-job part of this (spec,
shard footers and columns, output manifest, engine options); the row pass reads and tokenizes every
row, which on a large job is minutes of I/O that every rank would repeat, so it stays here.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batchgen.errors import BatchgenError
from batchgen.io.layout import MANIFEST, probe_path
from batchgen.io.shards import InputFiles, Unit
from batchgen.io.store import Store
from batchgen.job.spec import JobSpec, ModelSpec
from batchgen.ops.rowcheck import RowScan, scan_rows
from batchgen.run.prompts import Renderer
from batchgen.models.cache import is_remote
from batchgen.models.localize import adapter_rank, local_model, lora_rank
from batchgen.run.structured import load_schema_file
from batchgen.run.tokenizer import image_placeholder, load_tokenizer
from batchgen.work.ledger import Ledger
from batchgen.work.manifest import CONFLICT, CONFLICT_FIX, differences, planned, read_manifest

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length")


@dataclass
class Problem:
    check: str
    message: str
    where: str | None = None
    fix: str | None = None
    blocking: bool = True
    rows: int = 0  # rows affected (0: the whole job)
    examples: list[Any] = field(default_factory=list)  # row ids


@dataclass
class ShardInfo:
    path: str
    rows: int
    units: int


@dataclass
class Validation:
    job: str
    shards: list[ShardInfo] = field(default_factory=list)
    rows: int = 0
    prompt_tokens: int = 0
    prompt_tokens_estimated: bool = False
    longest_prompt: int = 0
    max_model_len: int | None = None
    max_model_len_source: str = "unknown"
    resume: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    spec_loaded: bool = True

    @property
    def exit_code(self) -> int:
        """0 clean; 1 only rows that would be error rows; 2 the run would refuse (or ids clash)."""
        if any(p.blocking for p in self.problems):
            return 2
        return 1 if self.problems else 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": not self.problems, "exit_code": self.exit_code}


def spec_problem(err: BatchgenError) -> Validation:
    """A job file that does not load is itself the one problem to report."""
    v = Validation(job="?", spec_loaded=False)
    v.problems.append(Problem("spec", err.message, where=err.where, fix=err.fix))
    return v


def validate_job(spec: JobSpec, sample_rows: int | None = None, engine_check: bool = True) -> Validation:
    v = Validation(job=spec.name or "job")
    try:
        load_schema_file(spec)  # as a run does first: a json_schema path/URL is read and checked
    except BatchgenError as e:
        v.problems.append(Problem("spec", e.message, where=e.where, fix=e.fix))
    source = InputFiles.open(spec.input)
    units = _check_input(spec, source, v)
    renderer = _renderer(spec, v)
    if units:
        try:
            scan = scan_rows(spec, source, units, renderer, sample_rows)
        except BatchgenError as e:
            v.problems.append(Problem("rows", e.message, where=e.where, fix=e.fix))
        else:
            _report_rows(scan, v, spec.input.id_column, sampled=sample_rows is not None)
    _check_output(spec, units, v)
    if engine_check:
        _check_engine(spec, v)
    return v


def _check_input(spec: JobSpec, source: InputFiles, v: Validation) -> list[Unit]:
    """Shards, footers, columns. Returns the units of the good shards (the row pass reads those)."""
    try:
        shards = source.discover()
    except BatchgenError as e:
        v.problems.append(Problem("input", e.message, where=e.where, fix=e.fix))
        return []
    good = []
    for shard in shards:
        try:
            source.check_columns(shard, spec.input_columns())
            good.append(shard)
        except BatchgenError as e:
            check = "columns" if e.message.startswith("missing column") else "input"
            v.problems.append(Problem(check, e.message, where=e.where, fix=e.fix))
        except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a file that is not Parquet
            v.problems.append(Problem("input", f"cannot read the file: {str(e).splitlines()[0][:200]}", where=shard,
                                      fix="is it a Parquet file? rewrite it with pyarrow/polars, or remove it from input.path"))
    if len(good) < len(shards):
        return []  # unit keys depend on the whole shard list: plan only a job the run would accept
    try:
        units = planned(spec, source.layouts(shards), _output_store(spec))[0].units
    except BatchgenError as e:
        v.problems.append(Problem("input", e.message, where=e.where, fix=e.fix))
        return []
    for shard in shards:
        mine = [u for u in units if u.shard == shard]
        v.shards.append(ShardInfo(path=shard, rows=sum(u.rows for u in mine), units=len(mine)))
    v.rows = sum(s.rows for s in v.shards)
    return units


def _renderer(spec: JobSpec, v: Validation) -> Renderer | None:
    try:
        # A model on an object store: only its tokenizer and config files are copied (no weights) to check rows.
        model = local_model(spec.model, spec.runtime.model_cache, tokenizer_only=True)
        tokenizer = load_tokenizer(model)
    except BatchgenError as e:
        v.problems.append(Problem("model", e.message, where=e.where, fix=e.fix))
        return None
    v.max_model_len, v.max_model_len_source = model_context_length(model)
    if v.max_model_len is None:
        v.notes.append("max_model_len unknown (not in the spec nor the model's config.json): prompt lengths not checked")
    return Renderer(spec, tokenizer, v.max_model_len - 1 if v.max_model_len else None,
                    image_placeholder=image_placeholder(model, tokenizer))


def model_context_length(model: ModelSpec) -> tuple[int | None, str]:
    """The context length vLLM would use: the spec's max_model_len, else the model's config."""
    if model.max_model_len:
        return model.max_model_len, "model.max_model_len"
    config: dict[str, Any] = {}
    local = Path(model.path).expanduser() / "config.json"
    try:
        if local.is_file():
            config = json.loads(local.read_text())
        else:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(model.path, trust_remote_code=model.trust_remote_code).to_dict()
    except Exception:  # noqa: BLE001 - unknown is a valid answer here; the run will find out
        return None, "unknown"
    config = {**config.get("text_config", {}), **config}
    for key in _CONTEXT_KEYS:
        if isinstance(config.get(key), int):
            return config[key], f"config.json {key}"
    return None, "unknown"


def _report_rows(scan: RowScan, v: Validation, id_col: str, sampled: bool) -> None:
    v.prompt_tokens = scan.estimated_prompt_tokens
    v.prompt_tokens_estimated = sampled
    v.longest_prompt = scan.longest_prompt
    for issue in scan.issues.values():
        v.problems.append(Problem(issue.kind, issue.summary, where=issue.shard, fix=issue.fix,
                                  blocking=False, rows=issue.count, examples=issue.ids))
    if scan.duplicates:
        first, places = scan.duplicates[0]
        shown = ", ".join(f"{posixpath.basename(s)} row {r}" for s, r in places[:4])
        v.problems.append(Problem(
            "ids", f"{len(scan.duplicates)} duplicate id(s), e.g. {first!r} appears {len(places)} times ({shown})",
            where=f"column {id_col!r}", rows=sum(len(p) for _, p in scan.duplicates),
            examples=[value for value, _ in scan.duplicates[:5]],
            fix="make ids unique across all shards (e.g. prefix them with the shard name): outputs are keyed and resumed by id"))


def _check_output(spec: JobSpec, units: list[Unit], v: Validation) -> None:
    try:
        store = Store.open(spec.output.path, spec.output.storage)
        _probe_writable(store)
        _check_manifest(store, spec, v)
        if units:
            ledger = Ledger(store, units)
            ledger.load()
            total = sum(u.rows for u in units)
            done_units = sum(1 for s in ledger.units.values() if s.remaining == 0)
            v.resume = {"rows_committed": total - ledger.remaining(), "rows_to_do": ledger.remaining(),
                        "units_complete": done_units, "units": len(units)}
    except BatchgenError as e:
        v.problems.append(Problem("output", e.message, where=e.where or spec.output.path, fix=e.fix))
    except OSError as e:
        v.problems.append(Problem("output", f"cannot use the output location: {e}", where=spec.output.path,
                                  fix="choose a writable output.path (and check output.storage credentials)"))


def _probe_writable(store: Store) -> None:
    """Create and delete a probe: locally in the nearest existing folder (validate leaves no folders behind)."""
    if store.is_local:
        folder = store.root
        while not os.path.isdir(folder):
            parent = os.path.dirname(folder)
            if os.path.exists(folder) or parent == folder:
                raise OSError(f"{folder} exists and is not a folder")
            folder = parent
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".batchgen-probe-"):
            pass
        return
    rel = probe_path(uuid.uuid4().hex)
    store.put(rel, b"")
    store.delete(rel)


def _output_store(spec: JobSpec) -> Store | None:
    try:
        return Store.open(spec.output.path, spec.output.storage)
    except BatchgenError:
        return None


def _check_manifest(store: Store, spec: JobSpec, v: Validation) -> None:
    """The check `batchgen run` makes (work.manifest), reported as a problem instead of raised."""
    diffs = differences(read_manifest(store), spec)
    if diffs:
        v.problems.append(Problem("output", f"{CONFLICT}: " + "; ".join(diffs), where=store.where(MANIFEST),
                                  fix=CONFLICT_FIX))


def _check_engine(spec: JobSpec, v: Validation) -> None:
    if spec.runtime.engine != "vllm":
        return
    try:
        from batchgen.engine.params import check_request
        from batchgen.engine.vllm import check_engine_kwargs, check_sampling_extra, engine_args_dict

        engine_args_dict(spec.model, on_gpu=False)
        check_engine_kwargs(spec.model)
        check_sampling_extra(spec.sampling)
        check_request(spec, load_tokenizer(local_model(spec.model, spec.runtime.model_cache, tokenizer_only=True))
                      if spec.sampling.structured else None)
        local = {name: folder for name, folder in spec.model.lora.items() if not is_remote(folder)}
        if local:  # adapters on object stores are checked by the run, once copied
            lora_rank(spec.model.max_lora_rank, {name: adapter_rank(name, folder) for name, folder in local.items()})
    except BatchgenError as e:
        v.problems.append(Problem("engine", e.message, where=e.where, fix=e.fix))
    except ImportError as e:
        v.notes.append(f"vLLM not importable here ({e}): engine options not checked")


def render_text(v: Validation, shards_shown: int = 20) -> list[str]:
    """The human report: what the job holds, what a run would do, then each problem with its fix."""
    approx = "~" if v.prompt_tokens_estimated else ""
    if not v.spec_loaded:
        return ["the job file does not load: nothing else was checked", *_problem_lines(v.problems)]
    lines = [f"job {v.job}: {len(v.shards)} shard(s), {v.rows:,} rows, {approx}{v.prompt_tokens:,} prompt tokens"
             + (f" (longest {v.longest_prompt:,}; max_model_len {v.max_model_len:,} from {v.max_model_len_source})"
                if v.max_model_len else "")]
    for s in v.shards[:shards_shown]:
        lines.append(f"  {s.path}  {s.rows:,} rows, {s.units} unit(s)")
    if len(v.shards) > shards_shown:
        lines.append(f"  ... {len(v.shards) - shards_shown} more shard(s)")
    if v.resume:
        r = v.resume
        lines.append(f"resume: {r['rows_committed']:,} rows already committed ({r['units_complete']}/{r['units']} units "
                     f"complete); a run would generate {r['rows_to_do']:,}")
    lines += [f"note: {n}" for n in v.notes]
    if not v.problems:
        lines.append("no problems found")
        return lines
    return lines + _problem_lines(v.problems)


def _problem_lines(problems: list[Problem]) -> list[str]:
    lines = [f"{len(problems)} problem(s):"]
    for p in problems:
        tag = "ERROR" if p.blocking else "ROWS "
        lines.append(f"  {tag} [{p.check}] {p.where + ': ' if p.where else ''}{p.message}")
        if p.examples:
            lines.append(f"        ids: {', '.join(str(x) for x in p.examples)}")
        if p.fix:
            lines.append(f"        fix: {p.fix}")
    return lines
