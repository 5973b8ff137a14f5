"""Running jobs: the :class:`gateway.lifecycle.Lifecycle` the route runners call, and the order of
every change a run makes.

Each change goes in three steps: the next snapshot is computed synchronously from the job's head (so
two concurrent changes can never take the same revision), handed to the store (whose writer commits
in order), and, in the commit callback, published on the event bus, whose subscriber the hub fans it
out to watchers. Watchers thus see each revision once, in order, and only once it is durable.

On a shared store another process may move a job on: a write the store refuses as out of date
(RevisionConflict) lets the job go here; a terminal revision from the bus that this process did not
write stops the run here; and a store found replaced (Redis restarted empty, flushed, failed over)
lets go of every job it lost or holds older.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway import metrics
from gateway.bus import EventBus
from gateway.errors import Code
from gateway.hub import EventHub, JobEvent
from gateway.jobs import Clock, Job, JobFailure, JobInput, JobState, Result, Segment, check_transition, webhook_wanted
from gateway.lifecycle import Begun, Route
from gateway.service.active import ActiveJobs
from gateway.settings import Settings
from gateway.store.base import RevisionConflict, Store

__all__ = ["Running"]

log = logging.getLogger(__name__)


class Running:
    """Implements :class:`gateway.lifecycle.Lifecycle`: moves the jobs this process holds along,
    restarts the unfinished ones at startup, and keeps ``active`` in step with the bus and the store.

    ``routes`` may be filled after this is made (each runner needs this object first); it is only read.
    ``on_webhook_due`` is called when a committed revision is one a webhook may want."""

    def __init__(self, settings: Settings, store: Store, bus: EventBus, hub: EventHub, clock: Clock,
                 routes: Mapping[str, Route], active: ActiveJobs,
                 on_webhook_due: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus  # committed revisions go out here; the hub (subscribed to it) serves watchers
        self.hub = hub
        self.clock = clock
        self.routes = routes
        self.active = active
        self.on_webhook_due = on_webhook_due
        # A shared bus may deliver a revision before this process's own commit callback runs: the
        # cached snapshots follow the bus too, so a reader never sees older than a watcher did.
        bus.subscribe(self._on_event)
        store.on_reset(self._on_store_reset)

    # -- changes ---------------------------------------------------------------------------------

    def _next(self, job_id: str, **changes: Any) -> Job | None:
        """The job's next snapshot, made the head at once; None if the job is no longer active."""
        head = self.active.head(job_id)
        if head is None:
            return None
        check_transition(head.state, changes.get("state", head.state))
        job = head.evolve(revision=head.revision + 1, **changes)
        if head.state is JobState.QUEUED and job.state is JobState.RUNNING:
            metrics.child(metrics.QUEUE_WAIT, job.route).observe(max(0.0, (job.started or job.created) - job.created))
        if job.terminal:
            self.active.ended(job_id)
        else:
            self.active.set_head(job_id, job)
        return job

    def _finish(self, job_id: str, state: JobState, **changes: Any) -> Job | None:
        now = self.clock.now()
        return self._next(
            job_id, state=state, finished=now, expires=now + self.settings.retention_seconds, **changes
        )

    def committed_callback(self, job: Job, segments_offset: int) -> Callable[[int], None]:
        """What runs once the store has committed ``job`` (with the change position): the cached
        revision moves on (never back), and the revision is published."""

        def on_commit(position: int) -> None:
            event = JobEvent(job, segments_offset, position)
            cached = self.active.committed(job.id)
            if job.terminal:
                metrics.job_ended(job.route, job.state.name, job.error.reason if job.error else "", job.started,
                                  job.finished)
                self.active.drop_committed(job.id)
            elif self.active.head(job.id) is not None and (cached is None or cached.job.revision < job.revision):
                self.active.set_committed(job.id, event)
            self.bus.publish(event)
            if self.on_webhook_due is not None and job.webhook is not None and webhook_wanted(job):
                self.on_webhook_due()

        return on_commit

    def _save(
        self, job: Job, new_segments: Sequence[Segment] = (), result: Result | None = None, count_attempt: bool = False
    ) -> Awaitable[bool]:
        """Hands the revision to the store now (so revisions reach it in order); the awaitable ends
        once it is committed. The store checks it follows the stored revision, of this attempt."""
        return self._settle(job.id, self._store(job, new_segments, result, count_attempt))

    def _store(self, job: Job, new_segments: Sequence[Segment] = (), result: Result | None = None,
               count_attempt: bool = False) -> Awaitable[None]:
        on_commit = self.committed_callback(job, len(job.segments) - len(new_segments))
        attempt = self.active.attempt(job.id)
        if job.terminal:
            self.active.drop_attempt(job.id)
        return self.store.save_revision(job, new_segments, result, on_commit, count_attempt, attempt)

    async def _settle(self, job_id: str, stored: Awaitable[None]) -> bool:
        """Whether the revision was stored; False when another process had moved the job on."""
        try:
            await stored
        except RevisionConflict as exc:  # the job is no longer ours
            self._changed_elsewhere(job_id, exc)
            return False
        return True

    def _changed_elsewhere(self, job_id: str, conflict: RevisionConflict) -> None:
        log.warning("job %s was changed elsewhere; letting it go: %s", job_id, conflict)
        self._let_go(job_id)

    def _save_later(self, job: Job, count_attempt: bool = False) -> None:
        """Hands the revision to the store, not waiting for its commit (a callback settles it: no task)."""
        stored = asyncio.ensure_future(self._store(job, count_attempt=count_attempt))
        stored.add_done_callback(functools.partial(self._stored_later, job.id))

    def _stored_later(self, job_id: str, stored: asyncio.Future[None]) -> None:
        if stored.cancelled():
            return
        exc = stored.exception()
        if isinstance(exc, RevisionConflict):
            self._changed_elsewhere(job_id, exc)
        elif exc is not None:
            log.error("storing a revision failed", exc_info=exc)

    def _let_go(self, job_id: str) -> None:
        """A job this process ran is no longer its own (ended or taken over elsewhere, or the store holds
        another revision of it): its run stops here, and its queue entry goes to whichever worker looks
        next (never acknowledged from here: the entry may be another worker's now)."""
        head = self.active.head(job_id)
        route = self.routes.get(head.route) if head is not None else None
        if route is not None:
            route.abandon(job_id)
        self.forget(job_id)

    def forget(self, job_id: str) -> None:
        """Drops what this process holds of a job (deleted, or taken over elsewhere)."""
        self.active.forget(job_id)

    # -- the bus and the store -------------------------------------------------------------------

    def _on_event(self, event: JobEvent) -> None:
        # Reads the event's header first: an event from another process decodes its job only if
        # this process holds something of the job.
        job_id = event.job_id
        if event.terminal:
            self.active.take_input(job_id)  # queued here, run (and ended) wherever
        head = self.active.head(job_id)
        if head is not None and event.revision > head.revision and event.terminal:
            # Ended by another process (cancelled through another replica): stop running it here.
            route = self.routes.get(event.job.route)
            if route is not None:
                route.cancel(job_id)
            self.forget(job_id)
            return
        if head is not None:  # running here: this process wrote the revision, and cached it then
            return
        cached = self.active.committed(job_id)
        if cached is None or cached.job.revision >= event.revision:
            return
        if event.terminal:
            self.active.drop_committed(job_id)  # read from the store from now on
        elif not event.partial:
            self.active.set_committed(job_id, event)
        elif len(cached.job.segments) == event.segments_offset:
            whole = event.job.evolve(segments=cached.job.segments + event.new_segments)
            self.active.set_committed(job_id, JobEvent(whole, event.segments_offset, event.position))
        else:  # a revision missed in between: the store has it
            self.active.drop_committed(job_id)

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
        for job_id in self.active.cached():
            self.active.drop_committed(job_id)
        for job_id, head in self.active.heads():
            stored = await self.store.get_job(job_id)
            if stored is not None and stored.revision >= head.revision:
                continue
            log.error("job %s: the store %s; letting it go here", job_id,
                      "lost it" if stored is None else f"holds revision {stored.revision}, not {head.revision}")
            self._let_go(job_id)
        self.hub.reset()

    # -- gateway.lifecycle.Lifecycle -------------------------------------------------------------

    async def begin(self, job_id: str, defer_running: bool = False) -> Begun | None:
        """Moves a dequeued job to RUNNING (or, with ``defer_running``, leaves it QUEUED until the
        backend says it started); answers what the backend needs, or None if it is gone."""
        active = self.active
        head = active.head(job_id)
        if head is None:
            head = await self._take_over(job_id)
        if head is None:
            return None
        counted = active.take_counted(job_id)  # its attempt was counted as it was taken over
        if head.state is JobState.QUEUED and not defer_running:
            job = self._next(job_id, state=JobState.RUNNING, started=self.clock.now(), queue_position=0)
            assert job is not None
            if not counted:
                active.set_attempt(job_id, (active.attempt(job_id) or 0) + 1)
            # Not awaited: the writer commits in order, so this revision is stored (and published)
            # before any later one of the job; if the process dies first, the job resumes as QUEUED.
            self._save_later(job, count_attempt=not counted)
        else:  # resumed after a restart, or waiting upstream: count the attempt
            if not counted:
                active.set_attempt(job_id, await self.store.start_attempt(job_id))
            attempts = active.attempt(job_id)
            assert attempts is not None  # set just above, or as it was taken over
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
        job_input = active.take_input(job_id)
        if job_input is None:
            payload = await self.store.get_payload(job_id)
            if payload is None:
                await self.fail(job_id, JobFailure(Code.DATA_LOSS, "INPUT_LOST", "the job's inputs are gone"))
                return None
            job_input = JobInput.decode(payload)
        head = active.head(job_id)
        if head is None:
            return None
        return Begun(head, job_input, active.take_checkpoint(job_id))

    async def _take_over(self, job_id: str) -> Job | None:
        """A job from the shared queue: this process holds it from now on."""
        active = self.active
        submitting = active.take_submitting(job_id)
        if submitting is not None and active.head(job_id) is None:
            # Queued by this process's Submit, whose answer from the store is not back yet: the job
            # is stored (the queue entry is written in the same step), as this process made it.
            job = submitting.job
            active.set_head(job_id, job)
            active.set_committed(job_id, JobEvent(job))
            active.set_attempt(job_id, 0)
            active.keep_input(job_id, submitting.input, submitting.size)
            return job
        cached = active.committed(job_id)
        if cached is not None and cached.job.revision == 1 and active.head(job_id) is None:
            # Submitted through this process, untouched since as far as it knows: no read needed (if
            # it did change meanwhile, the first write's compare-and-set says so).
            active.set_head(job_id, cached.job)
            active.set_attempt(job_id, 0)
            return cached.job
        # Left by another worker (it died, drained or stalled): its attempt ends here, in the same
        # step that reads where the job stands, so the run goes on after its last stored revision and
        # its segments (never from the start), and a write the other may still try is refused.
        found = await self.store.take_over(job_id)
        if found is None or found.job.terminal or active.head(job_id) is not None:
            return active.head(job_id)
        active.set_head(job_id, found.job)
        active.set_committed(job_id, JobEvent(found.job))
        active.set_attempt(job_id, found.attempts)
        active.mark_counted(job_id)
        active.set_checkpoint(job_id, found.checkpoint)
        return found.job

    def abandoned(self, job_id: str) -> None:
        self.forget(job_id)

    async def interrupted(self, job_id: str) -> None:
        attempt = self.active.attempt(job_id)
        if attempt:
            await self.store.spare_attempt(job_id, attempt)

    async def started(self, job_id: str) -> None:
        head = self.active.head(job_id)
        if head is not None and head.state is JobState.QUEUED:
            job = self._next(job_id, state=JobState.RUNNING, started=self.clock.now(), queue_position=0)
            if job is not None:
                await self._save(job)

    async def report(self, job_id: str, progress: float | None, segments: Sequence[Segment],
                     logs: str | None = None, queue_position: int | None = None) -> None:
        head = self.active.head(job_id)
        if head is None:
            return
        changes: dict[str, Any] = {}
        if progress is not None:
            changes["progress"] = progress
        if segments:
            changes["segments"] = head.segments + tuple(segments)
        if logs is not None and logs != head.logs:
            changes["logs"] = logs
        if queue_position is not None and head.state is JobState.QUEUED and queue_position != head.queue_position:
            changes["queue_position"] = queue_position
        if not changes and (logs is not None or queue_position is not None):
            return  # nothing moved
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

    async def retrying(self, job_id: str, failure: JobFailure) -> Job | None:
        head = self.active.head(job_id)
        if head is None or head.terminal or head.segments:  # (a run again would contradict what was streamed)
            return None
        job = self._next(job_id, attempt=head.attempt + 1, progress=0.0)
        if job is None or not await self._save(job):
            return None
        metrics.JOB_RETRIES.labels(job.route, failure.reason).inc()
        log.info("job %s: run %d failed (%s %s: %s); it runs again", job_id, head.attempt, failure.code.name,
                 failure.reason, failure.message)
        return job

    async def cancelled(self, job_id: str) -> None:
        await self._end(job_id, JobState.CANCELLED, JobFailure(Code.CANCELLED, "CANCELLED", "the job was cancelled"))

    async def queue_timed_out(self, job_id: str) -> None:
        """A job past its queue deadline: FAILED QUEUE_TIMEOUT if it is still QUEUED (taken from its
        queue; a job a worker holds, still QUEUED upstream, is stopped as a cancel stops it)."""
        head = self.active.head(job_id) or await self.store.get_job(job_id)
        if head is None or head.state is not JobState.QUEUED:
            return
        failure = JobFailure(Code.DEADLINE_EXCEEDED, "QUEUE_TIMEOUT",
                             f"the job waited in the queue longer than its queue_timeout ({head.queue_timeout:g} s)",
                             {"queueTimeoutSeconds": f"{head.queue_timeout:g}"})
        runner = self.routes.get(head.route)
        if runner is not None and runner.cancel(job_id, failure) == "running":
            return  # its worker ends it so, once its backend has stopped (an upstream one cancels there)
        await self._end(job_id, JobState.FAILED, failure, only_queued=True)

    async def _end(self, job_id: str, state: JobState, failure: JobFailure, only_queued: bool = False) -> None:
        head = self.active.head(job_id)
        if head is None:  # run by another process (a shared store): end it in the store
            await self._end_stored(job_id, state, only_queued, error=failure, queue_position=0)
            return
        if only_queued and head.state is not JobState.QUEUED:
            return
        job = self._finish(job_id, state, error=failure, queue_position=0)
        if job is not None and not await self._save(job):
            await self._end_stored(job_id, state, only_queued, error=failure, queue_position=0)

    async def _end_stored(self, job_id: str, state: JobState, only_queued: bool = False, **changes: Any) -> None:
        """Ends a job this process does not hold, from the store's current revision (a compare-and-
        set: the process running it finds its next write refused and lets the job go). ``only_queued``:
        not if it has left QUEUED meanwhile."""
        for _ in range(5):
            job = await self.store.get_job(job_id)
            if job is None or job.terminal or (only_queued and job.state is not JobState.QUEUED):
                return
            now = self.clock.now()
            check_transition(job.state, state)
            ended = job.evolve(revision=job.revision + 1, state=state, finished=now,
                               expires=now + self.settings.retention_seconds, **changes)
            try:
                await self.store.save_revision(ended, on_commit=self.committed_callback(ended, len(ended.segments)))
                return
            except RevisionConflict:
                continue  # it moved on meanwhile: try again from where it is now
        log.warning("job %s kept changing; it could not be ended %s", job_id, state.name)

    async def open_upload(self, job_id: str) -> tuple[Path, bool] | None:
        return await self.store.open_upload(job_id)

    async def save_checkpoint(self, job_id: str, checkpoint: Mapping[str, Any]) -> None:
        if self.active.head(job_id) is not None:
            await self.store.save_checkpoint(job_id, checkpoint)

    async def set_queue_positions(self, positions: Sequence[tuple[str, int]]) -> None:
        saves = []
        for job_id, position in positions:
            head = self.active.head(job_id)
            if head is not None and head.state is JobState.QUEUED and head.queue_position != position:
                job = self._next(job_id, queue_position=position)
                if job is not None:
                    saves.append(self._save(job))
        if saves:
            await asyncio.gather(*saves)

    # -- startup ---------------------------------------------------------------------------------

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
            self.active.set_head(job.id, job)
            self.active.set_committed(job.id, JobEvent(job))
            self.active.set_attempt(job.id, item.attempts)
            runner = self.routes.get(job.route)
            if runner is None:
                await self.fail(job.id, JobFailure(
                    Code.FAILED_PRECONDITION, "ROUTE_NOT_CONFIGURED",
                    f"route {job.route!r} is no longer configured",
                ))
                continue
            self.active.set_checkpoint(job.id, item.checkpoint)
            runner.enqueue(job, reserved=False)
        if pending:
            log.info("resumed %d unfinished jobs", len(pending))
        return len(pending)


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("storing a revision failed", exc_info=future.exception())
