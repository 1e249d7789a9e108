"""Where trackin keeps checkpoints, the durability log, epochs and templates.

`open_store` picks the backend from one URL setting: Redis when several servers share state, SQLite
(the default) for a single server with nothing else to run. Both implement `Store`; see
`service.store.base` for the contract and the fencing rule, `service.store.codec` for checkpoint bytes.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from trackin.service.store.base import (
    STREAM_ID_PATTERN,
    Checkpoint,
    LogEntry,
    Store,
    WriteOutcome,
    batch_position_key,
)
from trackin.service.store.codec import FORMAT_VERSION, decode_state, encode_state
from trackin.service.store.errors import CorruptCheckpoint, StoreError, StoreUnavailable
from trackin.service.store.keys import DEFAULT_PREFIX
from trackin.service.store.redis_backend import DEFAULT_TIMEOUT, RedisStore
from trackin.service.store.sqlite_backend import SQLiteStore

__all__ = [
    "FORMAT_VERSION",
    "SQLITE_FILENAME",
    "STREAM_ID_PATTERN",
    "Checkpoint",
    "CorruptCheckpoint",
    "LogEntry",
    "RedisStore",
    "SQLiteStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "WriteOutcome",
    "batch_position_key",
    "decode_state",
    "encode_state",
    "open_store",
]

SQLITE_FILENAME = "trackin.sqlite3"

_REDIS_SCHEMES = ("redis", "rediss", "unix")


def open_store(
    url: str | None,
    data_dir: Path,
    *,
    key_prefix: str = DEFAULT_PREFIX,
    timeout: float = DEFAULT_TIMEOUT,
) -> Store:
    """Build (not start) the store a URL names.

    - ``None``, ``""`` or ``sqlite://``: SQLite at ``data_dir / "trackin.sqlite3"``;
    - ``sqlite:///relative/file`` or ``sqlite:////absolute/file`` (SQLAlchemy's convention), with an
      optional ``?synchronous=FULL`` for power-loss durability;
    - ``redis://``, ``rediss://``, ``unix://``: `RedisStore`; ``key_prefix`` and ``timeout`` apply to it.
    """
    if not url:
        return SQLiteStore(Path(data_dir) / SQLITE_FILENAME)
    parts = urlsplit(url)
    if parts.scheme in _REDIS_SCHEMES:
        return RedisStore(url, key_prefix=key_prefix, timeout=timeout)
    if parts.scheme == "sqlite":
        if parts.netloc:
            raise ValueError(f"Invalid SQLite URL {url!r}: use sqlite:///relative or sqlite:////abs")
        path = Path(parts.path[1:]) if parts.path not in ("", "/") else Path(data_dir) / SQLITE_FILENAME
        query = parse_qs(parts.query, strict_parsing=bool(parts.query))
        unknown = set(query) - {"synchronous"}
        if unknown:
            raise ValueError(f"Invalid SQLite URL option(s): {sorted(unknown)}")
        synchronous = query.get("synchronous", ["NORMAL"])[-1].upper()
        if synchronous == "FULL":
            return SQLiteStore(path, synchronous="FULL")
        if synchronous == "NORMAL":
            return SQLiteStore(path, synchronous="NORMAL")
        raise ValueError(f"Invalid synchronous: {synchronous!r} (NORMAL or FULL)")
    raise ValueError(f"Unsupported store URL scheme {parts.scheme!r}: use redis:// or sqlite:///")
