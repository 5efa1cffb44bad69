"""The row pass of `batchgen validate`: every row rendered and tokenized exactly as a run would, no engine.

Rows go through the same reader and `prompts.Renderer` as `batchgen run`, so a row reported here is
a row that would become an error row there, for the same reason. Id uniqueness is checked across
all shards with the check `batchgen run` makes (io.idscan), its first pass riding on this one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from batchgen.io.idscan import DuplicateIds, find_duplicates, hash_ids
from batchgen.io.reader import read_unit
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
    duplicates: DuplicateIds = field(default_factory=DuplicateIds)

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
            hashes.append(hash_ids(batch.column(id_col)))
            if renderer is None or (sample_rows is not None and rendered >= sample_rows):
                continue
            if sample_rows is not None and rendered + batch.num_rows > sample_rows:
                batch = batch.slice(0, sample_rows - rendered)
            rendered += batch.num_rows
            _note_requests(scan, unit.shard, renderer.render(unit.key, batch))
    scan.duplicates = find_duplicates(source, units, id_col, hashes)
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
