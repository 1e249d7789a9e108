"""The store contract: what trackin keeps outside the process, whatever the backend.

A store holds four things: the latest checkpoint of each stream, the durability log of observations
not yet folded into a checkpoint (the batch log, one entry per engine batch; and the per-stream log that
servers before it wrote, still read after an upgrade), a counter of owner epochs, and a few small JSON
records (templates). Every backend implements `Store` and passes the same contract suite
(``tests/store/test_contract.py``), so the service never branches on which one it has.

Fencing. Each server process takes a fresh epoch from `Store.acquire_epoch` at start and stamps it on
everything it writes. A checkpoint is stored only if ``(epoch, step)`` is lexicographically greater than
the stored one, so a process that lost ownership (an older epoch still running) can never overwrite the
newer owner's state, and a delayed flush can never roll a stream back. `Store.delete_stream` leaves a
tombstone carrying the deleter's epoch: afterwards only writers with an epoch at least as new may
recreate the stream, so a stale process cannot resurrect it.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

__all__ = [
    "MAX_COUNTER",
    "RECORD_KIND_PATTERN",
    "STREAM_ID_PATTERN",
    "Checkpoint",
    "LogEntry",
    "Store",
    "WriteOutcome",
    "batch_position_key",
    "check_counter",
    "check_limit",
    "check_record_kind",
    "check_record_name",
    "check_stream_id",
    "prefix_upper_bound",
]

STREAM_ID_PATTERN = re.compile(r"(?:~[a-z0-9][a-z0-9_-]{0,31}/)?[A-Za-z0-9._:-]{1,128}")
"""The service's stream id alphabet, optionally under a tenant's namespace (``~tenant/id``; the default
tenant's ids have none, so stores written before tenants existed load unchanged); the store enforces it
too, so ids are safe inside key names (neither ``~`` nor ``/`` ends or splits a Redis key)."""

RECORD_KIND_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""Record kinds name a key (Redis) or a column value; a fixed alphabet keeps both unambiguous."""

MAX_COUNTER = 2**53 - 1
"""Largest epoch or step: Redis Lua compares them as doubles, exact only up to 2**53."""


def check_stream_id(stream_id: str) -> str:
    """Return ``stream_id`` or raise ``ValueError``; an id outside the alphabet could forge key names."""
    if not isinstance(stream_id, str) or STREAM_ID_PATTERN.fullmatch(stream_id) is None:
        raise ValueError(f"Invalid stream id: {stream_id!r}")
    return stream_id


def check_record_kind(kind: str) -> str:
    """Return ``kind`` or raise ``ValueError``; kinds become part of key names."""
    if not isinstance(kind, str) or RECORD_KIND_PATTERN.fullmatch(kind) is None:
        raise ValueError(f"Invalid record kind: {kind!r}")
    return kind


def check_record_name(name: str) -> str:
    """Return ``name`` or raise ``ValueError``; any non-empty string is a valid record name."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"Invalid record name: {name!r}")
    return name


def check_counter(name: str, value: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an int epoch or step in ``[0, MAX_COUNTER]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNTER:
        raise ValueError(f"Invalid {name}: {value!r}")


def check_limit(limit: int) -> int:
    """Return a page size or raise ``ValueError``; a zero page would never make progress."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"Invalid limit: {limit!r}")
    return limit


def prefix_upper_bound(prefix: str) -> str | None:
    """Smallest string greater than every string that starts with ``prefix`` (None: no bound).

    Both backends compare ids by code point (SQLite BINARY collation and Redis ZRANGEBYLEX on UTF-8 bytes
    agree with it), so ``prefix <= id < bound`` is exactly "id starts with prefix" and can use the index.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            return "".join(chars) + chr(last + 1 + (0x800 if last + 1 == 0xD800 else 0))
    return None


def batch_position_key(position: str) -> tuple[int, int]:
    """Order key of a batch-log position (``b<seq>`` on SQLite, ``b<ms>-<seq>`` on Redis); every other
    position ("" or a per-stream log's, written before the batch log existed) sorts before them all."""
    if not position.startswith("b"):
        return (-1, -1)
    head, _, tail = position[1:].partition("-")
    return (int(head), int(tail or 0))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One stream's state at one step, as written by the owner with ``epoch``."""

    stream_id: str
    epoch: int
    """Owner epoch of the writing server process (fencing)."""
    step: int
    """The stream's step count at this checkpoint."""
    log_position: str
    """Opaque position of the last log entry this checkpoint includes ("" = none)."""
    meta: dict[str, Any]
    """JSON-able: spec, figures, format version (the codec puts "format" here).

    Stored as JSON, so tuples come back as lists and NaN or infinities as None (orjson's choice).
    """
    tensors: bytes
    """A safetensors blob from `service.store.codec.encode_state`."""

    def __post_init__(self) -> None:
        check_stream_id(self.stream_id)
        check_counter("epoch", self.epoch)
        check_counter("step", self.step)
        if not isinstance(self.log_position, str):
            raise ValueError(f"Invalid log_position: {self.log_position!r}")
        if not isinstance(self.tensors, bytes):
            raise ValueError(f"Invalid tensors: expected bytes, got {type(self.tensors).__name__}")


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One durability-log record: observations the service must be able to replay after a crash."""

    stream_id: str
    payload: bytes
    """Opaque, encoded by the service (one or more observations of this stream)."""

    def __post_init__(self) -> None:
        check_stream_id(self.stream_id)
        if not isinstance(self.payload, bytes):
            raise ValueError(f"Invalid payload: expected bytes, got {type(self.payload).__name__}")


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """Which checkpoints of a batch were stored; a rejection is normal under fencing, not an error."""

    accepted: list[str]
    """Stream ids written, in batch order."""
    rejected: list[str]
    """Stream ids refused as stale (an equal or newer ``(epoch, step)`` or a newer tombstone is stored)."""


class Store(abc.ABC):
    """Checkpoints, durability log, epochs and records behind one async interface.

    Lifecycle: `startup` before any other call, `shutdown` once at the end (or ``async with store``).
    Every method raises `StoreUnavailable` when the backend cannot be reached, and never hangs longer
    than the backend's configured timeout.
    """

    async def __aenter__(self) -> Self:
        await self.startup()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    @abc.abstractmethod
    async def startup(self) -> None:
        """Open connections and create the schema; raises `StoreUnavailable` if the backend is down."""

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Release connections; safe to call twice. Calls after it raise `StoreUnavailable`."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return if the backend answers; raise `StoreUnavailable` otherwise (readiness probe)."""

    @abc.abstractmethod
    async def acquire_epoch(self) -> int:
        """Take a new owner epoch, strictly greater than any taken before by any process on this store."""

    @abc.abstractmethod
    async def write_checkpoints(self, checkpoints: Sequence[Checkpoint]) -> WriteOutcome:
        """Store a batch in one round trip, each one fenced on its own.

        A checkpoint is accepted iff nothing is stored for its stream, or ``(epoch, step)`` is greater
        than the stored pair, or the stored record is a tombstone with an epoch ``<=`` this one (the
        deleting process may recreate the id). Later entries of a batch see earlier ones. After a
        `StoreUnavailable` some of the batch may be stored; retrying reports those as rejected (equal
        step), which the caller can read as "already there".
        """

    @abc.abstractmethod
    async def read_checkpoint(self, stream_id: str) -> Checkpoint | None:
        """The stored checkpoint, or None if there is none or the stream was deleted."""

    @abc.abstractmethod
    async def read_checkpoints(self, stream_ids: Sequence[str]) -> dict[str, Checkpoint]:
        """Batched `read_checkpoint` in one round trip; streams without a checkpoint are left out."""

    @abc.abstractmethod
    async def delete_stream(self, stream_id: str, epoch: int) -> bool:
        """Remove the stream's checkpoint and log, leaving a tombstone at ``epoch``.

        Fenced like writes: refused (returns False, nothing changes) if a record with a newer epoch is
        stored, so a stale process cannot delete a stream a newer owner is serving. Returns True when
        the stream is now deleted, including when nothing was stored.
        """

    @abc.abstractmethod
    async def list_streams(self, prefix: str, limit: int, cursor: str | None) -> tuple[list[str], str | None]:
        """Up to ``limit`` live stream ids starting with ``prefix``, sorted, plus a cursor for the next page.

        The cursor is opaque and None on the last page. Paging is by key, so ids created or deleted
        between pages never make another id appear twice or be skipped.
        """

    @abc.abstractmethod
    async def count_streams(self) -> int:
        """Number of live (checkpointed, not deleted) streams."""

    @abc.abstractmethod
    async def append_log(self, entries: Sequence[LogEntry]) -> list[str]:
        """Durably append entries in one round trip; return their positions in order.

        Call before acknowledging the observations: once this returns they survive a process crash.
        After `StoreUnavailable` the outcome is unknown: the batch may still have been logged, so a
        retried batch can appear twice in `read_log`.
        Positions are opaque strings, increasing per stream and meaningful only with their stream
        (two streams may hold the same position); only the store compares them.
        """

    @abc.abstractmethod
    async def read_log(self, stream_id: str, after: str) -> list[tuple[str, bytes]]:
        """``(position, payload)`` of the stream's entries strictly after ``after`` ("" = all), in order."""

    @abc.abstractmethod
    async def trim_log(self, stream_id: str, upto: str) -> None:
        """Drop the stream's entries at or before ``upto``, once a checkpoint includes them."""

    async def read_logs(self, after: Mapping[str, str]) -> dict[str, list[tuple[str, bytes]]]:
        """Batched `read_log`: ``{stream: entries after after[stream]}`` for every stream asked, in few
        round trips (backends override this loop)."""
        return {stream_id: await self.read_log(stream_id, position) for stream_id, position in after.items()}

    async def trim_logs(self, upto: Mapping[str, str]) -> None:
        """Batched `trim_log` in few round trips (backends override this loop); never one call per stream
        at once, which would need as many connections."""
        for stream_id, position in upto.items():
            await self.trim_log(stream_id, position)

    @abc.abstractmethod
    async def log_length(self) -> int:
        """Total log entries held over all streams, per-stream and batch log (a "log lag" gauge)."""

    # The batch log (group commit): one entry per engine batch, all streams' observations in it. One log
    # per store, each entry tagged with its writer's owner epoch; positions (``b...``) are ordered over
    # the whole log (`batch_position_key`), so entries of several owners sort in the order they were
    # written. The per-stream log above stays readable: it is what servers before the batch log wrote.

    @abc.abstractmethod
    async def append_batches(self, epoch: int, payloads: Sequence[bytes]) -> list[str]:
        """Durably append entries of owner ``epoch`` in one round trip, all or none; their positions.

        Call before acknowledging: once this returns they survive a process crash. After
        `StoreUnavailable` the outcome is unknown (the entries may be there)."""

    @abc.abstractmethod
    async def read_batches(self, after: str) -> list[tuple[str, int, bytes]]:
        """``(position, epoch, payload)`` of every entry after ``after`` ("" = all), in order."""

    @abc.abstractmethod
    async def trim_batches(self, epoch: int, upto: str) -> None:
        """Drop the entries of owner ``epoch`` at or before ``upto`` (other owners' are left alone).

        An owner's entries are those its own store object appended: Redis deletes them by the ids it
        remembers rather than reading the log (one epoch is one process and one store)."""

    @abc.abstractmethod
    async def delete_batches(self, positions: Sequence[str]) -> None:
        """Drop the entries at these positions (missing ones are not an error)."""

    @abc.abstractmethod
    async def legacy_log_streams(self) -> list[str]:
        """Streams whose per-stream log holds entries (written before the batch log existed)."""

    @abc.abstractmethod
    async def put_record(self, kind: str, name: str, value: dict[str, Any]) -> None:
        """Create or replace a small JSON control-plane record."""

    @abc.abstractmethod
    async def delete_record(self, kind: str, name: str) -> None:
        """Remove a record; removing a missing one is not an error."""

    @abc.abstractmethod
    async def list_records(self, kind: str) -> dict[str, dict[str, Any]]:
        """All records of ``kind`` by name."""
