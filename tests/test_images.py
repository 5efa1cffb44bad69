"""Image prompts on the real CPU engine with a tiny LLaVA: images from a column (bytes, paths, data: URLs,
{bytes, path} structs) and from chat messages' image_url parts (Parquet and OpenAI batch files) give
vLLM's own outputs for the same prompts and images; an unreadable image is an error row naming the row."""

from __future__ import annotations

import base64
import http.server
import importlib.util
import io
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchgen.io.images import ImageError, ImageFetcher
from batchgen.job.load import validate
from batchgen.job.spec import PromptSpec, StorageSpec
from batchgen.models.tiny_llava import IMAGE_TOKEN, TINY, ensure_tiny_llava
from batchgen.run.images import ImagePrompts
from batchgen.run.runner import RunOptions, Runner
from tests.conftest import ROOT, SharedEngine, job_dict
from tests.direct import direct_texts

SHIM = ROOT / "tests" / "pil_pixtral"  # see its docstring: vLLM's CPU build and the missing torchvision


def png(seed: int, size: tuple[int, int] = (40, 48), fmt: str = "PNG") -> bytes:
    from PIL import Image

    pixels = (np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="session")
def tiny_llava() -> Path:
    return ensure_tiny_llava(ROOT / ".cache" / "models")


@pytest.fixture(scope="session")
def vision_engine(tiny_llava, tmp_path_factory):
    """A real engine on the tiny LLaVA. Session-scoped and never shut down, like test_lora's (shutting an
    in-process engine down tears down vLLM's process-wide state that the other engines use)."""
    from batchgen.engine.vllm import VllmEngine

    shim = importlib.util.spec_from_file_location("batchgen_tests_pil_pixtral", SHIM / "sitecustomize.py")
    shim.loader.exec_module(importlib.util.module_from_spec(shim))  # this process; PYTHONPATH: vLLM's subprocess
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(SHIM), str(ROOT), *([before] if before else [])])
    tmp = tmp_path_factory.mktemp("vision")
    try:
        engine = VllmEngine(validate(vision_job(tiny_llava, tmp / "in", tmp / "out")))
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = before
    return SharedEngine(engine)


def vision_job(model: Path, data, out, prompt: dict | None = None, **sections) -> dict:
    job = job_dict(model, data, out, **sections)
    job["prompt"] = prompt or job["prompt"]
    job["model"]["engine_kwargs"] = {"limit_mm_per_prompt": {"image": 2}}
    job["sampling"]["max_tokens"] = 10
    return job


def run(engine, spec):
    return Runner(spec, RunOptions(engine_factory=lambda _s: engine)).run()


def direct(engine, prompts: dict[str, tuple[str, list]]) -> dict[str, str]:
    """Greedy outputs through vLLM's own API: prompt text with the placeholder, the images as PIL."""
    from vllm import SamplingParams

    return direct_texts(engine.engine._engine, {k: {"prompt": text, **({"multi_modal_data": {"image": images}} if images else {})}
                                                for k, (text, images) in prompts.items()},
                        SamplingParams(temperature=0, max_tokens=10))


def decoded(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


@pytest.mark.engine
def test_image_column_rows_equal_vllm_and_bad_images_are_error_rows(vision_engine, tiny_llava, tmp_path):
    (tmp_path / "img").mkdir()
    images = {i: png(i, size=(32 + 4 * i, 40)) for i in range(12)}
    for i in (1, 5, 9):
        (tmp_path / "img" / f"{i}.png").write_bytes(images[i])
    cells = [images[0], str(tmp_path / "img" / "1.png"), data_url(images[2]), {"bytes": images[3], "path": "x.png"},
             None, str(tmp_path / "img" / "5.png"), b"not an image at all", str(tmp_path / "img" / "missing.png"),
             images[8], [images[9], images[1]], png(10, fmt="JPEG"), images[11]]
    ids = [f"r{i:02d}" for i in range(len(cells))]
    texts = [f"what is in picture {i}?" for i in range(len(cells))]
    (tmp_path / "in").mkdir()
    # One shard per kind of cell (a Parquet column has one type): lists of bytes, strings, {bytes, path} structs.
    shards = {"bytes": ([0, 4, 6, 8, 9, 10, 11], pa.list_(pa.binary())), "paths": ([1, 2, 5, 7], pa.string()),
              "structs": ([3], pa.struct([("bytes", pa.binary()), ("path", pa.string())]))}
    for name, (rows, kind) in shards.items():
        values = [[cells[i]] if name == "bytes" and isinstance(cells[i], bytes) else cells[i] for i in rows]
        pq.write_table(pa.table({"id": [ids[i] for i in rows], "text": [texts[i] for i in rows],
                                 "image": pa.array(values, kind)}), tmp_path / "in" / f"{name}.parquet")
    spec = validate(vision_job(tiny_llava, tmp_path / "in" / "*.parquet", tmp_path / "out",
                               prompt={"column": "text", "image_column": "image"}))
    summary = run(vision_engine, spec)
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "parts").to_pylist()}
    assert sorted(rows) == sorted(ids) and summary.counters.errors == 2

    assert "row 'r06': image 1 of 1 is unreadable: not a readable image" in rows["r06"]["error"]
    assert "row 'r07': image 1 of 1 is unreadable" in rows["r07"]["error"] and "missing.png: no such file" in rows["r07"]["error"]
    pil = {i: [decoded(images[i])] for i in images}
    pil[9] = [decoded(images[9]), decoded(images[1])]
    pil[10] = [decoded(png(10, fmt="JPEG"))]
    pil[4] = []
    want = {ids[i]: ("\n".join([IMAGE_TOKEN] * len(pil[i]) + [texts[i]]), pil[i]) for i in range(len(cells)) if i not in (6, 7)}
    ref = direct(vision_engine, want)
    got = {k: rows[k]["text"] for k in want}
    assert got == ref
    assert len(set(got.values())) >= 8, "outputs should follow the images"
    # Each image counts its 16 feature tokens in prompt_tokens (placeholders expanded by vLLM).
    assert rows["r09"]["prompt_tokens"] - rows["r04"]["prompt_tokens"] == 2 * TINY.image_tokens + len("\n" * 2)


@pytest.mark.engine
def test_messages_with_image_url_parts_and_openai_batch_files(vision_engine, tiny_llava, tmp_path):
    imgs = [png(20 + i) for i in range(6)]
    messages = [[{"role": "user", "content": [{"type": "text", "text": f"describe image {i}"},
                                              {"type": "image_url", "image_url": {"url": data_url(imgs[i])}}]}]
                for i in range(6)]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": [f"m{i}" for i in range(6)], "messages": messages}), tmp_path / "in" / "m.parquet")
    spec = validate(vision_job(tiny_llava, tmp_path / "in", tmp_path / "out", prompt={"messages_column": "messages"}))
    run(vision_engine, spec)
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "parts").to_pylist()}
    # The tiny model's chat template places image parts itself, where they stand (probed once).
    want = {f"m{i}": (f"user: {IMAGE_TOKEN}describe image {i}\nassistant: ", [decoded(imgs[i])]) for i in range(6)}
    assert {k: r["text"] for k, r in rows.items()} == direct(vision_engine, want)
    assert all(r["error"] is None for r in rows.values())

    # The same requests as an OpenAI Batch file: same outputs, keyed by custom_id.
    lines = [{"custom_id": f"m{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "tiny", "messages": messages[i], "max_tokens": 10, "temperature": 0}} for i in range(6)]
    lines.append({"custom_id": "broken", "body": {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}})
    (tmp_path / "batch").mkdir()
    (tmp_path / "batch" / "requests.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    job = vision_job(tiny_llava, tmp_path / "batch" / "requests.jsonl", tmp_path / "out2", output={"openai_batch_jsonl": True})
    job["input"]["format"] = "openai_batch"
    del job["prompt"]
    run(vision_engine, validate(job))
    batch_rows = {r["id"]: r for r in pq.read_table(tmp_path / "out2" / "parts").to_pylist()}
    assert {k: batch_rows[k]["text"] for k in rows} == {k: r["text"] for k, r in rows.items()}
    assert "row 'broken': image 1 of 1 is unreadable: not a readable image" in batch_rows["broken"]["error"]
    answers = [json.loads(line) for f in (tmp_path / "out2" / "openai").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert {a["custom_id"]: a["response"]["status_code"] for a in answers} == {**{f"m{i}": 200 for i in range(6)}, "broken": 400}


# -- fetching and placing images, without the engine ---------------------------------------------------

class _Images(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/slow.png":
            time.sleep(2)
        if self.path in ("/cat.png", "/slow.png"):
            body = png(1)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_images():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_image_sources_and_their_errors(tmp_path, http_images, s3):
    fetch = ImageFetcher(StorageSpec(**s3.storage()), timeout=0.5)
    (tmp_path / "a.png").write_bytes(png(1))
    bucket = s3.make_bucket()
    s3.fs().pipe_file(f"{bucket}/imgs/a.png", png(1))
    want = decoded(png(1)).tobytes()
    for ref in (png(1), str(tmp_path / "a.png"), f"file://{tmp_path}/a.png", data_url(png(1)), {"bytes": png(1), "path": None},
                {"bytes": None, "path": str(tmp_path / "a.png")}, {"url": data_url(png(1))}, f"{http_images}/cat.png",
                f"s3://{bucket}/imgs/a.png"):
        assert fetch.load(ref).tobytes() == want, str(ref)[:80]
    for ref, message in [(b"GIF89a-truncated", "not a readable image"), (f"{http_images}/none.png", "HTTP 404"),
                         (f"{http_images}/slow.png", "timeout 0.5 s"), (str(tmp_path / "no.png"), "no such file"),
                         (f"s3://{bucket}/imgs/no.png", "no such file"), ("data:image/png;base64", "without a ','"),
                         (12, "expected bytes, a path or a URL"), ({"bytes": None, "path": None}, "no image")]:
        with pytest.raises(ImageError, match=message):
            fetch.load(ref)


def test_placeholders(tiny_llava):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llava)
    fetch = ImageFetcher(StorageSpec(), timeout=1)
    prompts = ImagePrompts(PromptSpec(column="t", image_column="i"), tok, IMAGE_TOKEN, fetch)
    assert prompts.template_places_images  # the tiny template turns {"type": "image"} into <image>
    assert prompts.place("what?", 2, chat=False) == (f"{IMAGE_TOKEN}\n{IMAGE_TOKEN}\nwhat?", None)
    assert prompts.place(f"look {IMAGE_TOKEN} here", 1, chat=False) == (f"look {IMAGE_TOKEN} here", None)
    assert "1 image placeholder(s) '<image>' for 2 image(s)" in prompts.place(f"a {IMAGE_TOKEN}", 2, chat=False)[1]
    unknown = ImagePrompts(PromptSpec(column="t", image_column="i"), tok, None, fetch)
    assert "set prompt.image_placeholder" in unknown.place("what?", 1, chat=False)[1]
    inserts_itself = ImagePrompts(PromptSpec(column="t", image_column="i", image_placeholder=""), tok, IMAGE_TOKEN, fetch)
    assert inserts_itself.place("what?", 1, chat=False) == ("what?", None)
    # A template that only takes strings gets the placeholders in front of the message's text (vLLM's way).
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    strings = ImagePrompts(PromptSpec(messages_column="m"), tok, IMAGE_TOKEN, fetch)
    assert not strings.template_places_images
    messages, refs = strings.template_messages([{"role": "user", "content": "hi", "images": ["u1", "u2"]}])
    assert messages == [{"role": "user", "content": f"{IMAGE_TOKEN}\n{IMAGE_TOKEN}\nhi"}] and refs == ["u1", "u2"]


def test_image_column_with_a_system_prompt_goes_through_the_chat_template(tiny_llava, tmp_path):
    """A template prompt with `system` is chat: the image becomes an image part of the user message, and
    the template puts the placeholder there (once), not in front of the whole rendered chat."""
    from transformers import AutoTokenizer

    from batchgen.io.reader import ROW_INDEX
    from batchgen.run.prompts import Renderer

    spec = validate(vision_job(tiny_llava, tmp_path, tmp_path / "out",
                               prompt={"template": "what is it?", "image_column": "image", "system": "be brief"}))
    tok = AutoTokenizer.from_pretrained(tiny_llava)
    batch = pa.record_batch({"id": ["x", "y", "z"], "image": [png(1), None, b"junk"], ROW_INDEX: [0, 1, 2]})
    x, y, z = Renderer(spec, tok, 500, image_placeholder=IMAGE_TOKEN).render("u", batch)
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert tok.decode(x.token_ids) == f"system: be brief\nuser: {IMAGE_TOKEN}what is it?\nassistant: "
    assert x.token_ids.count(image_id) == 1 and len(x.images) == 1 and x.images[0].size == (40, 48)
    assert y.error is None and y.images is None and image_id not in y.token_ids  # no image: a text-only row
    assert z.error.startswith("row 'z': image 1 of 1 is unreadable: not a readable image")
