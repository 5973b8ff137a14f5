"""Work queues: where a route's jobs wait for a worker.

A queue holds job ids, in order, with admission control: a slot is reserved before the job is
stored, so a queue never grows past its ``maxsize``. :class:`MemoryQueue` is the one-process
implementation; a shared queue (Redis Streams) implements the same :class:`WorkQueue`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol

__all__ = ["MemoryQueue", "QueueClosed", "WorkQueue"]


class WorkQueue(Protocol):
    maxsize: int

    async def open(self) -> None:
        """Before the first get(): connects a shared queue (nothing to do in memory)."""
        ...

    async def aclose(self) -> None:
        """After the workers stopped: hands a shared queue's interrupted jobs over, and disconnects."""
        ...

    def __len__(self) -> int:
        """How many jobs wait."""
        ...

    def __iter__(self) -> Iterator[str]:
        """The waiting job ids, next first."""
        ...

    def reserve(self) -> bool:
        """Takes a slot for a job about to be stored; False when the queue is full."""
        ...

    def release(self) -> None:
        """Gives back a reserved slot unused."""
        ...

    def put(self, job_id: str, reserved: bool = True, front: bool = False) -> None:
        """Queues a job (in its reserved slot, or beyond the limit with ``reserved=False``: resumed jobs)."""
        ...

    async def get(self) -> str:
        """The next job id, waiting for one; QueueClosed once closed and empty."""
        ...

    def remove(self, job_id: str) -> bool:
        """Takes a waiting job out (cancel); False if it was not waiting."""
        ...

    def position(self, job_id: str) -> int:
        """1 for the next job; 0 if not waiting."""
        ...

    def close(self) -> None:
        """Wakes every getter with QueueClosed; nothing is taken any more."""
        ...

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """``callback(job_id)`` when a job taken with get() is found held by another worker (a shared
        queue whose lease on it lapsed while this process stalled)."""
        ...

    def let_go(self, job_id: str) -> None:
        """A job taken with get() is no longer this process's to run (nothing more is written to it): a
        shared queue hands it to whichever worker looks next."""
        ...

    def task_done(self, job_id: str) -> None:
        """The job taken with get() has ended here (or was dropped): it leaves the queue for good.
        Not called for a job interrupted by a stop, which a shared queue hands to another worker."""
        ...


class QueueClosed(Exception):
    pass


class MemoryQueue:
    """The in-process queue: a FIFO of job ids with reservations, removal (cancel) and positions."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[str] = deque()
        self._reserved = 0
        self._getters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def open(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def reserve(self) -> bool:
        if len(self._items) + self._reserved >= self.maxsize:
            return False
        self._reserved += 1
        return True

    def release(self) -> None:
        self._reserved -= 1

    def put(self, job_id: str, reserved: bool = True, front: bool = False) -> None:
        if reserved:
            self._reserved -= 1
        if front:
            self._items.appendleft(job_id)
        else:
            self._items.append(job_id)
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                break

    async def get(self) -> str:
        while not self._items:
            if self._closed:
                raise QueueClosed
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except asyncio.CancelledError:
                # Pass a wake-up we may have consumed on to another getter.
                if getter.done() and not getter.cancelled() and self._items:
                    self.put(self._items.popleft(), reserved=False, front=True)
                raise
        return self._items.popleft()

    def remove(self, job_id: str) -> bool:
        try:
            self._items.remove(job_id)
        except ValueError:
            return False
        return True

    def position(self, job_id: str) -> int:
        for index, item in enumerate(self._items):
            if item == job_id:
                return index + 1
        return 0

    def on_lost(self, callback: Callable[[str], None]) -> None:
        pass  # one process: nobody else takes a job

    def let_go(self, job_id: str) -> None:
        pass  # taken is gone, in one process

    def task_done(self, job_id: str) -> None:
        pass  # taken is gone, in one process

    def close(self) -> None:
        self._closed = True
        for getter in self._getters:
            if not getter.done():
                getter.set_result(None)
        self._getters.clear()
