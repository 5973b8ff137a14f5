"""Stopping background tasks for sure.

A cancellation can be lost on its way: on Python 3.11, ``asyncio.wait_for`` returns the result of an
awaitable that finished at the moment its caller was cancelled, and the CancelledError is gone. redis-py
(8.x, whose connections have a socket timeout by default) sends every command through ``wait_for``, so
a loop cancelled while a command completes goes on to its next sleep as if nothing happened, and a
``gather`` of it never returns. ``cancel_and_wait`` cancels again whatever is still running after a
moment, until all have ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["cancel_and_wait"]

RECANCEL_SECONDS = 0.5


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]], again: float = RECANCEL_SECONDS) -> None:
    """Cancels ``tasks`` and returns once every one has ended (their exceptions are not raised),
    cancelling those still running every ``again`` seconds: a task that lost one cancellation ends at
    the next, and one that cleans up on cancellation has ``again`` seconds to do it undisturbed."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=again)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit
