"""The store's health, and the one place where a store failure becomes the service's 503.

Every store call in durability runs inside `StoreHealth.store_errors`, so `StoreUnavailable` never leaves
this package: callers see `Unavailable` (503 with ``Retry-After``) and ``trackin_store_up`` drops to 0.
Background work (the checkpoint loop, start and stop) catches `Unavailable` and retries or logs instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from trackin.service.errors import Unavailable
from trackin.service.metrics import Metrics
from trackin.service.store import StoreUnavailable

__all__ = ["StoreHealth"]


class StoreHealth:
    """Whether the store answered, as ``trackin_store_up`` shows it.

    It goes down with any failed call and up again with a call that proves the store is back: a connect,
    an accepted checkpoint write, a readiness ping. An ordinary call succeeding is not enough proof,
    because ``store_errors`` may wrap code that did not reach the store at all.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.up = False

    def mark(self, up: bool, *, log_entries: int | None = None) -> None:
        self.up = up
        self._metrics.set_store(up=up, log_entries=log_entries)

    @contextlib.contextmanager
    def store_errors(self, what: str = "store unavailable") -> Iterator[None]:
        """Run store calls; `StoreUnavailable` marks the store down and becomes ``Unavailable("what: …")``."""
        try:
            yield
        except StoreUnavailable as exc:
            self.mark(False)
            raise Unavailable(f"{what}: {exc}", retry_after=1) from None
