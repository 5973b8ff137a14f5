"""cancel_and_wait ends tasks that lose a cancellation (what asyncio.wait_for does on Python 3.11 when
the awaitable it waits on finishes as the caller is cancelled; redis-py sends every command that way)."""

from __future__ import annotations

import asyncio

from gateway.tasks import cancel_and_wait


async def test_a_task_that_swallows_one_cancellation_still_ends() -> None:
    swallowed = asyncio.Event()

    async def loop() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()  # lost, as in the library: the loop goes on to its next sleep
        while True:  # noqa: ASYNC110 - the loop that goes on, as a cancelled Redis poller does
            await asyncio.sleep(0.01)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        await cancel_and_wait([task], again=0.05)
    assert swallowed.is_set() and task.cancelled()


async def test_cleanup_on_cancellation_gets_its_time_and_failures_are_retrieved() -> None:
    cleaned = asyncio.Event()

    async def cleans_up() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.1)  # shorter than `again`: not interrupted
            cleaned.set()

    async def fails() -> None:
        raise RuntimeError("already failed")

    failing = asyncio.create_task(fails())
    task = asyncio.create_task(cleans_up())
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        await cancel_and_wait([task, failing], again=1.0)
    assert cleaned.is_set() and task.cancelled() and isinstance(failing.exception(), RuntimeError)
