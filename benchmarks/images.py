"""Image prompts on a GPU: llava-1.5-7b's shape with dummy weights, batchgen vs hand-written LLM.generate.

    python -m benchmarks.images --work /tmp/images [--rows 2000] [--max-tokens 32]

No download: the model folder is llava-1.5-7b's configs (batchgen.models.tiny_llava.LLAVA_15_7B, a
character tokenizer of its vocabulary size) loaded with `load_format: dummy`; the images are random
JPEGs of a few sizes (decoded and resized by the model's CLIP processor to 336 px, 576 tokens each), plus
a few broken ones that must become error rows naming their row. Both sides decode the images inside the
timed part (batchgen in its reader thread, the raw loop before its LLM.generate call). Prints one line
per method and the ratio; `tests/test_gpu_images.py` runs a small version with assertions.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

QUESTION = "USER: {question}\nASSISTANT:"
SIZES = ((336, 336), (640, 480), (480, 640), (512, 384))


def build(work: Path, rows: int, broken: int = 3) -> tuple[Path, Path, list[str]]:
    """The model folder (configs only) and one Parquet shard of (id, question, image bytes)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from batchgen.models.tiny_llava import LLAVA_15_7B, build_llava

    model = work / "llava-1.5-7b-dummy"
    if not model.exists():
        build_llava(model, LLAVA_15_7B, seed=None)
    data = work / "in"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids, questions, images = [], [], []
    for i in range(rows):
        w, h = SIZES[i % len(SIZES)]
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=85)
        ids.append(f"img-{i:06d}")
        questions.append(f"What is in picture {i}? Answer in one sentence.")
        images.append(buf.getvalue() if i % max(1, rows // broken) != 7 else b"\xff\xd8 truncated jpeg")
    pq.write_table(pa.table({"id": ids, "question": questions, "image": pa.array(images, pa.binary())}),
                   data / "images.parquet", row_group_size=512)
    return model, data, ids


def job(model: Path, data: Path, out: Path, max_tokens: int) -> dict:
    return {
        "name": "images-llava7b",
        "input": {"path": str(data)},
        "prompt": {"template": QUESTION, "image_column": "image"},
        "model": {"path": str(model), "load_format": "dummy", "dtype": "bfloat16",
                  "engine_kwargs": {"limit_mm_per_prompt": {"image": 1}}},
        "sampling": {"temperature": 0, "max_tokens": max_tokens, "ignore_eos": True},
        "output": {"path": str(out)},
        "runtime": {"progress": "lines", "progress_seconds": 10},
    }


def run_batchgen(model: Path, data: Path, out: Path, max_tokens: int) -> dict:
    import yaml

    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(job(model, data, out, max_tokens)))
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "batchgen", "run", str(path)], capture_output=True, text=True)
    wall = time.monotonic() - t0
    if res.returncode != 0:
        raise RuntimeError(f"batchgen failed ({res.returncode}):\n{res.stderr[-4000:]}")
    summary = json.loads(next((out / "_batchgen").glob("summary-*.json")).read_text())
    return {"generate_seconds": summary["generate_seconds"], "engine_start_seconds": summary["engine_start_seconds"],
            "wall_seconds": wall, "rows": summary["counters"]["rows"], "errors": summary["counters"]["errors"]}


def run_raw(model: Path, data: Path, max_tokens: int) -> dict:
    """What a user writes by hand: read the shard, decode the images, one LLM.generate call."""
    import pyarrow.parquet as pq
    from PIL import Image
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model), load_format="dummy", dtype="bfloat16", limit_mm_per_prompt={"image": 1})
    t0 = time.monotonic()
    prompts, skipped = [], 0
    for row in pq.read_table(data).to_pylist():
        try:
            image = Image.open(io.BytesIO(row["image"])).convert("RGB")
        except Exception:  # noqa: BLE001 - the hand-written loop skips what it cannot read
            skipped += 1
            continue
        prompts.append({"prompt": "<image>\n" + QUESTION.format(question=row["question"]), "multi_modal_data": {"image": image}})
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True), use_tqdm=False)
    seconds = time.monotonic() - t0
    return {"generate_seconds": seconds, "rows": len(outs), "skipped": skipped,
            "prompt_tokens": sum(len(o.prompt_token_ids) for o in outs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--methods", default="batchgen,raw")
    args = ap.parse_args(argv)
    model, data, _ = build(args.work, args.rows)
    results = {}
    for method in args.methods.split(","):
        if method == "batchgen":
            out = args.work / f"out-{int(time.time())}"
            results[method] = run_batchgen(model, data, out, args.max_tokens)
        else:
            results[method] = run_raw(model, data, args.max_tokens)
        r = results[method]
        print(f"== {method}: {r['rows']} rows in {r['generate_seconds']:.1f} s = {r['rows'] / r['generate_seconds']:.1f} rows/s "
              f"({json.dumps(r)})", flush=True)
    if len(results) == 2:
        ratio = (results["batchgen"]["rows"] / results["batchgen"]["generate_seconds"]) / \
                (results["raw"]["rows"] / results["raw"]["generate_seconds"])
        print(f"== batchgen / raw rows/s: {ratio:.3f}")
    (args.work / "images-result.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
