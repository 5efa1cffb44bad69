"""Bad input gets a clear error and loses nothing.

Job-level problems fail before the engine starts (exit 2) with a message naming the key, file or
column; committed output from an earlier run stays byte for byte. Row-level problems become error
rows with a reason, and the job goes on.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batchgen.cli import app
from batchgen.job.load import validate
from batchgen.run.runner import RunOptions, Runner
from tests.conftest import ROOT, job_dict, write_job, write_shards


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def committed_job(tiny_model, tmp_path_factory):
    """A finished job (instant engine: this file tests validation, not generation) to break afterwards."""
    tmp = tmp_path_factory.mktemp("bad")
    write_shards(tmp / "in", shards=2, rows=10)
    base = job_dict(tiny_model, tmp / "in", tmp / "out", runtime={"engine": "instant"})
    Runner(validate(base)).run()
    return tmp, base


def _edit(job: dict, dotted: str, value) -> dict:
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


# -- inputs of their own for the cases below: a fresh input folder and output, so the problem is the input's -----

def _fresh(tmp: Path, job: dict, tables: dict[str, pa.Table | bytes | None]) -> dict:
    """Shards under tmp/in (a table, raw bytes, or None for a FIFO), the job reading them into tmp/new-out."""
    folder = tmp / "in"
    folder.mkdir()
    for name, table in tables.items():
        if table is None:
            os.mkfifo(folder / name)
        elif isinstance(table, bytes):
            (folder / name).write_bytes(table)
        else:
            pq.write_table(table, folder / name)
    job = _edit(job, "input.path", str(folder / "*.parquet"))
    return _edit(job, "output.path", str(tmp / "new-out"))


def _good(n: int = 3, prefix: str = "g", **extra) -> pa.Table:
    return pa.table({"id": pa.array([f"{prefix}{i}" for i in range(n)], pa.string()),
                     "text": pa.array([f"text {i}" for i in range(n)], pa.string()), **extra})


def _truncated() -> bytes:
    buf = io.BytesIO()
    pq.write_table(_good(50, "t"), buf)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def _ids(values, type_=None) -> pa.Table:
    return pa.table({"id": pa.array(values, type_), "text": [f"text {i}" for i in range(len(values))]})


def _other_input(tmp: Path, job: dict) -> dict:
    """Another folder whose shards have the committed job's file names and other rows (issue 14: 257 rows)."""
    write_shards(tmp / "other", shards=2, rows=257)
    return _edit(job, "input.path", str(tmp / "other"))


def _one_shard_left(tmp: Path, job: dict) -> dict:
    return _edit(job, "input.path", [str(Path(job["input"]["path"]) / "shard-0.parquet")])


def _raw_yaml(text: str):
    return lambda tmp, job: text.replace("MODEL", job["model"]["path"]).replace("IN", job["input"]["path"]).replace("OUT", str(tmp / "o"))


TAB_YAML = "input:\n\tpath: IN\nprompt: {column: text}\nmodel: {path: MODEL}\noutput: {path: OUT}\n"

# (case id, edit: (dotted key, value), or callable(tmp, job) -> job dict or raw YAML text; extra CLI args; expected text)
JOB_CASES = [
    ("unknown-top-key", ("inptu", {"path": "x"}), [], "unknown key inptu (did you mean input?)"),
    ("unknown-nested-key", ("sampling.temperatur", 0.5), [], "unknown key sampling.temperatur (did you mean sampling.temperature?)"),
    ("missing-model", ("model", _DELETE), [], "missing required key model"),
    ("missing-output", ("output", _DELETE), [], "missing required key output"),
    ("two-prompt-sources", ("prompt.template", "Hi {text}"), [], "set exactly one of prompt.column, prompt.messages_column or prompt.template"),
    ("no-prompt-source", ("prompt", {}), [], "set exactly one of prompt.column"),
    ("empty-placeholder", ("prompt", {"template": "Label {}"}), [], "empty placeholder {}"),
    ("negative-temperature", ("sampling.temperature", -1), [], "sampling.temperature: Input should be greater than or equal to 0"),
    ("n-zero", ("sampling.n", 0), [], "sampling.n: Input should be greater than or equal to 1"),
    ("n-greedy", ("sampling.n", 4), [], "sampling.n is 4 but sampling.temperature is 0: greedy decoding gives one completion"),
    ("top-p-too-big", None, ["--top-p", "2"], "sampling.top_p: Input should be less than or equal to 1"),
    ("zero-max-tokens", None, ["--max-tokens", "0"], "sampling.max_tokens: Input should be greater than or equal to 1"),
    ("bad-set-syntax", None, ["--set", "runtime.window"], "--set expects path.to.key=value"),
    ("set-unknown-key", None, ["--set", "runtime.windw=3"], "unknown key runtime.windw (did you mean runtime.window?)"),
    ("wrong-type", ("checkpoint.every_rows", "often"), [], "checkpoint.every_rows: Input should be a valid integer"),
    ("per-row-unknown-field", ("sampling.per_row", {"temprature": "text"}), [], "sampling.per_row.temprature"),
    ("tab-indented-yaml", _raw_yaml(TAB_YAML), [], "found character '\\t' that cannot start any token"),
    ("no-input-files", ("input.path", "/nonexistent/shards/*.parquet"), [], "no .parquet files match /nonexistent/shards/*.parquet"),
    ("missing-prompt-column", ("prompt.column", "body"), [], "missing column(s) body; the file has id, text"),
    ("missing-id-column", ("input.id_column", "uid"), [], "missing column(s) uid"),
    ("missing-per-row-column", ("sampling.per_row", {"max_tokens": "max_len"}), [], "missing column(s) max_len"),
    ("missing-passthrough-column", ("output.passthrough_columns", ["topic"]), [], "missing column(s) topic"),
    ("missing-template-column", ("prompt", {"template": "Label {review}"}), [], "missing column(s) review"),
    ("passthrough-named-text", ("output.passthrough_columns", ["text"]), [],
     "passthrough column(s) 'text' have the name of an output column"),
    ("passthrough-named-seed", lambda tmp, job: _edit(_fresh(tmp, job, {"a.parquet": _good(seed=[1, 2, 3])}),
                                                      "output.passthrough_columns", ["seed"]), [],
     "passthrough column(s) 'seed' have the name of an output column"),
    ("passthrough-of-the-id", ("output.passthrough_columns", ["id"]), [], "passthrough column(s) 'id' have the name"),
    ("id-type-differs", lambda tmp, job: _fresh(tmp, job, {"a.parquet": _good(), "b.parquet": _ids([7, 8])}), [],
     "b.parquet: column 'id' is int64 here but string in a.parquet"),
    ("column-type-differs", lambda tmp, job: _edit(_fresh(tmp, job, {"a.parquet": _good(topic=["x", "y", "z"]),
                                                                      "b.parquet": _good(2, "h", topic=[1, 2])}),
                                                   "output.passthrough_columns", ["topic"]), [],
     "b.parquet: column 'topic' is int64 here but string in a.parquet"),
    ("binary-ids", lambda tmp, job: _fresh(tmp, job, {"a.parquet": _ids([b"\xff\xfe", b"ok"], pa.binary())}), [],
     "id column 'id' holds bytes (binary), not text: ids must be text or integers"),
    ("null-id-column", lambda tmp, job: _fresh(tmp, job, {"a.parquet": _ids([None, None], pa.null())}), [],
     "id column 'id' holds only nulls"),
    ("float-ids", lambda tmp, job: _fresh(tmp, job, {"a.parquet": _ids([1.0, 2.5])}), [], "id column 'id' has type double"),
    ("fifo-among-shards", lambda tmp, job: _fresh(tmp, job, {"a.parquet": _good(), "b.parquet": None}), [],
     "b.parquet: not a regular file (a FIFO, socket or device)"),
    ("truncated-shard", lambda tmp, job: _fresh(tmp, job, {"a.parquet": _good(), "b.parquet": _truncated(), "c.parquet": _good(2, "c")}),
     [], "b.parquet: not a readable Parquet file"),
    ("empty-job", lambda tmp, job: _fresh(tmp, job, {"a.parquet": _good(0), "b.parquet": _good(0, "h")}), [],
     "the input holds no rows: all 2 shard(s) are empty"),
    ("duplicate-ids", lambda tmp, job: _fresh(tmp, job, {"a.parquet": _good(3), "b.parquet": _good(2)}), [],
     "ids repeat across the job's shards: 2 duplicate id(s) in 4 rows: 'g0' 2 times (a.parquet row 0, b.parquet row 0)"),
    ("output-is-a-file", lambda tmp, job: (tmp / "afile").write_text("x") and _edit(job, "output.path", str(tmp / "afile")), [],
     "output.path is a file, not a folder"),
    ("output-under-a-file", lambda tmp, job: (tmp / "afile").write_text("x") and _edit(job, "output.path", str(tmp / "afile" / "out")),
     [], "cannot create folder"),
    ("model-folder-missing", ("model.path", "/nonexistent/model"), [], "model folder not found: /nonexistent/model"),
    ("unknown-engine-option", ("model.engine_kwargs", {"max_num_seq": 4}), [], "unknown vLLM engine option 'max_num_seq'"),
    ("engine-kwargs-clash", ("model.engine_kwargs", {"max_model_len": 128}), [], "model.engine_kwargs repeats named field(s) max_model_len"),
    ("changed-settings", ("sampling.max_tokens", 9), [], "sampling.max_tokens: 8 -> 9"),
    ("other-input-same-names", _other_input, [], "shard-0.parquet: rows 10 -> 257; size"),
    ("shard-removed", _one_shard_left, [], "shard-1.parquet: recorded by the job's first run, no longer in input.path"),
]


@pytest.mark.parametrize("case", JOB_CASES, ids=[c[0] for c in JOB_CASES])
def test_bad_job_fails_before_engine_and_keeps_output(committed_job, case, tmp_path):
    tmp, base = committed_job
    name, edit, args, expected = case
    job = base if edit is None else edit(tmp_path, copy.deepcopy(base)) if callable(edit) else _edit(base, *edit)
    # The real engine is asked for: a case that got as far as starting it would take seconds and fail the timing below.
    job = _edit(job, "runtime.engine", "vllm") if name in ("unknown-engine-option", "engine-kwargs-clash") else job
    before = _tree_digest(tmp / "out")
    path = tmp_path / "job.yaml"
    path.write_text(job) if isinstance(job, str) else write_job(path, job)
    res = CliRunner().invoke(app, ["run", str(path), *args])
    assert res.exit_code == 2, res.output
    assert expected in res.output, res.output
    assert "fix:" in res.output or "did you mean" in res.output
    assert "Traceback" not in res.output
    assert _tree_digest(tmp / "out") == before
    assert not (tmp_path / "new-out").exists(), "a bad job wrote into its output"


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


def test_unreadable_input_file(tiny_model, tmp_path):
    """A shard the user may not read (mode 000) among good ones: exit 2 naming it, nothing written. The suite runs
    as root, which reads anything: the run is started without the capabilities that let root skip permission checks."""
    write_shards(tmp_path / "in", shards=2, rows=5)
    (tmp_path / "in" / "shard-1.parquet").chmod(0)
    job = write_job(tmp_path / "job.yaml", job_dict(tiny_model, tmp_path / "in", tmp_path / "out", runtime={"engine": "instant"}))
    drop = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
    res = subprocess.run([*(drop if os.geteuid() == 0 else []), sys.executable, "-m", "batchgen", "run", str(job)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 2, res.stderr[-3000:]
    assert f"{tmp_path / 'in' / 'shard-1.parquet'}: cannot read the file: Permission denied" in res.stderr
    assert "fix: give the user running batchgen read access" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_folder_named_like_a_shard_is_read(tiny_model, tmp_path):
    """A glob hit that is a folder (Spark writes `x.parquet/part-*.parquet`) is searched like a folder, not skipped."""
    (tmp_path / "in" / "spark.parquet").mkdir(parents=True)
    pq.write_table(_good(4, "spark"), tmp_path / "in" / "spark.parquet" / "part-00000.parquet")
    (tmp_path / "in" / "spark.parquet" / "_SUCCESS").write_text("")
    pq.write_table(_good(3), tmp_path / "in" / "plain.parquet")
    spec = validate(job_dict(tiny_model, tmp_path / "in" / "*.parquet", tmp_path / "out", runtime={"engine": "instant"}))
    summary = Runner(spec).run()
    assert summary.complete and summary.counters.rows == 7


def test_duplicate_ids_warn_goes_on(tiny_model, tmp_path, caplog):
    """runtime.on_duplicate_ids: warn logs the ids and where they are, and generates every row; the result of the
    check is recorded, so a resume does not read the ids again."""
    (tmp_path / "in").mkdir()
    pq.write_table(_good(3), tmp_path / "in" / "a.parquet")
    pq.write_table(_good(2), tmp_path / "in" / "b.parquet")
    job = job_dict(tiny_model, tmp_path / "in", tmp_path / "out", runtime={"engine": "instant", "on_duplicate_ids": "warn"})
    with caplog.at_level(logging.WARNING, logger="batchgen"):
        summary = Runner(validate(job)).run()
    assert summary.complete and summary.counters.rows == 5
    assert "ids repeat across the job's shards: 2 duplicate id(s) in 4 rows" in caplog.text
    assert "'g1' 2 times (a.parquet row 1, b.parquet row 1)" in caplog.text
    record = json.loads((tmp_path / "out" / "_batchgen" / "job.json").read_text())["jobs"][0]["ids"]
    assert record["ids"] == 2 and record["rows"] == 4
    # The recorded result stands for the same input: `error` now refuses without reading the shards' ids again.
    res = CliRunner().invoke(app, ["run", str(write_job(tmp_path / "job.yaml", job)), "--set", "runtime.on_duplicate_ids=error"])
    assert res.exit_code == 2 and "'g0' 2 times (a.parquet row 0, b.parquet row 0)" in res.output


def test_integer_ids_are_allowed(tiny_model, tmp_path):
    """Integer ids key rows as well as text: the output keeps their type, each once."""
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": pa.array([5, 3, 9], pa.int64()), "text": ["a", "b", "c"]}), tmp_path / "in" / "a.parquet")
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int32()), "text": ["d", "e"]}), tmp_path / "in" / "b.parquet")
    summary = Runner(validate(job_dict(tiny_model, tmp_path / "in", tmp_path / "out", runtime={"engine": "instant"}))).run()
    assert summary.complete
    table = pq.read_table(tmp_path / "out" / "parts")
    assert table.schema.field("id").type == pa.int64()  # int32 and int64 shards: the wider type
    assert sorted(table.column("id").to_pylist()) == [1, 2, 3, 5, 9]


def test_shard_added_after_the_first_run_is_left_out(committed_job, tiny_model, tmp_path, caplog):
    """The recorded plan wins: a shard added to input.path after the first run is not generated (a warning names
    it); `--force` makes a job of its own that takes it in."""
    tmp, base = committed_job
    shutil.copytree(tmp / "in", tmp_path / "in")
    shutil.copytree(tmp / "out", tmp_path / "out")
    job = _edit(_edit(base, "input.path", str(tmp_path / "in")), "output.path", str(tmp_path / "out"))
    pq.write_table(_good(4, "late"), tmp_path / "in" / "late.parquet")
    with caplog.at_level(logging.WARNING, logger="batchgen"):
        summary = Runner(validate(job)).run()
    assert summary.complete and summary.counters.rows == 0
    assert "1 shard(s) in input.path were not there at the job's first run and are left out" in caplog.text
    assert "late.parquet" in caplog.text
    ids = pq.read_table(tmp_path / "out" / "parts").column("id").to_pylist()
    assert len(ids) == 20 and not any(i.startswith("late") for i in ids)
    forced = Runner(validate(job), RunOptions(force=True)).run()
    assert forced.complete and forced.counters.rows == 4
    manifest = json.loads((tmp_path / "out" / "_batchgen" / "job.json").read_text())
    assert len(manifest["jobs"]) == 2 and manifest["jobs"][1]["changes"] == ["late.parquet: added to input.path"]


def test_unwritable_output(tiny_model, tmp_path):
    write_shards(tmp_path / "in", shards=1, rows=3)
    (tmp_path / "blocker").write_text("a file where the output folder should be")
    path = write_job(tmp_path / "job.yaml", job_dict(tiny_model, tmp_path / "in", tmp_path / "blocker" / "out"))
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 2 and "blocker" in res.output
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
    # A per-row n of 3 at the job's temperature 0 (column `k`): the row's sampling fails as a whole, not one field.
    "greedy-n": ("ok text", None, None, "invalid per-row sampling (columns k) for row id 'greedy-n': sampling.n is 3 but "
                                         "sampling.temperature is 0"),
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
        "k": pa.array([3 if i == "greedy-n" else None for i in ids], pa.int64()),
    }), tmp / "in" / "rows.parquet")
    spec = validate(job_dict(tiny_model, tmp / "in", tmp / "out",
                             sampling={"temperature": 0, "max_tokens": 8, "per_row": {"max_tokens": "max_len", "temperature": "temp", "n": "k"}}))
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


@pytest.mark.parametrize("prompt,expected", [
    ({"column": "chunks"}, "column 'chunks' holds list, not text"),
    ({"template": "Summarize: {chunks}"}, "template column 'chunks' holds list, not text"),
])
def test_list_prompt_becomes_error_row(tiny_model, tmp_path, prompt, expected):
    """A prompt column holding lists is not pasted into the prompt as Python text: each such row is an error row,
    and the rows with text are generated."""
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": ["l1", "ok"], "chunks": pa.array([["a", "b"], None], pa.list_(pa.string())),
                             "fine": ["x", "y"]}), tmp_path / "in" / "a.parquet")
    pq.write_table(pa.table({"id": ["l2"], "chunks": pa.array([["c"]], pa.list_(pa.string())), "fine": ["z"]}),
                   tmp_path / "in" / "b.parquet")
    job = job_dict(tiny_model, tmp_path / "in", tmp_path / "out", runtime={"engine": "instant"})
    job["prompt"] = prompt
    summary = Runner(validate(job)).run()
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "parts").to_pylist()}
    assert summary.complete and summary.counters.errors == 3
    assert rows["l1"]["error"] == rows["l2"]["error"] == expected and rows["l1"]["text"] is None
    assert "null" in rows["ok"]["error"]  # the null list: an empty prompt, as for text columns
