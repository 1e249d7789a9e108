"""The `Store` contract, run unchanged against every backend.

Each test gets a started store on fresh storage: SQLite in ``tmp_path``, Redis on its own
``redis-server`` (AOF, ``appendfsync always``). Everything asserted is read back from the backend,
never taken from what the test just passed in.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import torch

from tests.support.redis_server import RedisServer, redis_server_binary
from trackin.service.store import (
    SQLITE_FILENAME,
    Checkpoint,
    LogEntry,
    RedisStore,
    SQLiteStore,
    Store,
    StoreUnavailable,
    WriteOutcome,
    batch_position_key,
    decode_state,
    encode_state,
    open_store,
)
from trackin.service.store import sqlite_schema as sql


class Backend(Protocol):
    """One storage location; `open` may be called many times (several clients of one backend)."""

    def open(self) -> Store: ...

    def restart(self) -> None:
        """Bounce the storage itself (server crash and restart); stores must be shut down first."""


class SQLiteBackend:
    def __init__(self, path: Path) -> None:
        self.path = path

    def open(self) -> Store:
        return open_store(f"sqlite:///{self.path}", self.path.parent / "unused")

    def restart(self) -> None:
        """Nothing runs outside the process: reopening the file is the restart."""


class RedisBackend:
    def __init__(self, server: RedisServer) -> None:
        self.server = server

    def open(self) -> Store:
        return open_store(self.server.url, self.server.directory)

    def restart(self) -> None:
        self.server.kill()  # SIGKILL: only the AOF can bring the data back
        self.server.start()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield SQLiteBackend(tmp_path / "store.sqlite3")
        return
    if redis_server_binary() is None:
        pytest.skip("redis-server not installed (scripts/system-deps installs it)")
    with RedisServer(tmp_path) as server:
        yield RedisBackend(server)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    s = backend.open()
    await s.startup()
    yield s
    await s.shutdown()


def checkpoint(
    stream_id: str, epoch: int, step: int, *, log_position: str = "", scale: float = 1.0
) -> Checkpoint:
    """A real encoded checkpoint whose tensors depend on ``step`` and ``scale``."""
    tensors = {
        "w": torch.full((2, 3), float(step) * scale),
        "count": torch.tensor([step], dtype=torch.int64),
    }
    blob, meta = encode_state(tensors, {"spec": {"kind": "linear", "in": 3}, "step": step})
    return Checkpoint(stream_id, epoch, step, log_position, meta, blob)


async def write_one(store: Store, c: Checkpoint) -> bool:
    outcome = await store.write_checkpoints([c])
    assert sorted(outcome.accepted + outcome.rejected) == [c.stream_id]
    return outcome.accepted == [c.stream_id]


# -- checkpoints ---------------------------------------------------------------------------------


async def test_round_trip_is_byte_identical(store: Store) -> None:
    meta_extra: dict[str, Any] = {"figures": [1.5, None, "é"], "nested": {"a": [True, False]}}
    tensors = {"w": torch.randn(4, 5, dtype=torch.float64), "mask": torch.tensor([True, False])}
    blob, meta = encode_state(tensors, meta_extra)
    written = Checkpoint("s.1:x-y", 3, 17, "", meta, blob)

    assert await store.write_checkpoints([written]) == WriteOutcome(["s.1:x-y"], [])

    read = await store.read_checkpoint("s.1:x-y")
    assert read == written
    assert read is not None
    assert read.tensors == blob
    decoded = decode_state(read.stream_id, read.tensors, read.meta)
    assert set(decoded) == {"w", "mask"}
    assert torch.equal(decoded["w"], tensors["w"])
    assert decoded["w"].dtype == torch.float64
    assert torch.equal(decoded["mask"], tensors["mask"])


async def test_read_missing_is_none(store: Store) -> None:
    assert await store.read_checkpoint("nope") is None
    assert await store.read_checkpoints([]) == {}


async def test_batched_read_returns_only_present(store: Store) -> None:
    written = [checkpoint(f"b{i}", 1, i + 1) for i in range(5)]
    await store.write_checkpoints(written)

    got = await store.read_checkpoints(["b3", "missing", "b0", "b3", "b4"])

    assert set(got) == {"b0", "b3", "b4"}
    for stream_id in got:
        assert got[stream_id] == written[int(stream_id[1:])]


@pytest.mark.parametrize(
    ("epoch", "step", "accepted"),
    [
        (4, 100, False),  # older epoch, even far ahead in steps
        (5, 9, False),  # same epoch, older step
        (5, 10, False),  # same epoch, same step (a duplicate flush)
        (5, 11, True),  # same epoch, newer step
        (6, 0, True),  # newer epoch wins even with a lower step (a new owner restarted the stream)
    ],
)
async def test_fencing(store: Store, epoch: int, step: int, accepted: bool) -> None:
    stored = checkpoint("f", 5, 10, log_position="", scale=1.0)
    assert await write_one(store, stored)

    candidate = checkpoint("f", epoch, step, scale=-1.0)
    assert await write_one(store, candidate) is accepted

    assert await store.read_checkpoint("f") == (candidate if accepted else stored)


async def test_batch_reports_each_stream_and_sees_its_own_earlier_entries(store: Store) -> None:
    await store.write_checkpoints([checkpoint("old", 9, 1)])

    outcome = await store.write_checkpoints(
        [
            checkpoint("new", 2, 1),
            checkpoint("old", 2, 50),  # fenced by epoch 9
            checkpoint("new", 2, 1, scale=7.0),  # equal to the first entry of this batch
            checkpoint("new", 2, 2, scale=3.0),
        ]
    )

    assert outcome.accepted == ["new", "new"]
    assert outcome.rejected == ["old", "new"]
    assert await store.read_checkpoint("new") == checkpoint("new", 2, 2, scale=3.0)
    assert await store.read_checkpoint("old") == checkpoint("old", 9, 1)
    assert await store.write_checkpoints([]) == WriteOutcome([], [])


async def test_fencing_matches_a_reference_model(store: Store) -> None:
    """Random interleaved writes and deletes against the rule written out in plain Python."""
    rng = random.Random(1234)
    model: dict[str, tuple[int, int, bool]] = {}  # id -> (epoch, step, tombstone)
    latest: dict[str, Checkpoint] = {}
    for _ in range(60):
        batch = []
        expected = WriteOutcome([], [])
        for _ in range(rng.randint(1, 4)):
            sid = rng.choice(["m0", "m1", "m2"])
            c = checkpoint(sid, rng.randint(0, 4), rng.randint(0, 4), scale=rng.random())
            prev = model.get(sid)
            if (
                prev is None
                or (prev[2] and c.epoch >= prev[0])
                or (not prev[2] and (c.epoch, c.step) > prev[:2])
            ):
                model[sid] = (c.epoch, c.step, False)
                latest[sid] = c
                expected.accepted.append(sid)
            else:
                expected.rejected.append(sid)
            batch.append(c)
        assert await store.write_checkpoints(batch) == expected
        if rng.random() < 0.2:
            sid, epoch = rng.choice(["m0", "m1", "m2"]), rng.randint(0, 4)
            prev = model.get(sid)
            allowed = prev is None or epoch >= prev[0]
            assert await store.delete_stream(sid, epoch) is allowed
            if allowed:
                model[sid] = (epoch, 0, True)
                latest.pop(sid, None)
    assert await store.read_checkpoints(["m0", "m1", "m2"]) == latest


# -- epochs --------------------------------------------------------------------------------------


async def test_acquire_epoch_increases_across_clients(backend: Backend) -> None:
    a, b = backend.open(), backend.open()
    await a.startup()
    await b.startup()
    try:
        sequential = [await (a if i % 2 else b).acquire_epoch() for i in range(6)]
        assert sequential == sorted(sequential)
        assert len(set(sequential)) == 6
        assert sequential[0] >= 1

        concurrent = await asyncio.gather(*(s.acquire_epoch() for s in [a, b] * 10))
        assert len(set(concurrent)) == 20
        assert min(concurrent) > sequential[-1]
    finally:
        await a.shutdown()
        await b.shutdown()


# -- listing and deletion ------------------------------------------------------------------------


async def test_list_streams_pages_cover_each_id_once(store: Store) -> None:
    ids = [f"a.{i:02d}" for i in range(11)] + ["a", "ab", "a:z", "b.1", "B", "z-9", "a-"]
    await store.write_checkpoints([checkpoint(i, 1, 1) for i in ids])

    async def all_pages(prefix: str, limit: int) -> list[str]:
        seen: list[str] = []
        cursor: str | None = None
        for _ in range(100):
            page, cursor = await store.list_streams(prefix, limit, cursor)
            assert len(page) <= limit
            seen.extend(page)
            if cursor is None:
                return seen
        raise AssertionError("cursor never ended")

    for prefix, limit in [("a", 4), ("a", 1), ("a.", 11), ("", 5), ("", 100), ("b", 2), ("q", 3)]:
        expected = sorted(i for i in ids if i.startswith(prefix))
        assert await all_pages(prefix, limit) == expected, (prefix, limit)

    first, cursor = await store.list_streams("a.", 11, None)
    assert len(first) == 11
    assert cursor is None
    assert await store.count_streams() == len(ids)
    with pytest.raises(ValueError, match="limit"):
        await store.list_streams("", 0, None)


def test_sqlite_lists_and_counts_live_streams_from_the_id_index(tmp_path: Path) -> None:
    """Paging and counting read the live ids' index, not the checkpoint rows (a few kB of blob each: an
    eager restore of 100,000 streams spent a second on those reads)."""
    db = sqlite3.connect(tmp_path / "plans.sqlite3", isolation_level=None)
    sql.create_schema(db)
    for prefix, cursor in (("", None), ("s", "s1"), ("", "a")):
        query, args = sql.list_streams_query(prefix, 10, cursor)
        plan = " ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {query}", args))
        assert "USING INDEX checkpoints_live" in plan, plan
    plan = " ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql.COUNT_STREAMS}"))
    assert "checkpoints_live" in plan, plan
    db.close()


async def test_sqlite_new_files_take_large_pages_and_old_files_keep_theirs(tmp_path: Path) -> None:
    """The page size is set before the file exists (after WAL it would be ignored for good); a database
    made with SQLite's default 4 kB pages still opens, keeps them, and works."""
    old = tmp_path / "old" / SQLITE_FILENAME
    old.parent.mkdir()
    db = sqlite3.connect(old, isolation_level=None)
    db.execute("PRAGMA page_size=4096")
    db.execute("PRAGMA journal_mode=WAL")
    sql.create_schema(db)
    db.close()
    for path, size in ((tmp_path / "new" / SQLITE_FILENAME, sql.PAGE_SIZE), (old, 4096)):
        async with SQLiteStore(path) as store:
            epoch = await store.acquire_epoch()
            [position] = await store.append_batches(epoch, [bytes(range(256)) * 200])
            await store.write_checkpoints([checkpoint("s", epoch, 1)])
            assert await store.read_batches("") == [(position, epoch, bytes(range(256)) * 200)]
            assert await store.read_checkpoint("s") == checkpoint("s", epoch, 1)
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA page_size").fetchone()[0] == size
        db.close()


async def test_delete_removes_checkpoint_log_and_listing(store: Store) -> None:
    await store.write_checkpoints([checkpoint("gone", 3, 5), checkpoint("kept", 3, 5)])
    await store.append_log([LogEntry("gone", b"x"), LogEntry("kept", b"y"), LogEntry("gone", b"z")])

    assert await store.delete_stream("gone", 3) is True

    assert await store.read_checkpoint("gone") is None
    assert await store.read_checkpoints(["gone", "kept"]) == {"kept": checkpoint("kept", 3, 5)}
    assert await store.read_log("gone", "") == []
    assert [p for _, p in await store.read_log("kept", "")] == [b"y"]
    assert await store.list_streams("", 10, None) == (["kept"], None)
    assert await store.count_streams() == 1
    assert await store.log_length() == 1


async def test_tombstone_fences_stale_writers_but_not_the_deleter(store: Store) -> None:
    await store.write_checkpoints([checkpoint("t", 2, 40)])
    assert await store.delete_stream("t", 5) is True

    assert not await write_one(store, checkpoint("t", 4, 100))  # a stale owner cannot resurrect it
    assert await store.read_checkpoint("t") is None
    assert await write_one(store, checkpoint("t", 5, 0))  # the deleting process may recreate it
    assert await store.read_checkpoint("t") == checkpoint("t", 5, 0)


async def test_stale_delete_is_refused(store: Store) -> None:
    await store.write_checkpoints([checkpoint("live", 7, 3)])
    await store.append_log([LogEntry("live", b"obs")])

    assert await store.delete_stream("live", 6) is False

    assert await store.read_checkpoint("live") == checkpoint("live", 7, 3)
    assert [p for _, p in await store.read_log("live", "")] == [b"obs"]
    assert await store.delete_stream("never-written", 1) is True


# -- durability log ------------------------------------------------------------------------------


async def test_log_append_and_read_after(store: Store) -> None:
    entries = [LogEntry("s1" if i % 3 else "s2", f"obs{i}".encode()) for i in range(9)]
    positions = await store.append_log(entries)
    assert len(positions) == 9

    for sid in ("s1", "s2"):
        mine = [(pos, e.payload) for pos, e in zip(positions, entries, strict=True) if e.stream_id == sid]
        assert len({pos for pos, _ in mine}) == len(mine)  # unique within a stream (Redis reuses across)
        log = await store.read_log(sid, "")
        assert log == mine  # append order, same positions
        for k, (pos, _) in enumerate(mine):
            assert await store.read_log(sid, pos) == mine[k + 1 :]

    more = await store.append_log([LogEntry("s1", b"late")])
    s1 = await store.read_log("s1", "")
    assert s1[-1] == (more[0], b"late")  # positions keep increasing per stream across batches
    assert await store.append_log([]) == []
    assert await store.read_log("empty", "") == []


async def test_trim_log_and_log_length(store: Store) -> None:
    positions = await store.append_log([LogEntry("t1", bytes([i])) for i in range(5)])
    await store.append_log([LogEntry("t2", b"other")])
    assert await store.log_length() == 6

    await store.trim_log("t1", positions[1])
    assert await store.read_log("t1", "") == [(p, bytes([i])) for i, p in enumerate(positions)][2:]
    assert await store.log_length() == 4

    await store.trim_log("t1", "")  # nothing is at or before the start
    assert await store.log_length() == 4

    await store.trim_log("t1", positions[-1])
    assert await store.read_log("t1", "") == []
    after = await store.append_log([LogEntry("t1", b"new")])
    assert await store.read_log("t1", positions[-1]) == [(after[0], b"new")]
    assert await store.log_length() == 2


async def test_batched_read_logs_and_trim_logs(store: Store) -> None:
    entries = [LogEntry(f"b{i % 3}", bytes([i])) for i in range(12)]
    positions = await store.append_log(entries)
    by_stream: dict[str, list[tuple[str, bytes]]] = {}
    for pos, e in zip(positions, entries, strict=True):
        by_stream.setdefault(e.stream_id, []).append((pos, e.payload))

    after = {"b0": "", "b1": by_stream["b1"][1][0], "b2": by_stream["b2"][-1][0], "none": ""}
    assert await store.read_logs(after) == {
        "b0": by_stream["b0"],
        "b1": by_stream["b1"][2:],
        "b2": [],
        "none": [],
    }
    assert await store.read_logs({}) == {}

    await store.trim_logs({"b0": by_stream["b0"][0][0], "b1": by_stream["b1"][-1][0], "b2": ""})
    assert await store.read_log("b0", "") == by_stream["b0"][1:]
    assert await store.read_log("b1", "") == []
    assert await store.read_log("b2", "") == by_stream["b2"]
    await store.trim_logs({})
    assert await store.log_length() == 3 + 4


async def test_read_logs_pages_long_logs(store: Store) -> None:
    """More entries than one reply page (1,000 in Redis) still come back whole and in order."""
    positions = await store.append_log([LogEntry("long", i.to_bytes(2, "big")) for i in range(2100)])
    await store.append_log([LogEntry("short", b"s")])
    got = await store.read_logs({"long": positions[5], "short": ""})
    assert [p for p, _ in got["long"]] == positions[6:]
    assert [int.from_bytes(b, "big") for _, b in got["long"]] == list(range(6, 2100))
    assert [b for _, b in got["short"]] == [b"s"]


async def test_invalid_arguments_are_value_errors(store: Store) -> None:
    with pytest.raises(ValueError, match="stream id"):
        await store.read_checkpoint("has space")
    with pytest.raises(ValueError, match="stream id"):
        LogEntry("x" * 129, b"")
    with pytest.raises(ValueError, match="epoch"):
        Checkpoint("ok", -1, 0, "", {}, b"")
    with pytest.raises(ValueError, match="position"):
        await store.read_log("ok", "not-a-position")
    with pytest.raises(ValueError, match="epoch"):
        await store.delete_stream("ok", -2)


# -- records -------------------------------------------------------------------------------------


async def test_records_crud(store: Store) -> None:
    assert await store.list_records("template") == {}
    await store.put_record("template", "lin", {"model": {"kind": "linear"}, "lr": 0.1})
    await store.put_record("template", "ar", {"model": {"kind": "ar"}})
    await store.put_record("other", "lin", {"x": 1})
    await store.put_record("template", "lin", {"lr": 0.2})  # replace

    assert await store.list_records("template") == {"ar": {"model": {"kind": "ar"}}, "lin": {"lr": 0.2}}

    await store.delete_record("template", "ar")
    await store.delete_record("template", "missing")
    assert await store.list_records("template") == {"lin": {"lr": 0.2}}
    assert await store.list_records("other") == {"lin": {"x": 1}}


# -- lifecycle and persistence -------------------------------------------------------------------


async def test_persists_across_restart(backend: Backend) -> None:
    first = backend.open()
    await first.startup()
    epoch = await first.acquire_epoch()
    await first.write_checkpoints([checkpoint("p", epoch, 8, log_position="")])
    positions = await first.append_log([LogEntry("p", b"a"), LogEntry("p", b"b")])
    await first.put_record("template", "t", {"v": [1, 2]})
    await first.shutdown()

    backend.restart()

    second = backend.open()
    await second.startup()
    try:
        assert await second.read_checkpoint("p") == checkpoint("p", epoch, 8)
        assert await second.read_log("p", "") == list(zip(positions, [b"a", b"b"], strict=True))
        assert await second.list_records("template") == {"t": {"v": [1, 2]}}
        assert await second.acquire_epoch() > epoch
        assert not await write_one(second, checkpoint("p", epoch, 8))  # fencing state survived too
        later = await second.append_log([LogEntry("p", b"c")])
        assert await second.read_log("p", positions[-1]) == [(later[0], b"c")]
    finally:
        await second.shutdown()


async def test_calls_outside_startup_raise_unavailable(backend: Backend) -> None:
    s = backend.open()
    with pytest.raises(StoreUnavailable):
        await s.ping()
    async with s:
        await s.ping()
    with pytest.raises(StoreUnavailable):
        await s.count_streams()
    await s.shutdown()  # a second shutdown is harmless


# -- the factory ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind", "where"),
    [
        (None, SQLiteStore, "data/trackin.sqlite3"),
        ("", SQLiteStore, "data/trackin.sqlite3"),
        ("sqlite://", SQLiteStore, "data/trackin.sqlite3"),
        ("sqlite:///rel/t.db", SQLiteStore, "rel/t.db"),
        ("sqlite:////abs/t.db?synchronous=FULL", SQLiteStore, "/abs/t.db"),
        ("redis://:pw@example:6380/2", RedisStore, "redis://:***@example:6380/2"),
    ],
)
def test_open_store_picks_the_backend(url: str | None, kind: type[Store], where: str) -> None:
    store = open_store(url, Path("data"))
    assert type(store) is kind
    if isinstance(store, SQLiteStore):
        assert store.path == Path(where)
        assert store.synchronous == ("FULL" if url and "FULL" in url else "NORMAL")
    else:
        assert repr(store) == f"RedisStore({where!r}, key_prefix='trackin')"  # no password in logs


@pytest.mark.parametrize(
    "url", ["postgres://x/y", "sqlite://host/x.db", "sqlite:///x.db?synchronous=OFF", "sqlite:///x?a=1"]
)
def test_open_store_rejects_unknown_urls(url: str) -> None:
    with pytest.raises(ValueError, match=r"(?i)sqlite|scheme|synchronous"):
        open_store(url, Path("data"))


# -- batch log (group commit) --------------------------------------------------------------------


async def test_batch_log_append_read_trim_and_delete(store: Store) -> None:
    first = await store.append_batches(3, [b"one", b"two"])
    other = await store.append_batches(4, [b"newer owner"])
    last = await store.append_batches(3, [b"three"])
    positions = [*first, *other, *last]
    assert len(set(positions)) == 4
    assert sorted(positions, key=batch_position_key) == positions, "ordered over every owner's entries"
    written = [
        (first[0], 3, b"one"),
        (first[1], 3, b"two"),
        (other[0], 4, b"newer owner"),
        (last[0], 3, b"three"),
    ]
    assert await store.read_batches("") == written
    assert await store.read_batches(first[1]) == written[2:]
    assert await store.log_length() == 4
    assert await store.append_batches(3, []) == []

    await store.trim_batches(3, other[0])  # owner 3's entries up to there; owner 4's stay
    assert await store.read_batches("") == [written[2], written[3]]
    await store.trim_batches(3, "")
    await store.delete_batches([other[0], first[0]])  # a missing one is no error
    assert await store.read_batches("") == [written[3]]
    assert await store.log_length() == 1


async def test_batch_log_trims_again_after_more_appends(store: Store) -> None:
    """Later trims too drop exactly the owner's entries up to the position (on Redis they delete the
    entries this store appended by id, where the first trim scanned the log)."""
    first = await store.append_batches(5, [b"a"])
    await store.trim_batches(5, first[0])
    mine = await store.append_batches(5, [b"b", b"c"])
    other = await store.append_batches(6, [b"other owner"])
    last = await store.append_batches(5, [b"d"])
    await store.trim_batches(5, other[0])
    assert await store.read_batches("") == [(other[0], 6, b"other owner"), (last[0], 5, b"d")]
    assert mine[0] not in {p for p, _, _ in await store.read_batches("")}
    await store.trim_batches(5, last[0])
    await store.trim_batches(6, first[0])  # nothing of owner 6 up to there
    assert await store.read_batches("") == [(other[0], 6, b"other owner")]
    assert await store.log_length() == 1


async def test_legacy_log_streams_are_those_with_per_stream_entries(store: Store) -> None:
    assert await store.legacy_log_streams() == []
    positions = await store.append_log([LogEntry("old1", b"x"), LogEntry("old2", b"y")])
    assert sorted(await store.legacy_log_streams()) == ["old1", "old2"]
    await store.trim_log("old1", positions[0])
    assert await store.legacy_log_streams() == ["old2"]
