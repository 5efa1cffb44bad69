"""Reading units: each gets exactly its rows, in any order, and pieces of one row group read in order
decode that group once (the reader keeps its place between pieces)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchgen.io import reader
from batchgen.io.reader import ROW_INDEX, read_unit
from batchgen.io.shards import InputFiles
from batchgen.job.spec import InputSpec, StorageSpec
from batchgen.work.plan import plan_job


@pytest.fixture
def shard(tmp_path):
    """One shard: a row group of 100 rows, then one of 3,000 (cut into pieces by units of 300 rows)."""
    path = tmp_path / "in" / "s.parquet"
    path.parent.mkdir()
    ids = [f"r{i:05d}" for i in range(3100)]
    with pq.ParquetWriter(path, pa.schema([("id", pa.string()), ("text", pa.string())])) as w:
        for lo, hi in ((0, 100), (100, 3100)):
            w.write_table(pa.table({"id": ids[lo:hi], "text": [f"t{i}" for i in range(lo, hi)]}), row_group_size=hi - lo)
    spec = InputSpec(path=str(path), unit_rows=300, batch_rows=64, storage=StorageSpec(retries=3, retry_base_seconds=0.01))
    files = InputFiles.open(spec)
    units = plan_job(spec, files.layouts(files.discover())).units
    assert len(units) > 5 and len({u.row_groups for u in units}) == 2  # whole group 0, then pieces of group 1
    return files, units, ids


def _rows(files, unit, done=None):
    got = [b for b in read_unit(files, unit, ["id"], done)]
    table = pa.Table.from_batches(got) if got else None
    return ([] if table is None else table.column("id").to_pylist()), ([] if table is None else table.column(ROW_INDEX).to_pylist())


@pytest.mark.parametrize("order", ["forward", "backward", "every other, twice"])
def test_each_unit_reads_exactly_its_rows(shard, order):
    files, units, ids = shard
    todo = {"forward": units, "backward": units[::-1], "every other, twice": units[::2] + units[1::2] + units}[order]
    for u in todo:
        got, index = _rows(files, u)
        assert got == ids[u.row_start:u.row_end] and index == list(range(u.row_start, u.row_end)), (order, u)


def test_done_rows_are_skipped(shard):
    files, units, ids = shard
    u = units[3]
    done = np.zeros(u.rows, dtype=bool)
    done[::3] = True
    got, index = _rows(files, u, done)
    assert index == [r for r in range(u.row_start, u.row_end) if (r - u.row_start) % 3]
    assert got == [ids[r] for r in index]


def test_pieces_read_in_order_decode_their_group_once(shard, monkeypatch):
    files, units, _ = shard
    decoded = []
    real = pq.ParquetFile.iter_batches

    def counting(self, *a, **kw):
        for b in real(self, *a, **kw):
            decoded.append(b.num_rows)
            yield b

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counting)
    for u in units:
        assert _rows(files, u)[1] == list(range(u.row_start, u.row_end))
    assert sum(decoded) == 3100  # every row once; reading each piece from its group's start decodes ~5x as much


def test_a_transient_error_mid_unit_resumes_after_the_last_row(shard, monkeypatch):
    files, units, ids = shard
    real = reader._Cursor.rows
    failed = []

    def flaky(self, start, stop):
        for i, b in enumerate(real(self, start, stop)):
            if i == 2 and not failed:
                failed.append(start)
                raise ConnectionResetError("Connection reset by peer")
            yield b

    monkeypatch.setattr(reader._Cursor, "rows", flaky)
    u = units[-2]
    assert _rows(files, u)[0] == ids[u.row_start:u.row_end]
    assert failed and files.retry.retried == 1
