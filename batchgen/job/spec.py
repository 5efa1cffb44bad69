"""The job specification: everything a user can set, typed and documented in one place.

`schemas/job.schema.json` is generated from `JobSpec` (`python -m batchgen.job.schema`), so every
`description=` here is also what an editor shows while completing a job file.
"""

from __future__ import annotations

import hashlib
import json
import string
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator, model_validator

from batchgen.job.structured import StructuredSpec


def _yaml_on_off(value: Any) -> Any:
    """YAML 1.1 reads a bare on/off (yes/no) as a boolean: take it as the word the user wrote."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


OnOff = BeforeValidator(_yaml_on_off)


class Strict(BaseModel):
    """Unknown keys are errors: a typo in a job file must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageSpec(Strict):
    """How to reach an object store (s3://...). Unset fields fall back to the AWS credential chain."""

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (MinIO), R2 or GCS's S3 API.")
    region: str | None = Field(None, description="Region name, e.g. us-east-1.")
    profile: str | None = Field(None, description="AWS profile from ~/.aws/credentials.")
    anon: bool = Field(False, description="Anonymous access (public buckets).")
    key: str | None = Field(None, description="Access key id. Prefer the environment or a profile.")
    secret: SecretStr | None = Field(None, description="Secret access key. Never logged or written anywhere.")
    retries: int = Field(8, ge=0, le=50, description="Attempts on transient errors (5xx, throttling, resets, timeouts).")
    retry_base_seconds: float = Field(0.5, gt=0, description="First backoff delay; doubles each attempt, with full jitter.")
    retry_max_seconds: float = Field(20.0, gt=0, description="Largest single backoff delay.")


class InputSpec(Strict):
    path: str | list[str] = Field(..., description="Parquet file(s), directories or globs; any fsspec URL (local, s3://, memory://).")
    format: Literal["parquet", "openai_batch"] = Field("parquet", description="`parquet` shards, or an OpenAI Batch API requests file (JSONL with custom_id and body).")
    id_column: str = Field("id", description="Column with a unique id per row; copied to the output and used for exactly-once resume.")
    unit_rows: int | None = Field(None, ge=1, description="Shards are cut into work units of about this many rows (whole row groups; a larger row group is cut into pieces); engines, ranks and elastic workers take whole units. Default: about 1/128 of the input's rows, a power of two from 256 to 200,000. The job's first run records the value in _batchgen/job.json and later runs keep it.")
    batch_rows: int = Field(1024, ge=1, le=1_000_000, description="Rows per record batch read from Parquet (memory stays bounded by this, not the shard size).")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Object store options for the input.")

    @property
    def first_url(self) -> str:
        """The first input path: it decides the file system every shard is opened with."""
        return self.path[0] if isinstance(self.path, list) else self.path


class PromptSpec(Strict):
    """Exactly one source of prompts: a text column, a chat messages column, or a template."""

    column: str | None = Field(None, description="Column holding the prompt text, sent as is (or as a user message when `chat: true`).")
    messages_column: str | None = Field(None, description="Column holding chat messages (list of {role, content}), rendered with the model's chat template.")
    template: str | None = Field(None, description="Prompt template with {column} placeholders, e.g. 'Label this review: {text}'. Use {{ and }} for literal braces.")
    system: str | None = Field(None, description="System prompt. Implies the chat template.")
    chat: bool | None = Field(None, description="Render with the model's chat template. Default: true for messages_column or when `system` is set, false otherwise.")
    score_column: str | None = Field(None, description="Scoring mode: no generation (max_tokens 1), the text of this column is scored with vLLM's prompt logprobs: the output gets score_tokens, logprob_sum, logprob_mean and perplexity. Alone, the whole text is scored; with column/messages_column/template, that rendered prompt is the context and only this column's tokens (appended after it) are scored.")
    image_column: str | None = Field(None, description="Column with the row's image(s) for a vision model, beside `column` or `template`: image file bytes, a path or URL (local, s3://, any fsspec URL, data:, http(s)), a struct {bytes, path} (Hugging Face datasets' Image), or a list of these. An unreadable image makes an error row.")
    image_placeholder: str | None = Field(None, description="The text standing for one image in the prompt (e.g. `<image>` for LLaVA). Default: the `image_token` in the model folder's processor_config.json / preprocessor_config.json / tokenizer_config.json. A prompt without it gets one per image in front; '' for models that insert image tokens themselves (PaliGemma).")
    image_timeout_seconds: float = Field(30.0, gt=0, description="Longest wait for one image from an http(s) URL or object store.")

    @model_validator(mode="after")
    def _one_source(self) -> PromptSpec:
        given = [k for k in ("column", "messages_column", "template") if getattr(self, k)]
        if self.score_column and not given:
            if self.system or self.chat:
                raise ValueError("prompt.score_column alone scores plain text: remove system/chat, or give a context "
                                 "(prompt.column, messages_column or template) to render with the chat template")
            return self
        if len(given) != 1:
            raise ValueError(
                "set exactly one of prompt.column, prompt.messages_column or prompt.template"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.messages_column and self.chat is False:
            raise ValueError("prompt.messages_column always uses the chat template; remove `chat: false`")
        if self.image_column and self.messages_column:
            raise ValueError("prompt.image_column is for `column` and `template` prompts; with messages_column, put the "
                             "images in the messages as image_url content parts")
        return self

    @field_validator("template")
    @classmethod
    def _template_parses(cls, v: str | None) -> str | None:
        if v is not None:
            for _, name, spec, conv in string.Formatter().parse(v):
                if name == "":
                    raise ValueError("template has an empty placeholder {}; name a column, e.g. {text}")
                if name is not None and not name.replace("-", "_").isidentifier():
                    raise ValueError(f"template placeholder {{{name}}} must be a plain column name")
        return v

    @property
    def use_chat(self) -> bool:
        if self.messages_column:
            return True
        return bool(self.chat) if self.chat is not None else self.system is not None

    def template_columns(self) -> list[str]:
        if not self.template:
            return []
        return [name for _, name, _, _ in string.Formatter().parse(self.template) if name]

    def input_columns(self) -> list[str]:
        return [c for c in (self.column, self.messages_column) if c] + self.template_columns() + \
            ([self.score_column] if self.score_column else []) + ([self.image_column] if self.image_column else [])


# Sampling fields a per-row column may override (validated per row; a bad value is an error row).
# structured_schema (a JSON-schema string), choices (a list) and json_object (a bool) set `structured` for the row.
PER_ROW_FIELDS = ("max_tokens", "min_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "n",
                  "presence_penalty", "frequency_penalty", "repetition_penalty", "stop", "logprobs",
                  "structured_schema", "choices", "json_object", "lora")
PerRowField = Literal["max_tokens", "min_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "n",
                      "presence_penalty", "frequency_penalty", "repetition_penalty", "stop", "logprobs",
                      "structured_schema", "choices", "json_object", "lora"]

# Sampling fields an OpenAI batch request body may carry; each becomes a per-row override column.
OPENAI_BODY_FIELDS = ("max_tokens", "temperature", "top_p", "seed", "n", "stop", "presence_penalty", "frequency_penalty")
# Per-row columns an OpenAI request file derives from response_format and logprobs/top_logprobs.
OPENAI_DERIVED_FIELDS = ("structured_schema", "json_object", "logprobs")


class SamplingSpec(Strict):
    """vLLM SamplingParams for every row; per-row columns may override some of them."""

    n: int = Field(1, ge=1, le=128, description="Completions per row.")
    temperature: float = Field(1.0, ge=0, description="0 means greedy.")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1, description="0 or -1: no top-k.")
    min_p: float = Field(0.0, ge=0, le=1)
    max_tokens: int = Field(256, ge=1, description="Most tokens generated per completion (vLLM's default is 16; 256 suits batch work).")
    min_tokens: int = Field(0, ge=0)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = Field(1.0, gt=0)
    stop: list[str] = Field(default_factory=list, description="Stop strings.")
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = Field(False, description="Keep generating past EOS (fixed-length benchmarks).")
    skip_special_tokens: bool = True
    seed: int = Field(0, description="Job seed. Each row samples with a seed derived from this and its id, recorded in the output, so a retried row samples the same way.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Other vLLM SamplingParams fields by name (checked against vLLM before the engine starts).")
    structured: StructuredSpec | None = Field(None, description="Structured outputs (vLLM's StructuredOutputsParams): exactly one of choice, regex, json_schema, grammar, json_object. Per row: per_row.structured_schema / choices / json_object.")
    logprobs: int | None = Field(None, ge=0, description="Log probabilities of each generated token and of its K most likely alternatives (vLLM's `logprobs`; 0: the chosen token only): adds the `logprobs` and `cumulative_logprob` columns. More than 20 raises the engine's max_logprobs to match.")
    prompt_logprobs: int | None = Field(None, ge=0, description="Log probabilities of each prompt token and of its K most likely alternatives (vLLM's `prompt_logprobs`): adds the `prompt_logprobs` column. Turns off prefix-cache reads for the row.")
    choice_scores: bool = Field(False, description="With a `choice` constraint: a `label_scores` column, label -> probability (summing to 1), from the first generated token's log probabilities. See docs/structured.md for the method and its limits.")
    lora: str | None = Field(None, description="LoRA adapter (a name from model.lora) for every row; per_row.lora picks one per row (a null cell: this one, or the base model).")
    per_row: dict[PerRowField, str] = Field(default_factory=dict, description="Per-row overrides: sampling field -> input column, e.g. {max_tokens: max_len}. Null cells use the job value. structured_schema (a JSON-schema string column), choices (a list column) and json_object (a bool column) replace `structured` for their row.")

    @model_validator(mode="after")
    def _n_needs_a_temperature(self) -> SamplingSpec:
        # vLLM rejects each such row ("n must be 1 when using greedy sampling"): fail the job before the engine starts.
        if self.n > 1 and self.temperature == 0 and "temperature" not in self.per_row:
            raise ValueError(f"sampling.n is {self.n} but sampling.temperature is 0: greedy decoding gives one completion "
                             f"(vLLM refuses n > 1 without sampling); set sampling.temperature above 0 (e.g. 0.8) or n: 1")
        return self

    @model_validator(mode="after")
    def _scores_need_choices(self) -> SamplingSpec:
        if self.choice_scores:
            if not ((self.structured and self.structured.choice) or "choices" in self.per_row):
                raise ValueError("sampling.choice_scores scores the labels of a choice: set sampling.structured.choice "
                                 "(or per_row.choices)")
            if self.logprobs is not None:
                raise ValueError("sampling.choice_scores and sampling.logprobs cannot be combined (vLLM returns either "
                                 "the top-K tokens or the choices' tokens): remove one")
        return self


class ModelSpec(Strict):
    """The engine: named fields for the common vLLM options, `engine_kwargs` for any other EngineArgs field."""

    path: str = Field(..., description="Local model folder, Hugging Face id (as `vllm serve MODEL`), or a folder on an object store (s3://bucket/prefix/, any fsspec URL): copied once per machine into runtime.model_cache, verified, then loaded from there.")
    tokenizer: str | None = Field(None, description="Tokenizer folder, id or URL, if not the model's.")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Object store options for model.path, model.tokenizer and model.lora URLs.")
    dtype: str = Field("auto", description="auto, bfloat16, float16, float32.")
    quantization: str | None = Field(None, description="awq, gptq, fp8, ... (as vLLM's --quantization).")
    max_model_len: int | None = Field(None, ge=16, description="Context length; prompts longer than this (minus max_tokens headroom none) become error rows.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    trust_remote_code: bool = False
    max_num_seqs: int | None = Field(None, ge=1, description="Sequences per engine step. Default on GPU: 1024 for models below 1B parameters (read from config.json), else 512; vLLM's own elsewhere. Above 512, batchgen captures CUDA graphs up to max_num_seqs (unless engine_kwargs set capture sizes).")
    max_num_batched_tokens: int | None = Field(None, ge=16)
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    enforce_eager: bool = False
    load_format: str = Field("auto", description="auto, safetensors, dummy (random weights of the real shape, for benchmarks), ...")
    structured_backend: Literal["auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer"] = Field("auto", description="Grammar backend of structured outputs (vLLM's StructuredOutputsConfig.backend). auto: xgrammar, falling back to guidance/outlines for what it cannot compile.")
    lora: dict[str, str] = Field(default_factory=dict, description="LoRA adapters by name: {name: folder}, each a PEFT folder (adapter_config.json + adapter_model.safetensors), local or on an object store (copied once into runtime.model_cache). Rows pick one with sampling.lora or sampling.per_row.lora.")
    max_loras: int | None = Field(None, ge=1, description="Adapters in one engine batch (vLLM's max_loras). Default: the number of adapters, at most 8.")
    max_lora_rank: int | None = Field(None, ge=1, description="Largest adapter rank (vLLM's max_lora_rank: 8, 16, 32, 64, ...). Default: the smallest vLLM value that fits every adapter's rank.")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Any other vLLM EngineArgs field, checked by name before the engine starts.")


class OutputSpec(Strict):
    path: str = Field(..., description="Output folder (local path or fsspec URL such as s3://bucket/prefix).")
    passthrough_columns: list[str] = Field(default_factory=list, description="Input columns copied to each output row.")
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"
    openai_batch_jsonl: bool = Field(False, description="Also write results as OpenAI Batch API output JSONL (one file per part).")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Object store options for the output.")


class CheckpointSpec(Strict):
    every_rows: int = Field(2000, ge=1, description="Commit a part once this many rows are finished...")
    every_seconds: float = Field(60.0, gt=0, description="...or this many seconds after the last commit, whichever comes first.")
    upload_queue: int = Field(4, ge=1, description="Parts waiting to be written at which generation is held back: at a checkpoint it waits while this many or more still wait from earlier checkpoints, then hands over all of its own parts (one per unit with finished rows) at once.")


class RuntimeSpec(Strict):
    window: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(None, description="Rows kept in flight in the engine. Default: the rows that fill the engine's max_num_seqs sequences (512 or 1024 on GPU, see model.max_num_seqs; 64 if unknown), a row of sampling.n completions taking n of them (its own n where sampling.per_row sets one). auto: those plus a reserve queued inside vLLM of two steps' worth of the sequences finishing per step (at most twice as many), for short completions, whose freed slots would wait for the refill (batchgen/run/window.py).")
    order_by_prefix: bool = Field(True, description="Group rows that share a prompt prefix so the prefix cache hits; output ids are unaffected.")
    ordering_rows: int = Field(4096, ge=1, description="Look-ahead of rows sorted together by prefix.")
    grace_seconds: float = Field(30.0, ge=0, description="On SIGTERM/SIGINT, time given to in-flight rows before committing and exiting (spot notices give 120 s).")
    progress: Annotated[Literal["auto", "bar", "lines", "off"], OnOff] = Field("auto", description="auto: a bar on a terminal, periodic lines otherwise (cron, SLURM logs).")
    progress_seconds: float = Field(30.0, gt=0, description="Interval of the plain progress lines.")
    engine: Literal["vllm", "instant"] = Field("vllm", description="`instant` replaces the model by an echo that costs nothing: measures batchgen's own per-row cost.")
    instant_rows_per_second: float = Field(0.0, ge=0, description="engine: instant only. Finish rows at this steady rate (0: at once): an engine of fixed speed without a GPU, to measure scale-out overheads (python -m benchmarks.scaleout).")
    gpus_per_engine: int | None = Field(None, ge=1, description="GPUs per engine process (tensor parallel). Default: model.tensor_parallel_size.")
    num_engines: int | None = Field(None, ge=1, description="Engine processes on this node. Default: visible GPUs / gpus_per_engine x engines_per_gpu (engines_per_gpu without GPUs).")
    engines_per_gpu: Annotated[int, Field(ge=1, le=16)] | Literal["auto"] = Field("auto", description="Engine processes sharing each GPU group, for a small model whose engine leaves its GPU idle part of the time (vLLM 0.26, a 0.6B model under MPS: 1.14x the tuned LLM.generate loop's rows/s with two engines against 1.09x with one on an H100; docs/benchmarks.md). Each gets model.gpu_memory_utilization / N (and 1/N of engine_kwargs.kv_cache_memory_bytes, or of VLLM_CPU_KVCACHE_SPACE on the CPU backend); how they start: runtime.shared_start. auto (default): 2 for a model below 1B parameters (its config.json) on one GPU per engine where MPS serves them (runtime.mps), else 1; always 1 for CPU engines and the instant engine (batchgen/node/sharing.py).")
    shared_start: Literal["auto", "together", "one_by_one"] = Field("auto", description="How engines sharing a GPU (engines_per_gpu > 1) start. vLLM sizes its KV cache by profiling the device's free memory, which another engine starting beside it upsets (on an H200 with vLLM 0.26 the second of two engines started at once failed); with an explicit KV cache size it skips that profile. auto: together when every engine's KV cache size is explicit -- engine_kwargs.kv_cache_memory_bytes, VLLM_CPU_KVCACHE_SPACE on the CPU backend, or, on a GPU, the size batchgen derives from the device's memory (NVML), the model's weights (config.json) and a margin (batchgen/node/sharing.py) -- else one_by_one. together: all at once. one_by_one: each engine once the previous one on its GPU is ready (or has exited).")
    mps: Annotated[Literal["auto", "on", "off"], OnOff] = Field("auto", description="Engines sharing a GPU (engines_per_gpu > 1) under NVIDIA MPS, so that their kernels run side by side instead of taking turns: batchgen starts a private control daemon for the run and ends it after (one the user runs, CUDA_MPS_PIPE_DIRECTORY, is used as it is). auto: when nvidia-cuda-mps-control is on PATH; on: it must be (the job fails before the engines start otherwise); off: never.")
    cpu_affinity: Annotated[Literal["auto", "off"], OnOff] = Field("auto", description="auto: with several engines on a node, pin each to its own cores, those near its GPUs where the topology says (CPU engines: VLLM_CPU_OMP_THREADS_BIND). off: every engine may run on every core.")
    elastic: bool = Field(False, description="Claim work units through lease files next to the output (spot fleets of changing size) instead of a static rank split.")
    lease_seconds: float = Field(120.0, gt=1, description="An elastic lease not renewed for this long may be taken over.")
    on_duplicate_ids: Literal["error", "warn"] = Field("error", description="Ids that repeat across the job's shards make the join back by id ambiguous (rows are resumed by position, so none is lost): `error` stops the run before the engine starts, naming the ids and where they are; `warn` logs the same and goes on. Checked once per input (the result is recorded in _batchgen/job.json).")
    model_cache: str | None = Field(None, description="Local folder where model weights, tokenizers and adapters from object stores are copied (once per machine; engines of a node share one copy). Default: $BATCHGEN_CACHE/models, else $XDG_CACHE_HOME/batchgen/models, else ~/.cache/batchgen/models.")
    metrics_textfile: str | None = Field(None, description="Write Prometheus metrics here at every commit (node_exporter textfile collector), e.g. /var/lib/node_exporter/textfile/batchgen.prom. Written atomically (tmp + rename).")
    metrics_pushgateway: str | None = Field(None, description="Prometheus Pushgateway URL, e.g. http://pushgateway:9091. Metrics are PUT to /metrics/job/batchgen/instance/<worker> at every commit.")

    @model_validator(mode="after")
    def _pace_needs_instant(self) -> RuntimeSpec:
        if self.instant_rows_per_second and self.engine != "instant":
            raise ValueError("runtime.instant_rows_per_second paces the instant engine only: set runtime.engine: instant, or remove it")
        return self


# Fingerprinted settings that came after batchgen 0.1's outputs (structured outputs, logprobs, scoring, LoRA,
# images): left out of the fingerprint while at their default (JobSpec.fingerprint_fields).
_LATER_SETTINGS = (("prompt", "score_column"), ("prompt", "image_column"), ("prompt", "image_placeholder"),
                   ("sampling", "structured"), ("sampling", "logprobs"), ("sampling", "prompt_logprobs"),
                   ("sampling", "choice_scores"), ("sampling", "lora"), ("model", "structured_backend"), ("model", "lora"))
_DEFAULTS = {"prompt": PromptSpec, "sampling": SamplingSpec, "model": ModelSpec}


class JobSpec(Strict):
    """A batch generation job: where the prompts are, how to render them, which model, where results go."""

    name: str | None = Field(None, description="Job name, shown in progress and stats.")
    input: InputSpec
    prompt: PromptSpec
    model: ModelSpec
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    output: OutputSpec
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)

    @model_validator(mode="before")
    @classmethod
    def _openai_batch_defaults(cls, data: Any) -> Any:
        """An OpenAI batch file says everything itself: prompts from `messages`, sampling from each body."""
        if not isinstance(data, dict) or not isinstance(data.get("input"), dict) or data["input"].get("format") != "openai_batch":
            return data
        data = {**data}
        data.setdefault("prompt", {"messages_column": "messages"})
        given = data.get("sampling") or {}
        sampling = given.model_dump() if isinstance(given, BaseModel) else {**given}
        sampling["per_row"] = {**{f: f for f in OPENAI_BODY_FIELDS + OPENAI_DERIVED_FIELDS}, **(sampling.get("per_row") or {})}
        data["sampling"] = sampling
        return data

    @model_validator(mode="after")
    def _scoring_generates_nothing(self) -> JobSpec:
        s = self.sampling
        if self.prompt.score_column and (s.structured or s.choice_scores):
            raise ValueError("prompt.score_column scores existing text and generates nothing: remove sampling.structured "
                             "and sampling.choice_scores")
        return self

    @model_validator(mode="after")
    def _lora_names(self) -> JobSpec:
        if self.sampling.lora is not None and self.sampling.lora not in self.model.lora:
            known = ", ".join(sorted(self.model.lora)) or "none"
            raise ValueError(f"sampling.lora {self.sampling.lora!r} is not an adapter of model.lora (known: {known})")
        if "lora" in self.sampling.per_row and not self.model.lora:
            raise ValueError("sampling.per_row.lora needs adapters: list them in model.lora as {name: folder}")
        return self

    def input_columns(self) -> list[str]:
        """The columns read from the input: nothing else is loaded."""
        cols = [self.input.id_column, *self.prompt.input_columns(), *self.sampling.per_row.values(),
                *self.output.passthrough_columns]
        return list(dict.fromkeys(cols))

    def free_type_columns(self) -> list[str]:
        """Input columns whose type may differ between shards: the image column (bytes, paths, structs or lists
        of them, decoded cell by cell: io/images.py), unless it is also written out as a passthrough column."""
        col = self.prompt.image_column
        return [col] if col and col not in self.output.passthrough_columns else []

    def fingerprint_fields(self) -> dict[str, Any]:
        """The settings that change what the output holds: a resume with different values is refused."""
        model = self.model.model_dump(include={"path", "tokenizer", "dtype", "quantization", "max_model_len", "load_format",
                                                "structured_backend", "lora"})
        fields = {
            "input.format": self.input.format,
            "input.id_column": self.input.id_column,
            "prompt": self.prompt.model_dump(exclude={"image_timeout_seconds"}),  # a wait, not what the rows hold
            "model": model,
            "sampling": self.sampling.model_dump(),
            "output.passthrough_columns": self.output.passthrough_columns,
        }
        # Settings added after outputs already existed count only when set: at their default they change
        # nothing, and an output written before they existed keeps its fingerprint (and resumes).
        for section, key in _LATER_SETTINGS:
            default = _DEFAULTS[section].model_fields[key].get_default(call_default_factory=True)
            if fields[section].get(key) == default:
                del fields[section][key]
        return fields

    def fingerprint(self) -> tuple[str, dict[str, Any]]:
        """A hash of fingerprint_fields, and the fields themselves as JSON (to say which differ)."""
        blob = json.dumps(self.fingerprint_fields(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16], json.loads(blob)
