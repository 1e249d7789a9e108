"""`Store` on Redis: shared state for several servers, with the log in Redis Streams.

The client is wrapped, never subclassed, so the store's surface stays the `Store` contract and a
redis-py upgrade cannot leak new methods into it. Timeouts are short and retries off: a dead Redis
must turn into `StoreUnavailable` (503) within about one timeout, and a blind retry of a
non-idempotent command (XADD, INCR) could log an observation twice.

Fenced writes and deletes are Lua scripts (`service.store.redis_scripts`), so the compare and the write
are one atomic step on the server; a batch of writes is one pipeline of EVALSHA calls, one round trip.
Durability of an acknowledged append is whatever the server's AOF policy gives (``appendfsync always``
for none lost).
"""

from __future__ import annotations

import contextlib
import re
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.typing import EncodableT, FieldT

from trackin.service.store.base import (
    Checkpoint,
    LogEntry,
    Store,
    WriteOutcome,
    batch_position_key,
    check_counter,
    check_limit,
    check_record_kind,
    check_record_name,
    check_stream_id,
    prefix_upper_bound,
)
from trackin.service.store.errors import StoreError, StoreUnavailable
from trackin.service.store.keys import DEFAULT_PREFIX, RedisKeys
from trackin.service.store.redis_replies import (
    checkpoint_from_fields,
    log_entries,
    reply_bytes,
    reply_text,
)
from trackin.service.store.redis_scripts import RedisScripts
from trackin.service.store.rows import dumps_record, split_page

__all__ = ["DEFAULT_TIMEOUT", "RedisStore"]

DEFAULT_TIMEOUT = 2.0
"""Seconds for connect and for each reply; long enough for a busy server, short enough for a 503."""

_POSITION = re.compile(r"(\d+)-(\d+)")
_MAX_SEQ = 2**64 - 1
_BATCH_PAGE = 32  # batch-log entries per XRANGE: each holds a whole engine batch
_PAGE = 1000  # entries per XRANGE / keys per XLEN pipeline, so one reply never grows unbounded


class RedisStore(Store):
    """Store on one Redis server (or a replicated primary); several trackin servers may share it."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"Invalid timeout: {timeout}")
        self.url = url
        self.keys = RedisKeys(key_prefix)
        self.timeout = timeout
        self._where = _redact(url)
        self._client: redis.asyncio.Redis | None = None
        self._scripts: RedisScripts | None = None
        # The batch-log entries this store appended and has not trimmed yet, in id order, as (order
        # key, epoch, id): a trim deletes them by id instead of reading the log. Until the first trim,
        # and after an append or trim that failed, a trim scans the log instead (`_appended_unknown`).
        self._appended: deque[tuple[tuple[int, int], int, str]] = deque()
        self._appended_unknown = True

    def __repr__(self) -> str:
        return f"RedisStore({self._where!r}, key_prefix={self.keys.prefix!r})"

    # -- lifecycle -------------------------------------------------------------------------------

    async def startup(self) -> None:
        if self._client is not None:
            return
        client = redis.asyncio.Redis.from_url(
            self.url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            with self._errors():
                await client.ping()
        except BaseException:
            await client.aclose()
            raise
        self._client = client
        self._scripts = RedisScripts(client, self.keys)

    async def shutdown(self) -> None:
        client, self._client, self._scripts = self._client, None, None
        if client is not None:
            await client.aclose()

    @property
    def _redis(self) -> redis.asyncio.Redis:
        if self._client is None:
            raise StoreUnavailable("Redis store is not started")
        return self._client

    @property
    def _lua(self) -> RedisScripts:
        if self._scripts is None:
            raise StoreUnavailable("Redis store is not started")
        return self._scripts

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Translate redis-py and socket errors into the store's exception tree."""
        try:
            yield
        except (
            redis.exceptions.ConnectionError,  # includes BusyLoadingError (AOF still loading)
            redis.exceptions.TimeoutError,
            redis.exceptions.ReadOnlyError,  # a replica after failover: retry on the new primary
            OSError,  # refused, reset, and asyncio's TimeoutError (an OSError since 3.11)
        ) as exc:
            raise StoreUnavailable(f"Redis at {self._where}: {exc}") from exc
        except redis.exceptions.RedisError as exc:
            raise StoreError(f"Redis at {self._where}: {exc}") from exc

    # -- control ---------------------------------------------------------------------------------

    async def ping(self) -> None:
        with self._errors():
            await self._redis.ping()

    async def acquire_epoch(self) -> int:
        with self._errors():
            return int(await self._redis.incr(self.keys.epoch))

    # -- checkpoints -----------------------------------------------------------------------------

    async def write_checkpoints(self, checkpoints: Sequence[Checkpoint]) -> WriteOutcome:
        if not checkpoints:
            return WriteOutcome(accepted=[], rejected=[])
        with self._errors():
            stored = await self._lua.write_checkpoints(checkpoints)
        outcome = WriteOutcome(accepted=[], rejected=[])
        for c, ok in zip(checkpoints, stored, strict=True):
            (outcome.accepted if ok else outcome.rejected).append(c.stream_id)
        return outcome

    async def read_checkpoint(self, stream_id: str) -> Checkpoint | None:
        return (await self.read_checkpoints([stream_id])).get(stream_id)

    async def read_checkpoints(self, stream_ids: Sequence[str]) -> dict[str, Checkpoint]:
        ids = list(dict.fromkeys(check_stream_id(s) for s in stream_ids))
        if not ids:
            return {}
        replies: list[list[bytes | None]] = []
        with self._errors():
            for start in range(0, len(ids), _PAGE):  # one script call per page: one reply to parse
                replies += await self._lua.read_checkpoints(ids[start : start + _PAGE])
        found: dict[str, Checkpoint] = {}
        for stream_id, fields in zip(ids, replies, strict=True):
            checkpoint = checkpoint_from_fields(stream_id, fields)
            if checkpoint is not None:
                found[stream_id] = checkpoint
        return found

    async def delete_stream(self, stream_id: str, epoch: int) -> bool:
        check_counter("epoch", epoch)
        check_stream_id(stream_id)
        with self._errors():
            return await self._lua.delete_stream(stream_id, epoch)

    async def list_streams(self, prefix: str, limit: int, cursor: str | None) -> tuple[list[str], str | None]:
        check_limit(limit)
        if cursor is not None and cursor >= prefix:
            low = b"(" + cursor.encode()
        else:
            low = b"[" + prefix.encode() if prefix else b"-"
        upper = prefix_upper_bound(prefix)
        high = b"+" if upper is None else b"(" + upper.encode()
        with self._errors():
            raw = await self._redis.zrangebylex(self.keys.stream_index, low, high, 0, limit + 1)
        return split_page([reply_text(item) for item in raw], limit)

    async def count_streams(self) -> int:
        with self._errors():
            return int(await self._redis.zcard(self.keys.stream_index))

    # -- durability log --------------------------------------------------------------------------

    async def append_log(self, entries: Sequence[LogEntry]) -> list[str]:
        if not entries:
            return []
        # One script call: atomic like MULTI/EXEC (the batch is logged whole or not at all), but one
        # command to pack and one reply to parse instead of one per stream, which is most of the cost of
        # an append of a thousand streams' observations.
        with self._errors():
            return await self._lua.append_log(entries)

    async def read_log(self, stream_id: str, after: str) -> list[tuple[str, bytes]]:
        key = self.keys.log(stream_id)
        low = "-" if after == "" else "(" + _check_position(after)
        out: list[tuple[str, bytes]] = []
        with self._errors():
            while True:
                page = await self._redis.xrange(key, min=low, max="+", count=_PAGE) or []
                out.extend(log_entries(page))
                if len(page) < _PAGE:
                    return out
                low = "(" + out[-1][0]

    async def trim_log(self, stream_id: str, upto: str) -> None:
        key = self.keys.log(stream_id)
        if upto == "":
            return
        min_id = _min_id_after(upto)
        with self._errors():
            await self._redis.xtrim(key, minid=min_id, approximate=False)

    async def read_logs(self, after: Mapping[str, str]) -> dict[str, list[tuple[str, bytes]]]:
        lows = {s: "-" if a == "" else "(" + _check_position(a) for s, a in after.items()}
        out: dict[str, list[tuple[str, bytes]]] = {s: [] for s in after}
        with self._errors():
            while lows:
                wanted = list(lows.items())
                more: dict[str, str] = {}
                for start in range(0, len(wanted), _PAGE):  # one script call per page of streams
                    chunk = wanted[start : start + _PAGE]
                    pages = await self._lua.read_logs(chunk, _PAGE)
                    for (stream_id, _), entries in zip(chunk, pages, strict=True):
                        out[stream_id].extend(entries)
                        if len(entries) == _PAGE:
                            more[stream_id] = "(" + entries[-1][0]
                lows = more
        return out

    async def trim_logs(self, upto: Mapping[str, str]) -> None:
        targets = [(s, _min_id_after(u)) for s, u in upto.items() if u != ""]
        with self._errors():
            for start in range(0, len(targets), _PAGE):
                pipe = self._redis.pipeline(transaction=False)
                for stream_id, min_id in targets[start : start + _PAGE]:
                    pipe.xtrim(self.keys.log(stream_id), minid=min_id, approximate=False)
                await pipe.execute()

    async def log_length(self) -> int:
        total = 0
        with self._errors():
            batch: list[bytes] = []
            async for stream_id in self._redis.sscan_iter(self.keys.log_index, count=_PAGE):
                batch.append(stream_id)
                if len(batch) >= _PAGE:
                    total += await self._xlen_sum(batch)
                    batch = []
            total += await self._xlen_sum(batch)
            total += int(await self._redis.xlen(self.keys.batches))
        return total

    # -- batch log -------------------------------------------------------------------------------

    async def append_batches(self, epoch: int, payloads: Sequence[bytes]) -> list[str]:
        check_counter("epoch", epoch)
        if not payloads:
            return []
        # Plain XADDs, not a Lua script: Redis 7 hashes every byte of each script argument when it
        # becomes a Lua string, about 0.3 ms of redis-server CPU per 200 kB entry. Several entries are
        # one MULTI/EXEC (atomic, one AOF write and fsync, one round trip), as the script was.
        fields: list[dict[FieldT, EncodableT]] = [{"e": epoch, "p": payload} for payload in payloads]
        try:
            with self._errors():
                if len(fields) == 1:
                    ids = [reply_text(await self._redis.xadd(self.keys.batches, fields[0]))]
                else:
                    pipe = self._redis.pipeline(transaction=True)
                    for f in fields:
                        pipe.xadd(self.keys.batches, f)
                    ids = [reply_text(r) for r in await pipe.execute()]
        except BaseException:
            self._appended_unknown = True  # it may still land: the next trim scans the log
            raise
        self._appended += ((batch_position_key("b" + i), epoch, i) for i in ids)
        return ["b" + i for i in ids]

    async def read_batches(self, after: str) -> list[tuple[str, int, bytes]]:
        low = "-" if after == "" else "(" + _batch_id(after)
        out: list[tuple[str, int, bytes]] = []
        with self._errors():
            while True:  # small pages: an entry holds a whole batch
                page = await self._redis.xrange(self.keys.batches, min=low, max="+", count=_BATCH_PAGE) or []
                for entry_id, fields in page:
                    if not fields or b"e" not in fields or b"p" not in fields:
                        raise StoreError(f"batch log entry {reply_text(entry_id)} lacks its fields")
                    out.append(("b" + reply_text(entry_id), int(fields[b"e"]), reply_bytes(fields[b"p"])))
                if len(page) < _BATCH_PAGE:
                    return out
                low = "(" + out[-1][0][1:]

    async def trim_batches(self, epoch: int, upto: str) -> None:
        check_counter("epoch", epoch)
        if upto == "":
            return
        last = _batch_id(upto)
        key = batch_position_key(upto)
        mine: list[str] = []
        while self._appended and self._appended[0][0] <= key:
            _, owner, entry_id = self._appended.popleft()
            if owner == epoch:
                mine.append(entry_id)
        try:
            with self._errors():
                if self._appended_unknown:
                    # An append whose outcome is unknown may have landed: scan the log once (the
                    # script reads every entry's payload into Lua, ~0.6 ms per 200 kB entry).
                    self._appended_unknown = False
                    await self._lua.trim_batches(epoch, last)
                else:  # every entry this store wrote is remembered: delete them by id, reading none
                    for start in range(0, len(mine), _PAGE):
                        await self._redis.xdel(self.keys.batches, *mine[start : start + _PAGE])
        except BaseException:
            self._appended_unknown = True  # what was popped is found again by the scan
            raise

    async def delete_batches(self, positions: Sequence[str]) -> None:
        ids = [_batch_id(p) for p in positions]
        with self._errors():
            for start in range(0, len(ids), _PAGE):
                await self._redis.xdel(self.keys.batches, *ids[start : start + _PAGE])

    async def legacy_log_streams(self) -> list[str]:
        found: list[str] = []
        with self._errors():
            members = [m async for m in self._redis.sscan_iter(self.keys.log_index, count=_PAGE)]
            for start in range(0, len(members), _PAGE):
                page = members[start : start + _PAGE]
                pipe = self._redis.pipeline(transaction=False)
                for stream_id in page:
                    pipe.xlen(self.keys.log(reply_text(stream_id)))
                lengths = await pipe.execute()
                empty = [m for m, n in zip(page, lengths, strict=True) if not int(n)]
                found += [reply_text(m) for m, n in zip(page, lengths, strict=True) if int(n)]
                if empty:  # forget streams whose per-stream log is gone, so this gets cheaper
                    await self._redis.srem(self.keys.log_index, *empty)
        return found

    async def _xlen_sum(self, stream_ids: list[bytes]) -> int:
        if not stream_ids:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for stream_id in stream_ids:
            pipe.xlen(self.keys.log(stream_id.decode()))
        return sum(int(n) for n in await pipe.execute())

    # -- records ---------------------------------------------------------------------------------

    async def put_record(self, kind: str, name: str, value: dict[str, Any]) -> None:
        check_record_name(name)
        data = dumps_record(value)
        with self._errors():
            await self._redis.hset(self.keys.records(kind), name, data)

    async def delete_record(self, kind: str, name: str) -> None:
        check_record_name(name)
        with self._errors():
            await self._redis.hdel(self.keys.records(kind), name)

    async def list_records(self, kind: str) -> dict[str, dict[str, Any]]:
        check_record_kind(kind)
        with self._errors():
            raw = await self._redis.hgetall(self.keys.records(kind))
        out: dict[str, dict[str, Any]] = {}
        for name, text in sorted(raw.items()):
            value = orjson.loads(text)
            if not isinstance(value, dict):
                raise StoreError(f"record {kind}/{reply_text(name)!r} is not a JSON object")
            out[reply_text(name)] = value
        return out


def _check_position(position: str) -> str:
    """Redis positions are stream entry ids ``<ms>-<seq>``; anything else is a caller bug."""
    if not isinstance(position, str) or _POSITION.fullmatch(position) is None:
        raise ValueError(f"Invalid log position: {position!r}")
    return position


def _batch_id(position: str) -> str:
    """The stream entry id of a batch-log position ``b<ms>-<seq>``."""
    if not isinstance(position, str) or not position.startswith("b"):
        raise ValueError(f"Invalid batch log position: {position!r}")
    return _check_position(position[1:])


def _min_id_after(position: str) -> str:
    """The stream entry id right after ``position``: XTRIM MINID keeps ids >= its argument."""
    ms, seq = map(int, _POSITION.fullmatch(_check_position(position)).groups())  # type: ignore[union-attr]
    return f"{ms}-{seq + 1}" if seq < _MAX_SEQ else f"{ms + 1}-0"


def _redact(url: str) -> str:
    """The URL for error messages, without a password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))
