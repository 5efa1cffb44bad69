"""Everything a run checks and loads before its engine starts: a bad job fails here, exit 2, with
nothing written but the manifest of a first run.

    inputs (shards, footers, columns) -> the plan (recorded by the first run) -> this worker's units
    -> tokenizer and engine option names -> the manifest check -> what is committed already
    (and what killed runs left behind: temp files, parts without their stats row)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from batchgen.io.layout import STATS, TMP, parse_part, part_path, stats_path
from batchgen.io.leftovers import remove_stale_temp
from batchgen.io.parts import output_schema
from batchgen.io.shards import InputFiles, Unit
from batchgen.io.store import Store
from batchgen.job.spec import JobSpec
from batchgen.models.localize import local_model
from batchgen.run.committer import PartSink
from batchgen.run.observers import RunObserver
from batchgen.run.stats import stats_bytes, stats_from_part
from batchgen.run.structured import load_schema_file
from batchgen.run.tokenizer import image_placeholder, load_tokenizer
from batchgen.work.ledger import Ledger
from batchgen.work.manifest import check_job_manifest, recorded_plan
from batchgen.work.plan import plan_job
from batchgen.work.ranks import assign

log = logging.getLogger("batchgen")


@dataclass
class Prepared:
    all_units: list[Unit]  # the whole job's (the completion check covers every rank)
    units: list[Unit]  # this worker's share (elastic: every unit, claimed one at a time)
    input: InputFiles
    store: Store
    ledger: Ledger
    sink: PartSink
    tokenizer: Any
    observer: RunObserver  # OpenAI output files and metrics, after each commit
    engine_spec: JobSpec  # the job with its model as local folders (copies of object-store URLs): what the engine loads
    image_placeholder: str | None = None  # the model's text for one image (`<image>`), if its files name one

    @property
    def skipped(self) -> int:
        """Rows of this share committed before this run."""
        return sum(u.rows for u in self.units) - self.ledger.remaining()


def prepare(spec: JobSpec, *, rank: int, world_size: int, worker: str, force: bool) -> Prepared:
    load_schema_file(spec)  # a json_schema path/URL becomes the schema itself (its content is fingerprinted)
    source = InputFiles.open(spec.input)
    shards = source.discover()
    schema = None
    for shard in shards:
        schema = source.check_columns(shard, spec.input_columns())
    store = Store.open(spec.output.path, spec.output.storage)
    plan = plan_job(spec.input, source.layouts(shards), recorded_plan(store))
    mine = list(plan.units) if spec.runtime.elastic else assign(plan.units, rank, world_size)
    model = local_model(spec.model, spec.runtime.model_cache)  # copies weights from an object store once per machine
    tokenizer = load_tokenizer(model)
    if spec.runtime.engine == "vllm":  # option names are checked before any engine memory is taken
        from batchgen.engine.params import check_request
        from batchgen.engine.vllm import check_engine_kwargs, check_sampling_extra

        check_engine_kwargs(spec.model)
        check_sampling_extra(spec.sampling)
        check_request(spec, tokenizer)  # the structured constraint compiles; logprobs fit
    check_job_manifest(store, spec, force, plan.rule)
    removed = remove_stale_temp(store)
    if removed:
        log.info("removed %d temp file(s) that killed runs left in %s", len(removed), store.where(TMP))
    ledger = Ledger(store, mine)
    ledger.load()
    repair_stats(store, ledger)
    total = sum(u.rows for u in mine)
    observer = RunObserver(spec, store, worker, total, total - ledger.remaining())
    sink = PartSink(schema=output_schema(spec, schema), id_column=spec.input.id_column,
                    compression=spec.output.compression, worker=worker, job_fingerprint=spec.fingerprint()[0],
                    on_part=observer.on_part)
    return Prepared(all_units=plan.units, units=mine, input=source, store=store, ledger=ledger, sink=sink,
                    tokenizer=tokenizer, observer=observer, engine_spec=spec.model_copy(update={"model": model}),
                    image_placeholder=image_placeholder(model, tokenizer))


def repair_stats(store: Store, ledger: Ledger) -> int:
    """Write the stats row of each loaded part that has none (its worker was killed between the part and
    its stats), derived from the part, so `status`, `report` and summaries count every committed row.
    Create-if-absent: a live writer's own stats file, written first or later, is never replaced by ours."""
    have = {p for p in map(parse_part, store.listdir(STATS)) if p}
    missing = [p for p in ledger.loaded if p not in have]
    for unit, seq in missing:
        row = stats_from_part(store.read_bytes(part_path(unit, seq)), unit, seq)
        store.create_exclusive(stats_path(unit, seq), stats_bytes(row))
    if missing:
        log.info("wrote the missing stats row of %d part(s) (a run was killed between a part and its stats): %s",
                 len(missing), ", ".join(f"{u}.{s:06d}" for u, s in missing[:5]) + (" ..." if len(missing) > 5 else ""))
    return len(missing)
