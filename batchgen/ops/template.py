"""`batchgen init`: a commented job file to start from, valid as written (a test loads it as a JobSpec).

Only the keys people change are set; the rest are shown commented out with their defaults, so the
file documents the options without pinning them (a later default change still reaches the job).
"""

from __future__ import annotations

from pathlib import Path

from batchgen.errors import SpecError

TEMPLATE = """\
# A batchgen job. Run it with `batchgen run {name}`; check it first with `batchgen validate {name}`.
# Paths starting with ./ or ../ are relative to this file. Every key: schemas/job.schema.json.
name: {job_name}

input:
  path: {input}               # Parquet file(s), folder (searched recursively) or glob; s3://... works
  # format: parquet                  # or openai_batch: a JSONL file of OpenAI Batch API requests
  id_column: id                      # unique per row: the output is keyed and resumed by it
  # unit_rows: 16384                 # rows per work unit (default: ~1/128 of the input, fixed by the first run)
  # storage: {{endpoint_url: http://127.0.0.1:9000, region: us-east-1}}   # for s3:// paths

prompt:                              # exactly one of column / messages_column / template
  column: text                       # the prompt as is
  # messages_column: messages        # a list of {{role, content}} per row, rendered with the chat template
  # template: "Summarize: {{text}}"    # {{column}} placeholders
  # system: "You are a helpful assistant."   # implies the chat template
  # chat: false                      # force the chat template on or off

model:
  path: {model}                      # local folder or Hugging Face id, as `vllm serve MODEL`
  # max_model_len: 8192              # context length; longer prompts become error rows
  # dtype: auto
  # tensor_parallel_size: 1
  # gpu_memory_utilization: 0.9
  # max_num_seqs: 512                # GPU default (1024 below 1B parameters)
  # engine_kwargs: {{}}                # any other vLLM EngineArgs field

sampling:
  temperature: 0.7                   # 0 = greedy
  max_tokens: 256
  # top_p: 1.0
  # seed: 0                          # each row's seed derives from this and its id (recorded in the output)
  # per_row: {{max_tokens: max_len}}   # per-row overrides from input columns

output:
  path: {output}              # local folder or s3://bucket/prefix
  # passthrough_columns: []          # input columns copied to every output row
  # openai_batch_jsonl: false        # also write OpenAI Batch API output JSONL under openai/

checkpoint:
  every_rows: 2000                   # commit a part every N finished rows...
  every_seconds: 60                  # ...or every T seconds: a kill loses at most this much work

runtime:
  grace_seconds: 30                  # on SIGTERM: time for in-flight rows before committing and exiting
  # progress: auto                   # bar on a terminal, lines in logs
  # metrics_textfile: /var/lib/node_exporter/textfile/batchgen.prom   # Prometheus textfile collector
  # metrics_pushgateway: http://pushgateway:9091                      # or push to a Pushgateway
"""


def render(name: str, model: str, input_path: str, output: str, job_name: str) -> str:
    return TEMPLATE.format(name=name, model=model, input=input_path, output=output, job_name=job_name)


def write_template(path: Path, model: str, input_path: str, output: str, force: bool = False) -> str:
    """Write the template to `path`; refuses to overwrite unless `force`. Returns the text written."""
    if path.exists() and not force:
        raise SpecError("the file exists already", where=str(path), fix="choose another name, or pass --force to overwrite it")
    text = render(path.name, model, input_path, output, path.stem.replace(" ", "-") or "job")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text
