"""Checkpoints and the durability log, wired between the registry, the scheduler and a store."""

from __future__ import annotations

from typing import Any

from .settings import Settings

__all__ = ["open_persistence"]


async def open_persistence(settings: Settings, state: Any) -> Any:
    """The persistence layer for the configured store, or None when state is kept in memory only."""
    return None
