"""The row pass of `batchgen validate`: every row rendered and tokenized exactly as a run would, no engine.

Rows go through the same reader and `prompts.Renderer` as `batchgen run`, so a row reported here is
a row that would become an error row there, for the same reason. Id uniqueness is checked across
all shards in bounded memory: 8 bytes per row (a 64-bit hash of each id), then a second pass over
the id column only, for the few hashes seen twice, to name the actual ids and where they are.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from batchgen.io.reader import ROW_INDEX, read_unit
from batchgen.io.shards import InputFiles, Unit
from batchgen.job.spec import JobSpec
from batchgen.run.prompts import Renderer

EXAMPLES = 5  # row ids named per problem

# Renderer error texts -> (kind, column the problem is in (None: the message names it), how to fix it)
_KINDS: list[tuple[str, str, str]] = [
    (r"^bad request", "request", "fix these request lines (custom_id, body.messages, sampling fields of the body)"),
    (r"^null id", "null-id", "give every row an id; rows without one cannot be resumed or joined back"),
    (r"^empty prompt", "empty-prompt", "fill or drop these rows (they would become error rows)"),
    (r"not text$", "prompt-type", "cast the prompt column to string"),
    (r"^template column", "template-null", "fill the template's columns in these rows, or drop the rows"),
    (r"messages|message \d", "messages", "each row needs a non-empty list of {role, content} with string fields"),
    (r"^invalid per-row value", "per-row", "fix the values in the per-row column, or null them to use the job value"),
    (r"^prompt has \d+ tokens", "too-long", "shorten these prompts, or raise model.max_model_len (up to the model's context length)"),
    (r"^chat template failed", "chat-template", "fix these rows' messages (roles must alternate as the template expects)"),
    (r"^empty text to score|^nothing to score", "score-text", "fill or drop these rows: scoring needs text in prompt.score_column"),
    (r"^unknown LoRA adapter", "lora", "use a name of model.lora in the per-row column, or null it for the job's adapter"),
    (r"is unreadable", "image", "fix or drop these rows' images (each must be an image file: bytes, a path or a URL)"),
    (r"image placeholder", "image-placeholder", "set prompt.image_placeholder, or put one placeholder per image in the prompt"),
]


@dataclass
class RowIssue:
    """Rows of one shard with one kind of problem."""

    kind: str
    shard: str
    message: str  # the first row's message, as the run would write it in `error`
    fix: str
    count: int = 0
    ids: list[Any] = field(default_factory=list)
    longest: int = 0  # too-long prompts: the most tokens seen

    @property
    def summary(self) -> str:
        if self.kind == "too-long":
            limit = self.message.partition("; ")[2]
            return f"{self.count} prompt(s) too long (longest {self.longest:,} tokens); {limit}"
        return f"{self.count} row(s): {self.message}"


@dataclass
class RowScan:
    rows: int = 0
    rows_tokenized: int = 0
    prompt_tokens: int = 0
    longest_prompt: int = 0
    issues: dict[tuple[str, str, str], RowIssue] = field(default_factory=dict)
    duplicates: list[tuple[str, list[tuple[str, int]]]] = field(default_factory=list)  # id -> [(shard, row)]

    @property
    def estimated_prompt_tokens(self) -> int:
        """Prompt tokens of every row, extrapolated from the rows tokenized when sampling."""
        if not self.rows_tokenized:
            return 0
        return round(self.prompt_tokens * self.rows / self.rows_tokenized)


def classify(error: str) -> tuple[str, str]:
    for pattern, kind, fix in _KINDS:
        if re.search(pattern, error):
            return kind, fix
    return "row", "see the message"


def message_shape(error: str) -> str:
    """An error message with its numbers and quoted values (ids, lengths, rows) blanked: one kind of problem."""
    return re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "_", error)


def scan_rows(spec: JobSpec, source: InputFiles, units: Sequence[Unit], renderer: Renderer | None,
              sample_rows: int | None) -> RowScan:
    """Render (and tokenize) the rows of `units`; hash every id. `sample_rows` caps rendering per unit.

    Without a renderer (the tokenizer could not be loaded) only ids are checked.
    """
    scan = RowScan()
    hashes: list[np.ndarray] = []
    id_col = spec.input.id_column
    for unit in units:
        rendered = 0
        render_cols = spec.input_columns()
        for batch in read_unit(source, unit, render_cols):
            scan.rows += batch.num_rows
            hashes.append(_hash_ids(batch.column(id_col)))
            if renderer is None or (sample_rows is not None and rendered >= sample_rows):
                continue
            if sample_rows is not None and rendered + batch.num_rows > sample_rows:
                batch = batch.slice(0, sample_rows - rendered)
            rendered += batch.num_rows
            _note_requests(scan, unit.shard, renderer.render(unit.key, batch))
    scan.duplicates = _find_duplicates(spec, source, units, hashes)
    return scan


def _note_requests(scan: RowScan, shard: str, reqs: Iterable[Any]) -> None:
    for req in reqs:
        if req.error is None:
            scan.rows_tokenized += 1
            scan.prompt_tokens += len(req.token_ids)
            scan.longest_prompt = max(scan.longest_prompt, len(req.token_ids))
            continue
        kind, fix = classify(req.error)
        shape = message_shape(req.error)  # one issue per kind of message
        issue = scan.issues.setdefault((kind, shard, shape), RowIssue(kind=kind, shard=shard, message=req.error, fix=fix))
        issue.count += 1
        tokens = re.match(r"prompt has (\d+) tokens", req.error)
        if tokens:  # tokenized, just too long: its tokens still count in the job's estimate
            n = int(tokens[1])
            issue.longest = max(issue.longest, n)
            scan.rows_tokenized += 1
            scan.prompt_tokens += n
            scan.longest_prompt = max(scan.longest_prompt, n)
        if len(issue.ids) < EXAMPLES:
            issue.ids.append(req.id if req.id is not None else f"row {req.row_index}")


def _hash_ids(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit hashes of the non-null ids, as strings (so an id hashes the same in every shard)."""
    as_text = pc.cast(ids, pa.string()) if not pa.types.is_string(ids.type) else ids
    series = pl.Series(as_text).drop_nulls()
    return series.hash(seed=0).to_numpy()


def _find_duplicates(spec: JobSpec, source: InputFiles, units: Sequence[Unit], hashes: list[np.ndarray]) -> list[tuple[str, list[tuple[str, int]]]]:
    if not hashes:
        return []
    values, counts = np.unique(np.concatenate(hashes), return_counts=True)
    suspects = values[counts > 1]
    if not suspects.size:
        return []
    # Second pass, id column only: which ids hash to a suspect, and where they are.
    where: dict[str, list[tuple[str, int]]] = {}
    id_col = spec.input.id_column
    for unit in units:
        for batch in read_unit(source, unit, [id_col]):
            col = batch.column(id_col)
            as_text = pc.cast(col, pa.string()) if not pa.types.is_string(col.type) else col
            series = pl.Series(as_text)
            hit = np.isin(series.hash(seed=0).to_numpy(), suspects) & ~series.is_null().to_numpy()
            rows = batch.column(ROW_INDEX).to_numpy()
            for k in np.flatnonzero(hit):
                where.setdefault(series[int(k)], []).append((_short(unit.shard), int(rows[k])))
    return sorted((value, places) for value, places in where.items() if len(places) > 1)


def _short(shard: str) -> str:
    return posixpath.basename(shard)
