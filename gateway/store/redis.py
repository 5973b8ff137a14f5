"""The shared store: Redis (7.x) or Valkey, for several gateway replicas and worker processes.

Keys (``<prefix>`` is ``gw:`` by default; one standalone Redis or a Sentinel-managed primary, not a
Cluster: scripts touch a job's keys and the global indexes together):

    <prefix>job:<id>        hash: job (JSON, without segments), rev, att, seg (segment count), pos,
                            tenant, request_id, req_hash, expires, payload, ckpt, result; until the
                            job ends, qb and qk: its input's bytes and the counter they count in
    <prefix>revs:<id>       stream, entry id 0-<revision>: job (JSON), seg (segment count then)
    <prefix>segs:<id>       list: the segments, in order (each once, whatever the revisions)
    <prefix>req:<tenant>:<request_id>   string: the job id (idempotency)
    <prefix>jobs:<tenant>   sorted set of job ids, all scores 0: by id, so by creation (List)
    <prefix>changes:<tenant>  sorted set: job id -> position of its latest change (WatchJobs resume)
    <prefix>active          set of the ids of QUEUED and RUNNING jobs
    <prefix>expiring        sorted set: job id -> expiry (ms): the index entries sweep() removes
    <prefix>tomb:<id>       string: the tenant of an expired or deleted job, until its tombstone ends
    <prefix>queue:<route>   stream of queued job ids (a consumer group of the route's workers)
    <prefix>queue-bytes:<route>  counter: input bytes of the route's jobs not ended yet
    <prefix>position        counter: change positions, in commit order
    <prefix>store_id        string: identifies this data (resume tokens carry it)

Admission is part of the create script: a route's ``max_queue`` (entries not taken by a worker: the
stream's length less its pending entries) and ``max_queued_bytes`` (the inputs Redis holds in memory
for jobs not ended) are checked and counted in the same atomic step that stores and queues the job,
so replicas submitting at once cannot pass a limit together.

Every revision is one Lua script: the compare-and-set on the job's revision and attempt, the job's
head, its revision entry, its new segments, its change position, when it ends its expiry (Redis
deletes a finished job at its expire time: retention is Redis expiry), and the PUBLISH of the event
on ``<prefix>events`` (gateway.bus.redis), all at once: no replica sees an event that is not stored.

Writes from one process keep their order: a single writer task sends them in pipelines, in the
order they were handed over, and runs each one's ``on_commit`` in that order. Reads use the pool.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import BusyLoadingError, NoScriptError, OutOfMemoryError, ReadOnlyError, ResponseError

from gateway import metrics
from gateway.jobs import (
    Clock,
    Job,
    JobFailure,
    JobState,
    Result,
    Segment,
    SystemClock,
    WebhookSpec,
    decode_result,
    encode_result,
    webhook_wanted,
)
from gateway.store import resp
from gateway.store.base import (
    CreateOutcome,
    JobFilter,
    QueueFull,
    ResumableJob,
    RevisionConflict,
    WebhookClaim,
    Writability,
)

__all__ = ["RedisStore", "job_from_dict", "job_from_json", "queue_bytes_key", "queue_key"]

log = logging.getLogger(__name__)

_MAX_BATCH = 512
UNREACHABLE_SECONDS = 2.0  # Redis unreachable this long: the store says it cannot write (health NOT_SERVING)
# Error replies that mean "no write now, retry later": out of memory (maxmemory, noeviction), unable to
# persist (MISCONF), a replica (READONLY: a failover in progress), loading its data, not enough
# replicas, a script running. (redis-py turns OOM, READONLY and LOADING into exception classes.)
_CANNOT_WRITE = ("OOM", "MISCONF", "READONLY", "LOADING", "NOREPLICAS", "BUSY")

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'created_as') == ARGV[2] then  -- this very create, sent again: done
    return {1, ARGV[1], ARGV[3], tonumber(redis.call('HGET', KEYS[1], 'pos'))}
  end
  return redis.error_reply('EXISTS job ' .. ARGV[1])
end
local has_request = ARGV[5] == '1'
if has_request then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    local key = ARGV[6] .. existing
    local expires = redis.call('HGET', key, 'expires')
    if expires and (expires == '' or tonumber(expires) > tonumber(ARGV[7])) then
      return {0, existing, redis.call('HGET', key, 'req_hash'), 0}
    end
    if expires then  -- expired, not swept yet: the key is free again, and the old job goes
      redis.call('DEL', key, ARGV[10] .. existing, ARGV[11] .. existing)
      redis.call('ZREM', KEYS[4], existing)
      redis.call('ZREM', KEYS[5], existing)
      redis.call('SREM', KEYS[7], existing)
    end
  end
end
local size = #ARGV[4]
local max_queue, max_bytes = tonumber(ARGV[13]), tonumber(ARGV[14])
if max_queue > 0 then  -- entries no worker has taken yet
  local waiting = redis.call('XLEN', KEYS[8])
  local pending = redis.pcall('XPENDING', KEYS[8], 'workers')  -- an error until the group exists
  if type(pending) == 'table' and pending[1] then waiting = waiting - tonumber(pending[1]) end
  if waiting >= max_queue then return {2, '', '', waiting} end
end
local held = tonumber(redis.call('GET', KEYS[9]) or '0')
if max_bytes > 0 and held + size > max_bytes then return {3, '', '', held} end
redis.call('INCRBY', KEYS[9], size)
local pos = redis.call('INCR', KEYS[6])
redis.call('HSET', KEYS[1], 'job', ARGV[2], 'created_as', ARGV[2], 'rev', 1, 'att', 0, 'seg', 0, 'pos', pos, 'tenant', ARGV[8],
           'request_id', ARGV[9], 'req_hash', ARGV[3], 'payload', ARGV[4], 'expires', '', 'qb', size, 'qk', KEYS[9])
redis.call('XADD', KEYS[2], '0-1', 'job', ARGV[2], 'seg', 0)
if has_request then redis.call('SET', KEYS[3], ARGV[1]) end
redis.call('ZADD', KEYS[4], 0, ARGV[1])
redis.call('ZADD', KEYS[5], pos, ARGV[1])
redis.call('SADD', KEYS[7], ARGV[1])
local entry = redis.call('XADD', KEYS[8], '*', 'job', ARGV[1])  -- queued for the route's workers, at once
redis.call('HSET', KEYS[1], 'entry', entry)
redis.call('PUBLISH', ARGV[12], ARGV[1] .. '|1|0|' .. pos .. '|0|' .. #ARGV[8] .. '|' .. ARGV[8] .. '{"j":' .. ARGV[2] .. ',"s":[]}')
return {1, ARGV[1], ARGV[3], pos}
"""

# KEYS: job, revs, segs, changes, position, active, tomb, expiring, req, queue, webhook, webhooks due
# ARGV: id, expected revision, attempt (-1: any), count attempt (0/1), revision, job JSON, segment
#       count, terminal (0/1), result ('' none), ttl ms, tombstone ttl ms, tenant, n new segments,
#       segments..., expires, tombstone end, events channel, webhook mark (now; '' none), webhook URL
_SAVE = """
local cur = redis.call('HMGET', KEYS[1], 'rev', 'att', 'job', 'pos')
if not cur[1] then return redis.error_reply('CONFLICT job ' .. ARGV[1] .. ' is gone') end
if tonumber(cur[1]) == tonumber(ARGV[5]) and cur[3] == ARGV[6] then
  return tonumber(cur[4])  -- this very revision, sent again after a lost answer: already stored
end
local att = tonumber(cur[2]) + tonumber(ARGV[4])
if tonumber(cur[1]) ~= tonumber(ARGV[2]) or (tonumber(ARGV[3]) >= 0 and att ~= tonumber(ARGV[3])) then
  return redis.error_reply('CONFLICT job ' .. ARGV[1] .. ' is at revision ' .. cur[1] .. ' (attempt ' .. cur[2] ..
                           '), not ' .. ARGV[2] .. ' (attempt ' .. ARGV[3] .. ')')
end
local pos = redis.call('INCR', KEYS[5])
local count = tonumber(ARGV[7])
local n = tonumber(ARGV[13])
redis.call('HSET', KEYS[1], 'job', ARGV[6], 'rev', ARGV[5], 'att', att, 'seg', count, 'pos', pos)
redis.call('XADD', KEYS[2], '0-' .. ARGV[5], 'job', ARGV[6], 'seg', count)
if n > 0 then
  redis.call('LTRIM', KEYS[3], 0, count - n - 1)
  redis.call('RPUSH', KEYS[3], unpack(ARGV, 14, 13 + n))
end
redis.call('ZADD', KEYS[4], pos, ARGV[1])
local mark = ARGV[17 + n]
if mark ~= '' then  -- a revision the job's webhook may want: due now, unless a dispatcher holds it
  redis.call('HSET', KEYS[11], 'pending', ARGV[5], 'url', ARGV[18 + n])
  if tonumber(redis.call('HGET', KEYS[11], 'lease') or '0') <= tonumber(mark) then
    local due = redis.call('ZSCORE', KEYS[12], ARGV[1])
    if (not due) or tonumber(due) > tonumber(mark) then redis.call('ZADD', KEYS[12], mark, ARGV[1]) end
  end
end
if ARGV[8] == '1' then
  local ttl = tonumber(ARGV[10])
  if ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[9]) end
  local qb = redis.call('HMGET', KEYS[1], 'qb', 'qk')
  if qb[1] then redis.call('DECRBY', qb[2], qb[1]) end  -- its input no longer counts against the queue
  redis.call('HDEL', KEYS[1], 'payload', 'ckpt', 'qb', 'qk')
  redis.call('HSET', KEYS[1], 'expires', ARGV[14 + n])
  redis.call('SREM', KEYS[6], ARGV[1])
  local entry = redis.call('HGET', KEYS[1], 'entry')
  if entry then  -- an ended job leaves its route's queue, and its worker's pending list (group: work.redis.GROUP)
    redis.call('XACK', KEYS[10], 'workers', entry)
    redis.call('XDEL', KEYS[10], entry)
  end
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
  if redis.call('EXISTS', KEYS[9]) == 1 then redis.call('PEXPIRE', KEYS[9], ttl) end
  if redis.call('EXISTS', KEYS[11]) == 1 then redis.call('PEXPIRE', KEYS[11], ttl) end
  redis.call('SET', KEYS[7], ARGV[12] .. '|' .. ARGV[15 + n], 'PX', tonumber(ARGV[11]))
  redis.call('ZADD', KEYS[8], tonumber(ARGV[14 + n]) * 1000, ARGV[1])
end
local segments = ''
if n > 0 then segments = table.concat(ARGV, ',', 14, 13 + n) end
redis.call('PUBLISH', ARGV[16 + n], ARGV[1] .. '|' .. ARGV[5] .. '|' .. ARGV[8] .. '|' .. pos .. '|' .. (count - n) .. '|' ..
           #ARGV[12] .. '|' .. ARGV[12] .. '{"j":' .. ARGV[6] .. ',"s":[' .. segments .. ']}')
return pos
"""

# KEYS: job, revs, segs, tomb, jobs index, changes, active, expiring, webhook, webhooks due
# ARGV: id, tombstone ttl ms (0: none), req prefix
_DELETE = """
local tenant = redis.call('HGET', KEYS[1], 'tenant')
if not tenant then
  -- Expired by Redis before a sweep came (the usual case: both happen at the job's expiry): what still
  -- names the job goes, or the sweep would find it again forever. The tenant is the tombstone's.
  local tomb = redis.call('GET', KEYS[4])
  local owner = tomb and string.match(tomb, '^(.*)|[^|]*$')
  if owner then
    redis.call('ZREM', KEYS[5] .. owner, ARGV[1])
    redis.call('ZREM', KEYS[6] .. owner, ARGV[1])
    if tonumber(ARGV[2]) > 0 then redis.call('SET', KEYS[4], owner .. '|' .. ARGV[4], 'PX', tonumber(ARGV[2])) end
  end
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[9])
  redis.call('SREM', KEYS[7], ARGV[1])
  redis.call('ZREM', KEYS[8], ARGV[1])
  redis.call('ZREM', KEYS[10], ARGV[1])
  return 0
end
local request_id = redis.call('HGET', KEYS[1], 'request_id')
local qb = redis.call('HMGET', KEYS[1], 'qb', 'qk')
if qb[1] then redis.call('DECRBY', qb[2], qb[1]) end  -- a job deleted before it ended
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[4], tenant .. '|' .. ARGV[4], 'PX', tonumber(ARGV[2]))
else
  redis.call('DEL', KEYS[4])  -- forgotten, not expired: no tombstone, not even the one set in advance
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
if request_id and request_id ~= '' then
  local req = ARGV[3] .. tenant .. ':' .. request_id
  if redis.call('GET', req) == ARGV[1] then redis.call('DEL', req) end
end
redis.call('ZREM', KEYS[5] .. tenant, ARGV[1])
redis.call('ZREM', KEYS[6] .. tenant, ARGV[1])
redis.call('SREM', KEYS[7], ARGV[1])
redis.call('ZREM', KEYS[8], ARGV[1])
redis.call('DEL', KEYS[9])
redis.call('ZREM', KEYS[10], ARGV[1])
return 1
"""

# KEYS: webhook, webhooks due, job; ARGV: id, now, lease until
_CLAIM_WEBHOOK = """
if redis.call('EXISTS', KEYS[3]) == 0 then  -- the job is gone (expired): so is its webhook
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[1])
  return false
end
local due = redis.call('ZSCORE', KEYS[2], ARGV[1])
if (not due) or tonumber(due) > tonumber(ARGV[2]) then return false end
if tonumber(redis.call('HGET', KEYS[1], 'lease') or '0') > tonumber(ARGV[2]) then return false end
redis.call('HSET', KEYS[1], 'lease', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])  -- hidden from the others until the lease runs out
return {redis.call('HGET', KEYS[1], 'pending') or '0', redis.call('HGET', KEYS[1], 'state') or ''}
"""

# KEYS: webhook, webhooks due, job
# ARGV: id, state JSON, examined revision, due if marked since, due ('' none), the claim's lease
_FINISH_WEBHOOK = """
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[1])
  return 0
end
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[6] then return 0 end  -- the claim ran out (maybe another's now)
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'lease', 0)
local due = ARGV[5]
if tonumber(redis.call('HGET', KEYS[1], 'pending') or '0') > tonumber(ARGV[3]) then due = ARGV[4] end
if due == '' then redis.call('ZREM', KEYS[2], ARGV[1]) else redis.call('ZADD', KEYS[2], due, ARGV[1]) end
return 1
"""


_SPARE = """
local att = tonumber(redis.call('HGET', KEYS[1], 'att'))
if att and att == tonumber(ARGV[1]) and att > 0 then redis.call('HINCRBY', KEYS[1], 'att', -1) end
return 0
"""


# KEYS: job, segs. A worker taking a job over counts its attempt and reads the job in the same step: a
# write of the previous holder's attempt is either in what it reads or refused afterwards (the save
# script fences each write by its attempt), never lost between the two.
_TAKE_OVER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local att = redis.call('HINCRBY', KEYS[1], 'att', 1)
local head = redis.call('HMGET', KEYS[1], 'job', 'seg', 'ckpt')
local segs = redis.call('LRANGE', KEYS[2], 0, tonumber(head[2]) - 1)
return {head[1], att, head[3] or '', segs}
"""


# KEYS: store_id, position; ARGV: the store id this process knows, a new one, the highest change position
# it has seen committed. The store id names the data (resume tokens carry it): Redis restarted empty or
# flushed has none, and a failover to a replica that was behind has a position lower than one already
# committed; either way the data is not what the gateway wrote, and a new id is set (once: the replica
# that comes first sets it, the others find it) that every process then adopts.
_EPOCH = """
local current = redis.call('GET', KEYS[1])
local position = tonumber(redis.call('GET', KEYS[2]) or '0')
if (not current) or (current == ARGV[1] and position < tonumber(ARGV[3])) then
  redis.call('SET', KEYS[1], ARGV[2])
  current = ARGV[2]
end
return {current, position}
"""
EPOCH_CHECK_SECONDS = 1.0


def queue_key(prefix: str, route: str) -> str:
    """The stream a route's queued jobs wait in (gateway.work.redis reads it)."""
    return f"{prefix}queue:{route}"


def queue_bytes_key(prefix: str, route: str) -> str:
    """The counter of the input bytes of a route's jobs that have not ended (Redis holds them)."""
    return f"{prefix}queue-bytes:{route}"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# job id -> (the fixed fields, the labels mapping, their JSON): revisions of one job share the labels
# object, so a hit costs a few comparisons; anything else (another job under the same id) is made afresh.
_STATIC_JSON: dict[str, tuple[tuple[Any, ...], Any, str]] = {}
_STATIC_JSON_MAX = 100_000


def _number(value: float | None) -> str:
    return "null" if value is None else repr(value)  # (finite: times and progress)


def _job_json(job: Job) -> str:
    """The job as stored and published: its fixed fields' JSON (made once per job), then the others."""
    fixed = (job.tenant, job.route, job.created, job.request_id, job.webhook)
    cached = _STATIC_JSON.get(job.id)
    if cached is not None and cached[1] is job.labels and cached[0] == fixed:
        static = cached[2]
    else:
        if len(_STATIC_JSON) >= _STATIC_JSON_MAX:
            _STATIC_JSON.clear()
        static = _dumps({
            "id": job.id, "tenant": job.tenant, "route": job.route, "created": job.created, "labels": dict(job.labels),
            "request_id": job.request_id, **({} if job.webhook is None else {"webhook": job.webhook.to_dict()}),
        })[:-1]
        _STATIC_JSON[job.id] = (fixed, job.labels, static)
    if job.terminal:
        _STATIC_JSON.pop(job.id, None)
    error = "null" if job.error is None else _dumps(job.error.to_dict())
    return (f'{static},"state":{int(job.state)},"revision":{job.revision},"progress":{_number(job.progress)},'
            f'"started":{_number(job.started)},"finished":{_number(job.finished)},"expires":{_number(job.expires)},'
            f'"error":{error},"queue_position":{job.queue_position}}}')


def job_from_json(text: str | bytes, segments: tuple[Segment, ...] = ()) -> Job:
    return job_from_dict(json.loads(text), segments)


def job_from_dict(data: Mapping[str, Any], segments: tuple[Segment, ...] = ()) -> Job:
    return Job(
        id=data["id"], tenant=data["tenant"], route=data["route"], state=JobState(data["state"]),
        revision=data["revision"], created=data["created"], progress=data["progress"], started=data["started"],
        finished=data["finished"], expires=data["expires"], labels=data["labels"],
        error=JobFailure.from_dict(data["error"]) if data["error"] else None, segments=segments,
        queue_position=data["queue_position"], request_id=data["request_id"],
        webhook=WebhookSpec.from_dict(data.get("webhook")),
    )


@dataclass(slots=True)
class _Write:
    command: tuple[Any, ...]  # one command (EVALSHA of a script), as sent
    decode: Callable[[Any], Any]  # the pipeline's answer for it -> the write's result (or raises)
    future: asyncio.Future[Any]
    on_commit: Callable[[Any], None] | None


class RedisStore:
    """Use as ``async with RedisStore("redis://host:6379/0") as store``."""

    shared = True

    def __init__(self, url: str, prefix: str = "gw:", clock: Clock | None = None, max_connections: int = 32,
                 queue_limits: Mapping[str, tuple[int, int]] | None = None) -> None:
        """``queue_limits``: route -> (max_queue, max_queued_bytes), checked at each create (0: none)."""
        self.url = url
        self.queue_limits = dict(queue_limits or {})
        self.prefix = prefix
        self.clock = clock or SystemClock()
        self.max_connections = max_connections
        self.store_id = ""
        self._redis: Any = None
        self._writes: asyncio.Queue[_Write | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._position = 0
        self._scripts: dict[str, Any] = {}
        self._connection: resp.RespConnection | None = None  # the writer's own
        self._writability = Writability("Redis refuses writes: out of memory? unreachable?")
        self._closing = False
        self._reset_listeners: list[Callable[[], None]] = []
        self._unreachable = False  # the epoch check could not reach Redis (health says so)
        self._epoch_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RedisStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        # A blocking pool: a burst of reads waits for a connection instead of failing.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url, max_connections=self.max_connections, timeout=30, health_check_interval=10,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=8),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        await self._redis.set(self._key("store_id"), secrets.token_hex(8), nx=True)
        self.store_id = (await self._redis.get(self._key("store_id"))).decode()
        self._position = int(await self._redis.get(self._key("position")) or 0)
        await self._load_scripts()
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="redis-writer")
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
            "epoch", [self._key("store_id"), self._key("position")], [self.store_id, secrets.token_hex(8), self._position])
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
        for name, source in (("create", _CREATE), ("save", _SAVE), ("delete", _DELETE), ("spare", _SPARE),
                             ("take_over", _TAKE_OVER), ("epoch", _EPOCH), ("claim_webhook", _CLAIM_WEBHOOK),
                             ("finish_webhook", _FINISH_WEBHOOK)):
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
            self._epoch_task.cancel()
            await asyncio.wait([self._epoch_task], timeout=5)
            self._epoch_task = None
        if self._writer is not None:
            await self._writes.put(None)
            await self._writer
            self._writer = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    # -- the writer ------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            first = await self._writes.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < _MAX_BATCH and not self._writes.empty():
                item = self._writes.get_nowait()
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                await self._commit(batch)
            except Exception as exc:  # a bug: fail the batch, keep the writer alive
                log.exception("redis writer failed")
                for write in batch:
                    if not write.future.done():
                        write.future.set_exception(exc)
            del first, batch  # not kept while waiting for the next write: inputs may be MiBs
            if stop:
                return

    async def _commit(self, batch: list[_Write]) -> None:
        delay = 0.1
        while True:
            started = time.perf_counter()
            try:
                answers = await self._pipeline_retrying(batch)
                metrics.observe_commit("redis", len(batch), time.perf_counter() - started)
                errors = [a for a in answers if isinstance(a, Exception)]  # (usually none)
                if any(isinstance(a, NoScriptError) for a in errors):  # Redis restarted: scripts are gone
                    await self._load_scripts()
                    retry = [w for w, a in zip(batch, answers, strict=True) if isinstance(a, NoScriptError)]
                    again = iter(await self._pipeline(retry))
                    answers = [next(again) if isinstance(a, NoScriptError) else a for a in answers]
            except Exception as exc:  # the connection failed for the whole pipeline
                for write in batch:
                    if not write.future.done():
                        write.future.set_exception(exc)
                return
            refused = next((a for a in answers if _cannot_write(a)), None) if errors else None
            if refused is None or self._closing:
                break
            # Redis refuses writes for now (out of memory, cannot persist, read-only): nothing of a
            # refused script was applied, and a later write of the same job may have failed its
            # compare-and-set only because of it. The whole batch goes again, in order, until Redis
            # takes it (a script already applied answers as done): no accepted job is stranded.
            self._set_writable(False, str(refused).split("\n")[0])
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)
        self._set_writable(True)
        for write, answer in zip(batch, answers, strict=True):
            try:
                if isinstance(answer, Exception):
                    raise answer
                result = write.decode(answer)
            except Exception as exc:
                if not write.future.done():
                    write.future.set_exception(_translate(exc))
                continue
            if write.on_commit is not None:
                try:
                    write.on_commit(result)
                except Exception:
                    log.exception("on_commit callback failed")
            if not write.future.done():
                write.future.set_result(result)

    async def _pipeline_retrying(self, batch: list[_Write]) -> list[Any]:
        """The batch's answers; while Redis is unreachable (a restart, a failover), the batch is
        sent again until it goes through or the store closes (after UNREACHABLE_SECONDS the store
        reports itself not writable meanwhile): every script answers a write it already applied as
        done, so a batch sent twice stores each revision once."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        loop = asyncio.get_running_loop()
        started = loop.time()
        delay = 0.05
        while True:
            try:
                return await self._pipeline(batch)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if self._closing:
                    raise
                if loop.time() - started > UNREACHABLE_SECONDS:  # more than a restart's blink
                    self._set_writable(False, f"Redis unreachable: {exc}")
                log.warning("redis store: %s; writing again in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    async def _pipeline(self, batch: list[_Write]) -> list[Any]:
        if self._connection is None or not self._connection.connected:
            self._connection = resp.RespConnection(self.url)
            await self._connection.connect()
        return await self._connection.execute([write.command for write in batch])

    def _submit(
        self, command: tuple[Any, ...], decode: Callable[[Any], Any], on_commit: Callable[[Any], None] | None = None
    ) -> asyncio.Future[Any]:
        if self._writer is None:
            raise RuntimeError("store is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._writes.put_nowait(_Write(command, decode, future, on_commit))
        return future

    def _seen(self, position: int) -> int:
        self._position = max(self._position, position)
        return position

    # -- writes ----------------------------------------------------------------------------------

    async def create_job(
        self, job: Job, request_hash: str, payload: bytes, on_commit: Callable[[Any], None] | None = None
    ) -> CreateOutcome:
        self._writability.check()
        request_key = self._key("req", job.tenant, job.request_id) if job.request_id else self._key("req-none")
        keys = [self._key("job", job.id), self._key("revs", job.id), request_key, self._key("jobs", job.tenant),
                self._key("changes", job.tenant), self._key("position"), self._key("active"),
                queue_key(self.prefix, job.route), queue_bytes_key(self.prefix, job.route)]
        max_queue, max_bytes = self.queue_limits.get(job.route, (0, 0))
        args = [job.id, _job_json(job), request_hash, payload, "1" if job.request_id else "0", self._key("job", ""),
                repr(job.created), job.tenant, job.request_id, self._key("revs", ""), self._key("segs", ""),
                self._key("events"), max_queue, max_bytes]

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
            if int(created):
                return CreateOutcome(job, True, request_hash, self._seen(int(position)))
            return (job_id.decode(), stored_hash.decode() if stored_hash else "")

        def commit(outcome: Any) -> None:
            if on_commit is not None and isinstance(outcome, CreateOutcome):
                on_commit(outcome)

        result = await self._submit(self._evalsha("create", keys, args), decode, commit)
        if isinstance(result, CreateOutcome):
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
        keys = [self._key("job", job.id), self._key("revs", job.id), self._key("segs", job.id),
                self._key("changes", job.tenant), self._key("position"), self._key("active"),
                self._key("tomb", job.id), self._key("expiring"),
                self._key("req", job.tenant, job.request_id) if job.request_id else self._key("req-none"),
                queue_key(self.prefix, job.route), self._key("webhook", job.id), self._key("webhooks-due")]
        segments = [_dumps(s.to_dict()) for s in new_segments]
        marked = job.webhook is not None and webhook_wanted(job)
        args: list[Any] = [
            job.id, job.revision - 1, -1 if attempt is None else attempt, 1 if count_attempt else 0, job.revision,
            _job_json(job), len(job.segments), 1 if terminal else 0,
            encode_result(result) if result is not None else "", ttl_ms, 2 * ttl_ms, job.tenant, len(segments),
            *segments, repr(expires), repr(expires + (expires - now)), self._key("events"),
            repr(time.time()) if marked else "", job.webhook.url if marked and job.webhook else "",
        ]

        def decode(answer: Any) -> int:
            return self._seen(int(answer))

        future: Awaitable[None] = self._submit(self._evalsha("save", keys, args), decode, on_commit)
        return future

    async def save_checkpoint(self, job_id: str, checkpoint: Mapping[str, Any]) -> None:
        key = self._key("job", job_id)
        if await self._redis.exists(key):
            await self._redis.hset(key, "ckpt", _dumps(dict(checkpoint)))

    async def start_attempt(self, job_id: str) -> int:
        key = self._key("job", job_id)
        if not await self._redis.exists(key):
            return 0
        return int(await self._redis.hincrby(key, "att", 1))

    async def spare_attempt(self, job_id: str, attempt: int) -> None:
        await self._run_script("spare", [self._key("job", job_id)], [attempt])

    async def take_over(self, job_id: str) -> ResumableJob | None:
        answer = await self._run_script("take_over", [self._key("job", job_id), self._key("segs", job_id)], [])
        if not answer:
            return None
        head, attempts, checkpoint, raw_segments = answer
        return ResumableJob(job_from_json(head, self._decode_segments(raw_segments)), int(attempts),
                            json.loads(checkpoint) if checkpoint else None)

    async def delete(self, job_id: str, tombstone_until: float | None = None) -> None:
        ttl = 0 if tombstone_until is None else max(1, int((tombstone_until - self.clock.now()) * 1000))
        keys = [self._key("job", job_id), self._key("revs", job_id), self._key("segs", job_id), self._key("tomb", job_id),
                self._key("jobs", ""), self._key("changes", ""), self._key("active"), self._key("expiring"),
                self._key("webhook", job_id), self._key("webhooks-due")]
        args = [job_id, ttl, self._key("req", ""), repr(tombstone_until or 0.0)]
        await self._run_script("delete", keys, args)

    async def sweep(self, now: float, tombstone_until: float) -> list[Job]:
        """Deletes the jobs expired by ``now`` (leaving tombstones) and what still names them.
        Redis' own expiry (set at each job's end) deletes them too, in real time: a safety net
        for a deployment where nobody sweeps."""
        ids = [i.decode() for i in await self._redis.zrangebyscore(self._key("expiring"), "-inf", now * 1000,
                                                                    start=0, num=5000)]
        expired = [job for job in await self._jobs(ids) if job is not None]
        for job_id in ids:
            await self.delete(job_id, tombstone_until)
        return expired

    # -- reads -----------------------------------------------------------------------------------

    @staticmethod
    def _decode_segments(raw: Sequence[bytes]) -> tuple[Segment, ...]:
        return tuple(Segment.from_dict(json.loads(r)) for r in raw)

    async def _load(self, job_id: str, *fields: str) -> tuple[Job, list[Any]] | None:
        """The job whole (its head and segments, read at one moment, in one round trip) and these
        other fields of its hash; None if it is gone."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hmget(self._key("job", job_id), "job", "seg", *fields)
            pipe.lrange(self._key("segs", job_id), 0, -1)
            head, raw_segments = await pipe.execute()
        if head[0] is None:
            return None
        return job_from_json(head[0], self._decode_segments(raw_segments[: int(head[1])])), head[2:]

    async def get_job(self, job_id: str) -> Job | None:
        loaded = await self._load(job_id)
        return None if loaded is None else loaded[0]

    async def find_request(self, tenant: str, request_id: str, now: float) -> tuple[Job, str] | None:
        job_id = await self._redis.get(self._key("req", tenant, request_id))
        loaded = None if job_id is None else await self._load(job_id.decode(), "req_hash")
        if loaded is None:
            return None
        job, (request_hash,) = loaded
        if job.expires is not None and job.expires <= now:
            return None
        return job, (request_hash or b"").decode()

    async def revisions_after(self, job_id: str, after: int) -> list[tuple[Job, int]]:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xrange(self._key("revs", job_id), min=f"0-{max(after, 0)}", max="+")
            pipe.lrange(self._key("segs", job_id), 0, -1)
            entries, raw_segments = await pipe.execute()
        if not entries:
            return []
        counts = [int(fields[b"seg"]) for _, fields in entries]
        segments = self._decode_segments(raw_segments[: max(counts)])
        out = []
        offset = 0
        for (entry_id, fields), count in zip(entries, counts, strict=True):
            revision = int(entry_id.decode().split("-")[1])
            if revision == after:
                offset = count
                continue
            out.append((job_from_json(fields[b"job"], segments[:count]), offset))
            offset = count
        return out

    async def get_result(self, job_id: str) -> Result | None:
        raw = await self._redis.hget(self._key("job", job_id), "result")
        return None if raw is None else decode_result(raw.decode())

    async def get_payload(self, job_id: str) -> bytes | None:
        raw = await self._redis.hget(self._key("job", job_id), "payload")
        return None if raw is None else bytes(raw)

    async def _jobs(self, ids: Sequence[str]) -> list[Job | None]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(self._key("job", job_id), "job")
            raws = await pipe.execute()
        return [None if raw is None else job_from_json(raw) for raw in raws]

    async def list_jobs(self, tenant: str, flt: JobFilter, before_id: str | None, limit: int, now: float) -> list[Job]:
        index = self._key("jobs", tenant)
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
        index = self._key("changes", tenant)
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
        ids = sorted(i.decode() for i in await self._redis.smembers(self._key("active")))
        jobs = [job for job in await self._jobs(ids) if job is not None and job.tenant == tenant and not job.terminal]
        if not jobs:
            return []
        # Read after the jobs: a position is that of the job's change read, or of a later one.
        positions = await self._redis.zmscore(self._key("changes", tenant), [job.id for job in jobs])
        found = [(job, int(p)) for job, p in zip(jobs, positions, strict=True) if p is not None]
        return sorted(found, key=lambda pair: pair[1])

    def current_position(self) -> int:
        return self._position

    async def unfinished(self) -> list[ResumableJob]:
        ids = sorted(i.decode() for i in await self._redis.smembers(self._key("active")))
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
        raw, alive = await asyncio.gather(self._redis.get(self._key("tomb", job_id)),
                                          self._redis.exists(self._key("job", job_id)))
        if raw is None or alive:
            return None
        tenant, _, until = raw.decode().rpartition("|")
        return tenant if float(until) > now else None


    # -- webhooks --------------------------------------------------------------------------------

    def _webhook_keys(self, job_id: str) -> list[str]:
        return [self._key("webhook", job_id), self._key("webhooks-due"), self._key("job", job_id)]

    async def webhooks_due(self, now: float, limit: int, offset: int = 0) -> list[tuple[str, str]]:
        ids = await self._redis.zrangebyscore(self._key("webhooks-due"), "-inf", repr(now), start=offset, num=limit)
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(self._key("webhook", job_id.decode()), "url")
            urls = await pipe.execute()
        for job_id, url in zip(ids, urls, strict=True):
            if url is None:  # its job expired: the claim script drops what is left of it
                await self.claim_webhook(job_id.decode(), now, now)
        return [(i.decode(), u.decode()) for i, u in zip(ids, urls, strict=True) if u is not None]

    async def webhook_next_due(self) -> float | None:
        first = await self._redis.zrange(self._key("webhooks-due"), 0, 0, withscores=True)
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
            job_id, _dumps(dict(state)), examined, repr(due_if_marked), "" if due is None else repr(due), repr(lease)])
        return bool(stored)

    async def webhook_state(self, job_id: str) -> dict[str, Any] | None:
        raw = await self._redis.hget(self._key("webhook", job_id), "state")
        return json.loads(raw) if raw else None


def _cannot_write(answer: Any) -> bool:
    if isinstance(answer, OutOfMemoryError | ReadOnlyError | BusyLoadingError):  # redis-py's names for some
        return True
    return isinstance(answer, ResponseError) and str(answer).split(" ", 1)[0] in _CANNOT_WRITE


def _translate(exc: Exception) -> Exception:
    if str(exc).startswith("CONFLICT"):
        return RevisionConflict(str(exc).removeprefix("CONFLICT "))
    return exc
