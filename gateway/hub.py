"""The in-process event hub: fans each committed revision out to the job's watchers.

Each job being watched has one :class:`JobChannel`: a short ring of its latest revisions, shared by
all its watchers, and the futures of the watchers waiting for the next one. Publishing appends to the
ring and wakes the waiters; nothing is copied per watcher, and each revision's wire form is computed
once (``JobEvent.encoded``) and sent to every stream as the same bytes.

A watcher that falls behind (its stream is flow-controlled by a slow client) slows nobody: it simply
reads the ring later. If the ring has moved past it, the watcher sees a gap in the revisions and
reads the ones it missed from the store. Memory per job is bounded by the ring, whatever the
watchers do.

Events from another process (a shared bus) may be lost while the bus reconnects: ``resync()`` then
bumps every channel's generation and flags every dashboard subscription, and their watchers catch
up from the store.

Dashboards subscribe per tenant (:class:`TenantSubscription`): pending updates are coalesced per job,
so a slow dashboard holds at most one pending snapshot per job.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from gateway.jobs import Job, Segment
from gateway.store.base import JobFilter

__all__ = ["EventHub", "HubClosed", "JobChannel", "JobEvent", "TenantSubscription"]

RING_SIZE = 64
TENANT_BACKLOG = 10_000


class HubClosed(Exception):
    """The server is shutting down: streams end so clients resume elsewhere."""


class JobEvent:
    """One committed revision, with its wire encodings cached (computed once, shared by streams).

    ``segments_offset`` is how many segments the job had before this revision: the revision adds
    ``new_segments``, which is all a watcher that saw the previous revision needs. A ``partial``
    event (from another process, over a shared bus) holds only those in ``job.segments``; a whole
    one holds every segment. ``position`` is the store's change position of the revision (0 when
    unknown), ordered like commits: WatchJobs resumes after it.
    """

    __slots__ = ("_encoded", "job", "partial", "position", "segments_offset")

    def __init__(self, job: Job, segments_offset: int = 0, position: int = 0, partial: bool = False) -> None:
        self.job = job
        self.segments_offset = segments_offset
        self.position = position
        self.partial = partial
        self._encoded: dict[Any, bytes] = {}

    # What a subscriber decides on before it needs the whole job (an event from another process
    # decodes its job only when something reads ``job``: most events concern no local watcher).
    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def tenant(self) -> str:
        return self.job.tenant

    @property
    def revision(self) -> int:
        return self.job.revision

    @property
    def terminal(self) -> bool:
        return self.job.terminal

    @property
    def new_segments(self) -> tuple[Segment, ...]:
        return self.job.segments if self.partial else self.job.segments[self.segments_offset:]

    def encoded(self, key: Any, encode: Callable[[JobEvent], bytes]) -> bytes:
        data = self._encoded.get(key)
        if data is None:
            data = self._encoded[key] = encode(self)
        return data


class _Waitable:
    __slots__ = ("_closed", "_waiters")

    def __init__(self) -> None:
        # A dict, not a list: a waiter that times out removes itself in O(1), and wake order is kept.
        self._waiters: dict[asyncio.Future[None], None] = {}
        self._closed = False

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def close(self) -> None:
        self._closed = True
        self._wake()

    async def _wait(self, timeout: float) -> bool:
        """Waits for the next wake-up; False on timeout."""
        if self._closed:
            raise HubClosed
        fut = asyncio.get_running_loop().create_future()
        self._waiters[fut] = None
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            return False
        finally:
            self._waiters.pop(fut, None)  # a timed-out waiter leaves nothing behind
            if not fut.done():
                fut.cancel()
        if self._closed:
            raise HubClosed
        return True


class JobChannel(_Waitable):
    __slots__ = ("events", "generation", "job_id", "refs")

    def __init__(self, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.events: deque[JobEvent] = deque(maxlen=RING_SIZE)
        self.refs = 0
        self.generation = 0  # bumped when events may have been lost (resync): watchers check the store

    def publish(self, event: JobEvent) -> None:
        self.events.append(event)
        self._wake()

    def after(self, revision: int) -> list[JobEvent]:
        """The events after ``revision`` the ring holds, in order. If the ring moved past the
        caller, the first one is not ``revision + 1``: the caller reads the gap from the store."""
        events = self.events
        if not events or events[-1].job.revision <= revision:
            return []
        return [e for e in events if e.revision > revision]

    async def next_after(self, revision: int, timeout: float, generation: int | None = None) -> list[JobEvent] | None:
        """The events after ``revision``, waiting up to ``timeout`` for one; None on timeout; []
        at once when the channel's generation is no longer ``generation`` (resync: check the store)."""
        events = self.after(revision)
        while not events:
            if generation is not None and generation != self.generation:
                return []
            if not await self._wait(timeout):
                return None
            events = self.after(revision)
        return events

    def resync(self) -> None:
        self.generation += 1
        self._wake()


class TenantSubscription(_Waitable):
    """Every change of a tenant's jobs matching a filter, coalesced per job while undelivered."""

    __slots__ = ("_pending", "dropped", "filter", "reset", "resync_needed", "tenant")

    def __init__(self, tenant: str, flt: JobFilter) -> None:
        super().__init__()
        self.tenant = tenant
        self.filter = flt
        self._pending: OrderedDict[str, JobEvent] = OrderedDict()
        self.dropped = 0
        self.resync_needed = False  # events may have been lost: read the changes from the store
        self.reset = False  # the store's data was replaced: its change positions start anew

    def offer(self, event: JobEvent) -> None:
        if not self.filter.matches(event.job):
            return
        pending = self._pending
        pending[event.job.id] = event
        pending.move_to_end(event.job.id)
        if len(pending) > TENANT_BACKLOG:
            pending.popitem(last=False)
            self.dropped += 1
        self._wake()

    async def next(self, timeout: float) -> list[JobEvent] | None:
        while not self._pending and not self.resync_needed:
            if not await self._wait(timeout):
                return None
        events = list(self._pending.values())
        self._pending.clear()
        return events


class EventHub:
    def __init__(self) -> None:
        self._channels: dict[str, JobChannel] = {}
        self._tenants: dict[str, set[TenantSubscription]] = {}
        self.closed = False
        self.position = 0  # the position of the latest event published

    def publish(self, event: JobEvent) -> None:
        if event.position > self.position:
            self.position = event.position
        channel = self._channels.get(event.job_id)
        subs = self._tenants.get(event.tenant)
        if channel is not None:
            channel.publish(event)
        if subs:
            for sub in subs:
                sub.offer(event)

    @contextmanager
    def watch(self, job_id: str) -> Iterator[JobChannel]:
        """Subscribes to a job's revisions. Subscribe before reading the snapshot, so nothing is missed."""
        if self.closed:
            raise HubClosed
        channel = self._channels.get(job_id)
        if channel is None:
            channel = self._channels[job_id] = JobChannel(job_id)
        channel.refs += 1
        try:
            yield channel
        finally:
            channel.refs -= 1
            if channel.refs == 0 and self._channels.get(job_id) is channel:
                del self._channels[job_id]

    @contextmanager
    def watch_tenant(self, tenant: str, flt: JobFilter) -> Iterator[TenantSubscription]:
        if self.closed:
            raise HubClosed
        sub = TenantSubscription(tenant, flt)
        self._tenants.setdefault(tenant, set()).add(sub)
        try:
            yield sub
        finally:
            subs = self._tenants.get(tenant)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._tenants[tenant]

    def resync(self) -> None:
        """Events may have been lost (a shared bus reconnected): every watcher checks the store."""
        for channel in self._channels.values():
            channel.resync()
        for subs in self._tenants.values():
            for sub in subs:
                sub.resync_needed = True
                sub._wake()

    def reset(self) -> None:
        """The store's data was replaced: every job watcher checks the store (and ends if its job is
        gone), and every tenant stream ends, since its positions belong to the data that went."""
        for subs in self._tenants.values():
            for sub in subs:
                sub.reset = True
        self.resync()

    def watcher_count(self) -> int:
        return sum(c.refs for c in self._channels.values()) + sum(len(s) for s in self._tenants.values())

    def close(self) -> None:
        """Ends every stream (they raise HubClosed): used on shutdown."""
        self.closed = True
        for channel in self._channels.values():
            channel.close()
        for subs in self._tenants.values():
            for sub in subs:
                sub.close()
