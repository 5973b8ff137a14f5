"""A route's runner: a work queue of job ids and the workers that run them on the route's backend.

The queue and the workers are separate on purpose: a worker takes one job id at a time from the
queue and drives it through the job service; a batching worker (several queued jobs in one GPU call)
can take a different shape without touching the queue, the admission control or the service.

Admission control: a slot is reserved before the job is stored, so the queue never grows past
``max_queue``; a full queue answers RESOURCE_EXHAUSTED with a retry delay estimated from recent job
durations. Queue positions are refreshed at most once a second, for the first jobs of the queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from gateway import logcontext
from gateway.backends.base import Backend, JobContext
from gateway.errors import Code, FailedPrecondition, GatewayError, JobError, ResourceExhausted
from gateway.jobs import Job, JobFailure
from gateway.lifecycle import Lifecycle
from gateway.settings import RouteSettings
from gateway.store.base import TenantPolicy
from gateway.tasks import cancel_and_wait
from gateway.work.queue import MemoryQueue, QueueClosed, WorkQueue

__all__ = ["RouteRunner", "health_name"]

log = logging.getLogger(__name__)

POSITION_REFRESH_SECONDS = 1.0
POSITION_WINDOW = 256


def health_name(route: str) -> str:
    """The grpc.health.v1 service name of a route: SERVING once its backend is loaded and warm."""
    return f"route/{route}"


class _Deadline:
    """Calls ``due`` once the wall clock reaches ``at`` (a time.time() value), never before: a loop's timer
    may fire a little early (uvloop counts whole milliseconds from the time its turn began), so an early
    call waits again for what is left."""

    __slots__ = ("_at", "_due", "_handle")

    def __init__(self, at: float, due: Callable[[], None]) -> None:
        self._at = at
        self._due = due
        self._handle = asyncio.get_running_loop().call_later(max(0.0, at - time.time()), self._fire)

    def _fire(self) -> None:
        left = self._at - time.time()
        if left > 0:
            self._handle = asyncio.get_running_loop().call_later(left + 0.001, self._fire)
            return
        self._due()

    def cancel(self) -> None:
        self._handle.cancel()


@dataclass(eq=False)
class _Running:
    job_id: str
    task: asyncio.Task[Any] | None = None  # the worker's task, while it runs this job
    ctx: JobContext | None = None
    cancel_requested: bool = False
    lost: bool = False  # another worker holds the job now: nothing more is written to it from here
    in_backend: bool = False
    finishing: bool = False  # the backend is done: the job's end is being written (which ends its lease)
    started: float = field(default_factory=time.monotonic)
    ending: JobFailure | None = None  # why the job is being stopped, when not by a cancel (a timeout)


class RouteRunner:
    """Implements :class:`gateway.lifecycle.Route` for the job service, and drives jobs through its
    :class:`gateway.lifecycle.Lifecycle`."""

    def __init__(
        self, name: str, settings: RouteSettings, backend: Backend, lifecycle: Lifecycle,
        queue: WorkQueue | None = None,
        workers: int | None = None,
        tenants: Callable[[str], TenantPolicy] | None = None,
    ) -> None:
        """``tenants``: a tenant's share of the workers and its max_running (the in-process queue's order)."""
        self.name = name
        self.settings = settings
        self.backend = backend
        self.lifecycle = lifecycle
        self.queue: WorkQueue = queue if queue is not None else MemoryQueue(
            settings.max_queue, (lambda t: tenants(t).weight) if tenants else None,
            (lambda t: tenants(t).max_running) if tenants else None)
        self.queue.on_lost(self.abandon)
        # Jobs this process runs at once (0: none); a backend may say how many it takes (a batcher).
        self.workers = workers if workers is not None else (
            backend.concurrency if backend.concurrency is not None else settings.workers)
        self._running: dict[str, _Running] = {}
        self._timeouts: set[asyncio.Future[None]] = set()  # run timeouts being written
        self._workers: list[asyncio.Task[None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._positions_dirty = False
        self._mean_duration: float | None = None
        self.start_error: str | None = None

    @property
    def readiness(self) -> object:
        return self.backend.readiness

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts the backend (loading, warm-up) in the background, then the workers."""
        await self.queue.open()
        self._tasks.append(asyncio.create_task(self._start(), name=f"route-{self.name}-start"))
        self._tasks.append(asyncio.create_task(self._refresh_positions(), name=f"route-{self.name}-positions"))

    async def _start(self) -> None:
        if self.workers == 0:
            # Runs no jobs here (an API replica on a shared queue): no model to load, and the route
            # is ready as soon as it can take jobs in.
            self.backend.readiness.set(True)
            return
        try:
            await self.backend.start()
        except Exception as exc:
            log.exception("route %s: backend failed to start", self.name)
            self.start_error = f"{type(exc).__name__}: {exc}"
            while len(self.queue):
                job_id = await self.queue.get()
                await self.lifecycle.fail(job_id, JobFailure(
                    Code.FAILED_PRECONDITION, "ROUTE_FAILED", f"route {self.name!r} failed to start: {self.start_error}"
                ))
            return
        for i in range(self.workers):
            self._workers.append(asyncio.create_task(self._work(), name=f"route-{self.name}-worker-{i}"))

    async def stop(self, drain: float) -> None:
        """Takes no new job, lets running ones finish for ``drain`` seconds, then interrupts the rest
        (they stay RUNNING in the store and resume at the next start)."""
        self.queue.close()
        if self._workers:
            await asyncio.wait(self._workers, timeout=drain)
            # (an interrupted worker gives its job's attempt back: two seconds for that store write)
            await cancel_and_wait(self._workers, again=2.0)
        await cancel_and_wait(self._tasks)
        await self.queue.aclose()
        await self.backend.close()

    # -- admission and queue ---------------------------------------------------------------------

    def reserve(self) -> None:
        if self.start_error is not None:
            raise FailedPrecondition(
                f"route {self.name!r} failed to start: {self.start_error}", reason="ROUTE_FAILED",
                metadata={"route": self.name},
            )
        if not self.queue.reserve():
            raise self.queue_full("QUEUE_FULL", self.queue.maxsize, self.queue.maxsize)

    def queue_full(self, reason: str, held: int, limit: int, retry_after: float | None = None) -> ResourceExhausted:
        """The error for a job refused at a limit: the route's (jobs waiting, input bytes held) or its
        tenant's (jobs waiting, Submits per second; ``retry_after``: when the next one is allowed)."""
        if reason == "TENANT_RATE_LIMITED":
            wait = max(0.001, retry_after or 0.0)
            return ResourceExhausted(
                f"you submit faster than your tenant's submit_rate allows (bursts of {limit}); the next Submit is "
                f"allowed in {wait:.3f} s", reason=reason,
                metadata={"route": self.name, "submit_burst": str(limit)}, retry_after=wait)
        if reason == "TENANT_QUEUE_FULL":
            return ResourceExhausted(
                f"you have {held} jobs waiting on route {self.name!r}, your limit of {limit} (max_queued); retry "
                "later", reason=reason, metadata={"route": self.name, "max_queued": str(limit)},
                retry_after=self._retry_after())
        if reason == "QUEUE_BYTES_FULL":
            message = (f"route {self.name!r} holds {held} bytes of queued and running inputs; with this one it would "
                       f"pass its limit of {limit}; retry later")
            metadata = {"route": self.name, "max_queued_bytes": str(limit)}
        else:
            message = f"route {self.name!r} has {held} jobs waiting, its limit of {limit} (max_queue); retry later"
            metadata = {"route": self.name, "max_queue": str(limit)}
        return ResourceExhausted(message, reason=reason, metadata=metadata, retry_after=self._retry_after())

    def _retry_after(self) -> float:
        """When a place is likely to free up: a full queue moves by one as soon as any running job
        ends (its worker takes the next), so about one mean job duration over the workers running
        them, not the time to drain the whole queue."""
        mean = self._mean_duration if self._mean_duration is not None else 5.0
        return max(0.5, min(300.0, mean / max(1, self.workers)))

    def release(self) -> None:
        self.queue.release()

    def waiting_of(self, tenant: str) -> int:
        return self.queue.waiting_of(tenant)

    async def live_position(self, job_id: str, tenant: str) -> int:
        return await self.queue.live_position(job_id, tenant)

    def start_estimate(self, position: int) -> float | None:
        """``position`` jobs to go, at the rate the busy workers end theirs: position / workers x the mean
        run time (the route's workers with a shared queue: those running jobs now, every process's)."""
        mean = self.queue.run_time(self._mean_duration)
        if mean is None or position <= 0:
            return None
        running = sum(r for _w, r in self.queue.snapshot().tenants.values())
        return position / max(1, running or self.workers) * mean

    def enqueue(self, job: Job, reserved: bool = True, front: bool = False) -> None:
        self.queue.put(job.id, reserved=reserved, front=front, tenant=job.tenant, priority=job.priority,
                       created=job.created)
        if front:
            self._positions_dirty = True

    def position(self, job_id: str) -> int:
        return self.queue.position(job_id)

    def queued(self) -> int:
        return len(self.queue)

    def cancel(self, job_id: str, ending: JobFailure | None = None) -> str:
        """'queued' if it was waiting (and is removed), 'running' if it is asked to stop, else ''. With
        ``ending``, a running job ends FAILED with it (a timeout) rather than CANCELLED."""
        if self.queue.remove(job_id):
            self._positions_dirty = True
            return "queued"
        running = self._running.get(job_id)
        if running is None:
            return ""
        if ending is not None and running.ending is None:
            running.ending = ending
        running.cancel_requested = True
        if running.ctx is not None:
            running.ctx.cancel_requested = True
            running.ctx.stop.set()
        if running.in_backend and running.task is not None:
            running.task.cancel()
        return "running"

    def abandon(self, job_id: str) -> None:
        """The queue found the job's lease taken by another worker (this process stalled past it): the
        run stops here without a word more to the job, which goes on where the other worker took it."""
        running = self._running.get(job_id)
        if running is not None and running.finishing:
            # Its lease entry went with the job's own end, being written now (or another's end of it, which
            # the store's compare-and-set tells that write): nothing to stop.
            return
        self.queue.let_go(job_id)
        if running is None:
            return
        log.warning("route %s: job %s was taken over by another worker or lost by the store; stopping it here",
                    self.name, job_id)
        running.lost = True
        self.lifecycle.abandoned(job_id)
        if running.ctx is not None:
            running.ctx.stop.set()
        if running.in_backend and running.task is not None:
            running.task.cancel()

    @property
    def running_count(self) -> int:
        return len(self._running)

    async def overview(self) -> dict[str, Any]:
        snapshot = self.queue.snapshot()
        ready = self.backend.readiness.ready and self.start_error is None
        workers: list[dict[str, Any]] = []
        if self.workers:
            workers.append({"name": "this process", "workers": self.workers, "jobs": sorted(self._running),
                            "healthy": ready, "silentSeconds": 0.0})
        for name, held, silent, healthy in await self.queue.consumers():
            if silent < 3600:  # one gone for an hour is history, not a worker
                workers.append({"name": name, "workers": None, "jobs": held, "healthy": healthy,
                                "silentSeconds": round(silent, 1)})
        return {"name": self.name, "backend": self.settings.backend, "up": ready, "startError": self.start_error,
                "waiting": self.queued(), "running": sum(r for _w, r in snapshot.tenants.values()),
                "oldestSeconds": None if snapshot.oldest_created is None else max(0.0, time.time() - snapshot.oldest_created),
                "workers": workers}

    # -- workers ---------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            try:
                job_id = await self.queue.get()
            except QueueClosed:
                return
            running = self._running[job_id] = _Running(job_id)
            self._positions_dirty = True
            try:
                await self._execute(running)
            except asyncio.CancelledError:
                raise  # stopping: the job stays RUNNING, and a shared queue hands it to another worker
            except Exception:
                log.exception("route %s: job %s could not be run", self.name, job_id)
            finally:
                del self._running[job_id]
                running.ctx = None  # its input (MiBs of audio): nothing of the job is kept while the
                del running  # worker waits for the next one, which may be a long while (issue 27)
            self.queue.task_done(job_id)

    async def _execute(self, running: _Running) -> None:
        lifecycle = self.lifecycle
        job_id = running.job_id
        begun = await lifecycle.begin(job_id, defer_running=self.backend.reports_start)
        if begun is None:
            return
        if running.cancel_requested:
            await lifecycle.cancelled(job_id)
            return

        ctx = running.ctx = JobContext(begun.job, begun.input, begun.checkpoint, lifecycle)
        bound = logcontext.bind(job_id, self.name, begun.job.tenant)  # this task's log lines name the job
        timer = self._run_timer(running, begun.job)
        try:
            await self._run_backend(running, ctx)
        finally:
            if timer is not None:
                timer.cancel()
            logcontext.unbind(bound)

    def _run_timer(self, running: _Running, job: Job) -> _Deadline | None:
        """At the job's run deadline (from its start, as stored: a resumed job keeps its deadline), the job
        ends FAILED RUN_TIMEOUT at once, and its backend is stopped as a cancel stops it."""
        if not job.run_timeout:
            return None
        started = job.started if job.started is not None else time.time()
        failure = JobFailure(Code.DEADLINE_EXCEEDED, "RUN_TIMEOUT",
                             f"the job ran longer than its run_timeout ({job.run_timeout:g} s)",
                             {"runTimeoutSeconds": f"{job.run_timeout:g}"})

        def due() -> None:
            if running.lost or running.job_id not in self._running:
                return
            task = asyncio.ensure_future(self.lifecycle.fail(running.job_id, failure))  # ended now, not at the
            self._timeouts.add(task)  # backend's next check (a whisper window takes seconds on a CPU)
            task.add_done_callback(self._timeouts.discard)
            self.cancel(running.job_id, failure)

        return _Deadline(started + job.run_timeout, due)

    async def _run_backend(self, running: _Running, ctx: JobContext) -> None:
        """Runs the job on the backend, and again (after the policy's backoff, the job still RUNNING and
        still this worker's) while it fails transiently and the route's retry policy allows."""
        lifecycle = self.lifecycle
        job_id = running.job_id
        # The backend runs in this worker's own task (no task per job); Cancel cancels this task while,
        # and only while, it is inside backend.run (or a retry's backoff), so the CancelledError always
        # surfaces here.
        running.task = asyncio.current_task()
        backoff = 0.0
        while True:
            again: JobFailure | None = None
            try:
                running.in_backend = True
                try:
                    if backoff:
                        await asyncio.sleep(backoff)
                    result = await self.backend.run(ctx)
                finally:
                    running.in_backend = False
                    running.finishing = True
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if (running.cancel_requested or running.lost) and task is not None and task.uncancel() == 0:
                    if not running.lost:
                        await self._stopped(running)  # cancelled by the caller, or timed out
                    return
                # The server is stopping: the job stays RUNNING and resumes at the next start (or on
                # another worker), and this run does not count as a crashed attempt.
                try:
                    await lifecycle.interrupted(job_id)
                except Exception:
                    log.warning("route %s: job %s: could not mark its run as interrupted", self.name, job_id,
                                exc_info=True)
                raise
            except GatewayError as exc:
                if not running.lost:
                    failure = JobFailure(exc.code, exc.reason, exc.message, dict(exc.metadata))
                    if self._retryable(running, ctx, exc):
                        again = failure
                    else:
                        await lifecycle.fail(job_id, failure)
            except Exception as exc:
                if not running.lost:
                    log.exception("route %s: job %s crashed", self.name, job_id)
                    await lifecycle.fail(job_id, JobFailure(Code.INTERNAL, "BACKEND_ERROR",
                                                            f"{type(exc).__name__}: {exc}"))
            else:
                if running.lost:
                    return
                if running.cancel_requested:
                    await self._stopped(running)
                else:
                    await lifecycle.succeed(job_id, result)
            finally:
                elapsed = time.monotonic() - running.started
                mean = self._mean_duration
                self._mean_duration = elapsed if mean is None else 0.8 * mean + 0.2 * elapsed
            if again is None:
                return
            retried = await self._next_run(running, ctx, again)
            if retried is None:
                return
            ctx = retried
            backoff = self.settings.retry.backoff(ctx.job.attempt - 1)
            running.started = time.monotonic()

    def _retryable(self, running: _Running, ctx: JobContext, exc: GatewayError) -> bool:
        """Whether the route's retry policy runs the job again after this failure (one its backend marks
        transient, runs left, and nobody asked the job to stop)."""
        return (isinstance(exc, JobError) and exc.transient and ctx.job.attempt < self.settings.retry.max_attempts
                and not running.cancel_requested and running.ending is None)

    async def _next_run(self, running: _Running, ctx: JobContext, failure: JobFailure) -> JobContext | None:
        """The context of the job's next run (its revision stored), or None: then the job has ended (FAILED
        with ``failure`` when it could not run again, or stopped as asked meanwhile)."""
        job = await self.lifecycle.retrying(running.job_id, failure)
        if running.lost:
            return None
        if job is None:
            await self.lifecycle.fail(running.job_id, failure)
            return None
        if running.cancel_requested:  # asked to stop while the failure was handled
            await self._stopped(running)
            return None
        if ctx.checkpoint:  # what the failed run kept (an upstream's prediction) is not the next run's
            await self.lifecycle.save_checkpoint(running.job_id, {})
        running.finishing = False
        running.ctx = JobContext(job, ctx.input, None, self.lifecycle)
        return running.ctx

    async def _stopped(self, running: _Running) -> None:
        if running.ending is not None:
            await self.lifecycle.fail(running.job_id, running.ending)
        else:
            await self.lifecycle.cancelled(running.job_id)

    async def _refresh_positions(self) -> None:
        while True:
            await asyncio.sleep(POSITION_REFRESH_SECONDS)
            if not self._positions_dirty:
                continue
            self._positions_dirty = False
            positions = [(job_id, i + 1) for i, job_id in enumerate(islice(self.queue, POSITION_WINDOW))]
            try:
                await self.lifecycle.set_queue_positions(positions)
            except Exception:
                log.exception("route %s: refreshing queue positions failed", self.name)
