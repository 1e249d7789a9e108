"""How far an owner may trim its partition's log: every message up to the watermark is in the checkpoints.

A stream's stored checkpoint covers the log up to its recorded sequence. A stream no message touched since
that checkpoint (its last message is the one the checkpoint covers) is covered up to everything the owner
has applied, since none of the messages after its checkpoint concern it: an idle stream does not hold the
watermark back. A new owner replays the partition from its stalest checkpoint; JetStream starts an
ordered consumer at the first message still kept when that sequence was trimmed, and the messages trimmed
concerned no stream whose checkpoint is older. So a trimmed log restores exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

__all__ = ["watermark"]


def watermark(
    applied: int, streams: Iterable[str], covered: Mapping[str, int], last_touched: Callable[[str], int]
) -> int | None:
    """The highest sequence such that every message up to it is covered by the checkpoints of the
    partition's ``streams`` (None: a stream has no checkpoint known here, keep everything).

    ``applied``: every message up to it has been queued for the engine; ``covered``: each stream's stored
    checkpoint sequence; ``last_touched``: the sequence of the last message applied to a stream.
    """
    low = applied
    for stream in streams:
        checkpointed = covered.get(stream)
        if checkpointed is None:
            return None
        if last_touched(stream) > checkpointed:
            low = min(low, checkpointed)
    return low
