"""From input rows to engine requests: render, tokenize, per-row sampling, seeds, prefix order.

A row that cannot become a request (null prompt, bad messages, bad per-row value, too long) becomes
a request with `error` set: it is written as an error row and never sent to the engine.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol, Sequence

import pyarrow as pa
from pydantic import ValidationError

from batchgen.engine.base import Request
from batchgen.io.images import ImageFetcher
from batchgen.io.openai_batch import READ_ERROR
from batchgen.io.reader import ROW_INDEX
from batchgen.job.spec import JobSpec, SamplingSpec
from batchgen.run.tokenizer import encode_ids
from batchgen.run import scoring, structured
from batchgen.run.images import ImagePrompts, check_parts


class Tokenizer(Protocol):
    def __call__(self, texts: list[str], add_special_tokens: bool) -> Any: ...
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool, tokenize: bool) -> str: ...


def row_seed(job_seed: int, row_id: Any) -> int:
    """A stable 63-bit seed from the job seed and the row id (not its position), so retries match."""
    digest = hashlib.blake2b(f"{job_seed}\x1f{row_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


class Renderer:
    """Turns record batches into Requests for one job. Holds the tokenizer; no engine, no files."""

    def __init__(self, spec: JobSpec, tokenizer: Tokenizer, max_prompt_tokens: int | None, *,
                 image_placeholder: str | None = None):
        self.spec = spec
        self.tok = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self._base = spec.sampling.model_dump()
        # Scoring mode: every row runs with one generated token and prompt logprobs (run.scoring).
        self._score_sampling = scoring.score_sampling(spec.sampling) if spec.prompt.score_column else None
        self.images = ImagePrompts(spec.prompt, tokenizer, image_placeholder,
                                   ImageFetcher(spec.input.storage, spec.prompt.image_timeout_seconds))

    def render(self, unit: str, batch: pa.RecordBatch) -> list[Request]:
        spec = self.spec
        cols = {name: batch.column(name).to_pylist() for name in batch.schema.names}
        ids, rows = cols[spec.input.id_column], cols[ROW_INDEX]
        read_errors = cols.get(READ_ERROR)  # set by readers of formats with per-line failures (OpenAI batch JSONL)
        reqs: list[Request] = []
        texts: list[str] = []
        for i in range(batch.num_rows):
            rid = ids[i]
            req = Request(unit=unit, row_index=rows[i], id=rid, seed=0, sampling=spec.sampling,
                          passthrough={c: cols[c][i] for c in spec.output.passthrough_columns})
            reqs.append(req)
            if read_errors and read_errors[i]:
                req.error = f"bad request: {read_errors[i]}"
                texts.append("")
                continue
            if rid is None:
                req.error = f"null id in column {spec.input.id_column!r} (row {rows[i]})"
                texts.append("")
                continue
            req.sampling, req.error = self._sampling(cols, i)
            # A per-row seed column wins; otherwise the seed follows from the job seed and the row id.
            seed_col = spec.sampling.per_row.get("seed")
            explicit = seed_col is not None and cols[seed_col][i] is not None and req.error is None
            req.seed = req.sampling.seed if explicit else row_seed(spec.sampling.seed, rid)
            if self._score_sampling is not None:
                req.sampling = self._score_sampling if req.sampling is spec.sampling else scoring.score_sampling(req.sampling)
            req.lora, err = self._lora(req.sampling)
            req.error = req.error or err
            text, refs, err = self._text(cols, i)
            req.error = req.error or err
            if refs and req.error is None:
                text, err = self.images.place(text, len(refs), chat=self.spec.prompt.use_chat)
                req.images, req.error = self.images.load(refs, rid) if err is None else (None, err)
            texts.append(text if req.error is None else "")
        self._tokenize(reqs, texts)
        if spec.prompt.score_column:
            scoring.append_texts(reqs, cols[spec.prompt.score_column], spec.prompt.score_column, self.tok, self.max_prompt_tokens)
        return reqs

    def _text(self, cols: dict[str, list], i: int) -> tuple[str, list, str | None]:
        """The prompt text, the row's image references (in prompt order), and the reason it has none."""
        p = self.spec.prompt
        if not (p.column or p.messages_column or p.template):
            return "", [], None  # scoring mode without a context: the scored text is the whole prompt (run.scoring)
        if p.messages_column:
            messages = cols[p.messages_column][i]
            problem = _check_messages(messages, p.messages_column)
            if problem:
                return "", [], problem
            if p.system and not any(m["role"] == "system" for m in messages):
                messages = [{"role": "system", "content": p.system}, *messages]
            messages, refs = self.images.template_messages(messages)
            text, err = self._chat(messages)
            return text, refs, err
        refs = self.images.column_refs(cols, i)
        if p.column:
            text = cols[p.column][i]
            if text is None or (isinstance(text, str) and not text.strip()):
                return "", refs, f"empty prompt: column {p.column!r} is {'null' if text is None else 'blank'}"
            if not isinstance(text, str):
                return "", refs, f"column {p.column!r} holds {type(text).__name__}, not text"
        else:
            values = {c: cols[c][i] for c in p.template_columns()}
            nulls = [c for c, v in values.items() if v is None]
            if nulls:
                return "", refs, f"template column(s) {', '.join(nulls)} null in this row"
            nested = [c for c, v in values.items() if isinstance(v, (list, tuple, dict, bytes, bytearray))]
            if nested:  # formatting would paste Python's repr of the value into the prompt
                return "", refs, f"template column {nested[0]!r} holds {type(values[nested[0]]).__name__}, not text"
            text = p.template.format(**values)
        if p.use_chat:
            user = {"role": "user", "content": self.images.content(text, len(refs))}
            text, err = self._chat(([{"role": "system", "content": p.system}] if p.system else []) + [user])
            return text, refs, err
        return text, refs, None

    def _lora(self, sampling: SamplingSpec) -> tuple[str | None, str | None]:
        """The row's adapter (per_row.lora's cell, else sampling.lora), or why it has none."""
        name = sampling.lora
        if name is None or name in self.spec.model.lora:
            return name, None
        column = self.spec.sampling.per_row.get("lora")
        return None, (f"unknown LoRA adapter {name!r} in column {column!r}: model.lora has "
                      f"{', '.join(sorted(self.spec.model.lora))}")

    def _chat(self, messages: list[dict]) -> tuple[str, str | None]:
        try:
            return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), None
        except Exception as e:  # noqa: BLE001 - a template that fails on this row's messages is this row's error
            return "", f"chat template failed on this row's messages: {e}"

    def _sampling(self, cols: dict[str, list], i: int) -> tuple[SamplingSpec, str | None]:
        per_row = self.spec.sampling.per_row
        if not per_row:
            return self.spec.sampling, None
        values = {f: cols[c][i] for f, c in per_row.items() if cols[c][i] is not None}
        if not values:
            return self.spec.sampling, None
        try:
            values, structured_from = structured.row_fields(values, per_row, cols[self.spec.input.id_column][i])
        except structured.RowValueError as e:
            return self.spec.sampling, str(e)
        row = {**self._base, **values}
        if "temperature" not in values:  # a null temperature cell: the job's temperature holds for this row's n
            row["per_row"] = {f: c for f, c in per_row.items() if f != "temperature"}
        try:
            return SamplingSpec.model_validate(row), None
        except ValidationError as e:
            first = e.errors()[0]
            if not first["loc"]:  # a rule across fields (SamplingSpec's model validators): the row's sampling as a whole
                return self.spec.sampling, (f"invalid per-row sampling (columns {', '.join(per_row[f] for f in values)}) for "
                                            f"row id {cols[self.spec.input.id_column][i]!r}: "
                                            f"{first['msg'].removeprefix('Value error, ')}")[:500]
            field_name = str(first["loc"][0])
            if field_name == "structured" and structured_from:  # the cell's column, and no schema echoed in full
                return self.spec.sampling, (f"invalid per-row value in column {per_row[structured_from]!r} for "
                                            f"{structured_from} (row id {cols[self.spec.input.id_column][i]!r}): "
                                            f"{first['msg'].removeprefix('Value error, ')}")[:500]
            return self.spec.sampling, (f"invalid per-row value in column {per_row.get(field_name, field_name)!r} "
                                        f"for {field_name}: {first['msg']} (got {first.get('input')!r})")

    def _tokenize(self, reqs: list[Request], texts: list[str]) -> None:
        todo = [i for i, r in enumerate(reqs) if r.error is None]
        if not todo:
            return
        # Chat templates already hold the special tokens they need (BOS, markers); plain text gets them as vLLM would.
        add_special = not self.spec.prompt.use_chat
        encoded = encode_ids(self.tok, [texts[i] for i in todo], add_special)
        limit = self.max_prompt_tokens
        for i, ids in zip(todo, encoded):
            req = reqs[i]
            if limit is not None and len(ids) > limit:
                req.error = (f"prompt has {len(ids)} tokens; the model takes at most {limit} "
                             f"(max_model_len minus 1 generated token)")
            else:
                req.token_ids = ids if isinstance(ids, list) else list(ids)


def _check_messages(messages: Any, column: str) -> str | None:
    if not messages:
        return f"column {column!r} has no messages in this row"
    if not isinstance(messages, list):
        return f"column {column!r} must hold a list of {{role, content}}, got {type(messages).__name__}"
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or m.get("content") is None:
            return f"column {column!r}, message {k}: needs string fields role and content, got {m!r}"[:300]
        problem = check_parts(m["content"])
        if problem:
            return f"column {column!r}, message {k}: {problem}"
    return None


def order_by_prefix(reqs: Sequence[Request]) -> list[Request]:
    """Rows sharing a token prefix end up adjacent, so their prefill hits the prefix cache; rows of
    one LoRA adapter too (base model first), so the engine switches adapters rarely."""
    return sorted(reqs, key=lambda r: (r.lora or "", r.token_ids))
