"""Time the duplicate-id check `batchgen run` makes before its engine starts (io.idscan) on one large shard.

    python -m benchmarks.idscan --rows 5000000 --kind str --dir /tmp/idscan

`--kind`: `str` (ids like review-0000000001) or `int`; `dup` prefixed (`dupstr`, `dupint`) makes the
last three ids repeat the first three, so the second pass (naming ids and rows) runs too. The shard
(id and a prompt column, pyarrow's default row groups) is written once and reused. The time covers
what a run does: the footer read, then the id column only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchgen.io.idscan import find_duplicates, whole_shards
from batchgen.io.shards import InputFiles
from batchgen.job.spec import InputSpec


def write_shard(path: Path, rows: int, kind: str) -> None:
    ids = np.arange(rows)
    if kind.startswith("dup"):
        ids[-3:] = ids[:3]
    col = pa.array(ids) if kind.endswith("int") else pa.array([f"review-{i:010d}" for i in ids])
    pq.write_table(pa.table({"id": col, "text": pa.array(["a prompt of some length " * 4] * rows)}), path)


def measure(path: Path) -> tuple[float, int, int, str]:
    """(seconds, rows, row groups, what was found)."""
    source = InputFiles.open(InputSpec(path=str(path)))
    t0 = time.perf_counter()
    layouts = source.layouts([str(path)])
    dup = find_duplicates(source, whole_shards(layouts), "id")
    return time.perf_counter() - t0, layouts[0].rows, len(layouts[0].groups_rows), dup.describe() if dup else "no duplicates"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--kind", choices=["str", "int", "dupstr", "dupint"], default="str")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/batchgen-idscan"))
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"{args.kind}-{args.rows}.parquet"
    if not path.exists():
        write_shard(path, args.rows, args.kind)
    seconds, rows, groups, found = measure(path)
    print(f"{args.kind}: {rows:,} rows in {groups} row group(s), {path.stat().st_size / 1e6:.0f} MB: "
          f"duplicate check {seconds:.2f}s; {found}")


if __name__ == "__main__":
    main()
