"""What readers see: Get, List and Fetch, and the two streams, Watch (one job) and WatchJobs (a tenant's).

A reader sees a job only once its revision is committed: an active job's latest committed revision
from the table of active jobs (which follows the bus), any other from the store. A stream opens its
hub subscription before it reads where the job (or the tenant) stands, so nothing committed in
between is missed, and it falls back to the store whenever the hub cannot vouch for what it holds (a
gap, a resync, a watcher too slow): the store has every committed revision, with its segments.

WatchJobs positions increase in commit order; a resume token is a position of this store's data,
so a stream resumed with one gets every job changed after it, and refuses a token of other data.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import math
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from gateway.errors import Code, FailedPrecondition, FieldViolation, GatewayError, InvalidArgument, NotFound, Unavailable
from gateway.hub import EventHub, JobEvent
from gateway.jobs import Clock, Job, JobState, Result, Segment
from gateway.service.active import ActiveJobs
from gateway.service.admission import JOB_ID
from gateway.settings import Settings
from gateway.store.base import JobFilter, Store

__all__ = ["Heartbeat", "Streams", "Update"]

MAX_FETCH_WAIT_SECONDS = 3600.0
RESUME_PAGE = 1000
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50

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


class Streams:
    """Reads and streams of jobs, scoped to a tenant. Holds nothing of its own: it reads ``active``
    (kept by admission and the running jobs) and the store, and subscribes to the hub."""

    def __init__(self, settings: Settings, store: Store, hub: EventHub, clock: Clock, active: ActiveJobs) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.clock = clock
        self.active = active

    # -- reads -----------------------------------------------------------------------------------

    async def _event(self, tenant: str, job_id: str) -> JobEvent:
        """The job's latest committed snapshot, scoped to the tenant; NotFound otherwise (InvalidArgument
        for an id that cannot be one: AIP-193 keeps NOT_FOUND for what could exist)."""
        if not JOB_ID.fullmatch(job_id):
            raise InvalidArgument.fields(
                FieldViolation("job_id", "a job id is the 32 lowercase hexadecimal characters Submit answered"),
                reason="INVALID_JOB_ID")
        event = self.active.committed(job_id)
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

    # -- Watch -----------------------------------------------------------------------------------

    async def watch(self, tenant: str, job_id: str, after_revision: int = 0) -> AsyncGenerator[Update | Heartbeat, None]:
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
                for job, offset in await self.store.revisions_after(job_id, after_revision, whole=False):
                    yield Update(JobEvent(job, offset, partial=True))
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
                    missed = await self.store.revisions_after(job_id, last, whole=False)
                    if not missed:
                        await self._check_kept(tenant, job_id, last)
                    for job, offset in missed:
                        yield Update(JobEvent(job, offset, partial=True))
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


    async def until_done(self, tenant: str, job_id: str, timeout: float | None) -> Job:
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
            job = await self.until_done(tenant, job_id, limit)
        result = await self.store.get_result(job_id) if job.state is JobState.SUCCEEDED else None
        return job, result

    # -- List ------------------------------------------------------------------------------------

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
        return [_current(self.active, j) for j in jobs], token

    # -- WatchJobs -------------------------------------------------------------------------------

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

    async def webhook_delivery(self, job: Job) -> dict[str, Any] | None:
        """The delivery state of the job's webhook (gateway.webhooks), when it has one."""
        if job.webhook is None:
            return None
        return await self.store.webhook_state(job.id) or {}


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



def _current(active: ActiveJobs, job: Job) -> Job:
    """The job as readers here see it: the committed revision this process holds, else the store's."""
    committed = active.committed(job.id)
    return committed.job if committed is not None else job
