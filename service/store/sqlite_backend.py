"""`Store` on a local SQLite file: the zero-dependency default for a single server.

All SQL runs on one dedicated worker thread that owns the connection. sqlite3 calls block, so they
must stay off the event loop, and one thread serializes them without any locking of our own.
Every write is one transaction (``BEGIN IMMEDIATE`` takes the write lock up front, so two processes
sharing the file queue on ``busy_timeout`` instead of failing on a lock upgrade). The tables and the
SQL live in `service.store.sqlite_schema`.

Durability. The journal is WAL. With ``synchronous=NORMAL`` (the default) a commit is durable against
a crash of the *process* (the WAL is in the OS), but a power loss or kernel crash can drop the last
commits; the file is never corrupted either way. ``synchronous=FULL`` fsyncs the WAL on every commit,
so an acknowledged log append also survives power loss, at the cost of one fsync per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson

from trackin.service.store import sqlite_schema as sql
from trackin.service.store.base import (
    Checkpoint,
    LogEntry,
    Store,
    WriteOutcome,
    check_counter,
    check_limit,
    check_record_kind,
    check_record_name,
    check_stream_id,
)
from trackin.service.store.errors import StoreError, StoreUnavailable
from trackin.service.store.rows import dumps_record, loads_object, split_page, stored_checkpoint

__all__ = ["SQLiteStore", "Synchronous"]

Synchronous = Literal["NORMAL", "FULL"]
T = TypeVar("T")


class SQLiteStore(Store):
    """Store backed by one SQLite file; safe to share between processes on one host."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Synchronous = "NORMAL",
        busy_timeout: float = 5.0,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"Invalid synchronous: {synchronous!r}")
        if busy_timeout <= 0:
            raise ValueError(f"Invalid busy_timeout: {busy_timeout}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # touched only on the worker thread

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r}, synchronous={self.synchronous!r})"

    # -- lifecycle -------------------------------------------------------------------------------

    async def startup(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trackin-sqlite")
        try:
            await self._run(self._open)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise

    async def shutdown(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close)
        finally:
            executor.shutdown(wait=True)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            sql.set_pragmas(conn, self.synchronous)
            with _transaction(conn):
                sql.create_schema(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- plumbing --------------------------------------------------------------------------------

    async def _run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the worker thread, translating sqlite3 errors into the store's tree."""
        executor = self._executor
        if executor is None:
            raise StoreUnavailable("SQLite store is not started")
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn)
        except sqlite3.OperationalError as exc:  # locked, busy, I/O, disk full, read-only
            raise StoreUnavailable(f"SQLite at {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite at {self.path}: {exc}") from exc

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable("SQLite store is not started")
        return self._conn

    # -- control ---------------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._run(lambda: self._db.execute(sql.PING).fetchone())

    async def acquire_epoch(self) -> int:
        def acquire() -> int:
            db = self._db
            with _transaction(db):
                row = db.execute(sql.ACQUIRE_EPOCH).fetchone()
            return int(row[0])

        return await self._run(acquire)

    # -- checkpoints -----------------------------------------------------------------------------

    async def write_checkpoints(self, checkpoints: Sequence[Checkpoint]) -> WriteOutcome:
        rows = [
            (c.stream_id, c.epoch, c.step, c.log_position, orjson.dumps(c.meta).decode(), c.tensors)
            for c in checkpoints
        ]

        def write() -> WriteOutcome:
            db = self._db
            outcome = WriteOutcome(accepted=[], rejected=[])
            with _transaction(db):
                for row in rows:
                    stored = db.execute(sql.FENCED_UPSERT, row).rowcount == 1
                    (outcome.accepted if stored else outcome.rejected).append(row[0])
            return outcome

        if not rows:
            return WriteOutcome(accepted=[], rejected=[])
        return await self._run(write)

    async def read_checkpoint(self, stream_id: str) -> Checkpoint | None:
        return (await self.read_checkpoints([stream_id])).get(stream_id)

    async def read_checkpoints(self, stream_ids: Sequence[str]) -> dict[str, Checkpoint]:
        ids = list(dict.fromkeys(check_stream_id(s) for s in stream_ids))

        def read() -> list[tuple[Any, ...]]:
            rows: list[tuple[Any, ...]] = []
            for start in range(0, len(ids), sql.IN_CHUNK):
                chunk = ids[start : start + sql.IN_CHUNK]
                rows.extend(self._db.execute(sql.select_checkpoints(len(chunk)), chunk).fetchall())
            return rows

        if not ids:
            return {}
        return {row[0]: stored_checkpoint(*row) for row in await self._run(read)}

    async def delete_stream(self, stream_id: str, epoch: int) -> bool:
        check_stream_id(stream_id)
        check_counter("epoch", epoch)

        def delete() -> bool:
            db = self._db
            with _transaction(db):
                row = db.execute(sql.SELECT_EPOCH, (stream_id,)).fetchone()
                if row is not None and row[0] > epoch:
                    return False
                db.execute(sql.TOMBSTONE, (stream_id, epoch))
                db.execute(sql.DELETE_LOG, (stream_id,))
            return True

        return await self._run(delete)

    async def list_streams(self, prefix: str, limit: int, cursor: str | None) -> tuple[list[str], str | None]:
        check_limit(limit)
        query, args = sql.list_streams_query(prefix, limit, cursor)

        def page() -> list[str]:
            return [row[0] for row in self._db.execute(query, args).fetchall()]

        return split_page(await self._run(page), limit)

    async def count_streams(self) -> int:
        def count() -> int:
            row = self._db.execute(sql.COUNT_STREAMS).fetchone()
            return int(row[0])

        return await self._run(count)

    # -- durability log --------------------------------------------------------------------------

    async def append_log(self, entries: Sequence[LogEntry]) -> list[str]:
        rows = [(e.stream_id, e.payload) for e in entries]

        def append() -> list[str]:
            db = self._db
            with _transaction(db):
                # One statement for the batch. Inside BEGIN IMMEDIATE nobody else inserts, and
                # AUTOINCREMENT gives each row the next seq, so the batch holds consecutive seqs.
                db.executemany(sql.APPEND_LOG, rows)
                last = int(db.execute(sql.LAST_ROWID).fetchone()[0])
            return [str(seq) for seq in range(last - len(rows) + 1, last + 1)]

        if not rows:
            return []
        return await self._run(append)

    async def read_log(self, stream_id: str, after: str) -> list[tuple[str, bytes]]:
        check_stream_id(stream_id)
        seq = _parse_position(after)

        def read() -> list[tuple[str, bytes]]:
            cur = self._db.execute(sql.READ_LOG, (stream_id, seq))
            return [(str(s), bytes(p)) for s, p in cur.fetchall()]

        return await self._run(read)

    async def trim_log(self, stream_id: str, upto: str) -> None:
        check_stream_id(stream_id)
        seq = _parse_position(upto)

        def trim() -> None:
            db = self._db
            with _transaction(db):
                db.execute(sql.TRIM_LOG, (stream_id, seq))

        await self._run(trim)

    async def read_logs(self, after: Mapping[str, str]) -> dict[str, list[tuple[str, bytes]]]:
        wanted = [(check_stream_id(s), _parse_position(a)) for s, a in after.items()]

        def read() -> dict[str, list[tuple[str, bytes]]]:
            out: dict[str, list[tuple[str, bytes]]] = {s: [] for s, _ in wanted}
            for start in range(0, len(wanted), sql.IN_CHUNK):
                chunk = dict(wanted[start : start + sql.IN_CHUNK])
                cur = self._db.execute(sql.select_logs(len(chunk)), list(chunk))
                for stream_id, seq, payload in cur.fetchall():
                    if seq > chunk[stream_id]:
                        out[stream_id].append((str(seq), bytes(payload)))
            return out

        if not wanted:
            return {}
        return await self._run(read)

    async def trim_logs(self, upto: Mapping[str, str]) -> None:
        rows = [(check_stream_id(s), _parse_position(u)) for s, u in upto.items()]

        def trim() -> None:
            db = self._db
            with _transaction(db):
                db.executemany(sql.TRIM_LOG, rows)

        if rows:
            await self._run(trim)

    async def log_length(self) -> int:
        def count() -> int:
            return int(self._db.execute(sql.COUNT_LOG).fetchone()[0])

        return await self._run(count)

    # -- batch log -------------------------------------------------------------------------------

    async def append_batches(self, epoch: int, payloads: Sequence[bytes]) -> list[str]:
        check_counter("epoch", epoch)
        rows = [(epoch, p) for p in payloads]

        def append() -> list[str]:
            db = self._db
            with _transaction(db):  # consecutive seqs, as in append_log
                db.executemany(sql.APPEND_BATCH, rows)
                last = int(db.execute(sql.LAST_ROWID).fetchone()[0])
            return [f"b{seq}" for seq in range(last - len(rows) + 1, last + 1)]

        if not rows:
            return []
        return await self._run(append)

    async def read_batches(self, after: str) -> list[tuple[str, int, bytes]]:
        seq = _parse_batch_position(after)

        def read() -> list[tuple[str, int, bytes]]:
            cur = self._db.execute(sql.READ_BATCHES, (seq,))
            return [(f"b{s}", int(e), bytes(p)) for s, e, p in cur.fetchall()]

        return await self._run(read)

    async def trim_batches(self, epoch: int, upto: str) -> None:
        check_counter("epoch", epoch)
        seq = _parse_batch_position(upto)

        def trim() -> None:
            db = self._db
            with _transaction(db):
                db.execute(sql.TRIM_BATCHES, (epoch, seq))

        await self._run(trim)

    async def delete_batches(self, positions: Sequence[str]) -> None:
        rows = [(_parse_batch_position(p),) for p in positions]

        def delete() -> None:
            db = self._db
            with _transaction(db):
                db.executemany(sql.DELETE_BATCH, rows)

        if rows:
            await self._run(delete)

    async def legacy_log_streams(self) -> list[str]:
        def read() -> list[str]:
            return [str(row[0]) for row in self._db.execute(sql.LEGACY_LOG_STREAMS).fetchall()]

        return await self._run(read)

    # -- records ---------------------------------------------------------------------------------

    async def put_record(self, kind: str, name: str, value: dict[str, Any]) -> None:
        check_record_kind(kind)
        check_record_name(name)
        text = dumps_record(value).decode()

        def put() -> None:
            db = self._db
            with _transaction(db):
                db.execute(sql.PUT_RECORD, (kind, name, text))

        await self._run(put)

    async def delete_record(self, kind: str, name: str) -> None:
        check_record_kind(kind)
        check_record_name(name)

        def delete() -> None:
            db = self._db
            with _transaction(db):
                db.execute(sql.DELETE_RECORD, (kind, name))

        await self._run(delete)

    async def list_records(self, kind: str) -> dict[str, dict[str, Any]]:
        check_record_kind(kind)

        def list_() -> list[tuple[str, str]]:
            cur = self._db.execute(sql.SELECT_RECORDS, (kind,))
            return [(str(n), str(v)) for n, v in cur.fetchall()]

        return {name: loads_object(text) for name, text in await self._run(list_)}


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error (autocommit connection)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _parse_position(position: str) -> int:
    """SQLite positions are decimal log seqs; "" means before the first entry."""
    if position == "":
        return 0
    if not isinstance(position, str) or not position.isascii() or not position.isdecimal():
        raise ValueError(f"Invalid log position: {position!r}")
    return int(position)


def _parse_batch_position(position: str) -> int:
    """Batch-log positions are ``b<seq>``; "" means before the first entry."""
    if position == "":
        return 0
    if not isinstance(position, str) or not position.startswith("b"):
        raise ValueError(f"Invalid batch log position: {position!r}")
    return _parse_position(position[1:])
