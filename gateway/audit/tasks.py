"""Stopping the audit log's background tasks (and any other loop of the gateway's) for certain.

A loop stopped with ``task.cancel()`` ends at its next ``await``, unless something under it
swallows the cancellation: PyMongo can turn one that reaches it mid-operation into an error of its
own, and a loop that catches errors and carries on then runs for ever, and so does the
``await task`` of whoever stopped it (an application's shutdown, a test's teardown).
:func:`cancel_and_wait` cancels again until the task has ended, and gives up waiting (logged)
after a bound, so that a shutdown always ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(
    task: asyncio.Task[Any], *, every: float = 1.0, give_up_after: float = 30.0
) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling it again every ``every`` seconds
    while it runs on, for at most ``give_up_after`` seconds. What it ended with is retrieved (its
    loop logged its own errors)."""
    deadline = time.monotonic() + give_up_after
    while not task.done():
        if time.monotonic() >= deadline:
            log.warning(
                "task %s did not stop within %.0f s; left behind", task.get_name(), give_up_after
            )
            return
        task.cancel()
        await asyncio.wait([task], timeout=every)
    if not task.cancelled():
        task.exception()
