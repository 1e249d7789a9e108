"""Two servers on one store: the one that started last owns it, and the stale one cannot overwrite it.

Each process takes a new owner epoch at start and stamps it on every checkpoint; the store keeps a
checkpoint only if its ``(epoch, step)`` is newer than the stored one. Here server A (epoch 1) keeps
serving a stream after server B (epoch 2) took it over: A's later checkpoints are refused, counted as
``rejected_stale`` and logged, and what the store gives a third server is B's state, never A's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.persistence.conftest import FAMILIES, Api, Backend, Feed, Servers, metric

pytestmark = pytest.mark.timeout(120)

SPEC = FAMILIES["linear"]


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _accepted(api: Api) -> float:
    return metric(api.metrics(), "trackin_checkpoint_writes_total", outcome="accepted") or 0.0


@pytest.mark.parametrize("durability", ["log", "checkpoint"])
def test_stale_writer_is_rejected_and_the_newer_state_kept(
    backend: Backend, servers: Servers, durability: str
) -> None:
    env = {"TRACKIN_DURABILITY": durability}
    feed = Feed(SPEC, seed=11)
    a = servers.start(env)
    with Api(a) as api_a:
        api_a.create("x", SPEC)
        api_a.observe("x", feed.take(20))
        _wait_for(lambda: backend.stored_step("x") == 20, "A's checkpoint")
        state_a = api_a.state("x", SPEC)

    b = servers.start(env)
    with Api(a) as api_a, Api(b) as api_b:
        # B takes the stream over from the store: exactly A's state, to the byte.
        assert api_b.state("x", SPEC) == state_a
        api_b.observe("x", feed.take(10))
        _wait_for(lambda: backend.stored_step("x") == 30, "B's checkpoint")
        stored_b = backend.read_checkpoint("x")
        assert stored_b is not None
        state_b = api_b.state("x", SPEC)

        # A still holds the stream in memory and keeps learning; its writes carry the older epoch.
        rejected_before = metric(api_a.metrics(), "trackin_checkpoint_writes_total", outcome="rejected_stale")
        assert rejected_before == 0
        api_a.observe("x", Feed(SPEC, seed=12).take(25))
        _wait_for(
            lambda: (
                (metric(api_a.metrics(), "trackin_checkpoint_writes_total", outcome="rejected_stale") or 0)
                >= 1
            ),
            "A's stale checkpoint to be refused",
        )
        assert "stale" in a.logs()

        stored = backend.read_checkpoint("x")
        assert stored is not None
        assert (stored.epoch, stored.step) == (stored_b.epoch, 30), "the stale writer overwrote the store"
        assert stored.epoch > 1
        assert stored.tensors == stored_b.tensors
        # B's own writes were all accepted.
        assert not metric(api_b.metrics(), "trackin_checkpoint_writes_total", outcome="rejected_stale")

    # A third server restores B's state: neither A's checkpoints nor A's durability log entries leak in.
    a.kill()
    b.kill()
    c = servers.start(env)
    with Api(c) as api_c:
        assert api_c.state("x", SPEC) == state_b
