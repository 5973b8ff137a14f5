"""The store's contract, by concern: ``JobStore`` (durable jobs, their revisions, results, inputs and
backend checkpoints) and ``WebhookStore`` (the delivery state of jobs' webhooks); ``Store`` is both,
what each engine implements (``gateway.store.sqlite``: one process; ``gateway.redis``: shared).

The job service is the only caller of JobStore, the webhook dispatcher of WebhookStore. Writes are
acknowledged only once durable; ``on_commit`` runs on the event loop right after the commit, in
commit order, which is how the service publishes each revision to watchers exactly once and in order.

Optional capabilities are protocols of their own, checked with isinstance: ``ReportsWritability``
(a store that can find itself unable to write, and says when).

Both engines write through one writer, ``gateway.store.writer.Writer``, built of the parts kept here:
it takes the writes in the order they were handed over, in batches (``take_batch``); a batch the store
refuses for now (a full disk, a Redis out of memory or unreachable) is tried again with growing pauses
(``Backoff``) while the store says it cannot write (``Writability``); then, on the event loop and in
commit order, each write's ``on_commit`` runs and its caller is answered (``settle``). An engine gives
it only its step: one try at committing one batch.
"""

from __future__ import annotations

import asyncio
import logging
import queue
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from gateway.errors import Unavailable
from gateway.jobs import Job, JobState, Result, Segment

log = logging.getLogger(__name__)
W = TypeVar("W")

__all__ = ["Backoff", "CreateOutcome", "JobFilter", "JobStore", "QueueFull", "ReportsWritability", "ResumableJob",
           "RevisionConflict", "Store", "WebhookClaim", "WebhookStore", "Writability", "keeps_inputs", "settle",
           "take_batch"]


class Writability:
    """Whether a store can write now (its disk full, its Redis refusing writes: not), and the listeners
    to tell when that changes (the server sets health from it). While it cannot, new jobs are refused."""

    def __init__(self, what_fails: str) -> None:
        self.writable = True
        self.what_fails = what_fails  # said in the log and in the refusal: "is the disk full?"
        self._listeners: list[Callable[[bool], None]] = []

    def listen(self, listener: Callable[[bool], None]) -> None:
        """``listener(writable)`` is called on the event loop whenever writing stops or works again."""
        self._listeners.append(listener)

    def set(self, writable: bool, loop: asyncio.AbstractEventLoop, why: str = "") -> None:
        """From any thread: the listeners run on ``loop``."""
        if writable == self.writable:
            return
        self.writable = writable
        if writable:
            log.warning("store: writing works again")
        else:
            log.error("store: writes fail (%s); retrying them, and refusing new jobs meanwhile", why or self.what_fails)
        for listener in list(self._listeners):
            try:
                loop.call_soon_threadsafe(listener, writable)
            except RuntimeError:  # the loop is closed
                pass

    def check(self) -> None:
        """Raises UNAVAILABLE STORE_UNAVAILABLE while the store cannot write."""
        if not self.writable:
            raise Unavailable(f"the store cannot write now ({self.what_fails}); the job was not accepted: retry later",
                              reason="STORE_UNAVAILABLE")


class Backoff:
    """The pauses of a writer trying again what the store refused: ``first``, then each twice as long
    as the one before, up to ``cap``."""

    __slots__ = ("cap", "delay")

    def __init__(self, first: float, cap: float = 2.0) -> None:
        self.delay = first
        self.cap = cap

    def next(self) -> float:
        """The pause to make now."""
        delay = self.delay
        self.delay = min(self.cap, delay * 2)
        return delay


def take_batch(first: W, get_nowait: Callable[[], W | None], limit: int) -> tuple[list[W], bool]:
    """A writer's next batch: ``first`` and the writes already waiting behind it, in order, up to
    ``limit`` of them; and whether the close sentinel (None) came among them. ``get_nowait`` is a
    queue's (``queue.Queue`` or ``asyncio.Queue``): it raises when nothing waits."""
    batch = [first]
    while len(batch) < limit:
        try:
            item = get_nowait()
        except (queue.Empty, asyncio.QueueEmpty):
            break
        if item is None:
            return batch, True
        batch.append(item)
    return batch, False


def settle(future: asyncio.Future[Any], on_commit: Callable[[Any], None] | None, result: Any,
           exc: BaseException | None = None) -> None:
    """On the loop, for each write of a commit in order: a write that was stored runs its ``on_commit``
    (``result``), then its caller is answered (``result``, or ``exc`` for a write that failed)."""
    if exc is None and on_commit is not None:
        try:
            on_commit(result)
        except Exception:
            log.exception("on_commit callback failed")
    if future.done():  # (a caller that gave up waiting)
        return
    if exc is None:
        future.set_result(result)
    else:
        future.set_exception(exc)


class RevisionConflict(Exception):
    """A revision that does not follow the job's stored one (another writer got there first), or
    written by a run (attempt) that is no longer the job's current one: refused, nothing stored."""


class TenantPolicy(Protocol):
    """What a tenant may have of a route (``[tenants.<tenant>]``: gateway.settings.TenantSettings)."""

    @property
    def weight(self) -> float: ...  # its share of the workers
    @property
    def max_queued(self) -> int: ...  # its jobs waiting on one route at most (0: no limit)
    @property
    def max_running(self) -> int: ...  # its jobs running at once on one route (0: no limit)
    @property
    def submit_rate(self) -> float: ...  # Submits per second (0: no limit)
    @property
    def burst(self) -> int: ...  # Submits at once after a pause


class QueueFull(Exception):
    """A shared store refused a new job because its route's queue is at a limit, or its tenant at one of
    its own, checked in the same atomic step as the create (so replicas submitting at once cannot pass
    it together)."""

    def __init__(self, reason: str, held: int, limit: int, retry_after: float | None = None) -> None:
        super().__init__(f"{reason}: {held} held, limit {limit}")
        # QUEUE_FULL (jobs waiting), QUEUE_BYTES_FULL (input bytes held), TENANT_QUEUE_FULL (the tenant's
        # jobs waiting), TENANT_RATE_LIMITED (its Submits per second; retry_after: when the next is allowed)
        self.reason = reason
        self.held = held
        self.limit = limit
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class CreateOutcome:
    job: Job
    created: bool
    request_hash: str
    position: int = 0  # the change position of the new job's first revision


@dataclass(frozen=True, slots=True)
class JobFilter:
    states: frozenset[JobState] = frozenset()
    route: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def matches(self, job: Job) -> bool:
        if self.states and job.state not in self.states:
            return False
        if self.route and job.route != self.route:
            return False
        return all(job.labels.get(k) == v for k, v in self.labels.items())


@dataclass(frozen=True, slots=True)
class ResumableJob:
    """A job that was QUEUED or RUNNING when the process stopped."""

    job: Job
    attempts: int
    checkpoint: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class WebhookClaim:
    """A job's webhook, held by one process (until finish_webhook, or its lease runs out): the delivery
    state (gateway.webhooks), and the highest revision marked due when it was claimed."""

    job_id: str
    pending: int
    state: dict[str, Any]
    lease: float = 0.0  # the lease_until it was claimed with: finish_webhook stores only while it still holds


class JobStore(Protocol):
    """Jobs and their revisions."""

    store_id: str  # identifies the data a change position belongs to (resume tokens carry it)
    shared: bool  # several processes use it (jobs are queued and resumed through a shared queue)
    keep_failed_inputs: bool  # a FAILED or CANCELLED job keeps its inputs until it expires (for Retry)

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Store: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def create_job(
        self, job: Job, request_hash: str, payload: bytes, on_commit: Callable[[Any], None] | None = None
    ) -> CreateOutcome:
        """Inserts the job at revision 1, or answers the job already stored under its request_id."""
        ...

    def save_revision(
        self,
        job: Job,
        new_segments: Sequence[Segment] = (),
        result: Result | None = None,
        on_commit: Callable[[Any], None] | None = None,
        count_attempt: bool = False,
        attempt: int | None = None,
    ) -> Awaitable[None]:
        """Stores the job's next revision; a terminal one also drops the job's checkpoint, and its inputs
        unless :func:`keeps_inputs` says they stay.
        ``count_attempt`` counts one more run of the job in the same write. ``on_commit`` receives
        the revision's change position.

        A compare-and-set: the stored job must be at ``job.revision - 1`` and, when ``attempt`` is
        given, at that attempt (counted after ``count_attempt``); otherwise RevisionConflict, and
        nothing is stored. So two writers can never store the same revision, and a run whose job
        was taken over (its attempt is no longer the current one) cannot complete it."""
        ...

    async def save_checkpoint(self, job_id: str, checkpoint: Mapping[str, Any]) -> None: ...

    async def start_attempt(self, job_id: str) -> int:
        """Counts one more run of the job (durably, before it runs); returns the count."""
        ...

    async def spare_attempt(self, job_id: str, attempt: int) -> None:
        """Run ``attempt`` of the job was stopped on purpose (a drain): it does not count against
        ``max_attempts``. Takes the count back by one if it is still ``attempt`` (else another run
        has begun since, and nothing changes)."""
        ...

    def on_reset(self, listener: Callable[[], None]) -> None:
        """``listener()`` when the store's data is found replaced (a shared store restarted empty,
        flushed, or rolled back by a failover): ``store_id`` is new, and jobs may be gone or behind."""
        ...

    async def take_over(self, job_id: str) -> ResumableJob | None:
        """A worker takes a job another left (it died, drained or stalled past its lease): one more
        attempt counted and the job (whole) read in one atomic step, so that every write of the previous
        attempt is either in what it answers or refused from now on. None if the job is gone."""
        ...

    async def find_request(self, tenant: str, request_id: str, now: float) -> tuple[Job, str] | None:
        """The unexpired job stored under this tenant's request_id, with its request hash."""
        ...

    async def get_job(self, job_id: str) -> Job | None: ...

    async def revisions_after(self, job_id: str, after: int, whole: bool = True) -> list[tuple[Job, int]]:
        """Every stored revision after ``after``, each with its segments offset: how many segments
        the revision before it had (what a watcher that saw that one already holds). ``whole``: each
        job with every segment it had then; False: with only the segments it added (a partial
        JobEvent's), so that replaying a long transcript's revisions costs its length, not its square."""
        ...

    async def get_result(self, job_id: str) -> Result | None: ...

    async def get_payload(self, job_id: str) -> bytes | None: ...

    async def queue_deadlines_due(self, now: float, limit: int = 100) -> list[str]:
        """Jobs whose queue deadline (created + queue_timeout) has passed by ``now`` and that may still be
        QUEUED (the caller ends those that are, with a compare-and-set; others it ignores), at most ``limit``."""
        ...

    async def put_upload(self, job_id: str, path: Path) -> None:
        """Keeps the audio file of an Upload (taking the file: moved, or copied and deleted) as the job's,
        durably, before the job is created; it goes with the job's inputs (the job ends or is deleted)."""
        ...

    async def open_upload(self, job_id: str) -> tuple[Path, bool] | None:
        """The job's uploaded audio as a file on this machine, and whether it is a copy that the caller
        deletes once done with it; None if it is gone."""
        ...

    async def drop_upload(self, job_id: str) -> None:
        """Forgets an upload kept for a job that was not created after all (a retried request)."""
        ...

    async def list_jobs(
        self, tenant: str, flt: JobFilter, before_id: str | None, limit: int, now: float
    ) -> list[Job]: ...

    async def changed_since(
        self, tenant: str, flt: JobFilter, position: int, limit: int, now: float
    ) -> list[tuple[Job, int]]:
        """The tenant's unexpired jobs whose latest change is after ``position`` (without segments),
        oldest change first, each with the position of that change."""
        ...

    async def active_jobs(self, tenant: str) -> list[tuple[Job, int]]:
        """The tenant's QUEUED and RUNNING jobs (without segments), each with the change position of
        its latest change, in the order of those positions."""
        ...

    def current_position(self) -> int:
        """The change position of the latest write handed to the store. Positions increase in
        commit order, so a reader that saw position P has seen every change up to P."""
        ...

    async def unfinished(self) -> list[ResumableJob]: ...

    async def resumable(self, job_id: str) -> ResumableJob | None:
        """The job (whole) with its attempts so far and checkpoint; None if it is gone."""
        ...

    async def delete(self, job_id: str, tombstone_until: float | None = None) -> None: ...

    async def sweep(self, now: float, tombstone_until: float) -> list[Job]:
        """Deletes the jobs expired by ``now``, leaving tombstones; answers what it deleted."""
        ...

    async def tombstone(self, job_id: str, now: float) -> str | None:
        """The tenant of a job that expired or was deleted recently, else None."""
        ...



class WebhookStore(Protocol):
    """The delivery state of jobs' webhooks. A revision for which gateway.jobs.webhook_wanted holds
    marks the job's webhook due (now, unless it is claimed) in the same atomic write that stores the
    revision (JobStore.save_revision)."""

    shared: bool  # several processes deliver from it (so it is looked at every poll interval)

    async def webhooks_due(self, now: float, limit: int, offset: int = 0) -> list[tuple[str, str]]:
        """(job id, webhook URL) of the webhooks due by ``now`` and not claimed, the longest due first
        (``limit`` of them, after the first ``offset``)."""
        ...

    async def webhook_next_due(self) -> float | None:
        """When the earliest webhook is due (a claimed one: when its lease ends); None if none is."""
        ...

    async def claim_webhook(self, job_id: str, now: float, lease_until: float) -> WebhookClaim | None:
        """Takes the job's webhook until ``lease_until`` if it is due and nobody holds it (atomically:
        one process wins); None otherwise, or if the job is gone (its webhook is then dropped)."""
        ...

    async def finish_webhook(self, job_id: str, state: Mapping[str, Any], examined: int, due_if_marked: float,
                             due: float | None, lease: float) -> bool:
        """Stores the delivery state and lets the claim go, if the claim of ``lease`` (its lease_until)
        still holds (False, storing nothing, if it ran out and another process may have claimed it). Due
        again at ``due`` (None: not until a revision marks it), or at ``due_if_marked`` if a revision was
        marked after ``examined``."""
        ...

    async def webhook_state(self, job_id: str) -> dict[str, Any] | None:
        """The job's delivery state; None before the first delivery is looked at."""
        ...


class Store(JobStore, WebhookStore, Protocol):
    """What a storage engine implements: both concerns, over one set of data (a revision and its
    webhook mark are one write)."""


@runtime_checkable
class ReportsWritability(Protocol):
    """A store that may be unable to write for a while (its disk full, its Redis refusing writes); while
    it is, new jobs are refused. The server sets health from it."""

    @property
    def writable(self) -> bool: ...

    def on_writable(self, listener: Callable[[bool], None]) -> None:
        """``listener(writable)`` on the event loop whenever writing stops or works again."""
        ...


def keeps_inputs(job: Job, keep_failed_inputs: bool) -> bool:
    """Whether a job's inputs stay stored after this revision: while it has not ended, and (for Retry, with
    ``keep_failed_inputs``) once it has FAILED or been CANCELLED, until it expires."""
    return not job.terminal or (keep_failed_inputs and job.state is not JobState.SUCCEEDED)
