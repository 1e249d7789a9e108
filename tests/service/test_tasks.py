"""service/tasks.py: `stop_task` ends a task even when a cancellation is lost, and keeps errors apart."""

from __future__ import annotations

import asyncio
import sys

import pytest

from trackin.service.tasks import stop_task

pytestmark = pytest.mark.timeout(30)


async def _wait_for_race() -> tuple[str, int]:
    """Cancel a task in the loop iteration in which the call its ``wait_for`` waits for completes."""
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def body() -> tuple[str, int]:
        await asyncio.wait_for(gate, 5)
        task = asyncio.current_task()
        assert task is not None
        return "ran on", task.cancelling()

    task = asyncio.create_task(body())
    await asyncio.sleep(0)  # body waits for the gate
    gate.set_result(None)
    task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        return "cancelled", 0


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for keeps cancellations from 3.12 on")
async def test_wait_for_on_3_11_drops_a_cancellation_that_comes_as_its_call_completes() -> None:
    """The hazard `stop_task` exists for (redis-py and nats-py send and wait under ``wait_for``)."""
    assert await _wait_for_race() == ("ran on", 1)


async def test_a_task_that_swallowed_its_cancellation_is_cancelled_again() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # as a Python 3.11 wait_for does when its call has just completed

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    started = asyncio.get_running_loop().time()
    await stop_task(task, recancel=0.05)
    assert task.cancelled()
    assert swallowed == 1
    assert asyncio.get_running_loop().time() - started < 5


async def test_a_task_that_ends_on_its_own_after_the_cancellation_is_waited_for() -> None:
    async def cleans_up() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)  # cleanup shorter than ``recancel``: not interrupted
            return "cleaned up"
        return "slept"

    task = asyncio.create_task(cleans_up())
    await asyncio.sleep(0)
    await stop_task(task)
    assert task.result() == "cleaned up"


async def test_the_tasks_error_is_raised_and_none_is_fine() -> None:
    async def fails() -> None:
        raise ValueError("broken")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="broken"):
        await stop_task(task)
    await stop_task(None)


async def test_the_callers_cancellation_goes_through() -> None:
    release = False

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if release:
                    raise  # until then stop_task keeps cancelling, and its caller is cancelled

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(stop_task(task, recancel=0.05))
    await asyncio.sleep(0.2)
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    assert not task.done()
    release = True
    await stop_task(task)
    assert task.cancelled()
