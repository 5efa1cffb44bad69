"""Object stores: the whole pipeline against a real S3 HTTP server (moto) on 127.0.0.1.

Store-level tests pin down the S3 semantics the commit protocol stands on (conditional create,
paginated listing, retry classification); pipeline tests run the real vLLM CPU engine with input
and output on S3, kill it, break the store under it, and check every id is there exactly once.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchgen.io.layout import PARTS, part_file
from batchgen.work.ledger import Ledger
from batchgen.errors import EXIT_BAD_JOB, EXIT_INTERRUPTED, InputError, OutputError, StorageUnavailable
from batchgen.io.parts import read_meta
from batchgen.io.retry import RetryPolicy, is_transient, with_retries
from batchgen.io.store import Store
from batchgen.job.load import validate
from batchgen.io.shards import Unit
from batchgen.run.runner import RunOptions, Runner
from batchgen.job.spec import StorageSpec
from tests.conftest import ROOT, job_dict, run_cli, write_job, write_shards
from tests.s3server import S3Server, free_port


# -- helpers -----------------------------------------------------------------------------------------

def s3_job(model: Path, s3: S3Server, data: str | Path, out: str | Path, storage: dict | None = None, **sections) -> dict:
    """A test job whose s3:// sides reach the loopback server through their `storage:` section."""
    job = job_dict(model, data, out, **sections)
    for side in ("input", "output"):
        if str(job[side]["path"]).startswith("s3://"):
            job[side]["storage"] = {**s3.storage(), **(storage or {})}
    return job


def store_at(s3: S3Server, url: str, **storage) -> Store:
    return Store.open(url, StorageSpec(**s3.storage(**storage)))


def run_inprocess(engine, spec):
    return Runner(spec, RunOptions(engine_factory=lambda _s: engine)).run()


def no_engine(_spec):
    raise AssertionError("the engine must not start for a job that cannot write its output")


def assert_exactly_once(rows: list[dict], ids: list[str]) -> None:
    got = [r["id"] for r in rows]
    assert len(got) == len(set(got)), "a row was committed twice"
    assert sorted(got) == sorted(ids), "rows are missing"


def assert_secret_absent(secret: str, texts: list[str], objects: dict[str, bytes]) -> None:
    for text in texts:
        assert secret not in text
    leaked = [key for key, data in objects.items() if secret.encode() in data]
    assert not leaked, f"the secret key was written into {leaked}"


def part_table(rows: list[int]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"row_index": pa.array(rows, pa.int64())}), buf)
    return buf.getvalue()


# -- store semantics ---------------------------------------------------------------------------------

def test_conditional_create_is_honoured(s3):
    """moto honours If-None-Match: * on PutObject, so create_exclusive needs no HEAD-then-PUT fallback."""
    store = store_at(s3, f"s3://{s3.make_bucket()}/out")
    assert store.create_exclusive("parts/a", b"first") is True
    assert store.create_exclusive("parts/a", b"second") is False
    assert store.read_bytes("parts/a") == b"first"
    store.put("parts/a", b"third")  # plain put overwrites (stats, manifest)
    assert store.read_bytes("parts/a") == b"third"


def test_commit_whose_response_was_lost_counts_once(s3):
    """A part PUT lands but its answer is lost: the retried conditional PUT gets 412, and the commit
    still reports the part as its own (so stats count it), with the rows there once."""
    store = store_at(s3, f"s3://{s3.make_bucket()}/out")
    ledger = Ledger(store, [Unit("u@0", "x", 0, 10, (0,))])
    s3.faults.fail(503, "ServiceUnavailable", methods={"PUT"}, count=1, forward=True)
    result = ledger.commit("u@0", list(range(4)), lambda r: r, lambda fresh, seq: part_table(fresh))
    assert result == (0, [0, 1, 2, 3])
    assert s3.faults.injected == 1
    assert store.listdir(PARTS) == [part_file("u@0", 0)]
    assert ledger.remaining() == 6 and ledger.units["u@0"].next_seq == 1


def test_listing_sees_every_part_past_one_page(s3):
    """Over 1000 objects under parts/ (S3 pages at 1000): a resume still finds every committed part,
    and ignores foreign files next to them."""
    bucket = s3.make_bucket()
    root = f"out/{PARTS}"
    objects = {f"{root}/{part_file('aa@0', i)}": b"" for i in range(1005)}  # another rank's unit
    objects |= {f"{root}/README.txt": b"notes", f"{root}/.tmp-1234-zz@0.000003.parquet": b"partial",
                f"{root}/zz@0.000004.parquet.tmp": b"partial", f"{root}/sub/zz@0.000005.parquet": b"nested",
                f"{root}/zz@0.final.parquet": b"?"}
    ours = {0: [0, 1, 2], 1: [3, 4, 5], 2: [6, 7]}  # sorts after aa@0: on the second page
    objects |= {f"{root}/{part_file('zz@0', seq)}": part_table(rows) for seq, rows in ours.items()}
    s3.seed(bucket, objects)
    seen_before = len(s3.faults.requests)

    ledger = Ledger(store_at(s3, f"s3://{bucket}/out"), [Unit("zz@0", "x", 0, 10, (0,))])
    ledger.load()
    assert ledger.remaining() == 2
    assert ledger.done_mask("zz@0").tolist() == [True] * 8 + [False] * 2
    assert ledger.units["zz@0"].next_seq == 3
    assert any("continuation-token" in r for r in s3.faults.requests[seen_before:]), "listing did not paginate"


TRANSIENT = [
    pytest.param(503, "ServiceUnavailable", id="503"),
    pytest.param(500, "InternalError", id="500"),
    pytest.param(503, "SlowDown", id="throttled"),
    pytest.param(400, "RequestTimeout", id="request-timeout"),
]


@pytest.mark.parametrize("status,code", TRANSIENT)
def test_transient_errors_are_retried(s3, status, code):
    store = store_at(s3, f"s3://{s3.make_bucket()}/out", retries=6)
    s3.faults.fail(status, code, methods={"PUT"}, count=3)
    store.put("parts/x", b"data")
    assert store.read_bytes("parts/x") == b"data"
    assert store.retry.retried >= 1


def test_every_retry_is_ours(s3):
    """botocore makes one attempt per call: each retry goes through our policy (counted, bounded, jittered)."""
    store = store_at(s3, f"s3://{s3.make_bucket()}/out", retries=6)
    injected_before = s3.faults.injected
    s3.faults.fail(503, "SlowDown", methods={"PUT"}, count=1)
    store.put("parts/x", b"data")
    assert store.retry.retried == 1
    assert s3.faults.injected - injected_before == 1


def test_connection_refused_is_retried(s3):
    store = store_at(s3, f"s3://{s3.make_bucket()}/out", retries=30, retry_max_seconds=0.2)
    s3.stop()
    try:
        restart = threading.Timer(1.0, s3.start)
        restart.start()
        store.put("parts/x", b"data")
    finally:
        restart.join()
    assert store.read_bytes("parts/x") == b"data"
    assert store.retry.retried >= 1


def test_retries_are_bounded_with_a_clear_message(s3):
    bucket = s3.make_bucket()
    store = store_at(s3, f"s3://{bucket}/out", retries=3)
    s3.faults.fail(503, "SlowDown", methods={"PUT"}, seconds=60)
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailable) as err:
        store.create_exclusive("parts/u@0.000000.parquet", b"data")
    assert time.monotonic() - t0 < 30
    assert err.value.exit_code == EXIT_INTERRUPTED
    text = err.value.render()
    assert "gave up after 3 attempts" in text and f"s3://{bucket}/out/parts/u@0.000000.parquet" in text
    assert "rerun" in text and s3.secret not in text
    assert store.retry.retried == 2


def test_backoff_is_exponential_with_full_jitter():
    delays: list[float] = []
    policy = RetryPolicy(attempts=7, base=0.1, cap=0.8, sleep=delays.append)

    def refused():
        raise ConnectionRefusedError("Connection refused")

    with pytest.raises(StorageUnavailable):
        with_retries(policy, "write s3://b/k", refused)
    assert len(delays) == 6 and policy.retried == 6
    assert all(0 <= d <= min(0.8, 0.1 * 2**i) for i, d in enumerate(delays))
    assert len(set(delays)) == len(delays), "delays must be jittered"


def test_error_classification():
    from aiohttp import ServerDisconnectedError
    from botocore.exceptions import (ClientError, ConnectionClosedError, ConnectTimeoutError,
                                     EndpointConnectionError, ReadTimeoutError)

    def client_error(code: str, status: int) -> OSError:
        cause = ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")
        err = OSError(5, "translated by s3fs")
        err.__cause__ = cause
        return err

    transient = [EndpointConnectionError(endpoint_url="http://h"), ReadTimeoutError(endpoint_url="http://h"),
                 ConnectTimeoutError(endpoint_url="http://h"), ConnectionClosedError(endpoint_url="http://h"),
                 ServerDisconnectedError(), ConnectionResetError(), TimeoutError(),
                 client_error("InternalError", 500), client_error("SlowDown", 503), client_error("RequestTimeout", 400)]
    permanent = [PermissionError("denied"), FileNotFoundError("no key"), client_error("AccessDenied", 403),
                 client_error("NoSuchBucket", 404), client_error("InvalidArgument", 400), ValueError("bad")]
    assert [is_transient(e) for e in transient] == [True] * len(transient)
    assert [is_transient(e) for e in permanent] == [False] * len(permanent)


@pytest.mark.parametrize("text,secret_part", [
    ("GET http://user:hunter2@minio:9000/b/k failed", "hunter2"),
    ("Authorization: AWS4-HMAC-SHA256 Credential=AKIAXYZ/20260101/us-east-1/s3, Signature=0badc0ffee", "0badc0ffee"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAXYZ%2F2026&X-Amz-Signature=abcdef12", "abcdef12"),
    ("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG", "wJalrXUtnFEMI"),
    ("echoed the configured s3cr3tvalue here", "s3cr3tvalue"),
])
def test_redaction(text, secret_part):
    from batchgen.io.redact import redact

    cleaned = redact(text, ["s3cr3tvalue"])
    assert secret_part not in cleaned and "***" in cleaned


# -- permanent errors fail fast, before the engine ---------------------------------------------------

def test_missing_output_bucket_fails_before_the_engine(s3, tiny_model, tmp_path):
    write_shards(tmp_path / "in", shards=1, rows=5)
    spec = validate(s3_job(tiny_model, s3, tmp_path / "in", "s3://no-such-bucket-bg/out"))
    import vllm.engine.arg_utils  # noqa: F401 - importing vLLM (~10 s, on the first test that does) is not what this times
    t0 = time.monotonic()
    with pytest.raises(OutputError) as err:
        Runner(spec, RunOptions(engine_factory=no_engine)).run()
    assert time.monotonic() - t0 < 10, "a permanent error must not be retried"
    assert err.value.exit_code == EXIT_BAD_JOB
    text = err.value.render()
    assert "bucket 'no-such-bucket-bg' does not exist" in text
    assert "s3://no-such-bucket-bg/out/_batchgen/job.json" in text and "fix:" in text


def test_missing_input_bucket_fails_before_the_engine(s3, tiny_model, tmp_path):
    spec = validate(s3_job(tiny_model, s3, "s3://no-such-bucket-bg/in", tmp_path / "out"))
    with pytest.raises(InputError) as err:
        Runner(spec, RunOptions(engine_factory=no_engine)).run()
    assert err.value.exit_code == EXIT_BAD_JOB
    assert "s3://no-such-bucket-bg/in" in str(err.value)


@pytest.mark.parametrize("case", ["read-only user", "wrong secret"])
def test_access_denied_fails_fast(s3, tiny_model, tmp_path, case):
    """With moto enforcing IAM: a user without s3:PutObject, or a wrong secret key, stops the job
    before the engine starts, naming the bucket and key, without echoing the secret."""
    bucket = s3.make_bucket()
    key, secret = s3.iam_user(f"bg-{case.replace(' ', '-')}-{bucket}", ["s3:GetObject", "s3:ListBucket"])
    if case == "wrong secret":
        secret = "wrong" + secret[5:]
    write_shards(tmp_path / "in", shards=1, rows=5)
    spec = validate(s3_job(tiny_model, s3, tmp_path / "in", f"s3://{bucket}/out", storage={"key": key, "secret": secret}))
    with s3.enforce_auth():
        t0 = time.monotonic()
        with pytest.raises(OutputError) as err:
            Runner(spec, RunOptions(engine_factory=no_engine)).run()
        assert time.monotonic() - t0 < 10
    text = err.value.render()
    assert "access denied" in text and f"s3://{bucket}/out/_batchgen/job.json" in text and "storage.key/secret" in text
    # The read-only user fails on the PUT (S3 says AccessDenied); a wrong secret already on the HEAD (a bare 403).
    assert ("access denied (403): cannot check" if case == "wrong secret" else "access denied (AccessDenied): cannot write") in text
    assert secret not in text


# -- the pipeline on S3 ------------------------------------------------------------------------------

@pytest.mark.engine
def test_s3_input_and_output_equal_a_local_run(vllm_engine, tiny_model, s3, tmp_path, capfd, caplog):
    ids = write_shards(tmp_path / "in", shards=2, rows=20)
    bucket = s3.make_bucket()
    s3.upload(tmp_path / "in", f"s3://{bucket}/in")
    out = f"s3://{bucket}/out"
    summary = run_inprocess(vllm_engine, validate(s3_job(tiny_model, s3, f"s3://{bucket}/in", out, checkpoint={"every_rows": 10})))
    run_inprocess(vllm_engine, validate(s3_job(tiny_model, s3, tmp_path / "in", tmp_path / "local")))
    assert summary.complete and summary.counters.rows == 40

    rows = s3.read_parts(out)
    assert_exactly_once(rows, ids)
    local = {r["id"]: r["text"] for r in pq.read_table(tmp_path / "local" / "parts").to_pylist()}
    assert {r["id"]: r["text"] for r in rows} == local
    objects = s3.objects(out)
    assert {"_SUCCESS.json", "_batchgen/job.json"} <= set(objects)
    parts = [k for k in objects if k.startswith("parts/")]
    assert sorted(k.replace("parts/", "stats/") for k in parts) == sorted(k for k in objects if k.startswith("stats/"))
    assert {read_meta(objects[k])["unit"] for k in parts} == {"shard-0@0", "shard-1@0"}  # same unit keys as local
    saved = json.loads(objects[f"_batchgen/summary-{summary.worker}.json"])
    assert {"upload_retries", "upload_wait_seconds"} <= set(saved)
    captured = capfd.readouterr()
    assert_secret_absent(s3.secret, [captured.out, captured.err, caplog.text], objects)


@pytest.mark.engine
def test_store_errors_mid_run_are_ridden_out(vllm_engine, tiny_model, s3, tmp_path, caplog):
    """The six PUTs after the first part fail with 503; answers of PUTs that did land are lost too.
    Generation waits on the bounded upload queue, says so, and the job completes with each id once."""
    ids = write_shards(tmp_path / "in", shards=2, rows=40)
    out = f"s3://{s3.make_bucket()}/out"
    job = s3_job(tiny_model, s3, tmp_path / "in", out, storage={"retries": 40, "retry_max_seconds": 0.3},
                 checkpoint={"every_rows": 5, "upload_queue": 1}, runtime={"window": 8})
    # A count, not a time window: on a fast machine the whole job can finish inside 2 s.
    s3.faults.fail(503, "SlowDown", methods={"PUT"}, count=6, forward=True, after="/parts/")
    caplog.set_level("WARNING", logger="batchgen")
    summary = run_inprocess(vllm_engine, validate(job))
    assert summary.complete and s3.faults.injected > 0
    assert summary.upload_retries > 0 and summary.upload_wait_seconds > 0
    assert "uploads behind" in caplog.text
    assert_exactly_once(s3.read_parts(out), ids)


def _popen_run(job: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "batchgen", "run", str(job), "-v"], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=ROOT)


def _wait_for_part(s3: S3Server, out: str, proc: subprocess.Popen | None = None, timeout: float = 240) -> None:
    bucket, prefix = out.removeprefix("s3://").split("/", 1)
    client, deadline = s3.client(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{PARTS}/").get("KeyCount", 0):
            return
        assert proc is None or proc.poll() is None, f"the run ended before committing a part (rc {proc.returncode})"
        time.sleep(0.05)
    raise AssertionError("no part was committed in time")


@pytest.mark.engine
def test_resume_after_sigkill_with_credentials_from_the_environment(vllm_engine, tiny_model, s3, tmp_path,
                                                                     monkeypatch, capfd, caplog):
    """`batchgen run` is SIGKILLed once a part is on S3; the rerun (in-process, on the shared engine)
    leaves every id once. Credentials come from AWS_* variables only, and the secret appears in no
    log line and no object."""
    ids = write_shards(tmp_path / "in", shards=2, rows=60)
    out = f"s3://{s3.make_bucket()}/out"
    job = s3_job(tiny_model, s3, tmp_path / "in", out, checkpoint={"every_rows": 10}, runtime={"window": 8})
    del job["output"]["storage"]["key"], job["output"]["storage"]["secret"]
    env_secret = f"envsecret{os.urandom(12).hex()}"
    env = {"AWS_ACCESS_KEY_ID": "AKIAENVTEST", "AWS_SECRET_ACCESS_KEY": env_secret}

    proc = _popen_run(write_job(tmp_path / "job.yaml", job), tmp_path / "run1.log", env)
    try:
        _wait_for_part(s3, out, proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert "_SUCCESS.json" not in s3.objects(out), "killed too late to test a resume"

    for name, value in env.items():
        monkeypatch.setenv(name, value)  # this test only: the rerun finds its credentials where the first did
    summary = run_inprocess(vllm_engine, validate(job))
    assert summary.complete and summary.rows_skipped > 0
    assert_exactly_once(s3.read_parts(out), ids)
    captured = capfd.readouterr()
    assert_secret_absent(env_secret, [(tmp_path / "run1.log").read_text(), captured.out, captured.err, caplog.text],
                         s3.objects(out))


@pytest.mark.engine
def test_store_down_mid_run_stops_with_the_rerun_code_then_resumes(vllm_engine, tiny_model, s3, tmp_path, capfd, caplog):
    """The server stops once a part is committed; retries run out and the run stops with exit code 75
    ("rerun to resume"), naming the object; the server returns with its objects; the rerun leaves each
    id once. (That the CLI exits with the error's code is shown by the wrong-endpoint run below.)"""
    ids = write_shards(tmp_path / "in", shards=2, rows=40)
    out = f"s3://{s3.make_bucket()}/out"
    job = validate(s3_job(tiny_model, s3, tmp_path / "in", out, storage={"retries": 2},
                          checkpoint={"every_rows": 5}, runtime={"window": 8}))
    stopped = threading.Event()

    def stop_after_first_part() -> None:
        _wait_for_part(s3, out)
        s3.stop()
        stopped.set()

    watcher = threading.Thread(target=stop_after_first_part, daemon=True)
    watcher.start()
    try:
        with pytest.raises(StorageUnavailable) as err:
            run_inprocess(vllm_engine, job)
    finally:
        watcher.join(timeout=60)
        if stopped.is_set():
            s3.start()
    assert err.value.exit_code == EXIT_INTERRUPTED
    text = err.value.render()
    assert "gave up after 2 attempts" in text and out in text and "rerun the same command" in text

    summary = run_inprocess(vllm_engine, job)
    assert summary.complete and summary.rows_skipped > 0
    assert_exactly_once(s3.read_parts(out), ids)
    captured = capfd.readouterr()
    assert_secret_absent(s3.secret, [text, captured.out, captured.err, caplog.text], s3.objects(out))


def test_wrong_endpoint_is_a_bad_job_and_leaks_no_secret(s3, tiny_model, tmp_path):
    """A store that has never answered in this run (nothing listens at the endpoint: a typo) is a bad job: exit 2
    naming the endpoint, so a scheduler that requeues on 75 does not loop forever. No secret is echoed, whether
    it came from the job file or the environment."""
    write_shards(tmp_path / "in", shards=1, rows=5)
    endpoint = f"http://127.0.0.1:{free_port()}"
    job = s3_job(tiny_model, s3, tmp_path / "in", "s3://bucket/out", storage={"endpoint_url": endpoint, "retries": 1})
    env_secret = f"envsecret{os.urandom(12).hex()}"
    result = run_cli("run", str(write_job(tmp_path / "job.yaml", job)), "-v",
                     env={"AWS_ACCESS_KEY_ID": "AKIAENVTEST", "AWS_SECRET_ACCESS_KEY": env_secret}, timeout=120)
    assert result.returncode == EXIT_BAD_JOB, result.stderr[-3000:]
    assert f"the output store at {endpoint} never answered" in result.stderr
    assert "s3://bucket/out/_batchgen/job.json" in result.stderr and "fix: check output.storage.endpoint_url" in result.stderr
    for secret in (s3.secret, env_secret):
        assert secret not in result.stdout + result.stderr
    # The same for the input's store.
    job = s3_job(tiny_model, s3, "s3://bucket/in", tmp_path / "out", storage={"endpoint_url": endpoint, "retries": 1})
    result = run_cli("run", str(write_job(tmp_path / "job.yaml", job)), timeout=120)
    assert result.returncode == EXIT_BAD_JOB, result.stderr[-3000:]
    assert f"input.storage.endpoint_url: the input store at {endpoint} never answered" in result.stderr


def test_store_that_answered_then_stopped_exits_75(s3, tiny_model, tmp_path):
    """The same unreachable store after it answered (the server stops once a part is committed) is an outage:
    `batchgen run` exits 75, and the rerun completes with each id once."""
    ids = write_shards(tmp_path / "in", shards=2, rows=40)
    out = f"s3://{s3.make_bucket()}/out"
    job = write_job(tmp_path / "job.yaml", s3_job(
        tiny_model, s3, tmp_path / "in", out, storage={"retries": 2}, checkpoint={"every_rows": 5},
        runtime={"engine": "instant", "instant_rows_per_second": 20}))
    proc = _popen_run(job, tmp_path / "run.log")
    try:
        _wait_for_part(s3, out, proc)
        with s3.down():
            assert proc.wait(timeout=120) == EXIT_INTERRUPTED, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        proc.kill()
    assert "gave up after 2 attempts" in (tmp_path / "run.log").read_text()
    again = run_cli("run", str(job), timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_exactly_once(s3.read_parts(out), ids)


# -- input identity on S3 (local: test_manifest.py) ------------------------------------------------------------

def _s3_input_job(s3, tiny_model, tmp_path, versioned: bool = False):
    bucket = s3.make_bucket()
    if versioned:
        s3.client().put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    write_shards(tmp_path / "in", shards=2, rows=10)
    s3.upload(tmp_path / "in", f"s3://{bucket}/in")
    job = s3_job(tiny_model, s3, f"s3://{bucket}/in", f"s3://{bucket}/out", runtime={"engine": "instant"})
    assert Runner(validate(job)).run().complete
    return bucket, job


def test_s3_input_identity_records_etags_and_refuses_a_rewrite(s3, tiny_model, tmp_path):
    bucket, job = _s3_input_job(s3, tiny_model, tmp_path)
    (record,) = json.loads(s3.objects(f"s3://{bucket}/out")["_batchgen/job.json"])["jobs"]
    shard = record["input"]["shards"]["shard-0.parquet"]
    assert shard["url"] == f"s3://{bucket}/in/shard-0.parquet" and shard["etag"] and shard["rows"] == 10
    # The same bytes uploaded again: the same ETag (and content); the resume goes on.
    s3.upload(tmp_path / "in" / "shard-0.parquet", f"s3://{bucket}/in")
    assert Runner(validate(job)).run().rows_skipped == 20
    # Rewritten in place with other rows: refused, naming the shard and what changed.
    write_shards(tmp_path / "new", shards=1, rows=12)
    s3.upload(tmp_path / "new" / "shard-0.parquet", f"s3://{bucket}/in")
    with pytest.raises(OutputError) as err:
        Runner(validate(job)).run()
    text = err.value.render()
    assert "shard-0.parquet: rows 10 -> 12" in text and "ETag" in text and "rewritten in place" in text


def test_s3_versioned_input_rewritten_with_the_same_rows_is_refused(s3, tiny_model, tmp_path):
    """On a versioned bucket a rewrite shows as a new version id even when size and footer happen to agree."""
    bucket, job = _s3_input_job(s3, tiny_model, tmp_path, versioned=True)
    s3.upload(tmp_path / "in" / "shard-1.parquet", f"s3://{bucket}/in")
    with pytest.raises(OutputError) as err:
        Runner(validate(job)).run()
    assert "shard-1.parquet: version id " in err.value.render() and "shard-0.parquet" not in err.value.render()


def test_s3_input_the_user_cannot_read_is_a_bad_job(s3, tiny_model, tmp_path):
    """Listing allowed, reading denied (IAM): exit 2 naming the shard, before the engine, without the secret."""
    bucket = s3.make_bucket()
    write_shards(tmp_path / "in", shards=2, rows=5)
    s3.upload(tmp_path / "in", f"s3://{bucket}/in")
    iam, user = s3.client("iam"), f"bg-no-shard-1-{bucket}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/in/shard-1.parquet"}]}))
    access = iam.create_access_key(UserName=user)["AccessKey"]
    key, secret = access["AccessKeyId"], access["SecretAccessKey"]
    job = s3_job(tiny_model, s3, f"s3://{bucket}/in/*.parquet", tmp_path / "out", storage={"key": key, "secret": secret})
    with s3.enforce_auth():
        with pytest.raises(InputError) as err:
            Runner(validate(job), RunOptions(engine_factory=no_engine)).run()
    text = err.value.render()
    assert err.value.exit_code == EXIT_BAD_JOB and f"{bucket}/in/shard-1.parquet: cannot read the file" in text
    assert "fix: give the user running batchgen read access" in text and secret not in text
    assert not (tmp_path / "out").exists()
