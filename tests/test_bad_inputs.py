"""Bad input gets a clear error and loses nothing.

Job-level problems fail before the engine starts (exit 2) with a message naming the key, file or
column; committed output from an earlier run stays byte for byte. Row-level problems become error
rows with a reason, and the job goes on.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batchgen.cli import app
from batchgen.job.load import validate
from batchgen.run.runner import RunOptions, Runner
from tests.conftest import job_dict, write_job, write_shards


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def committed_job(tiny_model, tmp_path_factory):
    """A finished job (instant engine: this file tests validation, not generation) to break afterwards."""
    tmp = tmp_path_factory.mktemp("bad")
    write_shards(tmp / "in", shards=1, rows=20)
    base = job_dict(tiny_model, tmp / "in", tmp / "out", runtime={"engine": "instant"})
    Runner(validate(base)).run()
    return tmp, base


def _edit(job: dict, dotted: str, value) -> dict:
    import copy

    job = copy.deepcopy(job)
    node = job
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    if value is _DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return job


_DELETE = object()

# (case id, edit to the job dict or a callable(tmp, job) -> job, extra CLI args, expected text in the error)
JOB_CASES = [
    ("unknown-top-key", ("inptu", {"path": "x"}), [], "unknown key inptu (did you mean input?)"),
    ("unknown-nested-key", ("sampling.temperatur", 0.5), [], "unknown key sampling.temperatur (did you mean sampling.temperature?)"),
    ("missing-model", ("model", _DELETE), [], "missing required key model"),
    ("missing-output", ("output", _DELETE), [], "missing required key output"),
    ("two-prompt-sources", ("prompt.template", "Hi {text}"), [], "set exactly one of prompt.column, prompt.messages_column or prompt.template"),
    ("no-prompt-source", ("prompt", {}), [], "set exactly one of prompt.column"),
    ("empty-placeholder", ("prompt", {"template": "Label {}"}), [], "empty placeholder {}"),
    ("negative-temperature", ("sampling.temperature", -1), [], "sampling.temperature: Input should be greater than or equal to 0"),
    ("top-p-too-big", None, ["--top-p", "2"], "sampling.top_p: Input should be less than or equal to 1"),
    ("zero-max-tokens", None, ["--max-tokens", "0"], "sampling.max_tokens: Input should be greater than or equal to 1"),
    ("bad-set-syntax", None, ["--set", "runtime.window"], "--set expects path.to.key=value"),
    ("set-unknown-key", None, ["--set", "runtime.windw=3"], "unknown key runtime.windw (did you mean runtime.window?)"),
    ("wrong-type", ("checkpoint.every_rows", "often"), [], "checkpoint.every_rows: Input should be a valid integer"),
    ("per-row-unknown-field", ("sampling.per_row", {"temprature": "text"}), [], "sampling.per_row.temprature"),
    ("no-input-files", ("input.path", "/nonexistent/shards/*.parquet"), [], "no .parquet files match /nonexistent/shards/*.parquet"),
    ("missing-prompt-column", ("prompt.column", "body"), [], "missing column(s) body; the file has id, text"),
    ("missing-id-column", ("input.id_column", "uid"), [], "missing column(s) uid"),
    ("missing-per-row-column", ("sampling.per_row", {"max_tokens": "max_len"}), [], "missing column(s) max_len"),
    ("missing-passthrough-column", ("output.passthrough_columns", ["topic"]), [], "missing column(s) topic"),
    ("missing-template-column", ("prompt", {"template": "Label {review}"}), [], "missing column(s) review"),
    ("model-folder-missing", ("model.path", "/nonexistent/model"), [], "model folder not found: /nonexistent/model"),
    ("unknown-engine-option", ("model.engine_kwargs", {"max_num_seq": 4}), [], "unknown vLLM engine option 'max_num_seq'"),
    ("engine-kwargs-clash", ("model.engine_kwargs", {"max_model_len": 128}), [], "model.engine_kwargs repeats named field(s) max_model_len"),
    ("changed-settings", ("sampling.max_tokens", 9), [], "sampling.max_tokens: 8 -> 9"),
]


@pytest.mark.parametrize("case", JOB_CASES, ids=[c[0] for c in JOB_CASES])
def test_bad_job_fails_before_engine_and_keeps_output(committed_job, case, tmp_path):
    tmp, base = committed_job
    _, edit, args, expected = case
    job = base if edit is None else _edit(base, *edit)
    # The real engine is asked for: a case that got as far as starting it would take seconds and fail the timing below.
    job = _edit(job, "runtime.engine", "vllm") if case[0] in ("unknown-engine-option", "engine-kwargs-clash") else job
    before = _tree_digest(tmp / "out")
    path = write_job(tmp_path / "job.yaml", job)
    res = CliRunner().invoke(app, ["run", str(path), *args])
    assert res.exit_code == 2, res.output
    assert expected in res.output, res.output
    assert "fix:" in res.output or "did you mean" in res.output
    assert _tree_digest(tmp / "out") == before


def test_bad_yaml_names_line(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input:\n  path: x\n prompt: [\n")
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 2
    assert f"{path}:3:" in res.output and "not valid YAML" in res.output


def test_missing_job_file(tmp_path):
    res = CliRunner().invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "cannot read the job file" in res.output and "batchgen init" in res.output


def test_not_parquet(tiny_model, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.parquet").write_text("id,text\n1,hello\n")
    path = write_job(tmp_path / "job.yaml", job_dict(tiny_model, tmp_path / "in", tmp_path / "out"))
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 2 and "a.parquet" in res.output and "Parquet" in res.output


def test_unwritable_output(tiny_model, tmp_path):
    write_shards(tmp_path / "in", shards=1, rows=3)
    (tmp_path / "blocker").write_text("a file where the output folder should be")
    path = write_job(tmp_path / "job.yaml", job_dict(tiny_model, tmp_path / "in", tmp_path / "blocker" / "out"))
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code != 0 and "blocker" in res.output
    assert "Traceback" not in res.output


# -- rows that cannot be generated: error rows, the job goes on ---------------------------------

LONG = "river " * 700  # far over max_model_len=512 tokens
BAD_ROWS = {
    # id: (text, max_len, temp, expected error text)
    "null-prompt": (None, None, None, "empty prompt: column 'text' is null"),
    "blank-prompt": ("   ", None, None, "empty prompt: column 'text' is blank"),
    "too-long": (LONG, None, None, "the model takes at most 511"),
    "zero-max-tokens": ("ok text", 0, None, "invalid per-row value in column 'max_len' for max_tokens"),
    "negative-temperature": ("ok text", None, -1.0, "invalid per-row value in column 'temp' for temperature"),
    "huge-temperature": ("ok text", None, 1e9, None),  # allowed by the spec, vLLM refuses: an error row from the engine
}


@pytest.fixture(scope="module")
def error_rows(vllm_engine, tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rows")
    ids = ["good-1", *BAD_ROWS, "good-2"]
    texts = ["a fine prompt about rivers", *(v[0] for v in BAD_ROWS.values()), "another fine prompt"]
    (tmp / "in").mkdir()
    pq.write_table(pa.table({
        "id": ids, "text": texts,
        "max_len": pa.array([None, *(v[1] for v in BAD_ROWS.values()), 4], pa.int64()),
        "temp": pa.array([None, *(v[2] for v in BAD_ROWS.values()), None], pa.float64()),
    }), tmp / "in" / "rows.parquet")
    spec = validate(job_dict(tiny_model, tmp / "in", tmp / "out",
                             sampling={"temperature": 0, "max_tokens": 8, "per_row": {"max_tokens": "max_len", "temperature": "temp"}}))
    summary = Runner(spec, RunOptions(engine_factory=lambda _s: vllm_engine)).run()
    rows = {r["id"]: r for r in pq.read_table(tmp / "out" / "parts").to_pylist()}
    return summary, rows


@pytest.mark.engine
@pytest.mark.parametrize("row_id", list(BAD_ROWS))
def test_bad_row_becomes_error_row(error_rows, row_id):
    summary, rows = error_rows
    expected = BAD_ROWS[row_id][3]
    row = rows[row_id]
    assert row["error"], f"{row_id} should be an error row"
    assert row["text"] is None
    if expected:
        assert expected in row["error"]
    else:
        assert "rejected by vLLM" in row["error"] and "temperature" in row["error"]


@pytest.mark.engine
def test_good_rows_around_errors_still_generated(error_rows):
    summary, rows = error_rows
    assert summary.complete and summary.counters.errors == len(BAD_ROWS)
    assert rows["good-1"]["error"] is None and rows["good-1"]["output_tokens"] == 8
    assert rows["good-2"]["error"] is None and rows["good-2"]["output_tokens"] == 4  # per-row max_tokens
