"""The job service: the state machine, idempotency, retention, and the order of every change.

Every change of a job goes through here, in three steps: compute the next snapshot synchronously
from the job's head (so two concurrent changes can never take the same revision), store it (the
store's writer commits in order), and, in the commit callback, publish it on the event bus, whose
subscriber the hub fans it out to watchers. Watchers thus see each revision once, in order, and only
once it is durable.

Its parts, each built with what it needs and testable alone:

    ActiveJobs (active.py)    one record per active job this process holds: head, committed event, input...
    Admission (admission.py)  Submit: validation, request ids, quotas, the first revision's commit
    Running (running.py)      the Lifecycle the route runners call: begin, report, succeed, fail, cancelled...
    Streams (streams.py)      Get, List, Fetch, Watch, WatchJobs and their resume tokens

:class:`JobService` composes them for the faces (gRPC, HTTP), which call it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from gateway.bus import EventBus
from gateway.errors import FailedPrecondition
from gateway.hub import EventHub, JobEvent
from gateway.jobs import DEFAULT_PRIORITY, Clock, Deadlines, Job, JobInput, JobState, Result, WebhookSpec
from gateway.lifecycle import Route
from gateway.service.active import INPUTS_IN_MEMORY_BYTES, ActiveJob, ActiveJobs
from gateway.service.admission import JOB_ID, MAX_INPUT_DEPTH, Admission, WebhookPolicies, check_input_depth
from gateway.service.admission import _check_submission as _check_submission
from gateway.service.running import Running
from gateway.service.streams import Heartbeat, Streams, Update
from gateway.settings import Settings
from gateway.store.base import JobFilter, Store
from gateway.store.uploads import copy_upload, remove

__all__ = [
    "INPUTS_IN_MEMORY_BYTES",
    "JOB_ID",
    "MAX_INPUT_DEPTH",
    "ActiveJob",
    "ActiveJobs",
    "Admission",
    "Heartbeat",
    "JobService",
    "Running",
    "Streams",
    "Update",
    "Webhooks",
    "check_input_depth",
]

log = logging.getLogger(__name__)

NO_DEADLINES = Deadlines()


def retry_request_id(job_id: str) -> str:
    """The request_id of the job a Retry of ``job_id`` makes: one retry per job, found again by it."""
    return f"retry:{job_id}"

DELETE_WAIT_SECONDS = 10.0
QUEUE_DEADLINE_CHECK_SECONDS = 0.25  # Delete with force: how long a running job gets to stop


class Webhooks(WebhookPolicies, Protocol):
    """What the service needs of the webhook dispatcher (gateway.webhooks.Dispatcher): tenants'
    policies for Submit, and a poke when a revision a webhook may want is committed."""

    def poke(self) -> None: ...


class JobService:
    """The job service the faces call: each call goes to the part that owns it.

    ``routes``: the route runners by name. The server fills it as it builds them (a runner needs
    ``lifecycle`` first); the service only reads it. ``webhooks``: the dispatcher, in a process that
    serves the API (None in a worker: Submit then refuses webhooks)."""

    def __init__(self, settings: Settings, store: Store, bus: EventBus, hub: EventHub, clock: Clock,
                 routes: Mapping[str, Route], webhooks: Webhooks | None = None) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self.hub = hub
        self.clock = clock
        self.routes = routes
        self.active = ActiveJobs()
        self.lifecycle = Running(settings, store, bus, hub, clock, routes, self.active,
                                 on_webhook_due=webhooks.poke if webhooks is not None else None)
        self.admission = Admission(store, bus, clock, routes, self.active, webhooks, tenants=settings.tenant)
        self.streams = Streams(settings, store, hub, clock, self.active)

    @property
    def accepting(self) -> bool:
        """False once the gateway is shutting down: Submit refuses (UNAVAILABLE, retryable)."""
        return self.admission.accepting

    @accepting.setter
    def accepting(self, accepting: bool) -> None:
        self.admission.accepting = accepting

    # -- submit ----------------------------------------------------------------------------------

    def route(self, name: str) -> Route:
        """The route of that name; NotFound ROUTE_NOT_FOUND if there is none."""
        return self.admission.route(name)

    async def submit(
        self, tenant: str, route: str, job_input: JobInput, labels: Mapping[str, str], request_id: str,
        webhook: WebhookSpec | None = None, deadlines: Deadlines = NO_DEADLINES, priority: int = DEFAULT_PRIORITY,
    ) -> tuple[Job, bool]:
        """Stores a new job and queues it (at ``priority``, 1 most urgent to 5, among its tenant's jobs);
        answers (job, existing). In one process the answer carries the job's place in the scheduler's order
        now (fair share and priority counted); with a shared queue, 0 (Get reads it: a read of Redis per
        Submit would cost every Submit for what few callers look at)."""
        job, existing = await self.admission.submit(tenant, route, job_input, labels, request_id, webhook, deadlines,
                                                    priority)
        if not self.store.shared and job.state is JobState.QUEUED:
            placed = await self._placed(job)
            # 0: a worker took it already (it was next); the answer keeps the place it had, 1.
            job = placed if placed.queue_position else placed.evolve(queue_position=job.queue_position or 1)
        return job, existing

    async def retry(self, tenant: str, job_id: str, spool_dir: Path | None = None) -> tuple[Job, bool]:
        """Runs a FAILED or CANCELLED job again as a new job (its inputs, route, labels, priority, deadlines
        and webhook), admitted as a Submit; answers (job, existing). A job is retried once: the new job's
        request_id is made from the old id, so a repeated Retry (or two at once, on any replica) answers
        the same new job. ``spool_dir``: where a copy of an uploaded audio file is made, if one is needed."""
        old = await self.streams.get(tenant, job_id)
        meta = {"job_id": job_id, "state": old.state.name}
        if not old.terminal:
            raise FailedPrecondition(f"job {job_id} is {old.state.name}; only a FAILED or CANCELLED job is retried",
                                     reason="JOB_NOT_DONE", metadata=meta)
        if old.state is JobState.SUCCEEDED:
            raise FailedPrecondition(f"job {job_id} SUCCEEDED; only a FAILED or CANCELLED job is retried (submit it "
                                     "again to run it again)", reason="JOB_NOT_RETRYABLE", metadata=meta)
        request_id = retry_request_id(job_id)
        found = await self.store.find_request(tenant, request_id, self.clock.now())
        if found is not None:
            return found[0], True
        lost = FailedPrecondition(f"the inputs of job {job_id} are no longer kept (keep_failed_inputs is off, or the "
                                  "job ended before it was on); submit it again", reason="INPUT_LOST", metadata=meta)
        payload = await self.store.get_payload(job_id)
        if payload is None:
            raise lost
        job_input = JobInput.decode(payload)
        transcription = job_input.transcription
        copy: Path | None = None
        if transcription is not None and transcription.audio_upload:  # the audio came by Upload: the store's file
            opened = await self.store.open_upload(job_id)
            if opened is None:
                raise lost
            copy = opened[0] if opened[1] else await asyncio.to_thread(copy_upload, opened[0], spool_dir)
            job_input = replace(job_input, transcription=replace(transcription, audio_file=copy))
        try:
            return await self.admission.submit(tenant, old.route, job_input, old.labels, request_id, old.webhook,
                                               Deadlines(old.queue_timeout, old.run_timeout), old.priority,
                                               retry_of=job_id)
        finally:
            if copy is not None:
                remove(copy)  # (unless the store took it in)

    async def webhook_delivery(self, job: Job) -> dict[str, Any] | None:
        """The delivery state of the job's webhook (gateway.webhooks), when it has one."""
        return await self.streams.webhook_delivery(job)

    # -- reads and streams -----------------------------------------------------------------------

    async def get(self, tenant: str, job_id: str) -> Job:
        """The job as it is; a queued one with its queue position now (the scheduler's order)."""
        return await self._placed(await self.streams.get(tenant, job_id))

    async def _placed(self, job: Job) -> Job:
        """A QUEUED job's queue_position read from its route's queue now: revisions carry it at most once
        a second in one process, and never with a shared queue, where every start would move them all. A
        FAILED or CANCELLED one with the job that retried it, if any (read, never written to the old job)."""
        if job.state in (JobState.FAILED, JobState.CANCELLED):
            found = await self.store.find_request(job.tenant, retry_request_id(job.id), self.clock.now())
            return job if found is None else job.evolve(retried_by=found[0].id)
        runner = self.routes.get(job.route) if job.state is JobState.QUEUED else None
        if runner is None:
            return job
        position = await runner.live_position(job.id, job.tenant)
        wait = runner.start_estimate(position)
        return job.evolve(queue_position=position, estimated_start=None if wait is None else self.clock.now() + wait)

    async def watch(self, tenant: str, job_id: str, after_revision: int = 0) -> AsyncGenerator[Update | Heartbeat, None]:
        """See :meth:`Streams.watch`; its first message, a queued job whole, carries its queue position now."""
        async with contextlib.aclosing(self.streams.watch(tenant, job_id, after_revision)) as updates:
            async for item in updates:
                if isinstance(item, Update) and item.whole and item.job.state is JobState.QUEUED:
                    event = item.event
                    placed = await self._placed(event.job)
                    item = Update(JobEvent(placed, event.segments_offset, event.position, event.partial), whole=True)
                yield item

    async def fetch(self, tenant: str, job_id: str, wait: float | None = None) -> tuple[Job, Result | None]:
        """See :meth:`Streams.fetch`."""
        job, result = await self.streams.fetch(tenant, job_id, wait)
        return await self._placed(job), result

    async def list(self, tenant: str, flt: JobFilter, page_size: int, page_token: str) -> tuple[list[Job], str]:
        return await self.streams.list(tenant, flt, page_size, page_token)

    def watch_jobs(self, tenant: str, flt: JobFilter, resume_token: str = "") -> AsyncIterator[tuple[JobEvent, int] | Heartbeat]:
        """See :meth:`Streams.watch_jobs`."""
        return self.streams.watch_jobs(tenant, flt, resume_token)

    def resume_token(self, position: int) -> str:
        """The opaque WatchJobs resume token for a change position of this store."""
        return self.streams.resume_token(position)

    # -- cancel, delete: a tenant's read, then the lifecycle ---------------------------------------

    async def cancel(self, tenant: str, job_id: str) -> Job:
        """Asks the job to stop; answers at once with the job as it is then: CANCELLED if it was
        queued, still RUNNING if its backend has been asked to stop (it ends on the stream)."""
        job = await self.get(tenant, job_id)
        if job.terminal:
            return job
        runner = self.routes.get(job.route)
        where = runner.cancel(job_id) if runner is not None else ""
        if where != "running":
            await self.lifecycle.cancelled(job_id)
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
                await self.streams.until_done(tenant, job_id, DELETE_WAIT_SECONDS)
            await self.lifecycle.cancelled(job_id)
        self.lifecycle.forget(job_id)
        await self.store.delete(job_id)

    # -- startup and retention -------------------------------------------------------------------

    async def resume(self) -> int:
        """See :meth:`Running.resume`."""
        return await self.lifecycle.resume()

    async def sweep(self) -> int:
        now = self.clock.now()
        expired = await self.store.sweep(now, now + self.settings.retention_seconds)
        return len(expired)

    async def expire_queued_forever(self) -> None:
        """Ends the jobs still QUEUED past their queue deadline, a quarter of a second at most after it
        (every process does: with a shared store the first one to look ends a job, once)."""
        while True:
            try:
                due = await self.store.queue_deadlines_due(self.clock.now())
                for job_id in due:
                    await self.lifecycle.queue_timed_out(job_id)
            except Exception:
                log.exception("ending jobs past their queue deadline failed")
                due = []
            if len(due) < 100:  # (more due: the next ones at once)
                await asyncio.sleep(QUEUE_DEADLINE_CHECK_SECONDS)

    async def sweep_forever(self) -> None:
        while True:
            try:
                swept = await self.sweep()
                if swept:
                    log.info("swept %d expired jobs", swept)
            except Exception:
                log.exception("sweeping expired jobs failed")
            await asyncio.sleep(self.settings.sweep_interval_seconds)
