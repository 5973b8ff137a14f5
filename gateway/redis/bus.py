"""The event bus across replicas: Redis pub/sub, one subscription per process.

This bus only subscribes. The publisher is the Redis store's commit: its scripts PUBLISH each
committed revision in the same atomic step that stores it (so no replica sees an event that is not
stored), on one channel, ``<prefix>events`` (``gateway.redis.scripts``). Every process subscribes
once and hands each event to its local subscribers (the hub); ``publish`` has nothing to send
(``publishes`` says so). An event carries the job as of the revision without its earlier segments:
the segments the revision added, from ``segments_offset`` on (``JobEvent.partial``), which is all a
watcher needs (``gateway.redis.codec`` reads it).

Pub/sub delivers at most once: while the connection is down, events are lost. After a reconnection
the bus tells its resync listeners, and they read what they missed from the store (a job's watchers
from its revisions, a dashboard from the change positions), so no watcher misses a revision.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.bus.base import Handler, Unsubscribe
from gateway.bus.memory import MemoryBus
from gateway.hub import JobEvent
from gateway.redis.codec import decode_event
from gateway.redis.conn import RespConnection
from gateway.redis.keys import Keys
from gateway.tasks import cancel_and_wait

__all__ = ["RedisBus"]

log = logging.getLogger(__name__)

RECONNECT_MAX_SECONDS = 2.0
HEALTH_CHECK_SECONDS = 10.0  # a subscription silent this long is pinged


class RedisBus:
    """An EventBus whose events come from the Redis store's commits (``publishes`` is False)."""

    publishes = False  # RedisStore's commit scripts PUBLISH every revision: nothing is left to send here

    def __init__(self, url: str, prefix: str = "gw:") -> None:
        self.url = url
        self.channel = Keys(prefix).events
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
            await cancel_and_wait([self._task])
            self._task = None
        await self._local.close()

    def publish(self, event: JobEvent) -> None:
        """Sends nothing: RedisStore's commit published the event already, in the same script that
        stored it (scripts.CREATE, scripts.SAVE); each process's subscription brings it back here."""

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
        """The subscription on a connection of its own, spoken to directly (conn.RespConnection): each event costs
        a hiredis parse, not redis-py's message machinery. A silent connection is pinged, and given
        up if it does not answer."""
        connection = RespConnection(self.url)
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
    async def _watch(connection: RespConnection, heard: list[float]) -> None:
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
