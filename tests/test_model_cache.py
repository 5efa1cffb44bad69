"""Model weights on S3 (moto on loopback): copied once per machine, verified, resumable, shared by
concurrent engines; a job with `model.path: s3://...` gives the outputs of the local folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batchgen.errors import SpecError
from batchgen.job.load import validate
from batchgen.job.spec import ModelSpec, StorageSpec
from batchgen.models.cache import COMPLETE, cache_folder, ensure_local
from batchgen.models.localize import local_model
from batchgen.ops.validate import validate_job
from batchgen.run.runner import RunOptions, Runner
from tests.conftest import ROOT, job_dict, run_cli, write_job, write_shards


def upload_model(s3, folder: Path) -> str:
    return s3.upload(folder, f"s3://{s3.make_bucket()}/models/{folder.name}")


def gets(s3, since: int, name: str) -> int:
    """GET requests for objects named `name` since request number `since` (ranged reads of one file count each)."""
    return sum(1 for r in s3.faults.requests[since:] if r.startswith("GET ") and r.split("?")[0].endswith("/" + name))


def same_files(a: Path, b: Path) -> None:
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert files, "no files"
    assert files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file() and p.name != COMPLETE)
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_copied_once_verified_and_reused(s3, tiny_model, tmp_path):
    url = upload_model(s3, tiny_model)
    storage = StorageSpec(**s3.storage())
    n0 = len(s3.faults.requests)
    local = ensure_local(url, tmp_path / "cache", storage)
    same_files(tiny_model, local)
    record = json.loads((local / COMPLETE).read_text())
    assert record["files"]["model.safetensors"]["size"] == (tiny_model / "model.safetensors").stat().st_size
    assert len(record["files"]["model.safetensors"]["etag"]) == 32  # single-part upload: the MD5, checked on copy
    assert gets(s3, n0, "model.safetensors") == 1
    # Again: one listing, no file read; the same folder.
    n1 = len(s3.faults.requests)
    assert ensure_local(url, tmp_path / "cache", storage) == local
    assert gets(s3, n1, "model.safetensors") == 0 and gets(s3, n1, "config.json") == 0
    # Leftovers of the copy are gone: only the folder and its lock file remain in the cache.
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([local.name, local.name + ".lock"])


def test_a_changed_or_damaged_file_is_copied_again(s3, tiny_model, tmp_path):
    url = upload_model(s3, tiny_model)
    storage = StorageSpec(**s3.storage())
    local = ensure_local(url, tmp_path / "cache", storage)
    # The weights replaced in the bucket: the listing's ETag differs from the record, so the folder is stale.
    s3.fs().pipe_file(f"{url.removeprefix('s3://')}/generation_config.json", b'{"changed": true}')
    n0 = len(s3.faults.requests)
    again = ensure_local(url, tmp_path / "cache", storage)
    assert again == local and json.loads((again / "generation_config.json").read_text()) == {"changed": True}
    assert gets(s3, n0, "generation_config.json") == 1 and gets(s3, n0, "model.safetensors") == 0
    # A file cut short on disk no longer passes for complete either.
    with open(again / "tokenizer.json", "r+b") as f:
        f.truncate(10)
    n1 = len(s3.faults.requests)
    ensure_local(url, tmp_path / "cache", storage)
    assert (again / "tokenizer.json").read_bytes() == (tiny_model / "tokenizer.json").read_bytes()
    assert gets(s3, n1, "tokenizer.json") == 1


COPIER = textwrap.dedent("""
    import json, os, signal, sys, time
    from pathlib import Path
    from batchgen.job.spec import ModelSpec, StorageSpec
    from batchgen.models.cache import ensure_local
    url, cache, storage, mode, flag = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], Path(sys.argv[5])

    def progress(rel, done, total):
        print(f"copied {rel} {done}/{total}", flush=True)
        if mode == "kill" and done == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # killed halfway, at a known point: two files verified
        if mode == "hold" and done == 1:
            flag.write_text("holding")
            while not (flag.parent / "go").exists():
                time.sleep(0.05)

    print(ensure_local(url, cache, StorageSpec(**storage), progress=progress), flush=True)
""")


def copier(url: str, cache: Path, s3, mode: str, flag: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", COPIER, url, str(cache), json.dumps(s3.storage()), mode, str(flag)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_two_processes_at_once_copy_once(s3, tiny_model, tmp_path):
    """Two engines of a node start together: one copies (held after its first file, so they overlap for
    sure), the other waits on the lock, then finds the folder complete and reads nothing."""
    url = upload_model(s3, tiny_model)
    cache, flag = tmp_path / "cache", tmp_path / "holding"
    n0 = len(s3.faults.requests)
    first = copier(url, cache, s3, "hold", flag)
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()
        time.sleep(0.05)
    second = copier(url, cache, s3, "none", flag)
    time.sleep(1.0)
    assert second.poll() is None, "the second process must wait for the first one's copy"
    assert not cache_folder(cache, url).exists()
    (tmp_path / "go").write_text("")
    out1, _ = first.communicate(timeout=60)
    out2, _ = second.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, out1 + out2
    assert out1.strip().splitlines()[-1] == out2.strip().splitlines()[-1] == str(cache_folder(cache, url))
    assert "copied" not in out2  # it copied nothing itself
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert gets(s3, n0, name) == 1, name
    same_files(tiny_model, cache_folder(cache, url))


def test_copy_killed_halfway_resumes_to_a_verified_folder(s3, tiny_model, tmp_path):
    url = upload_model(s3, tiny_model)
    cache = tmp_path / "cache"
    killed = copier(url, cache, s3, "kill", tmp_path / "unused")
    out, _ = killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL, out
    done_before = [line.split()[1] for line in out.splitlines() if line.startswith("copied ")]
    assert len(done_before) == 2
    dest = cache_folder(cache, url)
    assert not dest.exists(), "a half copy must never stand under the final name"
    assert (dest.parent / (dest.name + ".partial")).is_dir()
    # Resumed: the two verified files are kept, the others copied, the folder verified and in place.
    n1 = len(s3.faults.requests)
    local = ensure_local(url, cache, StorageSpec(**s3.storage()))
    same_files(tiny_model, local)
    for p in tiny_model.iterdir():
        expected = 0 if p.name in done_before else 1
        assert gets(s3, n1, p.name) == expected, f"{p.name}: read {gets(s3, n1, p.name)} times on resume"
    assert not (dest.parent / (dest.name + ".partial")).exists()


def test_remote_model_without_a_cache_folder_is_a_spec_error():
    with pytest.raises(SpecError) as err:
        local_model(ModelSpec(path="s3://bucket/m"), None)
    assert "runtime.model_cache" in err.value.render()
    assert local_model(ModelSpec(path="/local/m"), None).path == "/local/m"  # local folders need no cache


@pytest.mark.engine
def test_s3_model_job_equals_the_local_folder(vllm_engine, tiny_model, s3, tmp_path):
    """`batchgen run` with model.path on S3 (and the cache folder defaulted by the CLI from XDG_CACHE_HOME):
    the engine and tokenizer load the copy, outputs equal the local folder's; validate copies no weights."""
    ids = write_shards(tmp_path / "in", shards=1, rows=12)
    local_spec = validate(job_dict(tiny_model, tmp_path / "in", tmp_path / "local"))
    Runner(local_spec, RunOptions(engine_factory=lambda _s: vllm_engine)).run()
    url = upload_model(s3, tiny_model)
    job = job_dict(tiny_model, tmp_path / "in", tmp_path / "out")
    job["model"].update(path=url, storage=s3.storage())
    write_job(tmp_path / "job.yaml", job)
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "BATCHGEN_CACHE": ""}

    n0 = len(s3.faults.requests)
    checked = validate_job(validate({**job, "runtime": {"model_cache": str(tmp_path / "validate-cache")}}), engine_check=False)
    assert checked.exit_code == 0 and checked.rows == 12, checked.as_dict()
    assert gets(s3, n0, "model.safetensors") == 0 and gets(s3, n0, "tokenizer.json") == 1

    res = run_cli("run", str(tmp_path / "job.yaml"), env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    cached = cache_folder(tmp_path / "xdg" / "batchgen" / "models", url)
    same_files(tiny_model, cached)
    rows = pq.read_table(tmp_path / "out" / "parts").to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(ids)
    local = {r["id"]: r["text"] for r in pq.read_table(tmp_path / "local" / "parts").to_pylist()}
    assert {r["id"]: r["text"] for r in rows} == local


def test_adapters_and_tokenizer_on_s3_are_copied_like_weights(s3, tiny_model, tmp_path):
    from tests.lora_adapters import write_adapter

    adapter = write_adapter(tmp_path / "adapter", 1, rank=16)
    bucket = s3.make_bucket()
    adapter_url = s3.upload(adapter, f"s3://{bucket}/adapters/support")
    model_url = s3.upload(tiny_model, f"s3://{bucket}/models/tiny")
    spec = ModelSpec(path=model_url, tokenizer=model_url, lora={"support": adapter_url}, storage=s3.storage())
    local = local_model(spec, str(tmp_path / "cache"))
    same_files(adapter, Path(local.lora["support"]))
    same_files(tiny_model, Path(local.path))
    assert local.tokenizer == local.path and local.max_lora_rank == 16
    # validate's copy: tokenizer and config files only, in an entry of its own, and no adapters.
    light = local_model(spec, str(tmp_path / "cache2"), tokenizer_only=True)
    assert sorted(p.name for p in Path(light.path).iterdir()) == sorted(
        [p.name for p in tiny_model.iterdir() if p.name != "model.safetensors"] + [COMPLETE])
    assert light.lora == {"support": adapter_url}
