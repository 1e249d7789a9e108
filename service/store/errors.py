"""Exceptions raised by the store layer.

One small tree, so the service can map each branch to one HTTP status in one place::

    StoreError                  any store failure the caller did not cause by a bad argument
    ├── StoreUnavailable        backend unreachable, timed out, locked or read-only: retry later (503)
    └── CorruptCheckpoint       a stored checkpoint cannot be decoded; names the stream and the reason

Bad arguments (an invalid stream id, a negative epoch) are plain ``ValueError``: they are bugs in the
caller, not states of the store.
"""

from __future__ import annotations

__all__ = ["CorruptCheckpoint", "StoreError", "StoreUnavailable"]


class StoreError(Exception):
    """Root of every store failure, so callers can catch the layer as a whole."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached right now; the same call may succeed later."""


class CorruptCheckpoint(StoreError):
    """A checkpoint exists but cannot be turned back into state.

    Carries the stream id so an operator can find (and delete or restore) the one bad record instead of
    losing the whole store.
    """

    def __init__(self, stream_id: str, reason: str) -> None:
        super().__init__(f"corrupt checkpoint for stream {stream_id!r}: {reason}")
        self.stream_id = stream_id
        self.reason = reason
