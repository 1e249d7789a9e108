"""The cluster's pure parts: the partition hash, the lease book's deadlines, the lease-fenced store, the
log's trimming watermark."""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer
from trackin.models.specs import StreamSpec
from trackin.service.cluster.book import VALID_FRACTION, LeaseBook
from trackin.service.cluster.partitions import Names, partition_of, preference
from trackin.service.cluster.store import LeaseFencedStore
from trackin.service.cluster.sweep import IdleScan, idle_streams, sweep_body, swept, to_delete
from trackin.service.cluster.trim import watermark
from trackin.service.domain.catalog import Catalog, StreamRecord, Template
from trackin.service.security.namespace import Namespace
from trackin.service.store import Checkpoint, StoreUnavailable
from trackin.service.store.redis_backend import RedisStore


def test_partition_is_crc32_mod_p_and_spreads_ids() -> None:
    assert partition_of("sensor-7", 32) == zlib.crc32(b"sensor-7") % 32
    counts = [0] * 16
    for i in range(1600):
        counts[partition_of(f"s-{i}", 16)] += 1
    assert min(counts) > 60, counts  # about 100 each
    assert preference("r1", 3) != preference("r2", 3)


def test_the_client_routes_by_the_servers_hash() -> None:
    from trackin_client import PartitionMap

    routes = PartitionMap.from_json(
        {
            "partitions": 7,
            "hash": "crc32-mod",
            "owners": ["a", None] * 3 + ["b"],
            "replicas": {"a": "http://a"},
        }
    )
    assert all(routes.partition(f"id-{i}") == partition_of(f"id-{i}", 7) for i in range(500))
    assert (
        routes.owner_url(next(s for s in (f"x{i}" for i in range(99)) if partition_of(s, 7) == 0))
        == "http://a"
    )
    assert routes.owner_url(next(s for s in (f"x{i}" for i in range(99)) if partition_of(s, 7) == 1)) is None
    with pytest.raises(ValueError, match="hash"):
        PartitionMap.from_json({"partitions": 7, "hash": "md5", "owners": [], "replicas": {}})
    # A tenant's map: its ids are hashed inside its namespace, as the server hashes the internal id.
    tenant = PartitionMap.from_json(
        {"partitions": 7, "hash": "crc32-mod", "owners": [], "replicas": {}, "namespace": "~t/"}
    )
    inside = Namespace.of("t").inside
    assert all(tenant.partition(f"id-{i}") == partition_of(inside(f"id-{i}"), 7) for i in range(500))


def test_names_keep_two_clusters_apart() -> None:
    a, b = Names("a"), Names("b")
    assert {a.log_stream, a.lease_bucket, a.log_subject(1)}.isdisjoint(
        {b.log_stream, b.lease_bucket, b.log_subject(1)}
    )


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr("trackin.service.cluster.book.time.monotonic", lambda: now[0])
    return now


def test_a_lease_stops_counting_before_its_ttl_would_let_anyone_else_take_it(clock: list[float]) -> None:
    book = LeaseBook(ttl=10.0)
    book.took(3, revision=41, sent=clock[0])
    assert book.valid(3)
    assert book.token(3) == 41
    clock[0] += VALID_FRACTION * 10.0 - 0.01
    assert book.valid(3)
    clock[0] += 0.02  # still well inside the server's TTL, counted from when it stored the lease
    assert not book.valid(3)
    assert book.token(3) is None
    assert book.lapsed() == [3]
    book.renewed(3, revision=57, sent=clock[0])
    assert book.valid(3)
    assert book.token(3) == 41
    assert book.get(3) is not None
    assert book.get(3).revision == 57
    book.gave_up(3)
    assert not book.valid(3)
    assert book.held() == []


def _checkpoint(stream_id: str, step: int) -> Checkpoint:
    return Checkpoint(stream_id, 0, step, str(step), {}, b"state")


async def test_fenced_store_writes_with_the_partition_token_and_refuses_without_a_lease(
    tmp_path: Path,
) -> None:
    with RedisServer(tmp_path) as redis:
        book = LeaseBook(ttl=60.0)
        inner = RedisStore(redis.url)
        store = LeaseFencedStore(inner, book, partitions=4)
        await store.startup()
        try:
            stream = "s-1"
            p = partition_of(stream, 4)
            outcome = await store.write_checkpoints([_checkpoint(stream, 1)])
            assert outcome.rejected == [stream]  # no lease: nothing written
            assert await inner.read_checkpoint(stream) is None
            with pytest.raises(StoreUnavailable):
                await store.delete_stream(stream, 0)
            book.took(p, revision=20, sent=time.monotonic())
            assert (await store.write_checkpoints([_checkpoint(stream, 1)])).accepted == [stream]
            stored = await inner.read_checkpoint(stream)
            assert stored is not None
            assert stored.epoch == 20
            # A newer owner (a later revision) wins; the old one's later write is refused by the store.
            book.took(p, revision=35, sent=time.monotonic())
            assert (await store.write_checkpoints([_checkpoint(stream, 2)])).accepted == [stream]
            book.took(p, revision=20, sent=time.monotonic())
            assert (await store.write_checkpoints([_checkpoint(stream, 9)])).rejected == [stream]
            stored = await inner.read_checkpoint(stream)
            assert stored is not None
            assert (stored.epoch, stored.step) == (35, 2)
            # What the stored checkpoint covers (its log position), as written: the refused write is not it.
            assert store.covered == {stream: 2}
            store.covered.clear()
            assert await store.read_checkpoints([stream, "s-none"])
            assert store.covered == {stream: 2}  # as read back
            book.took(p, revision=36, sent=time.monotonic())
            assert await store.delete_stream(stream, 0)
            assert store.covered == {}
        finally:
            await store.shutdown()


def test_the_trimming_watermark_is_what_every_stream_checkpoint_covers() -> None:
    last = {"a": 40, "b": 12, "idle": 5}
    covered = {"a": 30, "b": 12, "idle": 5}
    # "a" was observed after its checkpoint (40 > 30): the log up to 30 is covered; "b" and "idle" were
    # not touched since theirs, so they are covered up to everything applied.
    assert watermark(50, last, covered, last.__getitem__) == 30
    assert watermark(50, ["b", "idle"], covered, last.__getitem__) == 50  # idle streams hold nothing back
    assert watermark(50, [], covered, last.__getitem__) == 50  # no stream: every applied message is done
    assert watermark(50, ["a", "new"], covered, lambda s: last.get(s, 60)) is None  # no checkpoint known


def test_a_columnar_part_travels_exactly() -> None:
    """A part of a columnar body (its rows, in the request's order) reaches its owner bit for bit."""
    import numpy as np

    from trackin.service.cluster.columns import part_body, part_columns
    from trackin.service.domain.columns import Columns

    rng = np.random.default_rng(3)
    whole = Columns(["a", "b", "c", "d"], rng.normal(size=(4, 3)) / 7, rng.normal(size=(4, 1)), None, None)
    part = part_columns(part_body(whole, [3, 1]))
    assert part.streams == ["d", "b"]
    assert part.x is not None
    assert part.y is not None
    assert np.array_equal(part.x, whole.x[[3, 1]])  # type: ignore[index]
    assert np.array_equal(part.y, whole.y[[3, 1]])  # type: ignore[index]
    assert part.value is None
    assert part.ts is None


def test_the_fronts_template_index_matches_as_single_node() -> None:
    """Longest prefix first, the greatest name among templates of one prefix, as `Catalog.template_for`."""
    import random

    from trackin.models.specs import StreamSpec
    from trackin.service.cluster.templates import _PrefixIndex
    from trackin.service.domain.catalog import Catalog, Template

    spec = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 2}})
    rng = random.Random(5)
    prefixes = ["", "a", "ab", "abc", "b:", "b:c", "~t/a", "~t/ab"]
    catalog = Catalog()
    for _ in range(30):
        catalog.put_template(Template(f"t{rng.randrange(99)}", rng.choice(prefixes), spec, 60.0))
    index = _PrefixIndex(catalog.templates())
    for _ in range(500):
        stream = "".join(rng.choice("abc:~t/") for _ in range(rng.randrange(6)))
        assert index.match(stream) == catalog.template_for(stream), stream


def test_the_sweep_proposes_idle_template_streams_and_deletes_those_still_at_the_position_seen() -> None:
    spec = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 2}})
    catalog, now = Catalog(), 1000.0
    made = {"idle": ("t", 10.0), "fresh": ("t", 999.0), "orphan": ("gone", 10.0), "plain": (None, 10.0)}
    for stream, (template, updated) in made.items():
        catalog.add(stream, StreamRecord(spec, created_at=0.0, updated_at=updated, template=template))
    templates = {"t": Template("t", "", spec, idle_seconds=60.0)}
    positions = {"idle": 7, "fresh": 8, "orphan": 3, "plain": 4}
    idle = idle_streams(made, catalog, templates.get, positions.__getitem__, now)
    assert idle == {"idle": 7}  # a stream whose template is gone, or made without one, stays
    assert swept(sweep_body(idle)) == idle
    assert swept(b"not json") == swept(b"[1]") == swept(b'{"streams": {"a": "7"}}') == {}
    # Applied: a stream moved past the position seen (observed after the decision) stays; so does one not
    # made from a template, and one deleted meanwhile is skipped.
    positions["idle"] = 9
    named = {"idle": 7, "fresh": 8, "plain": 4, "deleted": 2}
    assert to_delete(named, catalog, positions.__getitem__) == ["fresh"]


def test_the_idle_scan_is_shared_by_the_partitions_and_each_decision_checks_its_candidates_again() -> None:
    spec = StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 2}})
    catalog, now = Catalog(), time.time()
    for stream in ("a", "b", "c"):
        catalog.add(stream, StreamRecord(spec, created_at=0.0, updated_at=now - 100, template="t"))
    templates = {"t": Template("t", "", spec, idle_seconds=60.0)}
    scan = IdleScan(catalog, templates.get, 4, every=60.0)
    by_partition: dict[int, dict[str, int]] = {}
    for stream in ("a", "b", "c"):
        by_partition.setdefault(partition_of(stream, 4), {})[stream] = 1
    assert {p: scan.idle(p, lambda s: 1) for p in by_partition} == by_partition
    record = catalog.record("a")
    assert record is not None
    record.updated_at = time.time()  # observed since the scan: the decision sees it
    assert "a" not in scan.idle(partition_of("a", 4), lambda s: 1)
