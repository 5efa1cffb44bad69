"""The report page in a real browser: Debian's Chromium, headless, renders report.html.

The test setup installs Chromium as tests/slurm/up.sh installs SLURM (tests/browser/chromium.sh, apt as
root); if it cannot, the test fails and says why: a skip would let a broken page pass CI unseen.
Set BATCHGEN_REPORT_SCREENSHOT=docs/report-chromium.png to refresh the screenshot in docs/operations.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from tests.conftest import PREFIX, ROOT, job_dict, run_cli, write_job, write_shards

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


@pytest.fixture(scope="session")
def chromium() -> str:
    setup = subprocess.run(["bash", str(ROOT / "tests" / "browser" / "chromium.sh")], capture_output=True, text=True,
                           timeout=900)
    if setup.returncode != 0:
        pytest.fail(f"tests/browser/chromium.sh could not install Chromium (exit {setup.returncode}):\n"
                    f"{setup.stdout}\n{setup.stderr[-4000:]}")
    return setup.stdout.strip().splitlines()[-1]


def browse(chromium: str, page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    profile.mkdir()  # a new, empty profile per run: nothing from an earlier run or another test
    result = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


class HeaderRows(HTMLParser):
    """The report's header table as rendered: data-key -> the cell's text."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, str] = {}
        self._key: str | None = None
        self._in_td = False

    def handle_starttag(self, tag, attrs):
        if tag == "tr" and dict(attrs).get("data-key"):
            self._key = dict(attrs)["data-key"]
        self._in_td = self._in_td or (tag == "td" and self._key is not None)

    def handle_endtag(self, tag):
        if tag == "tr":
            self._key, self._in_td = None, False

    def handle_data(self, data):
        if self._in_td:
            self.rows[self._key] = self.rows.get(self._key, "") + data


def test_report_renders_in_chromium_with_the_summary_figures(chromium, tiny_model, tmp_path):
    # Two workers share the job; every 7th prompt is null (error rows), odd rows share a long prefix
    # (prefix-cache hits), parts of 6 rows.
    write_shards(tmp_path / "in", shards=4, rows=30, row_group=10,
                 note=lambda s, i: None if i % 7 == 3 else f"{PREFIX if i % 2 else ''}note {s}-{i} about the river mill")
    job = write_job(tmp_path / "job.yaml", job_dict(
        tiny_model, tmp_path / "in", tmp_path / "out", prompt={"column": "note"}, checkpoint={"every_rows": 6},
        sampling={"max_tokens": 24}, runtime={"window": 6}))
    # Two workers side by side, each its own process and engine, as two ranks of an array job would run.
    procs = [subprocess.Popen([sys.executable, "-m", "batchgen", "run", str(job), "--rank", str(rank), "--world-size", "2",
                               "--worker-id", worker], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank, worker in enumerate(("alpha", "beta"))]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
    result = run_cli("report", str(job), "--gpu-hour-price", "2.5", "--out", str(tmp_path / "rep"))
    assert result.returncode == 0, result.stderr[-3000:]

    page = tmp_path / "rep" / "report.html"
    shot = tmp_path / "shot.png"
    browse(chromium, page, tmp_path / "profile-shot", "--window-size=1280,2900", f"--screenshot={shot}")
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2900)
    # Not blank: a rendered page of text, tables and charts has many colours and real contrast.
    assert len(img.getcolors(maxcolors=1 << 20)) > 200 and max(ImageStat.Stat(img).stddev) > 30
    dom = browse(chromium, page, tmp_path / "profile-dom", "--dump-dom").stdout
    assert "<h2>Finish reasons</h2>" in dom and "<h2>Errors</h2>" in dom

    header = HeaderRows()
    header.feed(dom)
    h = header.rows
    summaries = [json.loads((tmp_path / "out" / "_batchgen" / f"summary-{w}.json").read_text()) for w in ("alpha", "beta")]
    longest = lambda key: max(s[key] for s in summaries)  # noqa: E731 - the header shows the longest of the workers
    assert h["wall time"] == f"{longest('wall_seconds'):,.1f} s"
    assert h["engine start"] == f"{longest('engine_start_seconds'):,.1f} s"
    assert h["generate"] == f"{longest('generate_seconds'):,.1f} s"
    rows, errors = sum(s["rows"] for s in summaries), sum(s["errors"] for s in summaries)
    assert rows == 120 and errors == 4 * 4
    assert h["rows"] == f"{rows:,} of 120 committed, {errors} error rows ({errors / rows:.2%})"
    assert h["model"] == summaries[0]["model"] and h["engine"] == f"vllm {summaries[0]['engine_version']}"
    assert h["device"].startswith(f"{summaries[0]['device']}; 2 worker(s) x 1 device(s) each")
    assert h["state"].startswith("complete at ") and "| alpha finished" in h["state"] and "; beta finished" in h["state"]
    out_tokens = sum(s["output_tokens"] for s in summaries)
    assert h["tokens"].endswith(f"output {out_tokens:,}")
    # One run per worker: every part lies inside its worker's run, so the device time is the two walls.
    hours = sum(s["wall_seconds"] for s in summaries) / 3600
    assert h["device-hours"].startswith(f"{hours:.4g} = ")
    assert h["cost"] == f"${hours * 2.5:.4g} at $2.5 per device-hour; ${hours * 2.5 / out_tokens * 1e6:.4g} per 1M output tokens"
    for s in summaries:  # each worker's own figures in the workers table
        assert f"{s['wall_seconds']:,.1f} s" in dom and f"{s['engine_start_seconds']:,.1f} s" in dom

    target = os.environ.get("BATCHGEN_REPORT_SCREENSHOT")
    if target:
        shutil.copyfile(shot, ROOT / target)
