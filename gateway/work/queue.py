"""Work queues: where a route's jobs wait for a worker.

A queue holds job ids, in the order they will run (fair share between tenants, then priority: see
:class:`FairOrder`), with admission control: a slot is reserved before the job is
stored, so a queue never grows past its ``maxsize``. :class:`MemoryQueue` is the one-process
implementation; a shared queue (Redis Streams) implements the same :class:`WorkQueue`.
"""

from __future__ import annotations

import asyncio
import math
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Protocol

from gateway.jobs import DEFAULT_PRIORITY

__all__ = ["PRIORITY_SPAN", "FairOrder", "MemoryQueue", "QueueClosed", "QueueSnapshot", "WorkQueue"]


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
        """The waiting job ids in the order they will be taken, next first."""
        ...

    def reserve(self) -> bool:
        """Takes a slot for a job about to be stored; False when the queue is full."""
        ...

    def release(self) -> None:
        """Gives back a reserved slot unused."""
        ...

    def put(self, job_id: str, reserved: bool = True, front: bool = False, tenant: str = "",
            priority: int = 3, created: float = 0.0) -> None:
        """Queues a job (in its reserved slot, or beyond the limit with ``reserved=False``: resumed jobs),
        in its tenant's share at its priority; ``front``: before every other (a run resumed)."""
        ...

    async def get(self) -> str:
        """The next job id, waiting for one; QueueClosed once closed and empty."""
        ...

    def waiting_of(self, tenant: str) -> int:
        """How many of the tenant's jobs wait (in memory; a shared queue's count is its store's)."""
        ...

    def snapshot(self) -> QueueSnapshot:
        """The queue by priority, age and tenant (metrics; a shared queue's as last read, once a second)."""
        ...

    async def live_position(self, job_id: str, tenant: str) -> int:
        """The job's place in the order the waiting jobs will be taken, now (1: next; 0: not waiting, or
        further than the first POSITION_WINDOW)."""
        ...

    def run_time(self, local: float | None) -> float | None:
        """The route's recent mean run time in seconds, given this process's (``local``; None: none ran
        here yet): a shared queue's is every worker's, as last read."""
        ...

    async def consumers(self) -> list[tuple[str, int, float, bool]]:
        """The worker processes of a shared queue: (name, jobs it holds, seconds since it was last
        heard from, whether that is within its lease); a queue of this process alone: [] (its runner
        knows its own)."""
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


@dataclass
class QueueSnapshot:
    """What a route's queue holds, for metrics: waiting jobs by priority, the oldest one's creation
    time, and per tenant (waiting, running). A shared queue's is the store's, as last read."""

    by_priority: dict[int, int] = field(default_factory=dict)
    oldest_created: float | None = None
    tenants: dict[str, tuple[int, int]] = field(default_factory=dict)


class QueueClosed(Exception):
    pass


PRIORITY_SPAN = 1 << 40  # a job's rank within its tenant: priority * PRIORITY_SPAN + arrival (the Redis scripts too)


class _Lane:
    """One tenant's waiting jobs of one priority, in arrival order (sequence numbers ascending): taking the
    first, counting those before a job and removing one cost a bisection, not a pass over the lane, so a
    Submit's position stays cheap behind a backlog of a hundred thousand jobs."""

    __slots__ = ("head", "items")

    def __init__(self) -> None:
        self.items: list[tuple[int, str]] = []  # (sequence, job id); those before ``head`` are taken
        self.head = 0

    def __len__(self) -> int:
        return len(self.items) - self.head

    def append(self, seq: int, job_id: str) -> None:
        self.items.append((seq, job_id))

    def popleft(self) -> str:
        job_id = self.items[self.head][1]
        self.head += 1
        if self.head >= 64 and 2 * self.head >= len(self.items):  # amortised: the taken ones go in one cut
            del self.items[:self.head]
            self.head = 0
        return job_id

    def before(self, seq: int) -> int:
        return bisect_left(self.items, (seq,), self.head) - self.head

    def remove(self, seq: int) -> None:
        del self.items[bisect_left(self.items, (seq,), self.head)]

    def __iter__(self) -> Iterator[str]:
        return (job_id for _seq, job_id in islice(self.items, self.head, None))

    def first(self) -> str:
        return self.items[self.head][1]


class FairOrder:
    """The order a route's waiting jobs are taken in: the tenants with jobs waiting in weighted round robin
    (stride scheduling: each tenant has a pass, the next job is the lowest pass's, whose pass then grows by
    1/weight; a tenant that starts waiting joins at the pass of the last job taken, so it neither waits
    behind a backlog nor saves up a share while it had nothing waiting), and within a tenant its most
    urgent job, first come first among equals. The Redis queue's take script is the same algorithm.

    Each operation costs at most a bisection of one lane (a tenant's jobs of one priority) plus a look at
    each tenant waiting: none is a pass over the jobs."""

    def __init__(self, weight: Callable[[str], float] | None = None) -> None:
        self.weight = weight or (lambda tenant: 1.0)
        self._lanes: dict[str, dict[int, _Lane]] = {}  # tenant -> priority -> its waiting jobs (no empty lane)
        self._waiting: dict[str, int] = {}  # tenant -> its jobs waiting
        self._pass: dict[str, float] = {}  # tenants with jobs waiting
        self._where: dict[str, tuple[str, int, int]] = {}  # job id -> (tenant, priority, sequence)
        self.created: dict[str, float] = {}  # job id -> when it was created (metrics: the oldest's age)
        self._seq = 0
        self.vtime = 0.0
        self.last_tenant = ""  # whose job pop() took last

    def __len__(self) -> int:
        return len(self._where)

    def waiting_of(self, tenant: str) -> int:
        return self._waiting.get(tenant, 0)

    def by_priority(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for lanes in self._lanes.values():
            for priority, lane in lanes.items():
                counts[priority] = counts.get(priority, 0) + len(lane)
        return counts

    def oldest_created(self) -> float | None:
        """When the oldest waiting job was created (of each lane's first: a lane is in arrival order)."""
        return min((self.created.get(lane.first(), 0.0) for lanes in self._lanes.values() for lane in lanes.values()),
                   default=None)

    def tenants(self) -> dict[str, int]:
        return dict(self._waiting)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._where

    def add(self, job_id: str, tenant: str, priority: int, created: float = 0.0) -> None:
        self._seq += 1
        lanes = self._lanes.get(tenant)
        if lanes is None:
            self._pass[tenant] = self.vtime
            lanes = self._lanes[tenant] = {}
            self._waiting[tenant] = 0
        lane = lanes.get(priority)
        if lane is None:
            lane = lanes[priority] = _Lane()
        lane.append(self._seq, job_id)
        self._waiting[tenant] += 1
        self._where[job_id] = (tenant, priority, self._seq)
        self.created[job_id] = created

    @staticmethod
    def _next_tenant(passes: dict[str, float]) -> str:
        if len(passes) == 1:
            return next(iter(passes))
        return min(passes, key=lambda t: (passes[t], t))

    def pop(self, blocked: Callable[[str], bool] | None = None) -> str | None:
        """The next job, of the lowest pass's tenant among those not ``blocked`` (at their max_running);
        None when every tenant with jobs waiting is."""
        tenant = self._next_tenant(self._pass)
        if blocked is not None and blocked(tenant):
            open_ = {t: p for t, p in self._pass.items() if not blocked(t)}
            if not open_:
                return None
            tenant = self._next_tenant(open_)
        lanes = self._lanes[tenant]
        priority = min(lanes)
        lane = lanes[priority]
        job_id = lane.popleft()
        if not lane:
            del lanes[priority]
        del self._where[job_id]
        self.created.pop(job_id, None)
        self.last_tenant = tenant
        self.vtime = self._pass[tenant]
        self._taken_from(tenant)
        if tenant in self._pass:
            self._pass[tenant] += 1.0 / self.weight(tenant)
        return job_id

    def _taken_from(self, tenant: str) -> None:
        left = self._waiting[tenant] - 1
        if left:
            self._waiting[tenant] = left
        else:
            del self._lanes[tenant], self._waiting[tenant], self._pass[tenant]

    def remove(self, job_id: str) -> bool:
        found = self._where.pop(job_id, None)
        if found is None:
            return False
        self.created.pop(job_id, None)
        tenant, priority, seq = found
        lanes = self._lanes[tenant]
        lane = lanes[priority]
        lane.remove(seq)
        if not lane:
            del lanes[priority]
        self._taken_from(tenant)
        return True

    def position(self, job_id: str) -> int:
        """The job's place in the order (1: next; 0: not waiting), without replaying it: each tenant's passes
        go on by 1/weight whatever the others do, so the job is taken at its tenant's pass + (its tenant's jobs
        before it) / weight, and before it go the other tenants' jobs of a lower pass (ties: by name; passes
        within 1e-9 tie). The Redis POSITION script is the same."""
        found = self._where.get(job_id)
        if found is None:
            return 0
        mine, priority, seq = found
        lanes = self._lanes[mine]
        ahead = lanes[priority].before(seq) + sum(len(lane) for p, lane in lanes.items() if p < priority)
        at = self._pass[mine] + ahead / self.weight(mine)
        position = ahead + 1
        for tenant, start in self._pass.items():
            if tenant == mine:
                continue
            x = (at - start) * self.weight(tenant)
            tie = math.floor(x + 0.5)
            before = tie + (tenant < mine) if abs(x - tie) < 1e-9 * max(1.0, abs(x)) else math.floor(x) + 1
            if before > 0:
                position += min(before, self._waiting[tenant])
        return position

    def __iter__(self) -> Iterator[str]:
        """The waiting jobs in the order they would be taken (lazily: positions read the first few; read it
        through before the queue changes)."""
        passes = dict(self._pass)
        jobs = {tenant: chain.from_iterable([lanes[p] for p in sorted(lanes)]) for tenant, lanes in self._lanes.items()}
        while passes:
            tenant = self._next_tenant(passes)
            job_id = next(jobs[tenant], None)
            if job_id is None:
                del passes[tenant]
                continue
            yield job_id
            passes[tenant] += 1.0 / self.weight(tenant)


class MemoryQueue:
    """The in-process queue: the route's waiting jobs in fair order (:class:`FairOrder`), with
    reservations, removal (cancel) and positions. Jobs put at the front (interrupted runs resumed) are
    taken before any other, in the order they were put."""

    def __init__(self, maxsize: int, weight: Callable[[str], float] | None = None,
                 max_running: Callable[[str], int] | None = None) -> None:
        """``max_running``: a tenant's jobs running at once at most (0: no limit); its other jobs wait
        while the other tenants' are taken."""
        self.maxsize = maxsize
        self._order = FairOrder(weight)
        self._max_running = max_running
        self._running: dict[str, int] = {}  # tenant -> its jobs taken and not done
        self._taken: dict[str, str] = {}  # job id -> tenant, while it runs
        self._front: deque[str] = deque()
        self._reserved = 0
        self._getters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def open(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._front) + len(self._order)

    def __iter__(self) -> Iterator[str]:
        yield from self._front
        yield from self._order

    def waiting_of(self, tenant: str) -> int:
        return self._order.waiting_of(tenant)

    def snapshot(self) -> QueueSnapshot:
        waiting = self._order.tenants()
        names = set(waiting) | set(self._running)
        return QueueSnapshot(
            by_priority=self._order.by_priority(),
            oldest_created=self._order.oldest_created(),
            tenants={t: (waiting.get(t, 0), self._running.get(t, 0)) for t in names},
        )

    def reserve(self) -> bool:
        if len(self) + self._reserved >= self.maxsize:
            return False
        self._reserved += 1
        return True

    def release(self) -> None:
        self._reserved -= 1

    def put(self, job_id: str, reserved: bool = True, front: bool = False, tenant: str = "",
            priority: int = DEFAULT_PRIORITY, created: float = 0.0) -> None:
        if reserved:
            self._reserved -= 1
        if front:
            self._front.append(job_id)
        else:
            self._order.add(job_id, tenant, priority, created)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                break

    async def get(self) -> str:
        while (job_id := self._take()) is None:
            if self._closed:
                raise QueueClosed
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except asyncio.CancelledError:
                # Pass a wake-up we may have consumed on to another getter.
                if getter.done() and not getter.cancelled() and len(self):
                    self._wake_one()
                raise
        return job_id

    def _blocked(self, tenant: str) -> bool:
        assert self._max_running is not None
        limit = self._max_running(tenant)
        return bool(limit) and self._running.get(tenant, 0) >= limit

    def _take(self) -> str | None:
        if self._front:
            return self._front.popleft()
        if not len(self._order):
            return None
        job_id = self._order.pop(self._blocked if self._max_running is not None else None)
        if job_id is not None:
            tenant = self._order.last_tenant
            self._taken[job_id] = tenant
            self._running[tenant] = self._running.get(tenant, 0) + 1
        return job_id

    def task_done(self, job_id: str) -> None:
        tenant = self._taken.pop(job_id, None)
        if tenant is not None:
            left = self._running[tenant] - 1
            if left:
                self._running[tenant] = left
            else:
                del self._running[tenant]
            if len(self._order):
                self._wake_one()  # a job of that tenant may be taken now

    def remove(self, job_id: str) -> bool:
        if self._order.remove(job_id):
            return True
        try:
            self._front.remove(job_id)
        except ValueError:
            return False
        return True

    def position(self, job_id: str) -> int:
        if job_id in self._order:
            return len(self._front) + self._order.position(job_id)
        try:
            return self._front.index(job_id) + 1
        except ValueError:
            return 0

    async def live_position(self, job_id: str, tenant: str) -> int:
        return self.position(job_id)

    def run_time(self, local: float | None) -> float | None:
        return local

    async def consumers(self) -> list[tuple[str, int, float, bool]]:
        return []

    def on_lost(self, callback: Callable[[str], None]) -> None:
        pass  # one process: nobody else takes a job

    def let_go(self, job_id: str) -> None:
        pass  # taken is gone, in one process

    def close(self) -> None:
        self._closed = True
        for getter in self._getters:
            if not getter.done():
                getter.set_result(None)
        self._getters.clear()
