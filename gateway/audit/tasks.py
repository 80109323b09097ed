"""Stopping the audit log's background tasks (and any other loop of the gateway's) for certain.

A loop stopped with ``task.cancel()`` ends at its next ``await``, unless something under it
swallows the cancellation: PyMongo can turn one that reaches it mid-operation into an error of its
own, and a loop that catches errors and carries on then runs for ever, and so does the
``await task`` of whoever stopped it (an application's shutdown, a test's teardown).
:func:`cancel_and_wait` cancels again until the task has ended.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any], *, every: float = 1.0) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling it again every ``every`` seconds
    while it runs on. What it ended with is retrieved (its loop logged its own errors)."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=every)
    if not task.cancelled():
        task.exception()
