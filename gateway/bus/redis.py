"""The event bus across replicas: Redis pub/sub, one subscription per process.

The Redis store's scripts PUBLISH each committed revision in the same atomic step that stores it
(so no replica sees an event that is not stored), on one channel, ``<prefix>events``. Every process
subscribes once and hands each event to its local subscribers (the hub); ``publish`` has nothing to
send. An event carries the job as of the revision without its earlier segments: the segments the
revision added, from ``segments_offset`` on (``JobEvent.partial``), which is all a watcher needs.

Pub/sub delivers at most once: while the connection is down, events are lost. After a reconnection
the bus tells its resync listeners, and they read what they missed from the store (a job's watchers
from its revisions, a dashboard from the change positions), so no watcher misses a revision.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from gateway.bus.base import Handler, Unsubscribe
from gateway.bus.memory import MemoryBus
from gateway.hub import JobEvent
from gateway.jobs import Job, Segment
from gateway.store import resp
from gateway.store.redis import job_from_dict

__all__ = ["RedisBus", "RemoteEvent", "decode_event"]

log = logging.getLogger(__name__)

RECONNECT_MAX_SECONDS = 2.0
HEALTH_CHECK_SECONDS = 10.0  # a subscription silent this long is pinged


class RemoteEvent(JobEvent):
    """An event from the channel. Its header (job id, revision, whether it ended, position, segment
    offset, tenant) is read at once; the job itself is decoded the first time ``job`` is read, so an
    event that concerns nobody in this process costs a split, not a JSON decode."""

    __slots__ = ("_body", "_decoded", "_job_id", "_revision", "_tenant", "_terminal")

    def __init__(self, raw: bytes) -> None:
        job_id, revision, terminal, position, offset, size, rest = raw.split(b"|", 6)
        n = int(size)
        self._job_id = job_id.decode()
        self._revision = int(revision)
        self._terminal = terminal == b"1"
        self._tenant = rest[:n].decode()
        self._body = rest[n:]
        self._decoded: Job | None = None
        self.segments_offset = int(offset)
        self.position = int(position)
        self.partial = True
        self._encoded = {}

    @property
    def job(self) -> Job:  # type: ignore[override]
        if self._decoded is None:
            data = json.loads(self._body)
            segments = tuple(Segment.from_dict(s) for s in data["s"])
            self._decoded = job_from_dict(data["j"], segments)
            self._body = b""
        return self._decoded

    @property
    def job_id(self) -> str:
        return self._job_id

    @property
    def tenant(self) -> str:
        return self._tenant

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def terminal(self) -> bool:
        return self._terminal


def decode_event(raw: bytes | str) -> JobEvent:
    """An event as the store's scripts publish it:
    ``<job id>|<revision>|<ended 0/1>|<position>|<segments offset>|<tenant bytes>|<tenant>{"j": job, "s": [new segments]}``."""
    return RemoteEvent(raw.encode() if isinstance(raw, str) else raw)


class RedisBus:
    def __init__(self, url: str, prefix: str = "gw:") -> None:
        self.url = url
        self.channel = prefix + "events"
        self._local = MemoryBus()  # the subscribers of this process
        self._resync: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._closed = False
        self.reconnects = 0

    async def open(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen(), name="redis-bus")
        await asyncio.wait_for(self._subscribed.wait(), timeout=30)

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=5)
            self._task = None
        await self._local.close()

    def publish(self, event: JobEvent) -> None:
        """Nothing to do: the store's script published the event when it committed it."""

    def subscribe(self, handler: Handler, *, job_id: str | None = None, tenant: str | None = None) -> Unsubscribe:
        return self._local.subscribe(handler, job_id=job_id, tenant=tenant)

    def on_resync(self, listener: Callable[[], None]) -> None:
        """Called after the subscription was re-established: events may have been lost meanwhile."""
        self._resync.append(listener)

    def _subscribed_again(self) -> None:
        first = not self._subscribed.is_set()
        self._subscribed.set()
        if first:
            return
        self.reconnects += 1
        log.warning("event bus: subscribed again to %s; resyncing from the store", self.channel)
        for listener in list(self._resync):
            try:
                listener()
            except Exception:
                log.exception("a resync listener failed")

    def _deliver(self, data: bytes) -> None:
        try:
            event = decode_event(data)
        except Exception:
            log.exception("event bus: an event could not be read")
            return
        self._local.publish(event)

    async def _listen(self) -> None:
        delay = 0.05
        while not self._closed:
            try:
                await self._listen_direct()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event bus: connection lost (%s); reconnecting", exc)
                await asyncio.sleep(delay)
                delay = min(RECONNECT_MAX_SECONDS, delay * 2)
            else:
                delay = 0.05

    async def _listen_direct(self) -> None:
        """The subscription on a connection of its own, spoken to directly (resp.py): each event costs
        a hiredis parse, not redis-py's message machinery. A silent connection is pinged, and given
        up if it does not answer."""
        connection = resp.RespConnection(self.url)
        await connection.connect()
        try:
            connection.send([("SUBSCRIBE", self.channel)])
            while True:  # the subscription's confirmation
                reply = await connection.read()
                if isinstance(reply, Exception):
                    raise reply
                if reply and reply[0] == b"subscribe":
                    break
            self._subscribed_again()
            heard = [asyncio.get_running_loop().time()]
            watchdog = asyncio.get_running_loop().create_task(self._watch(connection, heard))
            try:
                while not self._closed:
                    reply = await connection.read()
                    heard[0] = -1.0  # (the watchdog reads the time itself: no clock read per event)
                    if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                        self._deliver(reply[2])
            finally:
                watchdog.cancel()
        finally:
            connection.close()

    @staticmethod
    async def _watch(connection: resp.RespConnection, heard: list[float]) -> None:
        """Pings a subscription silent for HEALTH_CHECK_SECONDS; closes it (the read loop then
        reconnects) when the ping is not answered within as long again."""
        loop = asyncio.get_running_loop()
        pinged = False
        while True:
            await asyncio.sleep(HEALTH_CHECK_SECONDS)
            if heard[0] < 0:  # something came since the last look
                heard[0], pinged = loop.time(), False
                continue
            if pinged:
                log.warning("event bus: no answer to a ping in %.0f s; reconnecting", HEALTH_CHECK_SECONDS)
                connection.close()
                return
            connection.send([("PING",)])
            pinged = True
