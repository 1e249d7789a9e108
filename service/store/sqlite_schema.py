"""The SQLite store's tables and every SQL statement it runs, kept apart from the threading around them.

Reading the schema and the statements together shows what each query can use: the checkpoint
primary key for one stream's row, ``checkpoints_live`` (the live ids alone) for paging by prefix and
counting without reading the rows' blobs, ``log_stream_seq`` for one stream's log in order. Fencing is in
the WHERE of `FENCED_UPSERT`, so the check and the write are one statement.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from trackin.service.store.base import prefix_upper_bound

__all__ = [
    "ACQUIRE_EPOCH",
    "APPEND_BATCH",
    "APPEND_LOG",
    "COUNT_LOG",
    "COUNT_STREAMS",
    "DELETE_BATCH",
    "DELETE_LOG",
    "DELETE_RECORD",
    "FENCED_UPSERT",
    "IN_CHUNK",
    "LAST_ROWID",
    "LEGACY_LOG_STREAMS",
    "PING",
    "PUT_RECORD",
    "READ_BATCHES",
    "READ_LOG",
    "SCHEMA_VERSION",
    "SELECT_EPOCH",
    "SELECT_RECORDS",
    "TOMBSTONE",
    "TRIM_BATCHES",
    "TRIM_LOG",
    "create_schema",
    "list_streams_query",
    "select_checkpoints",
    "select_logs",
    "set_pragmas",
]

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    stream_id    TEXT PRIMARY KEY,
    epoch        INTEGER NOT NULL,
    step         INTEGER NOT NULL,
    log_position TEXT NOT NULL,
    meta         TEXT NOT NULL,
    tensors      BLOB NOT NULL,
    deleted      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS checkpoints_live ON checkpoints (stream_id) WHERE deleted = 0;
CREATE TABLE IF NOT EXISTS log (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id TEXT NOT NULL,
    payload   BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS log_stream_seq ON log (stream_id, seq);
CREATE TABLE IF NOT EXISTS batches (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    epoch   INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS epochs (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    kind  TEXT NOT NULL,
    name  TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (kind, name)
);
"""

IN_CHUNK = 500
"""Ids per ``IN (...)`` query: well under SQLite's bound-parameter limit."""

PING = "SELECT 1"

ACQUIRE_EPOCH = (
    "INSERT INTO epochs (id, value) VALUES (1, 1) "
    "ON CONFLICT (id) DO UPDATE SET value = value + 1 RETURNING value"
)

# Fencing lives in the WHERE of the upsert, so check and write are one statement; rowcount 0 = refused.
FENCED_UPSERT = """
INSERT INTO checkpoints (stream_id, epoch, step, log_position, meta, tensors, deleted)
VALUES (?, ?, ?, ?, ?, ?, 0)
ON CONFLICT (stream_id) DO UPDATE SET
    epoch = excluded.epoch, step = excluded.step, log_position = excluded.log_position,
    meta = excluded.meta, tensors = excluded.tensors, deleted = 0
WHERE excluded.epoch > checkpoints.epoch
   OR (excluded.epoch = checkpoints.epoch
       AND (excluded.step > checkpoints.step OR checkpoints.deleted = 1))
"""

_SELECT_CHECKPOINTS = """
SELECT stream_id, epoch, step, log_position, meta, tensors FROM checkpoints
WHERE deleted = 0 AND stream_id IN ({marks})
"""

SELECT_EPOCH = "SELECT epoch FROM checkpoints WHERE stream_id = ?"
TOMBSTONE = (
    "INSERT OR REPLACE INTO checkpoints "
    "(stream_id, epoch, step, log_position, meta, tensors, deleted) "
    "VALUES (?, ?, 0, '', '{}', x'', 1)"
)
COUNT_STREAMS = "SELECT COUNT(*) FROM checkpoints WHERE deleted = 0"

APPEND_LOG = "INSERT INTO log (stream_id, payload) VALUES (?, ?)"
LAST_ROWID = "SELECT last_insert_rowid()"
READ_LOG = "SELECT seq, payload FROM log WHERE stream_id = ? AND seq > ? ORDER BY seq"
TRIM_LOG = "DELETE FROM log WHERE stream_id = ? AND seq <= ?"
DELETE_LOG = "DELETE FROM log WHERE stream_id = ?"
COUNT_LOG = "SELECT (SELECT COUNT(*) FROM log) + (SELECT COUNT(*) FROM batches)"
LEGACY_LOG_STREAMS = "SELECT DISTINCT stream_id FROM log"

APPEND_BATCH = "INSERT INTO batches (epoch, payload) VALUES (?, ?)"
READ_BATCHES = "SELECT seq, epoch, payload FROM batches WHERE seq > ? ORDER BY seq"
TRIM_BATCHES = "DELETE FROM batches WHERE epoch = ? AND seq <= ?"
DELETE_BATCH = "DELETE FROM batches WHERE seq = ?"

PUT_RECORD = "INSERT OR REPLACE INTO records (kind, name, value) VALUES (?, ?, ?)"
DELETE_RECORD = "DELETE FROM records WHERE kind = ? AND name = ?"
SELECT_RECORDS = "SELECT name, value FROM records WHERE kind = ? ORDER BY name"


PAGE_SIZE = 16384
"""Bytes per page of a new database (SQLite's default is 4096). The log's entries are tens of kB and a
checkpoint a few: with 16 kB pages an append costs a quarter less CPU and a page of checkpoints a third
less (fewer overflow pages, fewer WAL frames). SQLite fixes the size when the file is created (in WAL
mode for good), so a database made with 4 kB pages keeps them."""


def set_pragmas(db: sqlite3.Connection, synchronous: str) -> None:
    """WAL and the durability level; per connection, and outside any transaction."""
    db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # a no-op unless the file is new
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")


def create_schema(db: sqlite3.Connection) -> None:
    """Create what is missing and stamp the version; run inside the caller's transaction."""
    # executescript would COMMIT our open transaction, so run the statements one by one.
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def select_checkpoints(count: int) -> str:
    """Live checkpoints of ``count`` ids (at most `IN_CHUNK`)."""
    return _SELECT_CHECKPOINTS.format(marks=_marks(count))


def select_logs(count: int) -> str:
    """All log entries of ``count`` streams (at most `IN_CHUNK`), in seq order."""
    return f"SELECT stream_id, seq, payload FROM log WHERE stream_id IN ({_marks(count)}) ORDER BY seq"


def list_streams_query(prefix: str, limit: int, cursor: str | None) -> tuple[str, list[Any]]:
    """SQL and arguments for one `Store.list_streams` page, plus one row that says whether more exist."""
    sql = "SELECT stream_id FROM checkpoints WHERE deleted = 0 AND stream_id >= ?"
    args: list[Any] = [prefix]
    upper = prefix_upper_bound(prefix)
    if upper is not None:
        sql += " AND stream_id < ?"
        args.append(upper)
    if cursor is not None:
        sql += " AND stream_id > ?"
        args.append(cursor)
    sql += " ORDER BY stream_id LIMIT ?"
    args.append(limit + 1)
    return sql, args


def _marks(count: int) -> str:
    return ",".join("?" * count)
