"""Two servers on one store: the one that started last owns it, and the stale one cannot overwrite it.

Each process takes a new owner epoch at start and stamps it on every checkpoint; the store keeps a
checkpoint only if its ``(epoch, step)`` is newer than the stored one. Here server A (epoch 1) keeps
serving a stream after server B (epoch 2) took it over: A's later checkpoints are refused, counted as
``rejected_stale`` and logged, and what the store gives a third server is B's state, never A's.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from tests.persistence.conftest import FAMILIES, Api, Backend, Feed, Servers, metric
from tests.support.server import TrackinServer

pytestmark = pytest.mark.timeout(120)

SPEC = FAMILIES["linear"]


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _epoch(server: TrackinServer) -> int:
    """The owner epoch a server took at start (it logs it)."""
    return int(re.findall(r"owner epoch (\d+)", server.logs())[-1])


def test_stale_writer_is_rejected_and_the_newer_state_kept(backend: Backend, servers: Servers) -> None:
    # Three processes on one store, started together; their start order decides who is stale: the
    # lowest epoch (A) is the stale writer, B takes over from it, C comes last to read what is stored.
    a, b, c = sorted(servers.start_many([{}, {}, {}]), key=_epoch)
    assert _epoch(a) < _epoch(b) < _epoch(c)
    feed = Feed(SPEC, seed=11)
    with Api(a) as api_a:
        api_a.create("x", SPEC)
        api_a.observe("x", feed.take(20))
        _wait_for(lambda: backend.stored_step("x") == 20, "A's checkpoint")
        state_a = api_a.state("x", SPEC)

    with Api(a) as api_a, Api(b) as api_b:
        # B takes the stream over from the store: exactly A's state, to the byte.
        assert api_b.state("x", SPEC) == state_a
        api_b.observe("x", feed.take(10))
        _wait_for(lambda: backend.stored_step("x") == 30, "B's checkpoint")
        stored_b = backend.read_checkpoint("x")
        assert stored_b is not None
        assert stored_b.epoch == _epoch(b)
        state_b = api_b.state("x", SPEC)

        # A still holds the stream in memory and keeps learning (and logging); its writes carry the older
        # epoch, so the store refuses them.
        assert metric(api_a.metrics(), "trackin_checkpoint_writes_total", outcome="rejected_stale") == 0
        api_a.observe("x", Feed(SPEC, seed=12).take(25))
        _wait_for(
            lambda: (
                (metric(api_a.metrics(), "trackin_checkpoint_writes_total", outcome="rejected_stale") or 0)
                >= 1
            ),
            "A's stale checkpoint to be refused",
        )
        assert "stale checkpoint" in a.logs()

        stored = backend.read_checkpoint("x")
        assert stored is not None
        assert (stored.epoch, stored.step) == (stored_b.epoch, 30), "the stale writer overwrote the store"
        assert stored.tensors == stored_b.tensors
        # B's own writes were all accepted.
        assert not metric(api_b.metrics(), "trackin_checkpoint_writes_total", outcome="rejected_stale")

    # C restores B's state: neither A's checkpoints nor the entries A appended to the stream's durability
    # log after B took over leak in (B is killed, so C has to replay B's log tail too, if any).
    a.kill()
    b.kill()
    with Api(c) as api_c:
        assert api_c.state("x", SPEC) == state_b
