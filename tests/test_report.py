"""`batchgen report` and `batchgen init` through the real CLI."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from batchgen.cli import app
from batchgen.job.load import load_job
from batchgen.ops import report
from batchgen.ops.charts import PANELS
from batchgen.ops.rowfacts import read_row_facts
from batchgen.ops.timeline import build_timeline
from batchgen.run.runner import RunOptions, Runner
from batchgen.job.spec import JobSpec
from tests.conftest import ROOT, job_dict, write_job, write_shards
from tests.outputs import texts_each_id_once

# matplotlib's first two colours: one per worker, in sorted worker order.
C0, C1 = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def colour_pixels(img: Image.Image, rgb: tuple[int, int, int], tol: int = 12) -> int:
    return sum(n for n, px in img.getcolors(maxcolors=1 << 20) if all(abs(a - b) <= tol for a, b in zip(px[:3], rgb)))


def test_report_png_and_html_show_each_worker(vllm_engine, tiny_model, tmp_path, monkeypatch):
    # Two workers split the job (rank 0/1); every 7th prompt is null, so there are error rows to chart.
    write_shards(tmp_path / "in", shards=4, rows=24, row_group=8,
                 note=lambda s, i: None if i % 7 == 3 else f"note {s}-{i}")
    job = write_job(tmp_path / "job.yaml", job_dict(
        tiny_model, tmp_path / "in", tmp_path / "out", prompt={"column": "note"}, checkpoint={"every_rows": 6},
        runtime={"window": 6}))
    for rank, worker in enumerate(("alpha", "beta")):
        Runner(load_job(job), RunOptions(rank=rank, world_size=2, worker=worker, engine_factory=lambda _s: vllm_engine)).run()

    monkeypatch.setattr(report, "UNITS_SHOWN", 3)  # 4 units: the table must say it shows 3 of them
    result = invoke("report", str(job))
    assert result.exit_code == 0, result.output
    lines = {line[:14].strip(): line[15:] for line in result.output.splitlines() if not line.startswith("wrote")}
    assert lines["rows"] == "96 of 96 committed, 12 error rows (12.50%)"
    assert lines["state"].startswith("complete at ") and "alpha finished" in lines["state"]
    assert lines["engine"].startswith("vllm ") and lines["model"] == str(tiny_model)
    # 84 rows without error, each ending on `length` or `stop`.
    finish = dict(re.findall(r"(\w+) (\d+) of 84", lines["finish reasons"]))
    assert sum(map(int, finish.values())) == 84 and set(finish) <= {"length", "stop"}
    assert lines["cost"] == "pass --gpu-hour-price to price the device-hours"
    png_path, html_path = tmp_path / "out" / "_batchgen" / "report.png", tmp_path / "out" / "_batchgen" / "report.html"
    assert result.output.splitlines()[-2:] == [f"wrote {png_path}", f"wrote {html_path}"]

    img = Image.open(png_path)
    img.load()
    assert img.format == "PNG" and img.size == (1200, 1400)
    rgb = img.convert("RGB")
    assert len(rgb.getcolors(maxcolors=1 << 20)) > 50, "a chart, not a blank canvas"
    # Both workers' series are drawn: each colour covers a real share of the canvas.
    assert colour_pixels(rgb, C0) > 400 and colour_pixels(rgb, C1) > 400

    page = html_path.read_text()
    inline = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert inline and base64.b64decode(inline[1]) == png_path.read_bytes(), "self-contained: the PNG is inlined"
    for name, _ in PANELS:
        assert f"<li><b>{name}</b>:" in page
    assert "<td>alpha</td>" in page and "<td>beta</td>" in page
    # The error table: the kind, its count, sample ids (5 of 12) and the fix.
    errors = re.search(r"<h2>Errors</h2>(.*?)</table>", page, re.S)[1]
    assert "<td>empty-prompt</td><td>12</td>" in errors and "(5 of 12)" in errors and "s0-00003, s0-00010" in errors
    assert "showing 3 of 4 work units" in page
    assert not re.search(r'(src|href)="https?://', page), "no external resources"

    out = tmp_path / "elsewhere"
    result = invoke("report", str(job), "--out", str(out), "--gpu-hour-price", "3")
    assert result.exit_code == 0 and (out / "report.png").stat().st_size > 10_000 and (out / "report.html").exists()
    assert re.search(r"^cost +\$[0-9.e-]+ at \$3 per device-hour; \$[0-9.e-]+ per 1M output tokens$", result.output, re.M)


def test_report_before_any_commit(tiny_model, tmp_path):
    write_shards(tmp_path / "in", shards=1, rows=4)
    job = write_job(tmp_path / "job.yaml", job_dict(tiny_model, tmp_path / "in", tmp_path / "out"))
    result = invoke("report", str(job), "--out", str(tmp_path / "rep"))
    assert result.exit_code == 0, result.output
    assert "rows           0 of 4 committed, 0 error rows" in result.output
    assert "state          incomplete | no worker has committed yet" in result.output
    assert Image.open(tmp_path / "rep" / "report.png").size == (1200, 1400)
    assert "<p class=\"none\">no finished rows</p>" in (tmp_path / "rep" / "report.html").read_text()


def test_rates_spread_parts_over_their_spans():
    """Parts back to back make a flat rate line, not a comb of spikes at commit times and zeros between."""
    t0 = 1_000_000.0
    stats = [{"unit": "u", "seq": k, "worker": "w", "committed_at": t0 + 10.0 * (k + 1), "span_seconds": 10.0,
              "rows": 50, "errors": 0, "output_tokens": 500, "cache_hit_rate": 0.0, "upload_backlog": 0}
             for k in range(12)]
    # A resumed run: 30 s down, then two more parts.
    stats += [{**stats[0], "seq": 12 + k, "committed_at": t0 + 150.0 + 10.0 * (k + 1)} for k in range(2)]
    tl = build_timeline(stats, {"w": (t0 - 20.0, t0)})
    rate, lo, hi = tl.workers[0].rows_per_second, tl.bin_edges[:-1], tl.bin_edges[1:]
    # Seconds since the origin (the engine start at t0 - 20): first run 20-140, down 140-170, second run 170-190.
    first_run, down = (lo >= 20) & (hi <= 140), (lo >= 140) & (hi <= 170)
    assert first_run.sum() >= 3 and down.sum() >= 1
    assert np.allclose(rate[first_run], 5.0), rate  # 50 rows per 10 s, in every bin: no comb of spikes and zeros
    assert np.all(rate[down] == 0), "down between the runs: 0, not interpolated"
    assert np.allclose(np.nansum(rate * (hi - lo)), 14 * 50), "every row counted once"
    assert np.isnan(build_timeline(stats, {"w": (t0 - 200.0, t0)}).workers[0].rows_per_second[0]), \
        "NaN before the worker's first part: it was starting its engine, not stalled"
    assert tl.engine_starts == {"w": (0.0, 20.0)}
    assert np.allclose(tl.workers[0].output_tokens_per_second[first_run], 50.0)


def test_row_facts_read_only_small_columns(tmp_path):
    """A part of long texts: the report reads its four small columns (and ids of error rows), not the texts."""
    from batchgen.io.store import Store
    from batchgen.job.spec import StorageSpec

    n = 2000
    table = pa.table({"id": [f"r{i}" for i in range(n)], "text": ["lorem ipsum " * 200 + str(i) for i in range(n)],
                      "finish_reason": ["length" if i % 4 else "stop" for i in range(n)],
                      "prompt_tokens": pa.array([10 + i % 5 for i in range(n)], pa.int32()),
                      "output_tokens": pa.array([0 if i % 100 == 7 else 32 for i in range(n)], pa.int32()),
                      "error": [f"prompt has {900 + i} tokens; the model takes at most 511" if i % 100 == 7 else None
                                for i in range(n)]})
    (tmp_path / "parts").mkdir()
    pq.write_table(table, tmp_path / "parts" / "a@0.000000.parquet")
    facts = read_row_facts(Store.open(str(tmp_path), StorageSpec()), [("a@0", 0)], "id")
    assert facts.rows == n and facts.error_rows == 20
    assert facts.finish == {"length": 1480, "stop": 500}  # error rows (all on rows that say `length` here) left out
    (kind,) = facts.errors.values()
    assert kind.kind == "too-long" and kind.count == 20 and kind.ids == ["r7", "r107", "r207", "r307", "r407"]
    assert facts.output_tokens[32] == 1980 and facts.prompt_tokens[10:15].sum() == 1980
    size = (tmp_path / "parts" / "a@0.000000.parquet").stat().st_size
    assert facts.read_bytes < size / 20, (facts.read_bytes, size)


def test_init_writes_a_valid_commented_job(tmp_path):
    path = tmp_path / "jobs" / "nightly.yaml"
    result = invoke("init", str(path), "--model", "Qwen/Qwen2.5-0.5B-Instruct", "--input", "s3://bucket/prompts/",
                    "--output", "./results")
    assert result.exit_code == 0, result.output
    assert f"wrote {path}" in result.output
    spec = load_job(path)
    assert spec.name == "nightly" and spec.model.path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert spec.input.path == "s3://bucket/prompts/" and spec.output.path == str((tmp_path / "jobs" / "results").resolve())
    text = path.read_text()
    assert text.count("#") > 40, "commented"
    # Every commented-out key is a real option of its section: uncommented, the file still validates.
    sections = {}
    current = None
    for line in text.splitlines():
        if re.match(r"^\w+:", line):
            current = line.split(":")[0]
        m = re.match(r"^  # (\w+): (.+?)(?:\s{2,}#.*)?$", line)
        if m and current:
            sections.setdefault(current, []).append(m[1])
    fields = {name: set(JobSpec.model_fields[name].annotation.model_fields) for name in sections}
    for section, keys in sections.items():
        assert set(keys) <= fields[section], f"{section}: unknown {set(keys) - fields[section]}"
    assert sum(len(k) for k in sections.values()) >= 20

    again = invoke("init", str(path))
    assert again.exit_code == 2 and "the file exists already" in again.output and "--force" in again.output
    assert invoke("init", str(path), "--force").exit_code == 0


@pytest.mark.parametrize("key, value", [("prompt.template", "Summarize: {text}"), ("input.format", "openai_batch"),
                                        ("runtime.metrics_textfile", "/tmp/x.prom")])
def test_init_alternatives_validate(tmp_path, key, value):
    """The alternatives the template shows, switched on, still make a valid job."""
    path = tmp_path / "job.yaml"
    assert invoke("init", str(path)).exit_code == 0
    data = yaml.safe_load(path.read_text())
    section, name = key.split(".")
    if section == "prompt":
        data["prompt"] = {name: value}
    if key == "input.format":
        del data["prompt"]
    data[section][name] = value
    path.write_text(yaml.safe_dump(data))
    assert load_job(path)


def _summary(worker: str, wall: float, end: float, device: str = "cuda: NVIDIA H200", rows: int = 10) -> dict:
    return {"job": "j", "worker": worker, "model": "m", "engine": "vllm", "engine_version": "0.26.0", "device": device,
            "wall_seconds": wall, "engine_start_seconds": 20.0, "generate_seconds": wall - 25.0,
            "generate_started_at": end - wall + 20.0, "generate_ended_at": end - 5.0, "rows": rows, "errors": 0,
            "output_tokens": 100 * rows, "interrupted": False, "complete": True}


def _part(worker: str, seq: int, at: float) -> dict:
    return {"unit": f"u-{worker}", "seq": seq, "worker": worker, "committed_at": at, "span_seconds": 10.0, "rows": 5,
            "errors": 0, "prompt_tokens": 50, "cached_tokens": 0, "output_tokens": 500, "cache_hit_rate": 0.0,
            "upload_seconds": 0.1, "upload_backlog": 0}


def test_device_time_counts_killed_runs_by_their_parts_and_nodes_once(tmp_path):
    """GPU-hours: a worker's last run by its wall time, an earlier killed run by its parts' spans; a node's
    own summary gives the header's times but no device time (its engines have theirs)."""
    from batchgen.job.load import validate
    from batchgen.ops.outputstate import OutputState, WorkerEnd
    from batchgen.ops.runfacts import gather_run_facts
    from batchgen.ops.status import build_status

    job = job_dict(tmp_path / "model", tmp_path / "in", tmp_path / "out")
    job["model"]["tensor_parallel_size"] = 2
    spec = validate(job)
    # Worker w: a run killed after 3 parts (no summary of it), then a resumed run of 50 s with 2 parts.
    stats = [_part("w", k, 1000.0 + 10 * k) for k in (1, 2, 3)] + [_part("w", 3 + k, 2000.0 + 10 * k) for k in (1, 2)]
    ends = {"w": WorkerEnd(_summary("w", 50.0, 2025.0), 2025.0)}
    facts = gather_run_facts(spec, build_status(spec, "out", OutputState(stats, None, ends), None, 3000.0, []),
                             OutputState(stats, None, ends), 4.0)
    (run,) = facts.runs
    assert run.devices == 2 and run.device_seconds == 50.0 + 3 * 10.0
    assert facts.device_hours == 2 * 80.0 / 3600 and facts.cost(2500) == (4.0 * 160 / 3600, 4.0 * 160 / 3600 / 2500 * 1e6)
    assert facts.devices_how == "model.tensor_parallel_size 2 x pipeline_parallel_size 1"

    # A node n with two engines: the node's summary (its wall) in the header, the engines' in the device time.
    stats = [_part("n-e0", 1, 1100.0), _part("n-e1", 1, 1110.0)]
    ends = {"n": WorkerEnd(_summary("n", 130.0, 1200.0, device="2 engines, cuda: NVIDIA H200", rows=20), 1200.0),
            "n-e0": WorkerEnd(_summary("n-e0", 100.0, 1150.0), 1150.0),
            "n-e1": WorkerEnd(_summary("n-e1", 110.0, 1160.0), 1160.0)}
    state = OutputState(stats, {"finished_at": 1160.0}, ends)
    facts = gather_run_facts(spec, build_status(spec, "out", state, None, 3000.0, []), state, None)
    assert [r.worker for r in facts.runs if r.node] == ["n"]
    assert facts.wall_seconds == 130.0 and facts.devices == ["cuda: NVIDIA H200"] and facts.engines == ["vllm 0.26.0"]
    assert facts.device_hours == 2 * (100.0 + 110.0) / 3600 and facts.rows_generated == 20
    assert facts.cost(1) is None and facts.on_gpu


def test_report_notes_a_kv_cache_too_small_for_max_num_seqs(tmp_path):
    """Session 9's H100 case: two engines sharing the GPU held 287,712 KV tokens each, and 1024 sequences of S's rows
    (256 prompt + 128 output tokens, ~320 in flight) take ~327,680: the report says so, with what fits. A cache that
    holds them, or SYN's shape (n=4: 256 rows of 256 + 512 tokens), gets no note."""
    from batchgen.job.load import validate
    from batchgen.ops.outputstate import OutputState, WorkerEnd
    from batchgen.ops.runfacts import gather_run_facts
    from batchgen.ops.status import build_status

    def facts(kv: int, n: int = 1):
        job = job_dict(tmp_path / "model", tmp_path / "in", tmp_path / "out", sampling={"n": n, "temperature": 0.8, "max_tokens": 128})
        spec = validate(job)
        ends = {}
        for w in ("n-e0", "n-e1"):
            s = _summary(w, 60.0, 1100.0, rows=6000)
            s.update(prompt_tokens=256 * 6000, cached_tokens=0, output_tokens=128 * n * 6000,
                     engine_options={"max_num_seqs": 1024, "kv_cache_tokens": kv})
            ends[w] = WorkerEnd(s, 1100.0)
        state = OutputState([], None, ends)
        return gather_run_facts(spec, build_status(spec, "out", state, None, 3000.0, []), state, None)

    tight = facts(287_712)
    (note,) = [n for n in tight.notes if n.startswith("KV cache")]
    assert "held 287,712 tokens" in note and "1,024 sequences" in note and "about 327,680 at once" in note
    assert "about 899 sequences fit" in note and "model.max_num_seqs" in note and "kv_cache_dtype: fp8" in note
    for kv, n in ((600_000, 1), (287_712, 4)):
        assert not [x for x in facts(kv, n).notes if x.startswith("KV cache")]


@pytest.mark.engine
def test_a_kv_cache_too_small_for_its_rows_loses_none_and_the_report_says_so(tiny_model, tmp_path):
    """The real CPU engine with 4 KV blocks (vLLM's num_gpu_blocks_override; 128-token blocks on the CPU): 64
    sequences of these rows do not fit, so vLLM preempts and recomputes rows. Every row is still written once,
    the summary records the cache's size, and the report says how many sequences fit."""
    ids = write_shards(tmp_path / "in", shards=1, rows=60, row_group=20)
    spec = job_dict(tiny_model, tmp_path / "in", tmp_path / "out", sampling={"max_tokens": 48})
    spec["model"].update(dtype="float32", max_num_seqs=64, max_model_len=384,
                         engine_kwargs={"num_gpu_blocks_override": 4})
    job = write_job(tmp_path / "job.yaml", spec)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    run = subprocess.run([sys.executable, "-m", "batchgen", "run", str(job)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    texts_each_id_once(tmp_path / "out", ids)

    shown = invoke("report", str(job), "--out", str(tmp_path / "rep"))
    assert shown.exit_code == 0, shown.output
    notes = [line for line in shown.output.splitlines() if "KV cache:" in line]
    assert len(notes) == 1 and "held 512 tokens" in notes[0] and "64 sequences (max_num_seqs)" in notes[0], shown.output
    fits = int(re.search(r"about (\d+) sequences fit", notes[0]).group(1))
    assert 1 <= fits < 64
    assert "KV cache:" in (tmp_path / "rep" / "report.html").read_text()
