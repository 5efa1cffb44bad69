"""`batchgen validate` through the real CLI: a table of problem inputs, each with its own message and fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batchgen.cli import app
from tests.conftest import job_dict, write_job, write_shards


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def setup_job(tmp: Path, model: Path, change: Callable[[dict, Path], None] | None = None) -> Path:
    write_shards(tmp / "in", shards=2, rows=20)
    job = job_dict(model, tmp / "in", tmp / "out")
    if change:
        change(job, tmp)
    return write_job(tmp / "job.yaml", job)


def add_shard(tmp: Path, **cols) -> None:
    pq.write_table(pa.table(cols), tmp / "in" / "shard-9.parquet")


def output_of_other_job(job: dict, tmp: Path) -> None:
    (tmp / "out" / "_batchgen").mkdir(parents=True)
    (tmp / "out" / "_batchgen" / "job.json").write_text(json.dumps(
        {"fingerprint": "0" * 16, "fields": {"sampling": {"temperature": 0.9}}}))


# (case, change to the job/data, exit code, the check's tag, text the message must hold, text of the fix)
CASES = [
    ("unknown key", lambda j, t: j["prompt"].update(colum="text"), 2, "[spec]",
     "unknown key prompt.colum (did you mean prompt.column?)", "schemas/job.schema.json"),
    ("no input files", lambda j, t: j["input"].update(path=str(t / "nowhere")), 2, "[input]",
     "no .parquet files match", "directories are searched recursively"),
    ("missing column", lambda j, t: j["prompt"].update(column="body"), 2, "[columns]",
     "missing column(s) body; the file has id, text", "rename the column"),
    ("not parquet", lambda j, t: (t / "in" / "shard-9.parquet").write_text("id,text\n1,a\n"), 2, "[input]",
     "shard-9.parquet: not a readable Parquet file", "remove it from input.path"),
    ("duplicate ids", lambda j, t: add_shard(t, id=["s1-00003", "fresh"], text=["a", "b"]), 2, "[ids]",
     "1 duplicate id(s), e.g. 's1-00003' appears 2 times (shard-1.parquet row 3, shard-9.parquet row 0)", "make ids unique"),
    ("null prompt", lambda j, t: add_shard(t, id=["n1", "n2"], text=[None, "fine"]), 1, "[empty-prompt]",
     "1 row(s): empty prompt: column 'text' is null", "fill or drop these rows"),
    ("blank prompt", lambda j, t: add_shard(t, id=["b1"], text=["   "]), 1, "[empty-prompt]",
     "empty prompt: column 'text' is blank", "fill or drop"),
    ("null id", lambda j, t: add_shard(t, id=[None, "x"], text=["a", "b"]), 1, "[null-id]",
     "null id in column 'id' (row 0)", "give every row an id"),
    ("too long", lambda j, t: j["model"].update(max_model_len=32), 1, "[too-long]",
     "10 prompt(s) too long (longest", "shorten these prompts, or raise model.max_model_len"),
    ("bad per-row value", lambda j, t: (add_shard(t, id=["p1"], text=["a"], mt=[-3]),
                                        write_shards(t / "in", shards=2, rows=20, mt=lambda s, i: 4),
                                        j["sampling"].update(per_row={"max_tokens": "mt"})), 1, "[per-row]",
     "invalid per-row value in column 'mt' for max_tokens", "null them to use the job value"),
    ("template null", lambda j, t: (add_shard(t, id=["t1"], text=[None]), j.__setitem__("prompt", {"template": "Say {text}"})),
     1, "[template-null]", "template column(s) text null in this row", "fill the template's columns"),
    ("output is a file", lambda j, t: ((t / "afile").write_text("x"), j["output"].update(path=str(t / "afile" / "out"))),
     2, "[output]", "exists and is not a folder", "choose a writable output.path"),
    ("output of another job", output_of_other_job, 2, "[output]",
     "holds results of a job with different settings", "use another output.path, or `batchgen run --force`"),
]


@pytest.mark.parametrize("case, change, code, tag, message, fix", CASES, ids=[c[0] for c in CASES])
def test_problem_table(tiny_model, tmp_path, case, change, code, tag, message, fix):
    job = setup_job(tmp_path, tiny_model, change)
    result = invoke("validate", str(job), "--no-engine-check")
    assert result.exit_code == code, result.output
    assert any(tag in line for line in result.output.splitlines()), result.output
    assert message in result.output
    assert any(line.strip().startswith("fix: ") and fix in line for line in result.output.splitlines()), result.output


def test_clean_job_reports_shards_rows_tokens(tiny_model, tmp_path):
    job = setup_job(tmp_path, tiny_model)
    result = invoke("validate", str(job), "--no-engine-check")
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("job test: 2 shard(s), 40 rows, ") and "prompt tokens" in first
    assert "max_model_len 512 from model.max_model_len" in first
    assert "resume: 0 rows already committed (0/2 units complete); a run would generate 40" in result.output
    assert "no problems found" in result.output
    assert not (tmp_path / "out").exists(), "validate must not create the output folder"


def test_json_flags_and_model_config_length(tiny_model, tmp_path):
    """--json for scripts; run's flags after the job file; max_model_len from config.json when unset."""
    job = setup_job(tmp_path, tiny_model, lambda j, t: j["model"].pop("max_model_len"))
    result = invoke("validate", str(job), "--no-engine-check", "--json", "--max-model-len", "40", "--sample", "5")
    data = json.loads(result.output)
    assert data["max_model_len"] == 40 and data["max_model_len_source"] == "model.max_model_len"
    assert data["prompt_tokens_estimated"] is True and data["rows"] == 40
    assert [p["check"] for p in data["problems"]] == ["too-long", "too-long"]
    assert data["problems"][0]["examples"] == ["s0-00001", "s0-00003"]  # 5 rows sampled per unit: ids 1 and 3 are long
    assert result.exit_code == data["exit_code"] == 1

    data = json.loads(invoke("validate", str(job), "--no-engine-check", "--json").output)
    assert data["max_model_len"] == 2048 and data["max_model_len_source"] == "config.json max_position_embeddings"
    assert data["problems"] == [] and data["ok"] is True

    result = invoke("validate", str(job), "--no-engine-check", "--max-tokns", "4")
    assert result.exit_code == 2 and "No such option: --max-tokns" in result.output and "--max-tokens" in result.output


def test_unknown_engine_option_checked_against_vllm(tiny_model, tmp_path):
    job = setup_job(tmp_path, tiny_model, lambda j, t: j["model"].update(engine_kwargs={"max_num_seq": 8}))
    result = invoke("validate", str(job))
    assert result.exit_code == 2, result.output
    assert "[engine] model.engine_kwargs: unknown vLLM engine option 'max_num_seq'" in result.output
    assert "did you mean" in result.output and "max_num_seqs" in result.output
