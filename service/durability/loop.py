"""The checkpoint loop: background passes that keep the store current, and the last pass at shutdown."""

from __future__ import annotations

import asyncio
import logging
import time

from trackin.models.engine import Engine
from trackin.service.durability.checkpointer import Checkpointer
from trackin.service.durability.connection import Connection
from trackin.service.durability.health import StoreHealth
from trackin.service.durability.ledger import Ledger
from trackin.service.durability.log import DurabilityLog
from trackin.service.durability.residency import Residency
from trackin.service.durability.restorer import Restorer
from trackin.service.errors import Unavailable
from trackin.service.settings import Settings
from trackin.service.tasks import stop_task

__all__ = ["CheckpointLoop"]

log = logging.getLogger("trackin.durability")

POLL_SECONDS = 0.2
"""A pass runs at least this often, and at once when the ledger is nudged."""
MAX_BACKOFF_SECONDS = 1.0
"""Longest wait between failed passes. A returning store is noticed within it, so suspect streams settle
and ingestion resumes about a second after the store does (a longer backoff kept ingestion refused, and
readiness false, for up to the whole backoff). A failed pass costs one refused or timed-out store call."""


class CheckpointLoop:
    """Runs passes in the background; each pass:

    - connects if the store was down (and, with ``restore_eagerly``, restores every stored stream once);
    - checkpoints streams ``checkpoint_every_steps`` observations behind, and every changed stream each
      ``checkpoint_interval_seconds`` (then refreshes the log-length gauge);
    - settles suspect streams (see `DurabilityLog`);
    - evicts streams beyond the residency limit.

    While the store is down, passes back off (0.5 s, then ``MAX_BACKOFF_SECONDS``) and everything resumes
    when it answers again.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        connection: Connection,
        ledger: Ledger,
        checkpointer: Checkpointer,
        log: DurabilityLog,
        residency: Residency,
        restorer: Restorer,
        health: StoreHealth,
    ) -> None:
        self._interval = settings.checkpoint_interval_seconds
        self._log_mode = settings.durability == "log"
        self._restore_pending = settings.restore_eagerly
        self._engine = engine
        self._connection = connection
        self._ledger = ledger
        self._checkpointer = checkpointer
        self._log = log
        self._residency = residency
        self._restorer = restorer
        self._health = health
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        """Connect (and restore eagerly) now if the store answers, then run passes in the background."""
        try:
            await self._prepare()
        except Unavailable as exc:
            log.warning("store unavailable at start (%s); retrying in the background", exc)
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="trackin-checkpoints")

    async def stop(self) -> None:
        """Stop the passes, then write every changed stream and settle suspects (the SIGTERM path).

        The flag ends the passes even if the cancellation is lost in a store call (`stop_task`): the
        loop sees it at the top of its next pass, and the nudge makes that next pass come at once.
        """
        self._stopping = True
        self._ledger.nudge()
        await stop_task(self._task)
        if not self._connection.connected:
            return
        try:
            await self._checkpointer.checkpoint(self._ledger.recent())
            await self.settle()
            if self._log_mode:
                await self._log.trim()
        except Unavailable:
            log.error("store unavailable at shutdown: changes since the last checkpoint stay in the log")

    async def settle(self) -> None:
        """Drop log entries that failed appends may have left behind, so they are never replayed.

        A 503 promised the client that nothing was applied. An append whose outcome was unknown may still
        be in the log; replaying it after a crash would apply an observation the client was told was
        refused (and will likely send again). So the entries this process wrote since the failure and
        never had acknowledged are deleted (`DurabilityLog.drop_orphans`); new batches for the suspect
        streams wait (503) until this is done.
        """
        if self._log.suspects():
            await self._log.drop_orphans()

    @property
    def settling(self) -> bool:
        """Some stream takes no batch until its log is settled (readiness waits for it)."""
        return bool(self._log.suspects())

    @property
    def restored(self) -> bool:
        """The eager restore is done (or was not asked for): readiness waits for it."""
        return not self._restore_pending

    async def _prepare(self) -> None:
        await self._connection.require()
        if self._log_mode:
            await self._restorer.adopt()
        if self._restore_pending:
            await self._restorer.restore_all()
            self._restore_pending = False

    async def _run(self) -> None:
        backoff = 0.5
        last_full = time.monotonic()
        while not self._stopping:
            await self._ledger.wait(POLL_SECONDS)
            if self._stopping:
                return
            try:
                await self._prepare()
                full = time.monotonic() - last_full >= self._interval
                ledger = self._ledger
                due = ledger.changed_streams() if full else ledger.due_streams()
                if due:
                    await self._checkpointer.checkpoint(due)
                await self.settle()
                if self._log_mode and due:  # only a checkpoint moves the horizon
                    await self._log.trim()
                if full:
                    last_full = time.monotonic()
                    if self._log_mode:
                        self._health.mark(True, log_entries=await self._log.length())
                await self._residency.evict()
                backoff = 0.5
            except Unavailable as exc:
                log.warning("checkpoint pass failed (%s); retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            except Exception:
                log.exception("checkpoint pass failed")
                await asyncio.sleep(backoff)
