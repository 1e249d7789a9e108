"""What the registry needs from durability, and the stand-in used when state is kept in memory only.

The registry depends on this interface, never on `trackin.service.durability` (which depends on the
domain), so the module graph has no cycle and the registry can be tested with either implementation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, Protocol

from trackin.service.domain.catalog import StreamRecord, Template

__all__ = ["Hold", "InMemory", "Persistence"]


class Hold(Protocol):
    """Streams kept resident (not evicted) while the ``async with`` block runs, and after `until` until
    the given future is done."""

    async def __aenter__(self) -> Hold: ...
    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None: ...
    def until(self, done: asyncio.Future[Any]) -> None: ...


class Persistence(Protocol):
    """Storing, restoring and evicting streams, and storing templates
    (`trackin.service.durability.Durability` implements it; every call may raise ``Unavailable``)."""

    async def restore(self, stream_id: str) -> StreamRecord | None:
        """Bring a stored stream back into memory; its record, or None if it was never stored."""
        ...

    async def prefetch(self, stream_ids: Iterable[str]) -> None:
        """Restore many stored streams in one go (best effort: `restore` answers for each later)."""
        ...

    def all_resident(self) -> bool:
        """Every stored stream is resident as far as this process knows, so a request's prefetch would
        find nothing (a hint: if it is wrong, `restore` still brings each stream back)."""
        ...

    def hold(self, stream_ids: Iterable[str]) -> Hold:
        """Keep these streams resident while the caller uses them."""
        ...

    async def created(self, stream_id: str) -> None:
        """Make a new stream durable; raising means it was not created."""
        ...

    async def created_many(self, stream_ids: Sequence[str]) -> None:
        """Make many new streams durable in one store write; raising means none was created."""
        ...

    async def stored_among(self, stream_ids: Sequence[str]) -> set[str]:
        """Those of ``stream_ids`` the store holds (a few reads for many ids)."""
        ...

    async def forget(self, stream_id: str) -> None:
        """Delete a stream's stored state."""
        ...

    async def stored_ids(self, prefix: str, limit: int, cursor: str | None) -> tuple[list[str], str | None]:
        """Stored stream ids starting with ``prefix``, a page after ``cursor``."""
        ...

    async def save_template(self, template: Template) -> None:
        """Store a template (created or replaced)."""
        ...

    async def delete_template(self, name: str) -> None:
        """Delete a stored template."""
        ...


class _NoHold:
    async def __aenter__(self) -> _NoHold:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def until(self, done: asyncio.Future[Any]) -> None:
        return None


class InMemory:
    """No store (``store = "memory"``): every stream is resident, nothing is stored or restored."""

    _HOLD = _NoHold()

    async def restore(self, stream_id: str) -> StreamRecord | None:
        return None

    async def prefetch(self, stream_ids: Iterable[str]) -> None:
        return None

    def all_resident(self) -> bool:
        return True

    def hold(self, stream_ids: Iterable[str]) -> Hold:
        return self._HOLD

    async def created(self, stream_id: str) -> None:
        return None

    async def created_many(self, stream_ids: Sequence[str]) -> None:
        return None

    async def stored_among(self, stream_ids: Sequence[str]) -> set[str]:
        return set()

    async def forget(self, stream_id: str) -> None:
        return None

    async def stored_ids(self, prefix: str, limit: int, cursor: str | None) -> tuple[list[str], str | None]:
        return [], None

    async def save_template(self, template: Template) -> None:
        return None

    async def delete_template(self, name: str) -> None:
        return None
