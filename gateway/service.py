"""The job service: the state machine, idempotency, retention, and the order of every change.

Every change of a job goes through here, in three steps: compute the next snapshot synchronously
from the job's head (so two concurrent changes can never take the same revision), store it (the
store's writer commits in order), and, in the commit callback, publish it on the event bus, whose
subscriber the hub fans it out to watchers. Watchers thus see each revision once, in order, and only
once it is durable.

In memory, per active (QUEUED or RUNNING) job: its head (the latest snapshot handed to the store)
and its latest committed event (what readers see). Finished jobs are read from the store.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway import metrics
from gateway.bus import EventBus
from gateway.errors import (
    AlreadyExists,
    Code,
    FailedPrecondition,
    FieldViolation,
    GatewayError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from gateway.hub import EventHub, JobEvent
from gateway.jobs import (
    Clock,
    Job,
    JobFailure,
    JobInput,
    JobState,
    Result,
    Segment,
    WebhookSpec,
    check_transition,
    new_job_id,
    webhook_wanted,
)
from gateway.lifecycle import Begun, Route
from gateway.settings import ROUTE_NAME, Settings
from gateway.store.base import JobFilter, QueueFull, RevisionConflict, Store

__all__ = ["Heartbeat", "JobService", "Update"]

log = logging.getLogger(__name__)

DELETE_WAIT_SECONDS = 10.0  # Delete with force: how long a running job gets to stop
MAX_FETCH_WAIT_SECONDS = 3600.0
RESUME_PAGE = 1000
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50
# Queued jobs' inputs stay in memory too (no read when they start) within this budget; beyond it
# they are read back from the store.
INPUTS_IN_MEMORY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Heartbeat:
    revision: int
    time: float
    position: int = 0  # WatchJobs: the stream's change position


@dataclass(frozen=True, slots=True)
class Update:
    """One revision for a watcher: ``whole`` when it must carry every segment (the stream's first
    message), else only the segments the revision added (from ``event.segments_offset``)."""

    event: JobEvent
    whole: bool = False

    @property
    def job(self) -> Job:
        return self.event.job

    @property
    def segments_offset(self) -> int:
        return 0 if self.whole else self.event.segments_offset

    @property
    def segments(self) -> tuple[Segment, ...]:
        """What the update carries: from ``segments_offset`` on."""
        return self.job.segments if self.whole else self.event.new_segments


class JobService:
    def __init__(self, settings: Settings, store: Store, bus: EventBus, hub: EventHub, clock: Clock) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus  # committed revisions go out here; the hub (subscribed to it) serves watchers
        # A shared bus may deliver a revision before this process's own commit callback runs: the
        # cached snapshots follow the bus too, so a reader never sees older than a watcher did.
        bus.subscribe(self._on_event)
        self.hub = hub
        self.clock = clock
        store.on_reset(self._on_store_reset)
        self.routes: dict[str, Route] = {}
        self._heads: dict[str, Job] = {}
        self._committed: dict[str, JobEvent] = {}
        self._inputs: dict[str, tuple[JobInput, int]] = {}
        # Jobs this process is storing in a shared store: a worker here may take one from the
        # shared queue before the store's answer is back (the queue is written by the same step).
        self._submitting: dict[str, tuple[Job, JobInput, int]] = {}
        self._inputs_bytes = 0
        self._checkpoints: dict[str, Mapping[str, Any] | None] = {}
        self._attempts: dict[str, int] = {}  # the current run of each active job (0: not run yet)
        self._counted: set[str] = set()  # taken over from another worker: the attempt is counted already
        self.accepting = True
        self.webhooks: Any = None  # gateway.webhooks.Dispatcher, in a process that serves the API

    # -- changes ---------------------------------------------------------------------------------

    def _next(self, job_id: str, **changes: Any) -> Job | None:
        """The job's next snapshot, made the head at once; None if the job is no longer active."""
        head = self._heads.get(job_id)
        if head is None:
            return None
        check_transition(head.state, changes.get("state", head.state))
        job = head.evolve(revision=head.revision + 1, **changes)
        if head.state is JobState.QUEUED and job.state is JobState.RUNNING:
            metrics.QUEUE_WAIT.labels(job.route).observe(max(0.0, (job.started or job.created) - job.created))
        if job.terminal:
            del self._heads[job_id]
            self._take_input(job_id)
            self._checkpoints.pop(job_id, None)
        else:
            self._heads[job_id] = job
        return job

    def _on_store_reset(self) -> None:
        asyncio.ensure_future(self._store_reset()).add_done_callback(_log_failure)

    async def _store_reset(self) -> None:
        """The shared store's data was replaced (Redis restarted empty, flushed, or failed over to a
        replica that was behind). What this process holds of jobs may describe jobs that are gone, or
        newer revisions than the store's: the cached snapshots go (every replica now answers from the
        store alike), a job running here that the store lost or holds older is let go (its run stops,
        writing nothing; one held older is taken over from what the store has), and every watcher
        checks the store, ending with DATA_LOSS if its job is gone or went back."""
        self.hub.position = self.store.current_position()
        for job_id in [j for j in self._committed if j not in self._heads]:
            del self._committed[job_id]
        for job_id, head in list(self._heads.items()):
            stored = await self.store.get_job(job_id)
            if stored is not None and stored.revision >= head.revision:
                continue
            log.error("job %s: the store %s; letting it go here", job_id,
                      "lost it" if stored is None else f"holds revision {stored.revision}, not {head.revision}")
            self._let_go(job_id)
        self.hub.reset()

    def _keep_input(self, job_id: str, job_input: JobInput, size: int) -> None:
        if self._inputs_bytes + size <= INPUTS_IN_MEMORY_BYTES:
            self._inputs[job_id] = (job_input, size)  # dropped when it starts or ends
            self._inputs_bytes += size

    def _take_input(self, job_id: str) -> JobInput | None:
        kept = self._inputs.pop(job_id, None)
        if kept is None:
            return None
        self._inputs_bytes -= kept[1]
        return kept[0]

    def _committed_cb(self, job: Job, segments_offset: int) -> Any:
        def on_commit(position: int) -> None:
            event = JobEvent(job, segments_offset, position)
            cached = self._committed.get(job.id)
            if job.terminal:
                metrics.job_ended(job.route, job.state.name, job.error.reason if job.error else "", job.started,
                                  job.finished)
                self._committed.pop(job.id, None)
            elif job.id in self._heads and (cached is None or cached.job.revision < job.revision):
                self._committed[job.id] = event
            self.bus.publish(event)
            if self.webhooks is not None and job.webhook is not None and webhook_wanted(job):
                self.webhooks.poke()

        return on_commit

    def _on_event(self, event: JobEvent) -> None:
        # Reads the event's header first: an event from another process decodes its job only if
        # this process holds something of the job.
        job_id = event.job_id
        if event.terminal:
            self._take_input(job_id)  # queued here, run (and ended) wherever
        head = self._heads.get(job_id)
        if head is not None and event.revision > head.revision and event.terminal:
            # Ended by another process (cancelled through another replica): stop running it here.
            route = self.routes.get(event.job.route)
            if route is not None:
                route.cancel(job_id)
            self._forget(job_id)
            return
        if head is not None:  # running here: this process wrote the revision, and cached it then
            return
        cached = self._committed.get(job_id)
        if cached is None or cached.job.revision >= event.revision:
            return
        if event.terminal:
            del self._committed[job_id]  # read from the store from now on
        elif not event.partial:
            self._committed[job_id] = event
        elif len(cached.job.segments) == event.segments_offset:
            whole = event.job.evolve(segments=cached.job.segments + event.new_segments)
            self._committed[job_id] = JobEvent(whole, event.segments_offset, event.position)
        else:  # a revision missed in between: the store has it
            del self._committed[job_id]

    def _save(
        self, job: Job, new_segments: Sequence[Segment] = (), result: Result | None = None, count_attempt: bool = False
    ) -> Awaitable[bool]:
        """Hands the revision to the store now (so revisions reach it in order); the awaitable ends
        once it is committed. The store checks it follows the stored revision, of this attempt."""
        on_commit = self._committed_cb(job, len(job.segments) - len(new_segments))
        attempt = self._attempts.get(job.id)
        if job.terminal:
            self._attempts.pop(job.id, None)
        stored = self.store.save_revision(job, new_segments, result, on_commit, count_attempt, attempt)
        return self._settle(job.id, stored)

    async def _settle(self, job_id: str, stored: Awaitable[None]) -> bool:
        """Whether the revision was stored; False when another process had moved the job on."""
        try:
            await stored
        except RevisionConflict as exc:  # the job is no longer ours
            log.warning("job %s was changed elsewhere; letting it go: %s", job_id, exc)
            self._let_go(job_id)
            return False
        return True

    def _let_go(self, job_id: str) -> None:
        """A job this process ran is no longer its own (ended or taken over elsewhere, or the store holds
        another revision of it): its run stops here, and its queue entry goes to whichever worker looks
        next (never acknowledged from here: the entry may be another worker's now)."""
        head = self._heads.get(job_id)
        route = self.routes.get(head.route) if head is not None else None
        if route is not None:
            route.abandon(job_id)
        self._forget(job_id)

    def _forget(self, job_id: str) -> None:
        """Drops what this process holds of a job (deleted, or taken over elsewhere)."""
        self._heads.pop(job_id, None)
        self._committed.pop(job_id, None)
        self._attempts.pop(job_id, None)
        self._counted.discard(job_id)
        self._checkpoints.pop(job_id, None)
        self._take_input(job_id)

    def _save_later(self, job: Job, count_attempt: bool = False) -> None:
        asyncio.ensure_future(self._save(job, count_attempt=count_attempt)).add_done_callback(_log_failure)

    def _finish(self, job_id: str, state: JobState, **changes: Any) -> Job | None:
        now = self.clock.now()
        return self._next(
            job_id, state=state, finished=now, expires=now + self.settings.retention_seconds, **changes
        )

    # -- submit ----------------------------------------------------------------------------------

    def route(self, name: str) -> Route:
        runner = self.routes.get(name)
        if runner is None:
            raise NotFound(
                f"no route named {name!r}; routes: {', '.join(sorted(self.routes))}",
                reason="ROUTE_NOT_FOUND",
                metadata={"route": name},
            )
        return runner

    @staticmethod
    def _request_hash(route: str, payload: bytes, labels: Mapping[str, str], webhook: WebhookSpec | None = None) -> str:
        digest = hashlib.sha256(route.encode())
        for part in (b"\0", payload, b"\0"):  # not concatenated: the payload may be tens of MiB
            digest.update(part)
        digest.update(json.dumps(sorted(labels.items())).encode())
        if webhook is not None:
            digest.update(json.dumps(webhook.to_dict()).encode())
        return digest.hexdigest()

    async def submit(
        self, tenant: str, route: str, job_input: JobInput, labels: Mapping[str, str], request_id: str,
        webhook: WebhookSpec | None = None,
    ) -> tuple[Job, bool]:
        """Stores a new job and queues it; answers (job, existing)."""
        if not self.accepting:
            raise Unavailable("the gateway is shutting down; retry on another replica", reason="SHUTTING_DOWN")
        _check_submission(route, labels, request_id)
        if job_input.inputs is not None:
            check_input_depth(job_input.inputs)
        runner = self.route(route)
        if webhook is not None:
            await self._check_webhook(tenant, webhook)
        job_input = await runner.backend.validate(job_input)
        payload = job_input.encode()
        request_hash = self._request_hash(route, payload, labels, webhook) if request_id else ""
        try:
            runner.reserve()
        except ResourceExhausted:
            # A retried Submit of a job already accepted answers that job, even with the queue full.
            found = await self.store.find_request(tenant, request_id, self.clock.now()) if request_id else None
            if found is None:
                raise
            return self._existing(found[0], found[1], request_id, request_hash), True
        now = self.clock.now()
        job = Job(
            id=new_job_id(now),
            tenant=tenant,
            route=route,
            state=JobState.QUEUED,
            revision=1,
            created=now,
            labels=dict(labels),
            queue_position=0 if self.store.shared else runner.queued() + 1,  # unknown in a shared queue
            request_id=request_id,
            webhook=webhook,
        )

        def on_commit(outcome: Any) -> None:
            taken = self.store.shared and self._submitting.pop(job.id, None) is None
            if not outcome.created:
                return
            event = JobEvent(job, 0, outcome.position)
            if taken:  # already running here (_take_over): it holds the job and its input
                self.bus.publish(event)
                return
            self._committed[job.id] = event
            if runner.workers:  # kept for this process's workers (an API-only replica runs none)
                self._keep_input(job.id, job_input, len(payload))
            if self.store.shared:  # whichever process takes it from the shared queue holds it
                self.bus.publish(event)
                runner.enqueue(job.id)
                return
            self._heads[job.id] = job
            self._attempts[job.id] = 0
            self.bus.publish(event)
            runner.enqueue(job.id)

        if self.store.shared:
            self._submitting[job.id] = (job, job_input, len(payload))
        try:
            outcome = await self.store.create_job(job, request_hash, payload, on_commit)
        except QueueFull as full:  # a shared store's own count, across replicas
            runner.release()
            raise runner.queue_full(full.reason, full.held, full.limit) from None
        except BaseException:
            runner.release()
            raise
        finally:
            self._submitting.pop(job.id, None)
        if outcome.created:
            metrics.JOBS_SUBMITTED.labels(route).inc()
            return job, False
        runner.release()
        return self._existing(outcome.job, outcome.request_hash, request_id, request_hash), True

    async def _check_webhook(self, tenant: str, webhook: WebhookSpec) -> None:
        if self.webhooks is None:
            raise Unavailable("this process delivers no webhooks", reason="WEBHOOKS_UNAVAILABLE")
        from gateway.webhooks import check_webhook

        await check_webhook(webhook, self.webhooks.policy(tenant))

    async def webhook_delivery(self, job: Job) -> dict[str, Any] | None:
        """The delivery state of the job's webhook (gateway.webhooks), when it has one."""
        if job.webhook is None:
            return None
        return await self.store.webhook_state(job.id) or {}

    def _existing(self, job: Job, stored_hash: str, request_id: str, request_hash: str) -> Job:
        """The job already stored under this request_id, if the request is the same one."""
        if stored_hash != request_hash:
            raise AlreadyExists(
                f"request_id {request_id!r} was used for a different request (job {job.id})",
                reason="REQUEST_ID_CONFLICT",
                metadata={"request_id": request_id, "job_id": job.id},
            )
        current = self._committed.get(job.id)
        return current.job if current else job

    # -- running: gateway.lifecycle.Lifecycle, called by route runners ----------------------------

    async def begin(self, job_id: str, defer_running: bool = False) -> Begun | None:
        """Moves a dequeued job to RUNNING (or, with ``defer_running``, leaves it QUEUED until the
        backend says it started); answers what the backend needs, or None if it is gone."""
        head = self._heads.get(job_id)
        if head is None:
            head = await self._take_over(job_id)
        if head is None:
            return None
        counted = job_id in self._counted  # its attempt was counted as it was taken over
        self._counted.discard(job_id)
        if head.state is JobState.QUEUED and not defer_running:
            job = self._next(job_id, state=JobState.RUNNING, started=self.clock.now(), queue_position=0)
            assert job is not None
            if not counted:
                self._attempts[job_id] = self._attempts.get(job_id, 0) + 1
            # Not awaited: the writer commits in order, so this revision is stored (and published)
            # before any later one of the job; if the process dies first, the job resumes as QUEUED.
            self._save_later(job, count_attempt=not counted)
        else:  # resumed after a restart, or waiting upstream: count the attempt
            if not counted:
                self._attempts[job_id] = await self.store.start_attempt(job_id)
            attempts = self._attempts[job_id]
            if attempts > self.settings.max_attempts and not defer_running:  # upstream jobs only re-poll
                await self.fail(job_id, JobFailure(
                    Code.ABORTED, "TOO_MANY_ATTEMPTS",
                    f"the job was interrupted {attempts - 1} times (the gateway stopped while it ran); given up",
                ))
                return None
            if head.state is JobState.QUEUED and head.queue_position:
                moved = self._next(job_id, queue_position=0)  # out of our queue, waiting upstream
                if moved is not None:
                    await self._save(moved)
        job_input = self._take_input(job_id)
        if job_input is None:
            payload = await self.store.get_payload(job_id)
            if payload is None:
                await self.fail(job_id, JobFailure(Code.DATA_LOSS, "INPUT_LOST", "the job's inputs are gone"))
                return None
            job_input = JobInput.decode(payload)
        head = self._heads.get(job_id)
        if head is None:
            return None
        return Begun(head, job_input, self._checkpoints.pop(job_id, None))

    def abandoned(self, job_id: str) -> None:
        self._forget(job_id)

    async def interrupted(self, job_id: str) -> None:
        attempt = self._attempts.get(job_id)
        if attempt:
            await self.store.spare_attempt(job_id, attempt)

    async def _take_over(self, job_id: str) -> Job | None:
        """A job from the shared queue: this process holds it from now on."""
        submitting = self._submitting.pop(job_id, None)
        if submitting is not None and job_id not in self._heads:
            # Queued by this process's Submit, whose answer from the store is not back yet: the job
            # is stored (the queue entry is written in the same step), as this process made it.
            job, job_input, size = submitting
            self._heads[job_id] = job
            self._committed[job_id] = JobEvent(job)
            self._attempts[job_id] = 0
            self._keep_input(job_id, job_input, size)
            return job
        cached = self._committed.get(job_id)
        if cached is not None and cached.job.revision == 1 and job_id not in self._heads:
            # Submitted through this process, untouched since as far as it knows: no read needed (if
            # it did change meanwhile, the first write's compare-and-set says so).
            self._heads[job_id] = cached.job
            self._attempts[job_id] = 0
            return cached.job
        # Left by another worker (it died, drained or stalled): its attempt ends here, in the same
        # step that reads where the job stands, so the run goes on after its last stored revision and
        # its segments (never from the start), and a write the other may still try is refused.
        found = await self.store.take_over(job_id)
        if found is None or found.job.terminal or job_id in self._heads:
            return self._heads.get(job_id)
        self._heads[job_id] = found.job
        self._committed[job_id] = JobEvent(found.job)
        self._attempts[job_id] = found.attempts
        self._counted.add(job_id)
        self._checkpoints[job_id] = found.checkpoint
        return found.job

    async def started(self, job_id: str) -> None:
        head = self._heads.get(job_id)
        if head is not None and head.state is JobState.QUEUED:
            job = self._next(job_id, state=JobState.RUNNING, started=self.clock.now(), queue_position=0)
            if job is not None:
                await self._save(job)

    async def report(self, job_id: str, progress: float | None, segments: Sequence[Segment]) -> None:
        head = self._heads.get(job_id)
        if head is None:
            return
        changes: dict[str, Any] = {}
        if progress is not None:
            changes["progress"] = progress
        if segments:
            changes["segments"] = head.segments + tuple(segments)
        job = self._next(job_id, **changes)
        if job is not None:
            await self._save(job, new_segments=segments)

    async def succeed(self, job_id: str, result: Result) -> None:
        await self.started(job_id)  # a job only ends SUCCEEDED from RUNNING
        job = self._finish(job_id, JobState.SUCCEEDED, progress=1.0)
        if job is not None:
            await self._save(job, result=result)

    async def fail(self, job_id: str, failure: JobFailure) -> None:
        job = self._finish(job_id, JobState.FAILED, error=failure)
        if job is not None:
            log.info("job %s failed: %s %s: %s", job_id, failure.code.name, failure.reason, failure.message)
            await self._save(job)

    async def cancelled(self, job_id: str) -> None:
        failure = JobFailure(Code.CANCELLED, "CANCELLED", "the job was cancelled")
        if job_id not in self._heads:  # run by another process (a shared store): end it in the store
            await self._end_stored(job_id, JobState.CANCELLED, error=failure, queue_position=0)
            return
        job = self._finish(job_id, JobState.CANCELLED, error=failure, queue_position=0)
        if job is not None and not await self._save(job):
            await self._end_stored(job_id, JobState.CANCELLED, error=failure, queue_position=0)

    async def _end_stored(self, job_id: str, state: JobState, **changes: Any) -> None:
        """Ends a job this process does not hold, from the store's current revision (a compare-and-
        set: the process running it finds its next write refused and lets the job go)."""
        for _ in range(5):
            job = await self.store.get_job(job_id)
            if job is None or job.terminal:
                return
            now = self.clock.now()
            check_transition(job.state, state)
            ended = job.evolve(revision=job.revision + 1, state=state, finished=now,
                               expires=now + self.settings.retention_seconds, **changes)
            try:
                await self.store.save_revision(ended, on_commit=self._committed_cb(ended, len(ended.segments)))
                return
            except RevisionConflict:
                continue  # it moved on meanwhile: try again from where it is now
        log.warning("job %s kept changing; it could not be ended %s", job_id, state.name)

    async def save_checkpoint(self, job_id: str, checkpoint: Mapping[str, Any]) -> None:
        if job_id in self._heads:
            await self.store.save_checkpoint(job_id, checkpoint)

    async def set_queue_positions(self, positions: Sequence[tuple[str, int]]) -> None:
        saves = []
        for job_id, position in positions:
            head = self._heads.get(job_id)
            if head is not None and head.state is JobState.QUEUED and head.queue_position != position:
                job = self._next(job_id, queue_position=position)
                if job is not None:
                    saves.append(self._save(job))
        if saves:
            await asyncio.gather(*saves)

    # -- reads -----------------------------------------------------------------------------------

    async def _event(self, tenant: str, job_id: str) -> JobEvent:
        """The job's latest committed snapshot, scoped to the tenant; NotFound otherwise (InvalidArgument
        for an id that cannot be one: AIP-193 keeps NOT_FOUND for what could exist)."""
        if not JOB_ID.fullmatch(job_id):
            raise InvalidArgument.fields(
                FieldViolation("job_id", "a job id is the 32 lowercase hexadecimal characters Submit answered"),
                reason="INVALID_JOB_ID")
        event = self._committed.get(job_id)
        if event is None:
            job = await self.store.get_job(job_id) if job_id else None
            event = JobEvent(job) if job is not None else None
        now = self.clock.now()
        if event is None or event.job.tenant != tenant:
            if job_id and await self.store.tombstone(job_id, now) == tenant:
                raise NotFound(f"job {job_id} has expired", reason="JOB_EXPIRED", metadata={"job_id": job_id})
            raise NotFound(f"no job {job_id!r}", reason="JOB_NOT_FOUND", metadata={"job_id": job_id})
        expires = event.job.expires
        if expires is not None and expires <= now:
            raise NotFound(f"job {job_id} has expired", reason="JOB_EXPIRED", metadata={"job_id": job_id})
        return event

    async def get(self, tenant: str, job_id: str) -> Job:
        return (await self._event(tenant, job_id)).job

    async def watch(self, tenant: str, job_id: str, after_revision: int = 0) -> AsyncIterator[Update | Heartbeat]:
        """The Watch contract: the whole job (or the revisions after ``after_revision``), each change
        once and in order with the segments it added, heartbeats while idle, the terminal revision
        last."""
        if after_revision < 0:
            raise InvalidArgument.fields(FieldViolation("after_revision", "must not be negative"))
        heartbeat = self.settings.heartbeat_seconds
        with self.hub.watch(job_id) as channel:
            snapshot = await self._event(tenant, job_id)
            current = snapshot.job.revision
            if after_revision > current:
                raise GatewayError(
                    f"after_revision {after_revision} is ahead of the job's revision {current}",
                    "REVISION_AHEAD", Code.OUT_OF_RANGE, {"revision": str(current)},
                )
            last, done = after_revision, False
            if after_revision == 0:
                yield Update(snapshot, whole=True)
                last, done = current, snapshot.job.terminal
            elif after_revision < current:
                # The store may already hold revisions newer than the snapshot: send them all.
                for job, offset in await self.store.revisions_after(job_id, after_revision):
                    yield Update(JobEvent(job, offset))
                    last, done = job.revision, job.terminal
            else:
                done = snapshot.job.terminal
            if done:
                return
            generation = channel.generation
            while True:
                events = await channel.next_after(last, heartbeat, generation)
                if events is None:
                    yield Heartbeat(last, self.clock.now())
                    continue
                if not events or events[0].job.revision != last + 1:
                    # A gap (the ring moved past this watcher) or a resync (a shared bus may have
                    # lost events): the store holds every committed revision, with its segments.
                    generation = channel.generation
                    missed = await self.store.revisions_after(job_id, last)
                    if not missed:
                        await self._check_kept(tenant, job_id, last)
                    for job, offset in missed:
                        yield Update(JobEvent(job, offset))
                        last = job.revision
                        if job.terminal:
                            return
                    continue
                for event in events:
                    yield Update(event)
                    last = event.job.revision
                    if event.job.terminal:
                        return

    async def _check_kept(self, tenant: str, job_id: str, revision: int) -> None:
        """After a resync that found nothing new: the store still has the job at ``revision`` or later.
        A job gone without a tombstone, or gone back, was lost by the store (Redis restarted without its
        data, flushed, failed over to a replica that was behind): the stream ends with DATA_LOSS instead
        of heartbeats for a job that will never change again."""
        job = await self.store.get_job(job_id)
        if job is not None and job.revision >= revision:
            return
        if job is None and await self.store.tombstone(job_id, self.clock.now()) == tenant:
            raise NotFound(f"job {job_id} was deleted", reason="JOB_NOT_FOUND", metadata={"job_id": job_id})
        if job is None:
            raise GatewayError(
                f"the store lost job {job_id} after revision {revision} was published (Redis restarted without its "
                "data, or was flushed); it will not finish: submit it again",
                "JOB_LOST", Code.DATA_LOSS, {"job_id": job_id, "revision": str(revision)},
            )
        raise GatewayError(
            f"the store went back to revision {job.revision} of job {job_id} after revision {revision} was published "
            "(Redis failed over to a replica that was behind); the job goes on from there: watch it again from the start",
            "JOB_ROLLED_BACK", Code.DATA_LOSS, {"job_id": job_id, "revision": str(revision), "stored": str(job.revision)},
        )

    async def _until_done(self, tenant: str, job_id: str, timeout: float | None) -> Job:
        """Waits for the job to end (up to ``timeout``); answers its latest snapshot."""
        latest: Job | None = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                async for item in self.watch(tenant, job_id):
                    if isinstance(item, Update):
                        latest = item.job
        return latest if latest is not None else await self.get(tenant, job_id)

    async def fetch(self, tenant: str, job_id: str, wait: float | None = None) -> tuple[Job, Result | None]:
        """The job and its result once done. ``wait``: None answers at once (FAILED_PRECONDITION
        while the job runs); seconds wait up to that (at most an hour, float("inf") for no limit)
        for the job to end, then answer it as it is, without a result if it still runs."""
        job = await self.get(tenant, job_id)
        if not job.terminal:
            if wait is None:
                raise FailedPrecondition(
                    f"job {job_id} is {job.state.name}; fetch it once it is done, or wait",
                    reason="JOB_NOT_DONE",
                    metadata={"job_id": job_id, "state": job.state.name},
                )
            if wait < 0 or math.isnan(wait):
                raise InvalidArgument.fields(FieldViolation("timeout", "must not be negative"))
            limit = None if math.isinf(wait) else min(wait, MAX_FETCH_WAIT_SECONDS)
            job = await self._until_done(tenant, job_id, limit)
        result = await self.store.get_result(job_id) if job.state is JobState.SUCCEEDED else None
        return job, result

    # -- cancel, delete, list --------------------------------------------------------------------

    async def cancel(self, tenant: str, job_id: str) -> Job:
        """Asks the job to stop; answers at once with the job as it is then: CANCELLED if it was
        queued, still RUNNING if its backend has been asked to stop (it ends on the stream)."""
        job = await self.get(tenant, job_id)
        if job.terminal:
            return job
        runner = self.routes.get(job.route)
        where = runner.cancel(job_id) if runner is not None else ""
        if where != "running":
            await self.cancelled(job_id)
        return await self.get(tenant, job_id)

    async def delete(self, tenant: str, job_id: str, force: bool = False) -> None:
        """Forgets a finished job; one still active only with ``force`` (cancelled first)."""
        job = await self.get(tenant, job_id)
        if not job.terminal:
            if not force:
                raise FailedPrecondition(
                    f"job {job_id} is {job.state.name}; cancel it first, or delete with force",
                    reason="JOB_NOT_DONE",
                    metadata={"job_id": job_id, "state": job.state.name},
                )
            runner = self.routes.get(job.route)
            if runner is not None and runner.cancel(job_id) == "running":
                await self._until_done(tenant, job_id, DELETE_WAIT_SECONDS)
            await self.cancelled(job_id)
        self._forget(job_id)
        await self.store.delete(job_id)

    async def list(
        self, tenant: str, flt: JobFilter, page_size: int, page_token: str
    ) -> tuple[list[Job], str]:
        if page_size < 0:
            raise InvalidArgument.fields(FieldViolation("page_size", "must not be negative"))
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        digest = hashlib.sha256(
            json.dumps([sorted(int(s) for s in flt.states), flt.route, sorted(flt.labels.items())]).encode()
        ).hexdigest()[:16]
        before = None
        if page_token:
            before = _decode_token(page_token, digest)
        jobs = await self.store.list_jobs(tenant, flt, before, size + 1, self.clock.now())
        token = ""
        if len(jobs) > size:
            jobs = jobs[:size]
            raw = json.dumps({"b": jobs[-1].id, "f": digest}).encode()
            token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        return [self._committed[j.id].job if j.id in self._committed else j for j in jobs], token

    async def watch_jobs(
        self, tenant: str, flt: JobFilter, resume_token: str = ""
    ) -> AsyncIterator[tuple[JobEvent, int] | Heartbeat]:
        """Every change of the tenant's jobs: the active ones first (or, with a resume token, every
        job changed since it), then each change; each event with the change position the stream
        stands at after it (a Heartbeat carries it too): see resume_token().

        Positions increase in commit order, and a job's latest change is what a resumed stream
        reads back, so a watcher that saw position P has seen every job as of P or later."""
        heartbeat = self.settings.heartbeat_seconds
        after = self._decode_resume_token(resume_token) if resume_token else None
        with self.hub.watch_tenant(tenant, flt) as sub:
            sent: dict[str, int] = {}  # job -> the revision sent last, so nothing goes back in time

            # Everything committed up to ``position`` is in what the store answers next.
            position = self.hub.position

            async def changed_since() -> AsyncIterator[JobEvent]:
                """Every job changed after ``position``, from the store, as it is now (once each);
                ``position`` moves past each."""
                nonlocal position
                while True:
                    changed = await self.store.changed_since(tenant, flt, position, RESUME_PAGE, self.clock.now())
                    for job, changed_at in changed:
                        position = max(position, changed_at)
                        if sent.get(job.id, 0) < job.revision:
                            sent[job.id] = job.revision
                            yield JobEvent(job)
                    if len(changed) < RESUME_PAGE:
                        return

            if after is None:
                # The active jobs in the order of their latest changes: the token after each one is
                # its change's position, so a stream cut in the middle of this snapshot and resumed
                # gets the rest of it (they changed later), and the last one's is the stream's.
                snapshot = [(job, at) for job, at in await self.store.active_jobs(tenant)
                            if flt.matches(job) and at <= position]
                for i, (job, at) in enumerate(snapshot):
                    if sent.get(job.id, 0) < job.revision:
                        sent[job.id] = job.revision
                        yield JobEvent(job), position if i == len(snapshot) - 1 else at
            else:
                position = max(after, 0)
                async for event in changed_since():
                    yield event, position
            while True:
                events = await sub.next(heartbeat)
                if sub.dropped:
                    raise Unavailable(
                        "this stream fell too far behind; resume it with its last resume_token",
                        reason="WATCHER_TOO_SLOW",
                    )
                if sub.reset:
                    raise GatewayError(
                        "the store's data was replaced (Redis restarted without its data, was flushed, or failed "
                        "over to a replica that was behind): watch again without a resume token",
                        "STORE_RESET", Code.DATA_LOSS)
                if sub.resync_needed:  # a shared bus may have lost events: read the changes instead
                    sub.resync_needed = False
                    async for event in changed_since():
                        yield event, position
                if events is None:
                    position = max(position, self.hub.position)
                    yield Heartbeat(0, self.clock.now(), position)
                    continue
                for event in events:
                    position = max(position, event.position)
                    if sent.get(event.job.id, 0) >= event.job.revision:
                        continue
                    sent[event.job.id] = event.job.revision
                    if event.job.terminal:
                        del sent[event.job.id]  # its last revision: nothing of it comes after
                    yield event, position

    def resume_token(self, position: int) -> str:
        """The opaque WatchJobs resume token for a change position of this store."""
        raw = json.dumps({"s": self.store.store_id, "p": position}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def _decode_resume_token(self, token: str) -> int:
        try:
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            store_id, position = data["s"], data["p"]
            if not isinstance(store_id, str) or not isinstance(position, int) or position < 0:
                raise ValueError
        except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
            raise InvalidArgument.fields(
                FieldViolation("resume_token", "not a token from this server's WatchJobs"), reason="INVALID_RESUME_TOKEN"
            ) from None
        if store_id != self.store.store_id:
            raise InvalidArgument.fields(
                FieldViolation("resume_token", "the token belongs to other data (the store was replaced); start anew"),
                reason="INVALID_RESUME_TOKEN",
            )
        return min(position, self.hub.position)

    # -- startup and retention -------------------------------------------------------------------

    async def resume(self) -> int:
        """Re-queues the jobs that were QUEUED or RUNNING when the process stopped. On a shared
        store there is nothing to do: the jobs are in the shared queue, and a stopped worker's
        running jobs are reclaimed by the others once its leases lapse."""
        self.hub.position = max(self.hub.position, self.store.current_position())
        if self.store.shared:
            return 0
        pending = await self.store.unfinished()
        pending.sort(key=lambda r: (r.job.state is not JobState.RUNNING, r.job.id))
        for item in pending:
            job = item.job
            self._heads[job.id] = job
            self._committed[job.id] = JobEvent(job)
            self._attempts[job.id] = item.attempts
            runner = self.routes.get(job.route)
            if runner is None:
                await self.fail(job.id, JobFailure(
                    Code.FAILED_PRECONDITION, "ROUTE_NOT_CONFIGURED",
                    f"route {job.route!r} is no longer configured",
                ))
                continue
            self._checkpoints[job.id] = item.checkpoint
            runner.enqueue(job.id, reserved=False)
        if pending:
            log.info("resumed %d unfinished jobs", len(pending))
        return len(pending)

    async def sweep(self) -> int:
        now = self.clock.now()
        expired = await self.store.sweep(now, now + self.settings.retention_seconds)
        return len(expired)

    async def sweep_forever(self) -> None:
        while True:
            try:
                swept = await self.sweep()
                if swept:
                    log.info("swept %d expired jobs", swept)
            except Exception:
                log.exception("sweeping expired jobs failed")
            await asyncio.sleep(self.settings.sweep_interval_seconds)


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("storing a revision failed", exc_info=future.exception())


JOB_ID = re.compile(r"[0-9a-f]{32}")  # as jobs.new_job_id makes them
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$")
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
MAX_LABELS = 64
MAX_LABEL_VALUE = 256


MAX_INPUT_DEPTH = 32  # JSON inputs nested deeper are refused, on every face alike


def check_input_depth(value: Any, limit: int = MAX_INPUT_DEPTH) -> None:
    """InvalidArgument INPUT_TOO_DEEP for JSON inputs nested deeper than ``limit`` (without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    raise InvalidArgument.fields(
                        FieldViolation("inputs", f"nested deeper than {limit} levels"), reason="INPUT_TOO_DEEP")
                stack.append((child, depth + 1))


def _check_submission(route: str, labels: Mapping[str, str], request_id: str) -> None:
    violations = []
    if not ROUTE_NAME.fullmatch(route):
        violations.append(FieldViolation("route", "lowercase letters, digits, '-' and '_', at most 63"))
    if len(labels) > MAX_LABELS:
        violations.append(FieldViolation("labels", f"at most {MAX_LABELS} labels"))
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(key):
            violations.append(FieldViolation(f"labels[{key!r}]", "keys: 1 to 63 of A-Z a-z 0-9 _ . - /"))
        elif len(value) > MAX_LABEL_VALUE or not value.isprintable():
            violations.append(FieldViolation(f"labels[{key!r}]", f"values: up to {MAX_LABEL_VALUE} printable characters"))
    if request_id and not _REQUEST_ID.fullmatch(request_id):
        violations.append(FieldViolation("request_id", "1 to 128 printable ASCII characters, no spaces"))
    if violations:
        raise InvalidArgument.fields(*violations)


def _decode_token(token: str, digest: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        before, token_digest = data["b"], data["f"]
        if not isinstance(before, str) or not isinstance(token_digest, str):
            raise ValueError
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument.fields(FieldViolation("page_token", "not a token from this List"), reason="INVALID_PAGE_TOKEN") from None
    if token_digest != digest:
        raise InvalidArgument.fields(
            FieldViolation("page_token", "the filters changed since the token was issued"), reason="INVALID_PAGE_TOKEN"
        )
    return before
