"""Prometheus metrics (prometheus_client): the textfile, atomic writes, pushes to a Pushgateway on loopback, and a real run."""

from __future__ import annotations

import base64
import http.server
import logging
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from batchgen.job.load import validate
from batchgen.run.metrics import MetricsSink, WorkerMetrics, render
from batchgen.run.runner import RunOptions, Runner
from batchgen.run.stats import Counters
from tests.conftest import job_dict, write_shards


def samples(text: str) -> dict[str, tuple[dict, float]]:
    """name -> (labels, value), parsed by Prometheus' own parser (so the format is what scrapers accept)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = (s.labels, s.value)
    return out


class Gateway:
    """A Pushgateway stand-in on 127.0.0.1 that records each request's method, path and body."""

    def __init__(self):
        self.received: list[tuple[str, str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                outer.received.append(("PUT", self.path, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway():
    g = Gateway()
    yield g
    g.close()


def test_textfile_format_and_atomic_write(tmp_path):
    clock = iter([1000.0, 1010.5, 1010.0]).__next__  # start, the commit, the write
    m = WorkerMetrics(job='night "run"', worker="node-1", rows_share=100, rows_skipped=40, clock=clock)
    m.committed(Counters(rows=30, errors=2, prompt_tokens=400, cached_tokens=100, output_tokens=900), backlog=3)
    m.clock = lambda: 1010.0
    path = tmp_path / "textfile" / "batchgen.prom"
    MetricsSink(str(path), None).publish(m)
    text = path.read_text()
    got = samples(text)
    labels = {"job_name": 'night "run"', "worker": "node-1"}
    assert got["batchgen_rows_done"] == (labels, 70.0)  # 40 from earlier runs + 30 now
    assert got["batchgen_rows_share"][1] == 100
    assert got["batchgen_rows_generated_total"][1] == 30 and got["batchgen_errors_total"][1] == 2
    assert got["batchgen_output_tokens_total"][1] == 900
    assert got["batchgen_prefix_cache_hit_ratio"][1] == 0.25
    assert got["batchgen_rows_per_second"][1] == 3.0
    assert got["batchgen_output_tokens_per_second"][1] == 90.0
    assert got["batchgen_upload_backlog_parts"][1] == 3
    assert got["batchgen_last_commit_timestamp_seconds"][1] == 1010.5
    assert got["batchgen_running"][1] == 1 and got["batchgen_job_complete"][1] == 0
    assert "# TYPE batchgen_errors_total counter" in text and "# TYPE batchgen_rows_done gauge" in text
    assert "_created" not in text, "no _created samples (disable_created_metrics)"
    assert text == render(m)

    MetricsSink(str(path), None).publish(WorkerMetrics(job="j", worker="node-2", rows_share=1, rows_skipped=0))
    assert 'worker="node-2"' in path.read_text() and 'worker="node-1"' not in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["batchgen.prom"], "no temporary files left for the collector"


def test_push_and_failures_never_raise(gateway, tmp_path, caplog):
    m = WorkerMetrics(job="j", worker="host/a b", rows_share=5, rows_skipped=0)
    MetricsSink(None, gateway.url + "/").publish(m)
    method, path, body = gateway.received[0]
    # The Pushgateway's grouping key; a value with "/" travels base64-encoded (Pushgateway >= 0.9).
    assert (method, path) == ("PUT", "/metrics/job/batchgen/instance@base64/" + base64.urlsafe_b64encode(b"host/a b").decode())
    assert samples(body)["batchgen_rows_share"][1] == 5
    MetricsSink(None, gateway.url).publish(WorkerMetrics(job="j", worker="w7", rows_share=5, rows_skipped=0))
    assert gateway.received[1][1] == "/metrics/job/batchgen/instance/w7"

    dead = MetricsSink(str(tmp_path / "m.prom"), "http://127.0.0.1:9")  # nothing listens on port 9
    with caplog.at_level(logging.WARNING, logger="batchgen"):
        dead.publish(m)
        dead.publish(m)  # within the quiet minute: not retried
    assert sum("metrics not published" in r.message for r in caplog.records) == 1
    assert (tmp_path / "m.prom").exists()  # the textfile was written before the push failed


def test_metrics_follow_a_real_run(vllm_engine, tiny_model, tmp_path, gateway):
    write_shards(tmp_path / "in", shards=1, rows=30)
    prom = tmp_path / "textfile" / "batchgen.prom"
    spec = validate(job_dict(tiny_model, tmp_path / "in", tmp_path / "out", checkpoint={"every_rows": 10},
                             runtime={"metrics_textfile": str(prom), "metrics_pushgateway": gateway.url, "window": 10}))
    summary = Runner(spec, RunOptions(worker="w7", engine_factory=lambda _s: vllm_engine)).run()
    final = samples(prom.read_text())
    assert final["batchgen_rows_done"] == ({"job_name": "test", "worker": "w7"}, 30.0)
    assert final["batchgen_output_tokens_total"][1] == summary.counters.output_tokens
    assert final["batchgen_cached_tokens_total"][1] == summary.counters.cached_tokens
    assert final["batchgen_running"][1] == 0 and final["batchgen_job_complete"][1] == 1
    assert final["batchgen_last_commit_timestamp_seconds"][1] > 0
    assert final["batchgen_upload_backlog_parts"][1] == 0
    # One push when the run starts, one per committed part, and the final ones.
    pushed = [samples(body) for _, path, body in gateway.received]
    assert all(path == "/metrics/job/batchgen/instance/w7" for _, path, _ in gateway.received)
    assert len(pushed) >= 1 + 3 + 1
    done = [p["batchgen_rows_done"][1] for p in pushed]
    assert done[0] == 0 and done == sorted(done) and done[-1] == 30
    assert pushed[-1]["batchgen_job_complete"][1] == 1


def test_rerun_reports_rows_done_from_earlier_runs(vllm_engine, tiny_model, tmp_path):
    write_shards(tmp_path / "in", shards=1, rows=6)
    prom = tmp_path / "batchgen.prom"
    spec = validate(job_dict(tiny_model, tmp_path / "in", tmp_path / "out", runtime={"metrics_textfile": str(prom)}))
    Runner(spec, RunOptions(engine_factory=lambda _s: vllm_engine)).run()
    prom.unlink()
    Runner(spec, RunOptions(engine_factory=lambda _s: vllm_engine)).run()
    again = samples(Path(prom).read_text())
    assert again["batchgen_rows_done"][1] == 6 and again["batchgen_rows_generated_total"][1] == 0
    assert again["batchgen_job_complete"][1] == 1
