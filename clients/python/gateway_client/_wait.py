"""Waiting on many job futures, as ``concurrent.futures`` and ``asyncio`` do for theirs.

    done, not_done = wait(futures, timeout=60, return_when=FIRST_COMPLETED)   # JobFuture
    for fut in as_completed(futures, timeout=600): print(fut.job_id, fut.result())

    done, pending = await async_wait(futures, timeout=60)                     # AsyncJobFuture
    async for fut in async_as_completed(futures): print(fut.job_id, fut.result())

A future counts as done once its job has ended, whatever the outcome; with FIRST_EXCEPTION, a job
that FAILED or was CANCELLED counts as an exception. None of these cancels anything: a timeout only
stops the waiting. ``as_completed`` and ``async_as_completed`` yield the futures themselves and
raise TimeoutError (the builtin one, on every Python) when ``timeout`` passes first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TypeVar

from gateway_client._futures import AsyncJobFuture, JobFuture

__all__ = ["ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "as_completed", "async_as_completed",
           "async_wait", "wait"]

FIRST_COMPLETED = concurrent.futures.FIRST_COMPLETED
FIRST_EXCEPTION = concurrent.futures.FIRST_EXCEPTION
ALL_COMPLETED = concurrent.futures.ALL_COMPLETED
_RETURN_WHEN = (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED)

T = TypeVar("T")


def _check(return_when: str) -> None:
    if return_when not in _RETURN_WHEN:
        raise ValueError(f"return_when must be one of {', '.join(_RETURN_WHEN)}, not {return_when!r}")


def wait(
    futures: Iterable[JobFuture[T]], timeout: float | None = None, return_when: str = ALL_COMPLETED,
) -> tuple[set[JobFuture[T]], set[JobFuture[T]]]:
    """Blocks until the futures are done (``return_when``: FIRST_COMPLETED, FIRST_EXCEPTION or
    ALL_COMPLETED) or ``timeout`` seconds pass; answers ``(done, not_done)``."""
    _check(return_when)
    by_inner = {f._future: f for f in futures}
    done, not_done = concurrent.futures.wait(by_inner, timeout, return_when)
    return {by_inner[f] for f in done}, {by_inner[f] for f in not_done}


def as_completed(futures: Iterable[JobFuture[T]], timeout: float | None = None) -> Iterator[JobFuture[T]]:
    """Yields each future as it is done (those already done first); TimeoutError if ``timeout``
    seconds pass, counted from the call, before all are."""
    by_inner = {f._future: f for f in futures}
    inner = concurrent.futures.as_completed(by_inner, timeout)

    def generate() -> Iterator[JobFuture[T]]:
        try:
            for f in inner:
                yield by_inner[f]
        except concurrent.futures.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            raise TimeoutError(f"futures not done within {timeout} s") from None

    return generate()


async def async_wait(
    futures: Iterable[AsyncJobFuture[T]], timeout: float | None = None, return_when: str = ALL_COMPLETED,
) -> tuple[set[AsyncJobFuture[T]], set[AsyncJobFuture[T]]]:
    """Waits until the futures are done (``return_when`` as in ``wait``) or ``timeout`` seconds
    pass; answers ``(done, pending)``."""
    _check(return_when)
    by_inner = {f._future: f for f in futures}
    if not by_inner:
        return set(), set()
    done, pending = await asyncio.wait(by_inner, timeout=timeout, return_when=return_when)
    return {by_inner[f] for f in done}, {by_inner[f] for f in pending}


async def async_as_completed(
    futures: Iterable[AsyncJobFuture[T]], timeout: float | None = None,
) -> AsyncIterator[AsyncJobFuture[T]]:
    """Yields each future as it is done (``async for``); TimeoutError if ``timeout`` seconds pass,
    counted from the first iteration, before all are."""
    pending = {f._future: f for f in futures}
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while pending:
        remaining = None if deadline is None else max(0.0, deadline - loop.time())
        done, _ = await asyncio.wait(pending, timeout=remaining, return_when=FIRST_COMPLETED)
        if not done:
            raise TimeoutError(f"futures not done within {timeout} s")
        for inner in done:
            yield pending.pop(inner)
