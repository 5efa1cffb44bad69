"""`make demo`: build the tiny model and a Parquet prompt set, run examples/quickstart.yaml, show the output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batchgen.models.tiny_llama import ensure_tiny_model

ROOT = Path(__file__).resolve().parent.parent
TOPICS = ["rivers", "mills", "gardens", "bread", "rain", "the sea", "old roads", "winter", "bees", "lanterns"]


def make_prompts(folder: Path, shards: int = 3, rows: int = 200) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        ids = [f"q{s}-{i:04d}" for i in range(rows)]
        topics = [TOPICS[(s * rows + i) % len(TOPICS)] for i in range(rows)]
        pq.write_table(pa.table({"id": ids, "topic": topics}), folder / f"prompts-{s}.parquet", row_group_size=100)


if __name__ == "__main__":
    ensure_tiny_model(ROOT / ".cache" / "models")
    make_prompts(ROOT / ".cache" / "demo-data")
    job = ROOT / "examples" / "quickstart.yaml"
    rc = subprocess.call([sys.executable, "-m", "batchgen", "run", str(job)])
    if rc != 0:
        sys.exit(rc)
    import polars as pl

    out = pl.read_parquet(ROOT / "demo-out" / "parts" / "*.parquet")
    ids_in = pl.read_parquet(ROOT / ".cache" / "demo-data" / "*.parquet")["id"]
    print(f"\ndemo: {out.height} output rows in {ROOT / 'demo-out' / 'parts'}; "
          f"ids match the input exactly once: {sorted(out['id'].to_list()) == sorted(ids_in.to_list())}")
    print(out.select("id", "topic", "text", "finish_reason", "output_tokens").head(5))
