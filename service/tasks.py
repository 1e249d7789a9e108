"""Stopping a background task: cancel it, and make sure the cancellation took.

On Python 3.11 ``asyncio.wait_for`` drops a cancellation that arrives in the loop iteration in which the
awaitable it waits for completes: it returns the result, and the cancelled task runs on (CPython
gh-86296, fixed in 3.12 where ``wait_for`` is built on ``asyncio.timeout``). redis-py sends every command
under such a ``wait_for`` (``socket_timeout``), and nats-py waits for its replies the same way. A
background loop whose store call completes just as the service stops therefore takes no notice of the
cancel and goes on with its next pass; ``task.cancel(); await task`` then waits forever. The checkpoint
loop did exactly that: one run in 30 to 100 of ``tests/persistence/test_loop.py``'s interval test on
Redis hung (at the test's timeout in CI), the loop task "cancelling" and still running passes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["RECANCEL_SECONDS", "stop_task"]

log = logging.getLogger("trackin.tasks")

RECANCEL_SECONDS = 0.5
"""How long a cancelled task may run on before it is cancelled again: far longer than a cancelled task
needs to unwind (nothing here cleans up for longer than one store call), short enough for a shutdown."""


async def stop_task(task: asyncio.Task[Any] | None, *, recancel: float = RECANCEL_SECONDS) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling it again each ``recancel`` seconds it runs
    on (a cancellation it swallowed, see the module docstring).

    The task's own error, if it ended with one, is raised here; its cancellation is not. The caller's
    cancellation goes through at once (``asyncio.wait`` never cancels the task it waits for, unlike
    ``await task`` under ``suppress(CancelledError)``, which also swallowed the caller's).
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=recancel)
        if not task.done():
            log.warning(
                "task %r ran on %.1f s after being cancelled; cancelling it again", task.get_name(), recancel
            )
    if not task.cancelled():
        task.result()
