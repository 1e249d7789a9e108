"""Per resident stream: observations applied, the count last checkpointed, the last log position, recency.

The parts of durability share these facts (the log extends positions, the checkpointer saves counts,
residency evicts by recency, the restorer sets all of them), so one object owns them and the parts go
through its methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping

from trackin.models.engine import ItemResult
from trackin.service.domain.ingest import IngestBatch
from trackin.service.store import batch_position_key

__all__ = ["Ledger"]


class Ledger:
    """Bookkeeping of resident streams, and the checkpoint loop's wake-up call.

    A stream's count is the fencing step its checkpoints carry; it has changed since its last checkpoint
    while the count differs from the saved one. The changed streams are also kept as a set, so the
    checkpoint loop's passes (one per nudge: each creation; and every ``POLL_SECONDS``) cost what changed,
    not what is resident: scanning every resident stream per pass made creating N streams O(N^2) (320/s
    falling to 46/s by 20,000 streams on SQLite). `applied` is a scheduler hook: it runs right after each
    engine call and before any later engine job (such as a checkpoint export), so counts always match the
    engine state an export sees. It runs on the event loop once per engine batch and wakes nothing: counts,
    changed and touched streams are updated in C (no Python per stream unless ``by_recency``), and which
    touched streams fell ``every_steps`` behind is worked out when `due_streams` is asked (by the next
    pass, within ``POLL_SECONDS``), once per stream however many batches touched it meanwhile. (A pass per
    batch cost the event loop a Python loop over each batch's streams and, whenever one fell due, a
    checkpoint export that drained the engine's pipeline: about 240 of each per second under
    ``bench.checkpoint``'s load.)

    Args:
        every_steps: observations since its last checkpoint that make a stream due (`due_streams`).
        by_recency: keep `recent` in order of last use (eviction needs it: ``max_resident_streams``);
            without, `recent` is the resident streams in no useful order, and a batch skips that update.
    """

    def __init__(self, every_steps: int, *, by_recency: bool = True) -> None:
        self.every_steps = every_steps
        self.by_recency = by_recency
        self._counts: Counter[str] = Counter()
        self._saved: dict[str, int] = {}  # count at the last accepted checkpoint
        self._positions: dict[str, str] = {}  # last log position appended (or restored) per stream
        self._recent: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self._changed: dict[str, None] = {}  # streams whose count differs from the saved one, as a set
        self._due: dict[str, None] = {}  # streams at least ``every_steps`` behind their checkpoint, as a set
        self._touched: dict[str, None] = {}  # streams applied to since `_due` was last brought up to date
        self._saved_positions: dict[str, str] = {}  # log position of the last accepted checkpoint
        self._wake = asyncio.Event()
        self.head = ""
        """Position of this process's last batch-log append ("" before the first)."""
        self.applied_head = ""
        """A batch-log position every entry up to which was applied when last read (set by the
        checkpointer's export, on the engine thread in queue order)."""

    # ----- changes ----------------------------------------------------------------------------------------

    def applied(self, batches: list[IngestBatch], results: list[list[ItemResult]], seconds: float) -> None:
        """Count each applied observation and refresh recency (the scheduler's ``after_apply`` hook)."""
        del results, seconds
        self._counts.update(itertools.chain.from_iterable(b.stream_ids for b in batches))  # counted in C
        arrived = dict.fromkeys(itertools.chain.from_iterable(b.streams for b in batches))
        self._changed.update(arrived)
        self._touched.update(arrived)
        if self.by_recency:  # in order of first arrival, after the streams used less recently
            recent = self._recent
            for stream_id in arrived:
                recent[stream_id] = None
                recent.move_to_end(stream_id)

    def started(self, stream_id: str) -> None:
        """A new stream: nothing applied, saved or logged yet."""
        self._counts[stream_id] = 0
        self._saved.pop(stream_id, None)
        self._saved_positions.pop(stream_id, None)
        # A new stream starts at the log's head: entries of an earlier stream of that id (deleted) lie at
        # or before it, so no restore takes them for this one's.
        if self.head:
            self._positions[stream_id] = self.head
        else:
            self._positions.pop(stream_id, None)
        self._recent[stream_id] = None
        self._changed[stream_id] = None
        self._due.pop(stream_id, None)
        self._wake.set()

    def loaded(self, stream_id: str, *, count: int, saved: int, head: str, saved_position: str = "") -> None:
        """A stream restored from a checkpoint saved at ``saved`` (log position ``saved_position``) plus log
        entries up to ``head``."""
        self._counts[stream_id] = count
        self._saved[stream_id] = saved
        self._saved_positions[stream_id] = saved_position
        if head:
            self._positions[stream_id] = head  # the base of this process's next append
        self._recent[stream_id] = None
        self._recent.move_to_end(stream_id)
        self._track(stream_id)
        self._wake.set()

    def logged(self, stream_id: str, position: str) -> None:
        self._positions[stream_id] = position

    def logged_many(self, stream_ids: Iterable[str], position: str) -> None:
        """The streams' observations are in the batch-log entry at ``position`` (in C: no loop here)."""
        self._positions.update(zip(stream_ids, itertools.repeat(position)))
        self.head = position

    def checkpointed(self, stream_id: str, count: int, position: str | None = None) -> None:
        self._saved[stream_id] = count
        if position is not None:
            self._saved_positions[stream_id] = position
        self._track(stream_id)

    def trim_horizon(self) -> str:
        """The last batch-log position every resident stream's checkpoint covers, as far as this process
        wrote the log: the applied head, or the oldest checkpoint position of a stream changed since."""
        horizon, key = self.applied_head, batch_position_key(self.applied_head)
        saved = self._saved_positions
        for stream_id in self._changed:
            position = saved.get(stream_id, "")
            mine = batch_position_key(position)
            if mine < key:
                horizon, key = position, mine
        return horizon

    def _track(self, stream_id: str) -> None:
        if self.changed(stream_id):
            self._changed[stream_id] = None
        else:
            self._changed.pop(stream_id, None)
        if self._counts.get(stream_id, 0) - self._saved.get(stream_id, 0) >= self.every_steps:
            self._due[stream_id] = None
        else:
            self._due.pop(stream_id, None)

    def forget(self, stream_id: str) -> None:
        """A stream deleted or dropped from memory: nothing is known about it any more."""
        tables = (self._counts, self._saved, self._positions, self._recent, self._changed, self._due)
        for table in (*tables, self._saved_positions, self._touched):
            table.pop(stream_id, None)

    # ----- reads ------------------------------------------------------------------------------------------

    def count(self, stream_id: str) -> int:
        return self._counts.get(stream_id, 0)

    def position(self, stream_id: str) -> str:
        """The last log position of the stream's state ("" = its start, or nothing logged)."""
        return self._positions.get(stream_id, "")

    def positions(self) -> Mapping[str, str]:
        return self._positions

    def clean(self, stream_id: str) -> bool:
        """Checkpointed with every observation it applied (never for a stream not checkpointed yet)."""
        return self._counts.get(stream_id, 0) == self._saved.get(stream_id)

    def changed(self, stream_id: str) -> bool:
        """Not checkpointed with every observation it applied (always for a stream not checkpointed yet)."""
        return self._counts.get(stream_id, 0) != self._saved.get(stream_id, -1)

    def recent(self) -> list[str]:
        """Resident streams, least recently used first (``by_recency``; else in no particular order)."""
        return list(self._recent) if self.by_recency else list(self._counts)

    def changed_streams(self) -> list[str]:
        return list(self._changed)

    def due_streams(self) -> list[str]:
        """Streams with at least ``every_steps`` observations since their last checkpoint. Kept as streams
        are touched, so a pass costs the streams applied to since the last one, not every stream changed
        since the last full pass (a scan of all of them per pass: O(streams) each time)."""
        counts, saved, due, every = self._counts, self._saved, self._due, self.every_steps
        for stream_id in self._touched:
            if counts[stream_id] - saved.get(stream_id, 0) >= every:
                due[stream_id] = None
        self._touched.clear()
        return list(due)

    # ----- the checkpoint loop's cue ----------------------------------------------------------------------

    def nudge(self) -> None:
        """Wake the checkpoint loop now (something changed that it may act on)."""
        self._wake.set()

    async def wait(self, timeout: float) -> None:
        """Until the next nudge or ``timeout`` seconds, whichever comes first."""
        # asyncio.timeout, not wait_for: on 3.11 a wait_for whose event is set just as the task is cancelled
        # returns and drops the cancellation, and the checkpoint loop then never stops.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        self._wake.clear()
