"""The manifest's history: changed input is refused like changed settings, and `--force` keeps every job's record.

The instant engine on purpose: these tests are about which rows count for which job, not generation
(the S3 variants are in test_s3.py). Outputs are read the way users read them (polars over parts/*.parquet).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batchgen.cli import app
from batchgen.errors import OutputError
from batchgen.job.load import load_job, validate
from batchgen.ops.report import make_report
from batchgen.ops.status import job_status, render_text
from batchgen.run.runner import RunOptions, Runner
from tests.conftest import job_dict, write_job, write_shards


def run(job: dict, force: bool = False):
    return Runner(validate(job), RunOptions(force=force)).run()


def manifest(out: Path) -> dict:
    return json.loads((out / "_batchgen" / "job.json").read_text())


def success(out: Path) -> dict:
    return json.loads((out / "_SUCCESS.json").read_text())


def user_rows(out: Path) -> pl.DataFrame:
    return pl.read_parquet(str(out / "parts" / "*.parquet"))


@pytest.fixture
def done(tiny_model, tmp_path):
    """A job of 2 shards x 10 rows run to completion."""
    write_shards(tmp_path / "in", shards=2, rows=10)
    job = job_dict(tiny_model, tmp_path / "in", tmp_path / "out", runtime={"engine": "instant"})
    assert run(job).complete
    return tmp_path, job


def refused(job: dict) -> str:
    with pytest.raises(OutputError) as err:
        run(job)
    return err.value.render()


# -- section 4: new input under old names -------------------------------------------------------------------

def test_first_run_records_each_shards_identity(done):
    tmp, _ = done
    (job,) = manifest(tmp / "out")["jobs"]
    shard = job["input"]["shards"]["shard-0.parquet"]
    assert job["input"]["root"] == str(tmp / "in") and job["input"]["rows"] == 20
    assert shard["rows"] == 10 and shard["size"] == (tmp / "in" / "shard-0.parquet").stat().st_size
    assert len(shard["footer"]) == 64 and shard["url"] == f"file://{tmp / 'in' / 'shard-0.parquet'}"


def test_other_folder_with_the_same_shard_names_is_refused(done):
    """issue 14: another folder whose shard has the same name but 257 other rows was '0 generated, complete'."""
    tmp, job = done
    write_shards(tmp / "other", shards=2, rows=257)
    text = refused({**job, "input": {"path": str(tmp / "other")}})
    assert "the input is not the one this output was generated from" in text
    assert "shard-0.parquet: rows 10 -> 257; size" in text and "shard-1.parquet: rows 10 -> 257" in text
    assert "--force" in text
    # `validate` says the same (it said "no problems found").
    res = CliRunner().invoke(app, ["validate", str(write_job(tmp / "j.yaml", {**job, "input": {"path": str(tmp / "other")}})),
                                   "--no-engine-check"])
    assert res.exit_code == 2 and "shard-0.parquet: rows 10 -> 257" in res.output


def test_shard_rewritten_in_place_is_refused(done):
    tmp, job = done
    shard = tmp / "in" / "shard-1.parquet"
    table = pq.read_table(shard)
    texts = table.column("text").to_pylist()
    texts[3] = texts[3].upper()  # same rows, same ids, one prompt changed
    pq.write_table(table.set_column(1, "text", pa.array(texts)), shard, row_group_size=10)
    text = refused(job)
    assert "shard-1.parquet: " in text and "Parquet footer (row groups, statistics) differs" in text
    assert "shard-0.parquet" not in text


def test_shard_removed_is_refused_and_force_goes_on(done, caplog):
    tmp, job = done
    (tmp / "in" / "shard-1.parquet").unlink()
    text = refused(job)
    assert "shard-1.parquet: recorded by the job's first run, no longer in input.path (removed or renamed)" in text
    with caplog.at_level(logging.WARNING, logger="batchgen"):
        summary = run(job, force=True)
    assert summary.complete and summary.counters.rows == 0  # shard-0's rows stay committed
    assert "--force: this run writes as job" in caplog.text
    jobs = manifest(tmp / "out")["jobs"]
    assert len(jobs) == 2 and jobs[1]["forced"] and list(jobs[1]["input"]["shards"]) == ["shard-0.parquet"]
    assert any("no longer in input.path" in c for c in jobs[1]["changes"])


def test_the_same_bytes_elsewhere_are_the_same_input(done):
    """Moving the input (another folder, local -> S3) is not a change: names and content are the same."""
    tmp, job = done
    shutil.copytree(tmp / "in", tmp / "moved")
    summary = run({**job, "input": {"path": str(tmp / "moved")}})
    assert summary.complete and summary.counters.rows == 0 and summary.rows_skipped == 20
    assert len(manifest(tmp / "out")["jobs"]) == 1


def test_version_1_manifest_is_upgraded_in_place(done):
    """An output written before jobs had ids: its parts name the settings fingerprint; they stay that job's."""
    tmp, job = done
    old = manifest(tmp / "out")["jobs"][0]
    (tmp / "out" / "_batchgen" / "job.json").write_text(json.dumps(
        {"fingerprint": old["fingerprint"], "fields": old["fields"], "written": 1.0, "plan": {"unit_rows": 1024, "split_row_groups": True}}))
    for part in (tmp / "out" / "parts").glob("*.parquet"):  # parts of that version: job = the fingerprint
        table = pq.read_table(part)
        meta = json.loads(table.schema.metadata[b"batchgen"])
        meta["job"] = old["fingerprint"]
        pq.write_table(table.replace_schema_metadata({b"batchgen": json.dumps(meta).encode()}), part)
    for stats in (tmp / "out" / "stats").glob("*.parquet"):  # and stats without a job column
        pq.write_table(pq.read_table(stats).drop_columns(["job"]), stats)
    summary = run(job)
    assert summary.complete and summary.counters.rows == 0
    (upgraded,) = manifest(tmp / "out")["jobs"]
    assert upgraded["id"] == old["fingerprint"] and upgraded["input"]["rows"] == 20
    st = job_status(validate(job))
    assert [(j.id, j.rows, j.complete) for j in st.jobs] == [(old["fingerprint"], 20, True)]


# -- section 5: --force keeps the history ---------------------------------------------------------------------

def test_forced_settings_keep_the_first_jobs_record(done):
    """issue 14: a forced --max-tokens on a complete output recorded its own settings over the first job's."""
    tmp, job = done
    other = {**job, "sampling": {"temperature": 0, "max_tokens": 4}}
    assert "sampling.max_tokens: 8 -> 4" in refused(other)
    summary = run(other, force=True)
    assert summary.complete and summary.counters.rows == 0
    first, forced = manifest(tmp / "out")["jobs"]
    assert first["fields"]["sampling"]["max_tokens"] == 8 and not first["forced"]
    assert forced["fields"]["sampling"]["max_tokens"] == 4 and forced["forced"]
    assert "sampling.max_tokens: 8 -> 4" in forced["changes"] and manifest(tmp / "out")["current"] == forced["id"]
    done_record = success(tmp / "out")
    assert done_record["jobs"] == {first["id"]: {"rows": 20, "rows_total": 20, "complete": True, "forced": False}}
    assert done_record["mixed"] is False and done_record["rows"] == 20
    # The first job's own file is not refused in its own folder: it is in the history.
    assert run(job).complete
    assert manifest(tmp / "out")["current"] == first["id"]
    text = "\n".join(render_text(job_status(validate(job))))
    assert "job test: complete, 20/20 rows committed (100.0%)" in text
    assert "2 jobs wrote into this folder" in text and "[complete, current, this job file]" in text


def test_forced_job_with_other_input_leaves_every_record_true(done, tiny_model):
    """issue 14: _SUCCESS said 1 unit / 2 rows for a folder of 1,828 rows, and status showed 100.3%."""
    tmp, job = done
    (tmp / "small").mkdir()
    pq.write_table(pa.table({"id": ["x1", "x2"], "text": ["one", "two"]}), tmp / "small" / "extra.parquet")
    other = {**job, "input": {"path": str(tmp / "small")}, "sampling": {"temperature": 0, "max_tokens": 3}}
    assert run(other, force=True).counters.rows == 2
    assert user_rows(tmp / "out").height == 22  # what a user reading the folder sees
    first, forced = manifest(tmp / "out")["jobs"]
    record = success(tmp / "out")
    assert record["units"] == 1 and record["rows"] == 2 and record["job"] == forced["id"]
    assert record["jobs"] == {first["id"]: {"rows": 20, "rows_total": 20, "complete": True, "forced": False},
                              forced["id"]: {"rows": 2, "rows_total": 2, "complete": True, "forced": True}}
    st = job_status(validate(job))  # the first job's file
    assert st.complete and st.rows == st.rows_total == 20 and len(st.units) == 2
    assert st.outside_rows == 2 and any("2 more rows in 1 unit(s) outside this job's plan" in n for n in st.notes)
    assert [(j.rows, j.rows_total, j.complete, j.this) for j in st.jobs] == [(20, 20, True, True), (2, 2, True, False)]
    mine = job_status(validate(other))
    assert mine.complete and mine.rows == mine.rows_total == 2 and mine.outside_rows == 20
    report = make_report(validate(job))
    header = dict(report.header)
    assert header["rows"].startswith("20 of 20 committed") and header["state"].startswith("complete")
    assert header["jobs"].startswith("2 wrote into this folder (--force); ")
    assert f"{first['id']} 20/20 rows (complete, this job file)" in header["jobs"] and f"{forced['id']} 2/2 rows (forced, complete)" in header["jobs"]
    assert "<h2>Jobs</h2>" in report.html and forced["id"] in report.html


def test_a_job_finished_by_a_forced_one_is_mixed(done):
    """Half the rows by one job, the rest by a forced one: complete as a folder, neither job complete on its own."""
    tmp, job = done
    for part in sorted((tmp / "out" / "parts").glob("shard-1@*.parquet")):
        part.unlink()
    (tmp / "out" / "_SUCCESS.json").unlink()
    other = {**job, "sampling": {"temperature": 0, "max_tokens": 5}}
    assert run(other, force=True).counters.rows == 10
    first, forced = manifest(tmp / "out")["jobs"]
    record = success(tmp / "out")
    assert record["mixed"] is True and record["rows"] == 20
    assert {k: (v["rows"], v["complete"]) for k, v in record["jobs"].items()} == {first["id"]: (10, False), forced["id"]: (10, False)}
    status = json.loads(CliRunner().invoke(app, ["status", str(write_job(tmp / "j.yaml", other)), "--json"]).output)
    assert status["complete"] is True and status["rows"] == 20
    assert [(j["rows"], j["complete"], j["current"]) for j in status["jobs"]] == [(10, False, False), (10, False, True)]
    rows = user_rows(tmp / "out")
    assert rows.height == 20 and rows["id"].n_unique() == 20


def test_output_written_by_batchgen_0_1_still_resumes(tmp_path, tiny_model):
    """The install fixture's output was written by batchgen 0.1.0, before structured outputs, logprobs,
    scoring, LoRA and images: settings added since stay out of the fingerprint at their defaults, so the
    same job resumes it (nothing to do, nothing refused) instead of calling its own output foreign."""
    fixture = Path(__file__).parent / "fixtures" / "install"
    shutil.copytree(fixture, tmp_path / "job")
    recorded = manifest(tmp_path / "job" / "out")
    before = user_rows(tmp_path / "job" / "out")
    model = Path(recorded["fields"]["model"]["path"])  # /tmp/tiny-llama: the path is fingerprinted, so it must be this one
    made = not model.exists()
    if made:  # a fresh machine: the tiny model there, for this test only
        model.symlink_to(tiny_model, target_is_directory=True)
    try:
        spec = load_job(tmp_path / "job" / "job.yaml", sets=[f"model.path={model}", "runtime.engine=instant"])
        assert spec.fingerprint()[0] == recorded["fingerprint"]
        counters = Runner(spec, RunOptions()).run().counters
    finally:
        if made:
            model.unlink()
    assert counters.rows == 0  # every row was committed by the 0.1.0 run
    after = user_rows(tmp_path / "job" / "out")
    assert after.height == before.height == 12 and after.sort("id").equals(before.sort("id"))
