"""The shared store: Redis (7.x) or Valkey, for several gateway replicas and worker processes.

Its keys are in ``keys``, the scripts that write them in ``scripts``, their JSON in ``codec``.

Admission is part of the create script: a route's ``max_queue`` (entries not taken by a worker: the
stream's length less its pending entries) and ``max_queued_bytes`` (the inputs Redis holds in memory
for jobs not ended) are checked and counted in the same atomic step that stores and queues the job,
so replicas submitting at once cannot pass a limit together.

Every revision is one Lua script: the compare-and-set on the job's revision and attempt, the job's
head, its revision entry, its new segments, its change position, when it ends its expiry (Redis
deletes a finished job at its expire time: retention is Redis expiry), and the PUBLISH of the event
on ``<prefix>events``, all at once: no replica sees an event that is not stored. So this store's
commit is the publisher of every event; the bus (``gateway.redis.bus``) only subscribes, and its
``publish`` sends nothing.

Writes from one process keep their order: the store's writer (``gateway.store.writer``, shared with
the SQLite engine: the order, the batches, the retries while Redis refuses or cannot be reached,
closing) takes them in the order they were handed over, this store sends each batch as one pipeline
of scripts (``_commit``), and the writer runs each one's ``on_commit`` in that order. Reads use the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.exceptions import BusyLoadingError, NoScriptError, OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway import metrics
from gateway.errors import Unavailable
from gateway.jobs import Clock, Job, Result, Segment, SystemClock, decode_result, encode_result, webhook_wanted
from gateway.redis import scripts
from gateway.redis.codec import decode_segments, dumps, fixed_length, job_delta, job_from_delta, job_from_json, job_json
from gateway.redis.conn import RespConnection, pool
from gateway.redis.keys import Keys
from gateway.settings import TenantSettings
from gateway.store import uploads
from gateway.store.base import (
    CreateOutcome,
    JobFilter,
    QueueFull,
    ResumableJob,
    RevisionConflict,
    TenantPolicy,
    WebhookClaim,
    Writability,
    keeps_inputs,
)
from gateway.store.writer import BatchFailed, CannotWrite, Outcome, TaskWriter
from gateway.tasks import cancel_and_wait

__all__ = ["RedisStore"]

log = logging.getLogger(__name__)

_MAX_BATCH = 512
UPLOAD_CHUNK_BYTES = 1024 * 1024  # an Upload's audio is kept in chunks of this size
UPLOAD_UNCLAIMED_SECONDS = 3600.0  # an upload whose job never got created (its replica died) expires
UNREACHABLE_SECONDS = 2.0  # Redis unreachable this long: the store says it cannot write (health NOT_SERVING)
EPOCH_CHECK_SECONDS = 1.0
# Error replies that mean "no write now, retry later": out of memory (maxmemory, noeviction), unable to
# persist (MISCONF), a replica (READONLY: a failover in progress), loading its data, not enough
# replicas, a script running. (redis-py turns OOM, READONLY and LOADING into exception classes.)
_CANNOT_WRITE = ("OOM", "MISCONF", "READONLY", "LOADING", "NOREPLICAS", "BUSY")


@dataclass(slots=True)
class _Write:
    command: tuple[Any, ...]  # one command (EVALSHA of a script), as sent
    decode: Callable[[Any], Any]  # the pipeline's answer for it -> the write's result (or raises)
    future: asyncio.Future[Any]
    on_commit: Callable[[Any], None] | None



class RedisStore:
    """Use as ``async with RedisStore("redis://host:6379/0") as store``. Its commits publish every
    revision on ``keys.events`` (see the module's docstring): it is the engine's only publisher."""

    shared = True

    def __init__(self, url: str, prefix: str = "gw:", clock: Clock | None = None, max_connections: int = 32,
                 queue_limits: Mapping[str, tuple[int, int]] | None = None,
                 tenants: Callable[[str], TenantPolicy] | None = None) -> None:
        """``queue_limits``: route -> (max_queue, max_queued_bytes), checked at each create (0: none);
        ``tenants``: a tenant's share of a route's workers and its own limits, checked there too."""
        self.url = url
        self.queue_limits = dict(queue_limits or {})
        unlimited = TenantSettings()
        self.tenants = tenants or (lambda tenant: unlimited)
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.clock = clock or SystemClock()
        self.max_connections = max_connections
        self.store_id = ""
        self._redis: Any = None
        self._writer: TaskWriter[_Write] | None = None
        self._position = 0
        self._scripts: dict[str, Any] = {}
        self._connection: RespConnection | None = None  # the writer's own
        self._writability = Writability("Redis refuses writes: out of memory? unreachable?")
        self._closing = False
        self._reset_listeners: list[Callable[[], None]] = []
        self._uploads: dict[str, int] = {}  # jobs about to be created with an upload kept: its bytes
        self.spool_dir: Path | None = None  # where a worker's copies of uploads go (None: the system's temp)
        self.keep_failed_inputs = True  # (Store.keep_failed_inputs)
        self._unreachable = False  # the epoch check could not reach Redis (health says so)
        self._epoch_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RedisStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        self._redis = pool(self.url, self.max_connections)
        await self._redis.set(self.keys.store_id, secrets.token_hex(8), nx=True)
        self.store_id = (await self._redis.get(self.keys.store_id)).decode()
        self._position = int(await self._redis.get(self.keys.position) or 0)
        await self._load_scripts()
        self._writer = TaskWriter("redis", self._commit, self._writability, max_batch=_MAX_BATCH, logger=log)
        self._writer.start()
        self._epoch_task = asyncio.get_running_loop().create_task(self._watch_epoch(), name="redis-epoch")

    def on_reset(self, listener: Callable[[], None]) -> None:
        """Calls ``listener()`` when the data in Redis is found not to be what the gateway wrote: Redis
        restarted without its data, was flushed, or failed over to a replica that was behind. Jobs may
        be gone or older than what was published; ``store_id`` is new (old resume tokens are refused)."""
        self._reset_listeners.append(listener)

    async def _watch_epoch(self) -> None:
        """Every EPOCH_CHECK_SECONDS: Redis is reachable (else the store reports itself unhealthy) and
        holds the data this process knows (else a new epoch, and the listeners are told)."""
        while not self._closing:
            await asyncio.sleep(EPOCH_CHECK_SECONDS)
            try:
                await self.check_epoch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._closing:
                    log.warning("redis store: %s", exc)
                    self._unreachable = True
                    self._set_writable(False, f"Redis unreachable: {exc}")
                continue
            if self._unreachable:
                self._unreachable = False
                self._set_writable(True)

    async def check_epoch(self) -> bool:
        """Whether the data was found reset (and the listeners told)."""
        current, position = await self._run_script(
            "epoch", [self.keys.store_id, self.keys.position], [self.store_id, secrets.token_hex(8), self._position])
        current = current.decode()
        if current == self.store_id:
            return False
        log.error("redis store: the data is not what was written (Redis restarted empty, was flushed, or failed over "
                  "to a replica that was behind: store id %s, now %s; change position %d, now %d); jobs that are gone "
                  "end their watchers with DATA_LOSS", self.store_id, current, self._position, int(position))
        self.store_id, self._position = current, int(position)
        for listener in list(self._reset_listeners):
            try:
                listener()
            except Exception:
                log.exception("a store reset listener failed")
        return True

    async def _load_scripts(self) -> None:
        for name, source in scripts.STORE.items():
            self._scripts[name] = await self._redis.script_load(source)

    def _evalsha(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> tuple[Any, ...]:
        return ("EVALSHA", self._scripts[name], len(keys), *keys, *args)

    async def _run_script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One script, outside the ordered writer; loaded again if Redis forgot it (a restart)."""
        try:
            return await self._redis.execute_command(*self._evalsha(name, keys, args))
        except NoScriptError:
            await self._load_scripts()
            return await self._redis.execute_command(*self._evalsha(name, keys, args))

    @property
    def writable(self) -> bool:
        return self._writability.writable

    def on_writable(self, listener: Callable[[bool], None]) -> None:
        """Calls ``listener(writable)`` whenever writing stops (Redis out of memory, unable to persist,
        a read-only replica, unreachable) or starts working again."""
        self._writability.listen(listener)

    def _set_writable(self, writable: bool, why: str = "") -> None:
        self._writability.set(writable, asyncio.get_running_loop(), why)

    async def close(self) -> None:
        self._closing = True  # writes waiting for Redis to accept them give up
        if self._epoch_task is not None:
            await cancel_and_wait([self._epoch_task])
            self._epoch_task = None
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    # -- the writer's step ------------------------------------------------------------------------

    async def _commit(self, batch: list[_Write]) -> Iterator[Outcome]:
        """The writer's step: the batch's scripts as one pipeline, and each write's outcome (decoded
        as the writer answers it, in order: decoding notes change positions). Redis unreachable (a
        restart, a failover) or refusing writes for now (out of memory, cannot persist, read-only):
        CannotWrite, and the writer sends the whole batch again, in order, until Redis takes it; every
        script answers a write it already applied as done, so a batch sent twice stores each revision
        once. After UNREACHABLE_SECONDS unreachable (more than a restart's blink) the store reports
        itself not writable meanwhile. While the store closes, the answers are final."""
        started = time.perf_counter()
        try:
            try:
                answers = await self._pipeline(batch)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if self._closing:
                    raise
                raise CannotWrite(f"Redis unreachable: {exc}", kind="unreachable", first_pause=0.05,
                                  report_after=UNREACHABLE_SECONDS, warn=f"redis store: {exc}") from None
            metrics.observe_commit("redis", len(batch), time.perf_counter() - started)
            errors = [a for a in answers if isinstance(a, Exception)]  # (usually none)
            if any(isinstance(a, NoScriptError) for a in errors):  # Redis restarted: scripts are gone
                await self._load_scripts()
                retry = [w for w, a in zip(batch, answers, strict=True) if isinstance(a, NoScriptError)]
                again = iter(await self._pipeline(retry))
                answers = [next(again) if isinstance(a, NoScriptError) else a for a in answers]
        except CannotWrite:
            raise
        except Exception as exc:  # the connection failed for the whole pipeline
            raise BatchFailed(exc) from None
        refused = next((a for a in answers if _cannot_write(a)), None) if errors else None
        if refused is not None and not self._closing:
            # Nothing of a refused script was applied, and a later write of the same job may have
            # failed its compare-and-set only because of it: the whole batch goes again, in order
            # (a script already applied answers as done), so no accepted job is stranded.
            raise CannotWrite(str(refused).split("\n")[0])
        return self._outcomes(batch, answers)

    @staticmethod
    def _outcomes(batch: list[_Write], answers: list[Any]) -> Iterator[Outcome]:
        for write, answer in zip(batch, answers, strict=True):
            try:
                if isinstance(answer, Exception):
                    raise answer
                result = write.decode(answer)
            except Exception as exc:
                yield None, _translate(exc)
                continue
            yield result, None

    async def _pipeline(self, batch: list[_Write]) -> list[Any]:
        if self._connection is None or not self._connection.connected:
            self._connection = RespConnection(self.url)
            await self._connection.connect()
        return await self._connection.execute([write.command for write in batch])

    def _submit(
        self, command: tuple[Any, ...], decode: Callable[[Any], Any], on_commit: Callable[[Any], None] | None = None
    ) -> asyncio.Future[Any]:
        if self._writer is None:
            raise RuntimeError("store is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._writer.put(_Write(command, decode, future, on_commit))
        return future

    def _seen(self, position: int) -> int:
        self._position = max(self._position, position)
        return position

    # -- writes ----------------------------------------------------------------------------------

    async def create_job(
        self, job: Job, request_hash: str, payload: bytes, on_commit: Callable[[Any], None] | None = None
    ) -> CreateOutcome:
        self._writability.check()
        request_key = self.keys.req(job.tenant, job.request_id) if job.request_id else self.keys.req_none
        keys = [self.keys.job(job.id), self.keys.revs(job.id), request_key, self.keys.jobs(job.tenant),
                self.keys.changes(job.tenant), self.keys.position, self.keys.active,
                self.keys.queue(job.route), self.keys.queue_bytes(job.route)]
        max_queue, max_bytes = self.queue_limits.get(job.route, (0, 0))
        args = [job.id, job_json(job), request_hash, payload, "1" if job.request_id else "0", self.keys.job(""),
                repr(job.created), job.tenant, job.request_id, self.keys.revs(""), self.keys.segs(""),
                self.keys.events, max_queue, max_bytes]
        uploaded = self._uploads.get(job.id)
        deadline = int((job.created + job.queue_timeout) * 1000) if job.queue_timeout else 0
        args += [uploaded or 0, self.keys.audio(job.id) if uploaded is not None else "", deadline,
                 self.keys.queue_deadlines, self.keys.sched(job.route), job.priority]
        policy = self.tenants(job.tenant)
        args += [repr(float(policy.weight)), policy.max_queued, repr(float(policy.submit_rate)), policy.burst,
                 self.keys.rate(job.tenant), policy.max_running, job_delta(job)]

        async def existing(job_id: str, stored_hash: str) -> CreateOutcome:
            found = await self.get_job(job_id)
            if found is None:  # expired meanwhile: try again, as a new job
                return await self.create_job(job, request_hash, payload, on_commit)
            return CreateOutcome(found, False, stored_hash)

        def decode(answer: Any) -> Any:
            created, job_id, stored_hash, position = answer
            if int(created) == 2:
                return QueueFull("QUEUE_FULL", int(position), max_queue)
            if int(created) == 3:
                return QueueFull("QUEUE_BYTES_FULL", int(position), max_bytes)
            if int(created) == 4:  # position: the wait for the tenant's next Submit, in ms
                return QueueFull("TENANT_RATE_LIMITED", 0, policy.burst, int(position) / 1000)
            if int(created) == 5:
                return QueueFull("TENANT_QUEUE_FULL", int(position), policy.max_queued)
            if int(created):
                return CreateOutcome(job, True, request_hash, self._seen(int(position)))
            return (job_id.decode(), stored_hash.decode() if stored_hash else "")

        def commit(outcome: Any) -> None:
            if on_commit is not None and isinstance(outcome, CreateOutcome):
                on_commit(outcome)

        result = await self._submit(self._evalsha("create", keys, args), decode, commit)
        if isinstance(result, CreateOutcome):
            self._uploads.pop(job.id, None)  # the job holds it now
            return result
        if isinstance(result, QueueFull):
            raise result
        return await existing(*result)

    def save_revision(
        self,
        job: Job,
        new_segments: Sequence[Segment] = (),
        result: Result | None = None,
        on_commit: Callable[[Any], None] | None = None,
        count_attempt: bool = False,
        attempt: int | None = None,
    ) -> Awaitable[None]:
        terminal = job.terminal
        now = self.clock.now()
        expires = job.expires if job.expires is not None else now
        ttl_ms = max(1, int((expires - now) * 1000))
        keys = [self.keys.job(job.id), self.keys.revs(job.id), self.keys.segs(job.id),
                self.keys.changes(job.tenant), self.keys.position, self.keys.active,
                self.keys.tomb(job.id), self.keys.expiring,
                self.keys.req(job.tenant, job.request_id) if job.request_id else self.keys.req_none,
                self.keys.queue(job.route), self.keys.webhook(job.id), self.keys.webhooks_due]
        segments = [dumps(s.to_dict()) for s in new_segments]
        marked = job.webhook is not None and webhook_wanted(job)
        fixed = fixed_length(job) if terminal else 0  # (before job_json, which forgets an ended job's fixed part)
        args: list[Any] = [
            job.id, job.revision - 1, -1 if attempt is None else attempt, 1 if count_attempt else 0, job.revision,
            job_json(job), len(job.segments), 1 if terminal else 0,
            encode_result(result) if result is not None else "", ttl_ms, 2 * ttl_ms, job.tenant, len(segments),
            *segments, repr(expires), repr(expires + (expires - now)), self.keys.events,
            repr(time.time()) if marked else "", job.webhook.url if marked and job.webhook else "",
            "1" if terminal and keeps_inputs(job, self.keep_failed_inputs) else "",
            fixed, job_delta(job),
        ]

        def decode(answer: Any) -> int:
            return self._seen(int(answer))

        future: Awaitable[None] = self._submit(self._evalsha("save", keys, args), decode, on_commit)
        return future

    async def save_checkpoint(self, job_id: str, checkpoint: Mapping[str, Any]) -> None:
        key = self.keys.job(job_id)
        if await self._redis.exists(key):
            await self._redis.hset(key, "ckpt", dumps(dict(checkpoint)))

    async def start_attempt(self, job_id: str) -> int:
        key = self.keys.job(job_id)
        if not await self._redis.exists(key):
            return 0
        return int(await self._redis.hincrby(key, "att", 1))

    async def spare_attempt(self, job_id: str, attempt: int) -> None:
        await self._run_script("spare", [self.keys.job(job_id)], [attempt])

    async def take_over(self, job_id: str) -> ResumableJob | None:
        answer = await self._run_script("take_over", [self.keys.job(job_id), self.keys.segs(job_id)], [])
        if not answer:
            return None
        head, attempts, checkpoint, raw_segments = answer
        return ResumableJob(job_from_json(head, decode_segments(raw_segments)), int(attempts),
                            json.loads(checkpoint) if checkpoint else None)

    async def delete(self, job_id: str, tombstone_until: float | None = None) -> None:
        ttl = 0 if tombstone_until is None else max(1, int((tombstone_until - self.clock.now()) * 1000))
        keys = [self.keys.job(job_id), self.keys.revs(job_id), self.keys.segs(job_id), self.keys.tomb(job_id),
                self.keys.jobs(""), self.keys.changes(""), self.keys.active, self.keys.expiring,
                self.keys.webhook(job_id), self.keys.webhooks_due]
        args = [job_id, ttl, self.keys.req_prefix, repr(tombstone_until or 0.0)]
        await self._run_script("delete", keys, args)

    async def sweep(self, now: float, tombstone_until: float) -> list[Job]:
        """Deletes the jobs expired by ``now`` (leaving tombstones) and what still names them.
        Redis' own expiry (set at each job's end) deletes them too, in real time: a safety net
        for a deployment where nobody sweeps."""
        ids = [i.decode() for i in await self._redis.zrangebyscore(self.keys.expiring, "-inf", now * 1000,
                                                                    start=0, num=5000)]
        expired = [job for job in await self._jobs(ids) if job is not None]
        for job_id in ids:
            await self.delete(job_id, tombstone_until)
        return expired

    # -- reads -----------------------------------------------------------------------------------

    async def _load(self, job_id: str, *fields: str) -> tuple[Job, list[Any]] | None:
        """The job whole (its head and segments, read at one moment, in one command: scripts.LOAD) and
        these other fields of its hash; None if it is gone."""
        head, raw_segments = await self._run_script("load", [self.keys.job(job_id), self.keys.segs(job_id)], fields)
        if head[0] is None:
            return None
        return job_from_json(head[0], decode_segments(raw_segments)), head[2:]

    async def get_job(self, job_id: str) -> Job | None:
        loaded = await self._load(job_id)
        return None if loaded is None else loaded[0]

    async def find_request(self, tenant: str, request_id: str, now: float) -> tuple[Job, str] | None:
        job_id = await self._redis.get(self.keys.req(tenant, request_id))
        loaded = None if job_id is None else await self._load(job_id.decode(), "req_hash")
        if loaded is None:
            return None
        job, (request_hash,) = loaded
        if job.expires is not None and job.expires <= now:
            return None
        return job, (request_hash or b"").decode()

    async def revisions_after(self, job_id: str, after: int, whole: bool = True) -> list[tuple[Job, int]]:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xrange(self.keys.revs(job_id), min=f"0-{max(after, 0)}", max="+")
            pipe.lrange(self.keys.segs(job_id), 0, -1)
            pipe.hmget(self.keys.job(job_id), "hist", "hn", "job")
            entries, raw_segments, (hist, fixed, final) = await pipe.execute()
        if not entries and hist:  # ended: its revisions were compacted into 'hist' (scripts.SAVE)
            entries = _history(hist, final, int(fixed or 0), after)
        if not entries:
            return []
        counts = [int(fields[b"seg"]) for _, fields in entries]
        segments = decode_segments(raw_segments[: max(counts)])
        base: dict[str, Any] | None = None
        out = []
        offset = 0
        for (entry_id, fields), count in zip(entries, counts, strict=True):
            revision = int(entry_id.decode().split("-")[1])
            if revision == after:
                offset = count
                continue
            shown = segments[:count] if whole else segments[offset:count]
            if b"d" in fields:  # a delta (codec.job_delta); the fixed fields are the job's, the same in every revision
                if base is None:
                    base = json.loads(final) if final is not None else {}
                out.append((job_from_delta(base, fields[b"d"], shown), offset))
            else:  # written before deltas: the whole JSON
                out.append((job_from_json(fields[b"job"], shown), offset))
            offset = count
        return out

    async def get_result(self, job_id: str) -> Result | None:
        raw = await self._redis.hget(self.keys.job(job_id), "result")
        return None if raw is None else decode_result(raw.decode())

    async def get_payload(self, job_id: str) -> bytes | None:
        raw = await self._redis.hget(self.keys.job(job_id), "payload")
        return None if raw is None else bytes(raw)

    async def queue_deadlines_due(self, now: float, limit: int = 100) -> list[str]:
        key = self.keys.queue_deadlines
        due = await self._redis.zrangebyscore(key, "-inf", int(now * 1000), start=0, num=limit)
        if due:
            await self._redis.zrem(key, *due)  # (two sweepers may both take one: ending it is a compare-and-set)
        return [d.decode() for d in due]

    async def put_upload(self, job_id: str, path: Path) -> None:
        """The file goes into a list of chunks (read and sent one at a time: memory stays a chunk's), which
        expires unless its job is created (CREATE makes it last as long as the job's inputs)."""
        key = self.keys.audio(job_id)
        size = 0
        try:
            await self._redis.delete(key)
            with await asyncio.to_thread(uploads.reader, path) as f:
                while chunk := await asyncio.to_thread(f.read, UPLOAD_CHUNK_BYTES):
                    size += len(chunk)
                    await self._redis.rpush(key, chunk)
                    del chunk
            await self._redis.pexpire(key, int(UPLOAD_UNCLAIMED_SECONDS * 1000))
        except redis.RedisError as exc:
            with contextlib.suppress(redis.RedisError):
                await self._redis.delete(key)
            raise Unavailable(f"the store could not keep the upload: {exc}", reason="STORE_UNAVAILABLE") from None
        finally:
            uploads.remove(path)
        self._uploads[job_id] = size

    async def open_upload(self, job_id: str) -> tuple[Path, bool] | None:
        key = self.keys.audio(job_id)
        count = await self._redis.llen(key)
        if not count:
            return None
        f, path = await asyncio.to_thread(uploads.new_copy, self.spool_dir)
        try:
            with f:
                for index in range(count):
                    chunk = await self._redis.lindex(key, index)
                    if chunk is None:  # the job ended (or was deleted) meanwhile
                        uploads.remove(path)
                        return None
                    await asyncio.to_thread(f.write, chunk)
                    del chunk
        except BaseException:
            uploads.remove(path)
            raise
        return path, True

    async def drop_upload(self, job_id: str) -> None:
        self._uploads.pop(job_id, None)
        await self._redis.delete(self.keys.audio(job_id))

    async def _jobs(self, ids: Sequence[str]) -> list[Job | None]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(self.keys.job(job_id), "job")
            raws = await pipe.execute()
        return [None if raw is None else job_from_json(raw) for raw in raws]

    async def list_jobs(self, tenant: str, flt: JobFilter, before_id: str | None, limit: int, now: float) -> list[Job]:
        index = self.keys.jobs(tenant)
        found: list[Job] = []
        upper = f"({before_id}" if before_id else "+"
        while len(found) < limit:
            ids = [i.decode() for i in await self._redis.zrevrangebylex(index, upper, "-", start=0, num=max(limit, 50))]
            if not ids:
                break
            for job in await self._jobs(ids):
                if job is None or (job.expires is not None and job.expires <= now) or not flt.matches(job):
                    continue
                found.append(job)
                if len(found) == limit:
                    break
            upper = f"({ids[-1]}"
        return found

    async def changed_since(
        self, tenant: str, flt: JobFilter, position: int, limit: int, now: float
    ) -> list[tuple[Job, int]]:
        index = self.keys.changes(tenant)
        found: list[tuple[Job, int]] = []
        lower = f"({position}"
        while len(found) < limit:
            pairs = await self._redis.zrangebyscore(index, lower, "+inf", start=0, num=max(limit, 50), withscores=True)
            if not pairs:
                break
            ids = [member.decode() for member, _ in pairs]
            for job, (_, score) in zip(await self._jobs(ids), pairs, strict=True):
                if job is None or (job.expires is not None and job.expires <= now) or not flt.matches(job):
                    continue
                found.append((job, int(score)))
                if len(found) == limit:
                    break
            lower = f"({int(pairs[-1][1])}"
        return found

    async def active_jobs(self, tenant: str) -> list[tuple[Job, int]]:
        ids = sorted(i.decode() for i in await self._redis.smembers(self.keys.active))
        jobs = [job for job in await self._jobs(ids) if job is not None and job.tenant == tenant and not job.terminal]
        if not jobs:
            return []
        # Read after the jobs: a position is that of the job's change read, or of a later one.
        positions = await self._redis.zmscore(self.keys.changes(tenant), [job.id for job in jobs])
        found = [(job, int(p)) for job, p in zip(jobs, positions, strict=True) if p is not None]
        return sorted(found, key=lambda pair: pair[1])

    def current_position(self) -> int:
        return self._position

    async def unfinished(self) -> list[ResumableJob]:
        ids = sorted(i.decode() for i in await self._redis.smembers(self.keys.active))
        found = [await self.resumable(job_id) for job_id in ids]
        return [r for r in found if r is not None]

    async def resumable(self, job_id: str) -> ResumableJob | None:
        loaded = await self._load(job_id, "att", "ckpt")
        if loaded is None:
            return None
        job, (attempts, checkpoint) = loaded
        return ResumableJob(job, int(attempts), json.loads(checkpoint) if checkpoint else None)

    async def tombstone(self, job_id: str, now: float) -> str | None:
        # Set in advance when the job ends (so Redis' own expiry leaves one too): while the job is
        # still there, it is no tombstone.
        raw, alive = await asyncio.gather(self._redis.get(self.keys.tomb(job_id)),
                                          self._redis.exists(self.keys.job(job_id)))
        if raw is None or alive:
            return None
        tenant, _, until = raw.decode().rpartition("|")
        return tenant if float(until) > now else None


    # -- webhooks --------------------------------------------------------------------------------

    def _webhook_keys(self, job_id: str) -> list[str]:
        return [self.keys.webhook(job_id), self.keys.webhooks_due, self.keys.job(job_id)]

    async def webhooks_due(self, now: float, limit: int, offset: int = 0) -> list[tuple[str, str]]:
        ids = await self._redis.zrangebyscore(self.keys.webhooks_due, "-inf", repr(now), start=offset, num=limit)
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(self.keys.webhook(job_id.decode()), "url")
            urls = await pipe.execute()
        for job_id, url in zip(ids, urls, strict=True):
            if url is None:  # its job expired: the claim script drops what is left of it
                await self.claim_webhook(job_id.decode(), now, now)
        return [(i.decode(), u.decode()) for i, u in zip(ids, urls, strict=True) if u is not None]

    async def webhook_next_due(self) -> float | None:
        first = await self._redis.zrange(self.keys.webhooks_due, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    async def claim_webhook(self, job_id: str, now: float, lease_until: float) -> WebhookClaim | None:
        answer = await self._run_script("claim_webhook", self._webhook_keys(job_id), [job_id, repr(now), repr(lease_until)])
        if not answer:
            return None
        pending, state = answer
        return WebhookClaim(job_id, int(pending), json.loads(state) if state else {}, lease_until)

    async def finish_webhook(self, job_id: str, state: Mapping[str, Any], examined: int, due_if_marked: float,
                             due: float | None, lease: float) -> bool:
        stored = await self._run_script("finish_webhook", self._webhook_keys(job_id), [
            job_id, dumps(dict(state)), examined, repr(due_if_marked), "" if due is None else repr(due), repr(lease)])
        return bool(stored)

    async def webhook_state(self, job_id: str) -> dict[str, Any] | None:
        raw = await self._redis.hget(self.keys.webhook(job_id), "state")
        return json.loads(raw) if raw else None


def _cannot_write(answer: Any) -> bool:
    if isinstance(answer, OutOfMemoryError | ReadOnlyError | BusyLoadingError):  # redis-py's names for some
        return True
    return isinstance(answer, ResponseError) and str(answer).split(" ", 1)[0] in _CANNOT_WRITE


def _translate(exc: Exception) -> Exception:
    if str(exc).startswith("CONFLICT"):
        return RevisionConflict(str(exc).removeprefix("CONFLICT "))
    return exc


def _history(hist: bytes, final: bytes, fixed_length: int, after: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """An ended job's compacted revisions (its 'hist' field) as the stream's entries were, from ``after`` on;
    ``final``: its last revision's JSON ('job'), whose first ``fixed_length`` bytes every revision shares."""
    fixed = final[:fixed_length]
    entries = []
    for line in hist.split(b"\n"):
        revision, count, rest = line.split(b"|", 2)
        if int(revision) < after:
            continue
        kind = rest[:1]
        if kind == b"~":
            entries.append((b"0-" + revision, {b"d": rest[1:], b"seg": count}))
            continue
        json_text = final if kind == b"^" else fixed + rest[1:] if kind == b"+" else rest[1:]
        entries.append((b"0-" + revision, {b"job": json_text, b"seg": count}))
    return entries
