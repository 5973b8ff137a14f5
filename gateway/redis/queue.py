"""The shared work queue: a route's scheduler in Redis, and a stream of the jobs its workers took.

The Redis store queues a job in the same script that creates it: into its tenant's set of the route's
scheduler (``<prefix>sched:<route>:``, see keys.py), so a stored QUEUED job is always queued. A
worker's fetch loop takes the next jobs with one script (scripts.TAKE: the tenants in weighted round
robin, each tenant's most urgent job first), which gives each an entry in ``<prefix>queue:<route>``
and reads it at once under this consumer: the entry then stays pending under that worker (its lease)
until the job ends (XACK + XDEL). While a job runs its worker renews the lease (XCLAIM of its own
entry resets the entry's idle time) every third of the lease, so a long transcription is never taken
away; an entry idle for a whole lease belongs to a worker that died, and any worker reclaims it
(XAUTOCLAIM) and resumes the job, as a restart does (``max_attempts`` still holds: the store counts
attempts). At-least-once, made safe by the store's compare-and-set: a run whose job was taken over
cannot write it any more.

One fetch loop per process takes jobs, for as many as it has workers waiting (a route may have a
thousand workers: they share one loop, and the process never takes a job it has no worker for). With
nothing waiting it blocks on the route's wake list, where each Submit leaves a token.

Admission (``max_queue``): the store's create script counts the jobs waiting (the scheduler's
``waiting`` list, which KEDA reads too) and refuses a job beyond the limit in the same atomic step
that queues it, so replicas submitting at once cannot pass it together. The count kept here
(refreshed once a second) is only for ``len()``. Cancel needs nothing here: the store's script that
ends a queued job takes it out of the scheduler; a running one learns it from the event bus.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from gateway.redis import scripts
from gateway.redis.conn import RespConnection, pool
from gateway.redis.keys import GROUP, queue_key, sched_key
from gateway.tasks import cancel_and_wait
from gateway.work.queue import QueueClosed, QueueSnapshot

__all__ = ["GROUP", "RedisQueue", "consumer_name"]

log = logging.getLogger(__name__)

BLOCK_MS = 500
RUN_TIME_FRESH_SECONDS = 60.0  # a process's mean run time counts this long after it said it
ACK_GATHER_SECONDS = 0.1
_TAKE_SHA = hashlib.sha1(scripts.TAKE.encode()).hexdigest()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def consumer_name() -> str:
    """A process among the workers with no identity of its own: host, pid and a random tail (a
    restart is a new consumer, whose predecessor's jobs are taken over once their leases lapse)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _is_nogroup(exc: BaseException) -> bool:
    return "NOGROUP" in str(exc)


class RedisQueue:
    def __init__(self, url: str, route: str, maxsize: int, lease_seconds: float = 30.0, prefix: str = "gw:",
                 consumer: Callable[[], str] | None = None) -> None:
        """``consumer``: this process's name among the workers, asked for when the queue opens (the
        process's identity may depend on the port it bound); by default one of its own."""
        self.url = url
        self.route = route
        self.maxsize = maxsize
        self.lease_ms = int(lease_seconds * 1000)
        self.stream = queue_key(prefix, route)
        self.sched = sched_key(prefix, route)
        self.job_prefix = f"{prefix}job:"
        self._identity = consumer or consumer_name
        self.consumer = ""
        self._redis: Any = None
        self._reader: RespConnection | None = None  # the fetch loop's
        self._held: dict[str, str] = {}  # job id -> its entry id, while this process runs it
        self._taken_at: dict[str, float] = {}  # job id -> when it was fetched (loop time)
        self._waiting = 0  # entries not taken yet, as last counted
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._ready: asyncio.Queue[str | None] = asyncio.Queue()  # fetched, for the waiting workers
        self._acks: list[str] = []  # entries of ended jobs, acknowledged together
        self._ack_wanted = asyncio.Event()
        self._next_reclaim = 0.0
        self._wanted = 0  # workers waiting in get()
        self._want = asyncio.Event()
        self._lost: Callable[[str], None] = lambda job_id: None
        self._hold: Any = None
        self._stats: Any = None
        self._position: Any = None
        self._snapshot = QueueSnapshot()
        self._local_run_time: float | None = None  # this process's workers' mean, as the runner last said
        self._run_time: float | None = None  # every worker's (their means averaged), as last read

    async def open(self) -> None:
        self.consumer = self._identity()
        self._redis = pool(self.url, 8)
        self._hold = self._redis.register_script(scripts.HOLD)
        self._stats = self._redis.register_script(scripts.STATS)
        self._position = self._redis.register_script(scripts.POSITION)
        await self._ensure_group()
        await self._release_own()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._renew_forever(), name=f"queue-{self.route}-leases"),
                       loop.create_task(self._count_forever(), name=f"queue-{self.route}-count"),
                       loop.create_task(self._fetch_forever(), name=f"queue-{self.route}-fetch"),
                       loop.create_task(self._ack_forever(), name=f"queue-{self.route}-acks")]
        await self._count()

    async def _ensure_group(self) -> None:
        """The consumer group (and the stream): made at the first start, and again if Redis lost them
        (restarted empty, flushed, failed over to a replica that had not had them yet)."""
        try:
            await self._redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        else:
            log.info("queue %s: consumer group %s created on %s", self.route, GROUP, self.stream)

    async def _recover(self, exc: BaseException) -> None:
        """After a failed command: the consumer group made again if Redis lost it. Never raises (the
        loops that call it retry anyway)."""
        if not _is_nogroup(exc):
            return
        log.warning("queue %s: Redis lost the consumer group (restarted empty or flushed?); making it again",
                    self.route)
        try:
            await self._ensure_group()
        except Exception as again:
            log.warning("queue %s: making the consumer group failed (%s)", self.route, again)

    async def _release_own(self) -> None:
        """Entries still pending under this consumer's name belong to its previous life (a process that
        came back under the same identity after a crash): they are made idle past the lease at once, so
        the next look takes them over (here or on any worker) instead of waiting the lease out."""
        pending = await self._redis.xpending_range(self.stream, GROUP, min="-", max="+", count=10_000,
                                                   consumername=self.consumer)
        await self._hand_over([entry["message_id"] for entry in pending])
        if pending:
            log.info("queue %s: %d jobs of this worker's previous run are taken over at once", self.route, len(pending))

    async def _hand_over(self, entries: list[Any]) -> None:
        """Entries this consumer still holds become idle past the lease: any worker's next look takes them
        over, resuming their jobs where they stopped (one another worker holds now stays with it)."""
        if entries:
            await self._held_by_me(entries, idle_ms=10 * self.lease_ms + 3_600_000)
            self._next_reclaim = 0.0

    async def _held_by_me(self, entries: list[Any], idle_ms: int = 0) -> set[str]:
        """Of these entries, those another worker holds now or Redis no longer has; the others are renewed
        (``idle_ms`` 0) or handed over."""
        lost = await self._hold(keys=[self.stream], args=[GROUP, self.consumer, idle_ms, *entries])
        return {e.decode() if isinstance(e, bytes) else e for e in lost}

    async def aclose(self) -> None:
        held = list(self._held.values())  # interrupted by a drain: theirs to take at once, not after the lease
        self._held.clear()
        self._taken_at.clear()
        if held and self._redis is not None:
            try:
                await self._hand_over(held)
            except Exception as exc:
                log.warning("queue %s: handing %d jobs over failed (%s); they are taken over after the lease",
                            self.route, len(held), exc)
        self.close()
        self._ack_wanted.set()
        # (redis-py may turn a cancellation inside a command into a ConnectionError, or lose it, which
        # the loops survive: they are cancelled until they end, and also stop on _closed.)
        await cancel_and_wait(self._tasks)
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    # -- WorkQueue ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._waiting

    def __iter__(self) -> Iterator[str]:
        return iter(())  # positions in a shared queue are read live, at Get (not revisions)

    def waiting_of(self, tenant: str) -> int:
        return 0  # the store's create script counts the tenant's jobs (its set of the scheduler)

    def reserve(self) -> bool:
        # Admission is the store's: its create script counts the queue at the moment it adds the job.
        # A local count would be stale (another replica's jobs, a cancel a moment ago) and refuse wrongly.
        self._waiting += 1  # until the next count, for len()
        return True

    def release(self) -> None:
        self._waiting = max(0, self._waiting - 1)

    def put(self, job_id: str, reserved: bool = True, front: bool = False, tenant: str = "",
            priority: int = 3, created: float = 0.0) -> None:
        """Nothing to do: the store queued the job with it (and resumed jobs are reclaimed, not put)."""

    async def get(self) -> str:
        """The next job: a reclaimed one (its worker died) first, else a new one."""
        while True:
            if self._closed:
                raise QueueClosed
            self._wanted += 1
            self._want.set()
            try:
                job_id = await self._ready.get()
            finally:
                self._wanted -= 1
            if job_id is None:
                raise QueueClosed
            if await self._still_held(job_id):
                return job_id

    async def _still_held(self, job_id: str) -> bool:
        """A job fetched longer ago than half a lease (this process stalled since: nobody else can take an
        entry before it has been idle a whole lease) may be another worker's by now: it is run here only
        if its entry is still this consumer's (and renewed), else dropped, as a lease found lost is."""
        entry, taken = self._held.get(job_id), self._taken_at.get(job_id, 0.0)
        if entry is None:
            return False
        if asyncio.get_running_loop().time() - taken < self.lease_ms / 2000:
            return True
        try:
            lost = await self._held_by_me([entry])
        except Exception as exc:  # Redis unreachable: the attempt fence still keeps the job's writes right
            log.warning("queue %s: checking the lease of job %s failed (%s)", self.route, job_id, exc)
            return True
        if entry in lost and self._held.get(job_id) == entry:
            log.info("queue %s: job %s was taken over while this process stalled; not running it", self.route,
                     job_id)
            del self._held[job_id]
            self._taken_at.pop(job_id, None)
            return False
        return True

    async def _fetch_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            missing = self._wanted - self._ready.qsize()
            if missing <= 0:
                self._want.clear()
                await self._want.wait()
                continue
            try:
                taken: list[str] = []
                if loop.time() >= self._next_reclaim:  # a quarter lease (at most 1 s) between looks
                    self._next_reclaim = loop.time() + min(1.0, self.lease_ms / 4000)
                    taken = await self._reclaim(missing)
                if not taken:
                    taken = await self._read(missing)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("queue %s: %s; retrying", self.route, exc)
                await self._recover(exc)
                await asyncio.sleep(0.5)
                continue
            for job_id in taken:
                self._ready.put_nowait(job_id)

    def remove(self, job_id: str) -> bool:
        """A queued job is ended in the store, whose script deletes its entry: one fewer waits
        (counted again within a second anyway). False: nothing was taken out here."""
        self._waiting = max(0, self._waiting - 1)
        return False

    def position(self, job_id: str) -> int:
        return 0  # (not pushed as revisions: read live by live_position)

    def run_time(self, local: float | None) -> float | None:
        self._local_run_time = local  # published with the next count
        return self._run_time if self._run_time is not None else local

    async def consumers(self) -> list[tuple[str, int, float, bool]]:
        """XINFO CONSUMERS of the route's stream: every worker process that ever read it (a gone one stays
        listed, ever longer silent, until its name is reused or the group is reset)."""
        try:
            found = await self._redis.xinfo_consumers(self.stream, GROUP)
        except ResponseError:
            return []  # no group yet: no worker has looked
        consumers = []
        for raw in found:
            info = {_text(k): v for k, v in raw.items()}
            silent = info.get("idle", 0)  # since it last looked (its reclaim loop does, every second)
            silent_ms = max(0, int(silent))
            consumers.append((_text(info["name"]), int(info["pending"]), silent_ms / 1000, silent_ms < self.lease_ms))
        return consumers

    async def live_position(self, job_id: str, tenant: str) -> int:
        if self._position is None:
            return 0
        return int(await self._position(args=[self.sched, job_id, tenant]))

    def close(self) -> None:
        self._closed = True
        for _ in range(self._wanted):
            self._ready.put_nowait(None)  # every waiting worker: QueueClosed
        self._want.set()

    def task_done(self, job_id: str) -> None:
        """The job ended here (or was dropped): its entry leaves the stream."""
        entry = self._held.pop(job_id, None)
        self._taken_at.pop(job_id, None)
        if entry is not None:
            self._acks.append(entry)
            self._ack_wanted.set()

    def on_lost(self, callback: Callable[[str], None]) -> None:
        self._lost = callback

    def let_go(self, job_id: str) -> None:
        entry = self._held.pop(job_id, None)
        self._taken_at.pop(job_id, None)
        if entry is not None and not self._closed:
            asyncio.get_running_loop().create_task(self._hand_over_quietly(job_id, entry))

    async def _hand_over_quietly(self, job_id: str, entry: str) -> None:
        try:
            await self._hand_over([entry])
        except Exception as exc:  # taken over after the lease instead
            log.warning("queue %s: handing job %s over failed (%s)", self.route, job_id, exc)

    # -- Redis -------------------------------------------------------------------------------------

    async def _read(self, count: int) -> list[str]:
        """Up to ``count`` jobs from the route's scheduler (scripts.TAKE: fair share, then priority); with
        none waiting, a blocking wait (up to BLOCK_MS) for the token a Submit leaves, then a look again.
        On the fetch loop's own connection (a blocking read holds it), spoken to directly: one round trip
        per batch of jobs, without redis-py's per-command cost."""
        if self._reader is None or not self._reader.connected:
            self._reader = RespConnection(self.url, timeout=BLOCK_MS / 1000 + 30.0)
            await self._reader.connect()
        taken = await self._take_script(count)
        if taken:
            return taken
        [woken] = await self._reader.execute([("BLPOP", f"{self.sched}wake", BLOCK_MS / 1000)])
        if isinstance(woken, Exception):
            raise woken
        return await self._take_script(count) if woken else []

    async def _take_script(self, count: int) -> list[str]:
        assert self._reader is not None
        command = ("EVALSHA", _TAKE_SHA, 1, self.stream, self.sched, GROUP, self.consumer, count, self.job_prefix)
        [answer] = await self._reader.execute([command])
        if isinstance(answer, NoScriptError):  # Redis restarted (or flushed its scripts): load it again
            [_loaded, answer] = await self._reader.execute([("SCRIPT", "LOAD", scripts.TAKE), command])
        if isinstance(answer, Exception):
            raise answer
        return [self._take(entry_id, {b"job": job_id}) for job_id, entry_id in zip(answer[::2], answer[1::2], strict=True)]

    async def _reclaim(self, count: int) -> list[str]:
        answer = await self._redis.xautoclaim(self.stream, GROUP, self.consumer, min_idle_time=self.lease_ms,
                                              start_id="0-0", count=count)
        taken = [self._take(entry_id, fields) for entry_id, fields in (answer[1] if answer else []) if fields]
        for job_id in taken:
            log.info("queue %s: took job %s over from a worker that stopped renewing its lease", self.route, job_id)
        return taken

    def _take(self, entry_id: bytes, fields: dict[bytes, bytes]) -> str:
        job_id = fields[b"job"].decode()
        self._held[job_id] = entry_id.decode()
        self._taken_at[job_id] = asyncio.get_running_loop().time()
        self._waiting = max(0, self._waiting - 1)
        return job_id

    async def _ack_forever(self) -> None:
        while not self._closed:
            await self._ack_wanted.wait()
            # The store's script acknowledged the entries of jobs ended here already: this is for the
            # others (jobs found ended elsewhere), gathered a while, so it costs no round trip per job.
            await asyncio.sleep(ACK_GATHER_SECONDS)
            self._ack_wanted.clear()
            entries, self._acks = self._acks, []
            if not entries:
                continue
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.xack(self.stream, GROUP, *entries)
                    pipe.xdel(self.stream, *entries)
                    await pipe.execute()
            except Exception as exc:  # left pending: taken over after the lease, found done, dropped
                log.warning("queue %s: acknowledging %d entries failed (%s)", self.route, len(entries), exc)

    async def _renew_forever(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                await self.renew()
            except Exception as exc:
                log.warning("queue %s: renewing leases failed (%s)", self.route, exc)
                await self._recover(exc)

    async def renew(self) -> None:
        """Renews the leases of the jobs running here; a job whose entry another worker holds now (or
        that Redis no longer has) is let go: its run stops here, writing nothing more."""
        held = dict(self._held)
        if not held:
            return
        try:
            lost_entries = await self._held_by_me(list(held.values()))
        except Exception as exc:
            if not _is_nogroup(exc):
                raise
            lost_entries = set(held.values())  # the group is gone with its entries: so are the jobs (a flush)
            await self._recover(exc)
        for job_id, entry in held.items():
            if entry in lost_entries and self._held.get(job_id) == entry:
                del self._held[job_id]
                self._taken_at.pop(job_id, None)
                self._lost(job_id)

    async def _count(self) -> None:
        """The scheduler's figures (one read-only script: the waiting count is their sum) and run times."""
        await self._share_run_times()
        answer = await self._stats(args=[self.sched])
        oldest = answer[0].decode() if isinstance(answer[0], bytes) else answer[0]
        rest = answer[6:]
        self._snapshot = QueueSnapshot(
            by_priority={p: int(n) for p, n in enumerate(answer[1:6], start=1) if int(n)},
            oldest_created=float(oldest) / 1000 if oldest else None,
            tenants={(rest[i].decode() if isinstance(rest[i], bytes) else rest[i]): (int(rest[i + 1]), int(rest[i + 2]))
                     for i in range(0, len(rest), 3)},
        )
        self._waiting = sum(self._snapshot.by_priority.values())

    def snapshot(self) -> QueueSnapshot:
        return self._snapshot

    async def _share_run_times(self) -> None:
        """Each process that runs jobs leaves its mean run time in the scheduler's ``runtimes`` hash (with
        when); every process averages the fresh ones (a minute), for the estimated start of a queued job."""
        key, now = f"{self.sched}runtimes", time.time()
        if self._local_run_time is not None:
            await self._redis.hset(key, self.consumer, f"{self._local_run_time:.6f}|{now:.3f}")
            await self._redis.expire(key, 3600)
        fresh = []
        for name, value in (await self._redis.hgetall(key)).items():
            mean, _, when = value.decode().partition("|")
            try:
                if now - float(when) < RUN_TIME_FRESH_SECONDS:
                    fresh.append(float(mean))
                elif now - float(when) > 10 * RUN_TIME_FRESH_SECONDS:
                    await self._redis.hdel(key, name)
            except ValueError:
                await self._redis.hdel(key, name)
        self._run_time = sum(fresh) / len(fresh) if fresh else None

    async def _count_forever(self) -> None:
        while not self._closed:
            await asyncio.sleep(1.0)
            try:
                await self._count()
            except Exception as exc:
                log.debug("queue %s: counting failed (%s)", self.route, exc)
                await self._recover(exc)

    async def lag(self) -> int:
        """Jobs waiting for a worker (the length of the list KEDA's redis trigger reads)."""
        await self._count()
        return self._waiting

