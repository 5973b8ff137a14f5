"""The two narrow interfaces between the job service and the routes that run jobs.

    JobService --(Route: validate, reserve, enqueue, cancel)--> RouteRunner (gateway.work)
    RouteRunner --(Lifecycle: begin, started, report, succeed, fail, cancelled)--> JobService.lifecycle

Neither side imports the other, and neither is wired into the other after it is made: the server
builds the service with a table of routes by name (which the service only reads), then each runner
with the service's Lifecycle, adding the runner to that table. A runner in another process (a worker
on a shared store) meets the same Lifecycle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.backends.base import Backend, JobLifecycle
from gateway.errors import ResourceExhausted
from gateway.jobs import Job, JobFailure, JobInput, Result
from gateway.settings import RouteSettings

__all__ = ["Begun", "Lifecycle", "Route"]


@dataclass(frozen=True, slots=True)
class Begun:
    """A job a worker may run: the job as it starts, its input, and the checkpoint of a resumed run."""

    job: Job
    input: JobInput
    checkpoint: Mapping[str, Any] | None


class Lifecycle(JobLifecycle, Protocol):
    """What a route's workers call to move a job along. Every call is a no-op for a job that is no
    longer active (cancelled, deleted, finished by someone else)."""

    async def begin(self, job_id: str, defer_running: bool = False) -> Begun | None:
        """Takes a dequeued job: RUNNING (or, with ``defer_running``, still QUEUED until the backend
        says it started), one more attempt counted. None if the job is gone or out of attempts."""
        ...

    async def succeed(self, job_id: str, result: Result) -> None: ...

    async def fail(self, job_id: str, failure: JobFailure) -> None: ...

    async def retrying(self, job_id: str, failure: JobFailure) -> Job | None:
        """The run failed with ``failure``, which its route's retry policy runs again: the job's next
        revision (attempt one more, progress 0), stored; None when it cannot run again (it has streamed
        segments, or is no longer active): then the caller fails it."""
        ...

    async def cancelled(self, job_id: str) -> None: ...

    async def queue_timed_out(self, job_id: str) -> None:
        """The job is past its queue deadline: FAILED QUEUE_TIMEOUT, if it is still QUEUED."""
        ...

    async def interrupted(self, job_id: str) -> None:
        """The job's run was stopped by a drain (it stays RUNNING and resumes): not a crashed attempt."""
        ...

    def abandoned(self, job_id: str) -> None:
        """Another worker holds the job now (this one's lease lapsed while it was stalled): this process
        lets it go without writing anything more to it."""
        ...

    async def set_queue_positions(self, positions: Sequence[tuple[str, int]]) -> None: ...


class Route(Protocol):
    """What the job service needs of a route: admission, validation, the queue, cancel."""

    name: str
    backend: Backend
    settings: RouteSettings
    workers: int  # jobs this process runs at once for the route (0: an API replica, it runs none)

    def reserve(self) -> None:
        """Takes a queue slot before the job is stored (ResourceExhausted when full)."""
        ...

    def release(self) -> None:
        """Gives back a slot whose job was not stored after all."""
        ...

    def queue_full(self, reason: str, held: int, limit: int, retry_after: float | None = None) -> ResourceExhausted:
        """The error for a job refused at the route's limit (QUEUE_FULL, QUEUE_BYTES_FULL) or its tenant's
        (TENANT_QUEUE_FULL, TENANT_RATE_LIMITED, with ``retry_after``)."""
        ...

    def enqueue(self, job: Job, reserved: bool = True, front: bool = False) -> None: ...

    async def live_position(self, job_id: str, tenant: str) -> int:
        """The job's queue position now (1: next; 0: not waiting, or unknown)."""
        ...

    def start_estimate(self, position: int) -> float | None:
        """Seconds until the job at ``position`` likely starts (None: nothing to go by)."""
        ...

    def waiting_of(self, tenant: str) -> int:
        """How many of the tenant's jobs wait here (in-process queues; 0 for a shared one)."""
        ...

    def queued(self) -> int:
        """How many jobs wait in the queue."""
        ...

    def cancel(self, job_id: str, ending: JobFailure | None = None) -> str:
        """'queued' if the job was waiting (and is removed), 'running' if it is asked to stop, else ''.
        ``ending``: a running job ends FAILED with it (a timeout), not CANCELLED."""
        ...

    def abandon(self, job_id: str) -> None:
        """Stops running the job here without writing to it (the store lost it, or another holds it)."""
        ...

    async def overview(self) -> dict[str, Any]:
        """The route now, for the operator's console: jobs waiting and running (every process's, with a
        shared queue) and its workers (this process's, and a shared queue's worker processes)."""
        ...
