"""Every key of the Redis engine, in one place (``<prefix>`` is ``gw:`` by default):

    <prefix>job:<id>        hash: job (JSON, without segments), rev, att, seg (segment count), pos,
                            tenant, request_id, req_hash, expires, payload, ckpt, result, entry (its
                            queue entry, once a worker took it); while it waits, sq and ss: its tenant's
                            waiting set and its route's scheduler prefix; once taken until it ends, rt:
                            that prefix (its tenant's running count); until the job ends, qb and qk:
                            its input's bytes and the counter they count in, and ak: its uploaded audio's
                            key (if any)
    <prefix>revs:<id>       stream, entry id 0-<revision>: job (JSON), seg (segment count then)
    <prefix>segs:<id>       list: the segments, in order (each once, whatever the revisions)
    <prefix>audio:<id>      list: an Upload's audio in chunks of 1 MiB, while the job's inputs are kept
    <prefix>queue-deadlines  sorted set: job id -> its queue deadline (ms), for jobs given a queue_timeout;
                            an entry stays until it is due (then whoever sweeps ends the job if still QUEUED)
    <prefix>req:<tenant>:<request_id>   string: the job id (idempotency)
    <prefix>req-none        never written: the request key of a job without a request_id
    <prefix>jobs:<tenant>   sorted set of job ids, all scores 0: by id, so by creation (List)
    <prefix>changes:<tenant>  sorted set: job id -> position of its latest change (WatchJobs resume)
    <prefix>active          set of the ids of QUEUED and RUNNING jobs
    <prefix>expiring        sorted set: job id -> expiry (ms): the index entries sweep() removes
    <prefix>tomb:<id>       string: the tenant of an expired or deleted job, until its tombstone ends
    <prefix>webhook:<id>    hash: the job's webhook (url, pending revision, lease, delivery state)
    <prefix>webhooks-due    sorted set: job id -> when its webhook is due (a claimed one: its lease end)
    <prefix>sched:<route>:  the route's scheduler (fair share, priority; scripts.TAKE takes from it):
        tenants             sorted set: tenant -> its pass (the tenants with jobs waiting)
        t:<tenant>          sorted set: job id -> priority * 2^40 + arrival (the tenant's waiting jobs)
        vt                  string: the pass of the last job taken (where a tenant that starts waiting joins)
        seq                 counter: arrivals
        weights             hash: tenant -> its weight, as the last Submit's settings said
        maxrun              hash: tenant -> its max_running (0: none), likewise
        running             hash: tenant -> its jobs taken by a worker and not ended
        waiting             list: one element per waiting job (its length: what KEDA scales on)
        arrived             sorted set: waiting job id -> its creation (ms): the oldest's age (metrics)
        wake                list: a token per job queued, popped by a fetch loop blocked on it (at most 64)
    <prefix>queue:<route>   stream of the jobs workers took (an entry each, added and read in TAKE's step),
                            pending under the consumer group GROUP while the job runs: the lease
    <prefix>queue-bytes:<route>  counter: input bytes of the route's jobs not ended yet
    <prefix>rate:<tenant>   hash: the tenant's Submit token bucket (tokens, ts), when it has a submit_rate
    <prefix>position        counter: change positions, in commit order
    <prefix>store_id        string: identifies this data (resume tokens carry it)
    <prefix>events          pub/sub channel: every committed revision (codec.decode_event)

One standalone Redis or a Sentinel-managed primary, not a Cluster: scripts touch a job's keys and the
global indexes together. Some scripts build keys themselves from a prefix handed in (``job("")``:
``<prefix>job:``), for jobs they find on the way (an expired holder of a request id).
"""

from __future__ import annotations

__all__ = ["GROUP", "Keys", "queue_bytes_key", "queue_key", "sched_key", "waiting_key"]

GROUP = "workers"  # the consumer group of every process's workers on a route's queue (the scripts name it too)


def queue_key(prefix: str, route: str) -> str:
    """The stream a route's queued jobs wait in."""
    return f"{prefix}queue:{route}"


def sched_key(prefix: str, route: str) -> str:
    """The prefix of a route's scheduler keys (see above)."""
    return f"{prefix}sched:{route}:"


def waiting_key(prefix: str, route: str) -> str:
    """The list as long as a route has jobs waiting for a worker (KEDA's redis trigger reads its length)."""
    return f"{sched_key(prefix, route)}waiting"


def queue_bytes_key(prefix: str, route: str) -> str:
    """The counter of the input bytes of a route's jobs that have not ended (Redis holds them)."""
    return f"{prefix}queue-bytes:{route}"


class Keys:
    """The key names under one prefix."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = "gw:") -> None:
        self.prefix = prefix

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def revs(self, job_id: str) -> str:
        return f"{self.prefix}revs:{job_id}"

    def segs(self, job_id: str) -> str:
        return f"{self.prefix}segs:{job_id}"

    def audio(self, job_id: str) -> str:
        return f"{self.prefix}audio:{job_id}"

    @property
    def queue_deadlines(self) -> str:
        return f"{self.prefix}queue-deadlines"

    def tomb(self, job_id: str) -> str:
        return f"{self.prefix}tomb:{job_id}"

    def webhook(self, job_id: str) -> str:
        return f"{self.prefix}webhook:{job_id}"

    def req(self, tenant: str, request_id: str) -> str:
        """The idempotency key of a tenant's request id (a job without one is given ``req_none``)."""
        return f"{self.prefix}req:{tenant}:{request_id}"

    @property
    def req_none(self) -> str:
        return f"{self.prefix}req-none"

    @property
    def req_prefix(self) -> str:
        """What the delete script puts before ``<tenant>:<request_id>``."""
        return f"{self.prefix}req:"

    def jobs(self, tenant: str) -> str:
        return f"{self.prefix}jobs:{tenant}"

    def changes(self, tenant: str) -> str:
        return f"{self.prefix}changes:{tenant}"

    def queue(self, route: str) -> str:
        return queue_key(self.prefix, route)

    def queue_bytes(self, route: str) -> str:
        return queue_bytes_key(self.prefix, route)

    def sched(self, route: str) -> str:
        return sched_key(self.prefix, route)

    def rate(self, tenant: str) -> str:
        return f"{self.prefix}rate:{tenant}"

    @property
    def active(self) -> str:
        return f"{self.prefix}active"

    @property
    def expiring(self) -> str:
        return f"{self.prefix}expiring"

    @property
    def webhooks_due(self) -> str:
        return f"{self.prefix}webhooks-due"

    @property
    def position(self) -> str:
        return f"{self.prefix}position"

    @property
    def store_id(self) -> str:
        return f"{self.prefix}store_id"

    @property
    def events(self) -> str:
        return f"{self.prefix}events"
