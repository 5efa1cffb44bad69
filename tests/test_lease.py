"""Lease rules on real stores (local disk, S3 on loopback) with a fake clock: claim, refuse, expire, take over, lose, release."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from batchgen.io.layout import LEASES, lease_path, part_path
from batchgen.work.ledger import Ledger
from batchgen.work.claim import Claimer
from batchgen.io.parts import to_parquet_bytes
from batchgen.io.store import Store
from batchgen.work.lease import Claim, LeaseBook
from batchgen.io.shards import Unit
from batchgen.job.spec import StorageSpec


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """The same rules on local disk (exclusive create) and on S3 (conditional PUT, moto on loopback)."""
    if request.param == "local":
        return Store.open(str(tmp_path / "out"), StorageSpec())
    s3 = request.getfixturevalue("s3")
    return Store.open(f"s3://{s3.make_bucket()}/out", StorageSpec(**s3.storage()))


def book(store, owner, clock, seconds=10.0):
    return LeaseBook(store, owner, seconds, clock=clock)


def test_claim_refuse_expire_take_over(store):
    clock = Clock()
    a, b = book(store, "a", clock), book(store, "b", clock)
    won, lease_a = a.try_claim("u", None)
    assert won is Claim.WON and lease_a.gen == 0 and lease_a.owner == "a"
    assert a.generations() == {"u": 0}
    # Live: b must wait.
    assert b.try_claim("u", 0)[0] is Claim.BUSY
    clock.now += 9
    assert b.try_claim("u", 0)[0] is Claim.BUSY
    # a renews; the expiry moves.
    lease_a = a.renew(lease_a)
    clock.now += 9
    assert b.try_claim("u", 0)[0] is Claim.BUSY
    # a stops renewing (dead): after expiry b takes generation 1.
    clock.now += 2
    won, lease_b = b.try_claim("u", 0)
    assert won is Claim.WON and lease_b.gen == 1 and lease_b.owner == "b"
    assert b.generations() == {"u": 1}
    # a comes back (a zombie): its renewal sees the later generation and reports the loss.
    assert a.lost(lease_a)
    assert a.renew(lease_a) is None
    assert not b.lost(lease_b)


def test_only_one_taker_wins_a_generation(store):
    clock = Clock()
    book(store, "dead", clock).try_claim("u", None)
    clock.now += 60
    takers = [book(store, f"t{i}", clock) for i in range(8)]
    results: list = [None] * len(takers)
    start = threading.Barrier(len(takers))

    def take(i):
        start.wait()
        results[i] = takers[i].try_claim("u", 0)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(takers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r[0] is Claim.WON]
    assert len(winners) == 1 and winners[0][1].gen == 1
    assert store.listdir(LEASES) == ["u.000000.json", "u.000001.json"]


def test_done_and_released(store):
    clock = Clock()
    a, b = book(store, "a", clock), book(store, "b", clock)
    _, lease = a.try_claim("u", None)
    a.finish(lease, "done")
    assert b.try_claim("u", 0)[0] is Claim.DONE
    _, lease = a.try_claim("v", None)
    a.finish(lease, "released")  # given back before expiry: b need not wait
    won, taken = b.try_claim("v", 0)
    assert won is Claim.WON and taken.gen == 1


def test_own_lease_is_taken_back_at_once_after_a_restart(store):
    clock = Clock()
    book(store, "w", clock).try_claim("u", None)
    again = book(store, "w", clock)  # same worker id, new incarnation (new token)
    won, lease = again.try_claim("u", 0)
    assert won is Claim.WON and lease.gen == 1
    assert book(store, "other", clock).try_claim("u", 1)[0] is Claim.BUSY


def test_supervisor_releases_a_dead_engines_leases(store):
    clock = Clock()
    e0 = book(store, "node-e0", clock)
    e0.try_claim("u", None)
    e0.try_claim("v", None)
    _, done = e0.try_claim("w", None)
    e0.finish(done, "done")
    assert sorted(book(store, "node", clock).release_owner("node-e0")) == ["u", "v"]
    other = book(store, "node-e1", clock)
    assert other.try_claim("u", 0)[0] is Claim.WON
    assert other.try_claim("w", 0)[0] is Claim.DONE


def test_unreadable_lease_counts_as_expired(store):
    store.put(lease_path("u", 0), b"{not json")
    won, lease = book(store, "a", Clock()).try_claim("u", 0)
    assert won is Claim.WON and lease.gen == 1


def _commit_rows(store: Store, unit: Unit, seq: int, rows: list[int]) -> None:
    import pyarrow as pa

    table = pa.table({"row_index": pa.array(rows, pa.int64())})
    store.put(part_path(unit.key, seq), to_parquet_bytes(table, "none", {}))


def test_claimer_skips_done_units_and_absorbs_a_predecessors_parts(store):
    units = [Unit(key=f"s@{i * 10}", shard="s", row_start=i * 10, row_end=i * 10 + 10, row_groups=(i,)) for i in range(3)]
    ledger = Ledger(store, units)
    ledger.load()
    # Unit 0 was finished under a lease; unit 1 was half done by a worker that died holding its lease.
    clock = Clock()
    dead = LeaseBook(store, "dead", 0.5, clock=clock)
    _, lease0 = dead.try_claim(units[0].key, None)
    dead.finish(lease0, "done")
    dead.try_claim(units[1].key, None)
    _commit_rows(store, units[1], 0, list(range(10, 15)))
    clock.now += 5  # the dead worker's lease expired

    claimer = Claimer(LeaseBook(store, "me", 0.5, clock=clock), ledger, units)
    try:
        got = list(claimer.units())
    finally:
        claimer.stop()
    assert sorted(u.key for u in got) == [units[1].key, units[2].key]
    # The predecessor's rows are known before a single row is read again.
    assert np.array_equal(ledger.done_mask(units[1].key), np.array([True] * 5 + [False] * 5))
    assert claimer.claimed == 2


def test_claimer_waits_for_a_live_lease_then_takes_it_when_it_expires(store):
    units = [Unit(key="s@0", shard="s", row_start=0, row_end=10, row_groups=(0,))]
    ledger = Ledger(store, units)
    clock = Clock()
    LeaseBook(store, "other", 2.0, clock=clock).try_claim("s@0", None)
    claimer = Claimer(LeaseBook(store, "me", 2.0, clock=clock), ledger, units)
    it = claimer.units()
    got: list[Unit] = []
    t = threading.Thread(target=lambda: got.extend(it))
    t.start()
    t.join(timeout=1.5)
    assert t.is_alive() and not got and claimer.waiting  # still waiting on the live lease
    clock.now += 3  # "other" stopped renewing
    t.join(timeout=5)
    claimer.stop()
    assert [u.key for u in got] == ["s@0"] and not claimer.waiting


def test_claimer_grants_the_next_unit_once_the_last_is_fed_not_committed(store):
    """Two units open at most (one feeding, one read ahead); a unit whose rows are all in the engine frees its
    slot at once, so the engine never drains its window waiting for a commit before the next claim."""
    units = [Unit(key=f"s@{i * 10}", shard="s", row_start=i * 10, row_end=i * 10 + 10, row_groups=(i,)) for i in range(4)]
    ledger = Ledger(store, units)
    ledger.load()
    claimer = Claimer(LeaseBook(store, "me", 10.0, clock=Clock()), ledger, units, tick_seconds=0.05)
    it = claimer.units()
    first, second = next(it), next(it)
    got: list[Unit] = []
    t = threading.Thread(target=lambda: got.append(next(it)))
    t.start()
    t.join(timeout=0.5)
    assert t.is_alive() and not got and claimer.waiting  # two open: no third claim
    claimer.fed(first.key)  # its rows are in the engine; nothing is committed
    t.join(timeout=5)
    claimer.stop()
    assert got and got[0].key not in (first.key, second.key)
    assert ledger.remaining() == 40
