"""`batchgen report` and `batchgen init` through the real CLI."""

from __future__ import annotations

import base64
import re

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from batchgen.cli import app
from batchgen.job.load import load_job
from batchgen.ops.report import PANELS
from batchgen.run.runner import RunOptions, Runner
from batchgen.job.spec import JobSpec
from tests.conftest import job_dict, write_job, write_shards

# matplotlib's first two colours: one per worker, in sorted worker order.
C0, C1 = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def colour_pixels(img: Image.Image, rgb: tuple[int, int, int], tol: int = 12) -> int:
    return sum(n for n, px in img.getcolors(maxcolors=1 << 20) if all(abs(a - b) <= tol for a, b in zip(px[:3], rgb)))


def test_report_png_and_html_show_each_worker(vllm_engine, tiny_model, tmp_path):
    # Two workers split the job (rank 0/1); every 7th prompt is null, so there are error rows to chart.
    write_shards(tmp_path / "in", shards=4, rows=24, row_group=8,
                 note=lambda s, i: None if i % 7 == 3 else f"note {s}-{i}")
    job = write_job(tmp_path / "job.yaml", job_dict(
        tiny_model, tmp_path / "in", tmp_path / "out", prompt={"column": "note"}, checkpoint={"every_rows": 6},
        runtime={"window": 6}))
    for rank, worker in enumerate(("alpha", "beta")):
        Runner(load_job(job), RunOptions(rank=rank, world_size=2, worker=worker, engine_factory=lambda _s: vllm_engine)).run()

    result = invoke("report", str(job))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "job test: complete; 96 of 96 rows committed, 12 error rows (12.50% of rows)"
    assert lines[1].startswith("workers 2, units 4/4 done, parts ")
    png_path, html_path = tmp_path / "out" / "_batchgen" / "report.png", tmp_path / "out" / "_batchgen" / "report.html"
    assert lines[-2:] == [f"wrote {png_path}", f"wrote {html_path}"]

    img = Image.open(png_path)
    img.load()
    assert img.format == "PNG" and img.size == (1200, 750)
    rgb = img.convert("RGB")
    assert len(rgb.getcolors(maxcolors=1 << 20)) > 50, "a chart, not a blank canvas"
    # Both workers' series are drawn: each colour covers a real share of the canvas.
    assert colour_pixels(rgb, C0) > 400 and colour_pixels(rgb, C1) > 400

    page = html_path.read_text()
    inline = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert inline and base64.b64decode(inline[1]) == png_path.read_bytes(), "self-contained: the PNG is inlined"
    series = re.search(r'<ul class="series">(.*?)</ul>', page, re.S)[1]
    for panel in PANELS:
        assert f"<li>{panel}: alpha, beta</li>" in series
    assert "<td>alpha</td>" in page and "<td>beta</td>" in page
    assert "error rows" in page and "prefix-cache hit rate" in page
    assert not re.search(r'(src|href)="https?://', page), "no external resources"

    out = tmp_path / "elsewhere"
    result = invoke("report", str(job), "--out", str(out))
    assert result.exit_code == 0 and (out / "report.png").stat().st_size > 10_000 and (out / "report.html").exists()


def test_report_before_any_commit(tiny_model, tmp_path):
    write_shards(tmp_path / "in", shards=1, rows=4)
    job = write_job(tmp_path / "job.yaml", job_dict(tiny_model, tmp_path / "in", tmp_path / "out"))
    result = invoke("report", str(job), "--out", str(tmp_path / "rep"))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("job test: no rows committed yet")
    assert Image.open(tmp_path / "rep" / "report.png").size == (1200, 750)


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
