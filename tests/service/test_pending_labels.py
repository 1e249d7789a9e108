"""The pending-label table is bounded in bytes as well as in entries (long ids and wide inputs count)."""

from __future__ import annotations

import numpy as np

from trackin.service.domain.labels import ENTRY_OVERHEAD, PendingLabels


def test_bytes_bound_drops_the_oldest_entries() -> None:
    x = np.zeros(16, dtype=np.float64)
    entry = len("s") + 10 + x.nbytes + ENTRY_OVERHEAD
    table = PendingLabels(ttl_seconds=60, max_entries=1_000, max_bytes=3 * entry)
    for i in range(5):
        table.put("s", f"{i:010d}", x)
    assert len(table) == 3
    assert table.nbytes == 3 * entry
    assert table.peek("s", f"{1:010d}") is None
    assert table.peek("s", f"{4:010d}") is not None


def test_one_huge_request_id_cannot_stay() -> None:
    table = PendingLabels(ttl_seconds=60, max_entries=1_000, max_bytes=10_000)
    table.put("s", "a", np.zeros(4))
    table.put("s", "b" * 20_000, np.zeros(4))
    assert len(table) == 0
    assert table.nbytes == 0


def test_bytes_are_given_back_on_discard_drop_and_replace() -> None:
    table = PendingLabels(ttl_seconds=60, max_entries=1_000, max_bytes=10**9)
    table.put("s", "r1", np.zeros(8))
    table.put("s", "r1", np.zeros(2))  # replaced: counted once, at its new size
    table.put("t", "r2", np.zeros(8))
    assert table.nbytes == (3 + 2 * 8 + ENTRY_OVERHEAD) + (3 + 8 * 8 + ENTRY_OVERHEAD)
    table.discard("s", "r1")
    table.drop_stream("t")
    assert (len(table), table.nbytes) == (0, 0)
