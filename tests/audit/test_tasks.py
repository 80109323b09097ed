"""Stopping background loops for certain (``gateway.audit.tasks``): a loop under which a library
swallowed the cancellation still ends, so no shutdown waits for ever."""

from __future__ import annotations

import asyncio

from gateway.audit.tasks import cancel_and_wait


async def test_a_loop_that_swallows_a_cancellation_is_stopped_all_the_same() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:  # as a library turning it into its own error would
                if swallowed == 2:
                    raise
                swallowed += 1
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        await cancel_and_wait(task, every=0.05)
    assert task.cancelled() and swallowed == 2


async def test_a_loop_that_ends_with_an_error_is_stopped_quietly() -> None:
    async def failing() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise RuntimeError("closing failed") from None

    task = asyncio.create_task(failing())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.done() and isinstance(task.exception(), RuntimeError)


async def test_a_loop_that_never_stops_is_left_behind_after_the_bound() -> None:
    released = asyncio.Event()

    async def immortal() -> None:
        while not released.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if released.is_set():
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.create_task(immortal())
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        await cancel_and_wait(task, every=0.05, give_up_after=0.3)
    assert not task.done()  # the caller goes on without it
    released.set()  # (and this test ends it)
    task.cancel()
    await asyncio.wait([task], timeout=5)
    assert task.done()
