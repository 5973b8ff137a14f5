"""The contract between the job machinery and a backend (echo, whisper, octoai).

A backend never sees gRPC or HTTP: it validates a :class:`JobInput` at Submit time, and runs one job
given a :class:`JobContext`, through which it reports progress and partial segments, keeps a
checkpoint that survives a restart (an upstream job's poll URL), and learns of cancellation.

Cancellation: the runner cancels the task running ``run()``. An async backend just lets the
``CancelledError`` through; a backend running work in a thread sets its stop flag, waits for the
thread to stop at its next check, then re-raises, so the worker is free for the next job.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from gateway.errors import Code, JobError
from gateway.jobs import Job, JobInput, Result, Segment

__all__ = ["Backend", "HealthListener", "JobContext", "JobLifecycle", "ReadyState", "TakesUploads"]

log = logging.getLogger(__name__)

HealthListener = Callable[[bool], None]


class JobLifecycle(Protocol):
    """What a running job can change (the job service implements it)."""

    async def report(self, job_id: str, progress: float | None, segments: Sequence[Segment],
                     logs: str | None = None, queue_position: int | None = None) -> None: ...

    async def save_checkpoint(self, job_id: str, checkpoint: Mapping[str, Any]) -> None: ...

    async def started(self, job_id: str) -> None: ...

    async def open_upload(self, job_id: str) -> tuple[Path, bool] | None: ...


class JobContext:
    """What a running job may do. Safe to use from the event loop; ``*_threadsafe`` from threads."""

    __slots__ = ("_lifecycle", "_loop", "_stop", "cancel_requested", "checkpoint", "input", "job")

    def __init__(
        self, job: Job, job_input: JobInput, checkpoint: Mapping[str, Any] | None, lifecycle: JobLifecycle
    ) -> None:
        self.job = job
        self.input = job_input
        self.checkpoint = checkpoint
        self._lifecycle = lifecycle
        self._stop: threading.Event | None = None
        self._loop = asyncio.get_running_loop()
        self.cancel_requested = False  # set when the job is cancelled (not when the server stops or loses it)

    @property
    def stop(self) -> threading.Event:
        """Set when the job is cancelled or the server stops: for backends that work in threads.
        Made on first use (on the event loop), so that jobs which never look cost nothing."""
        if self._stop is None:
            self._stop = threading.Event()
        return self._stop

    async def report(self, progress: float | None = None, segments: Sequence[Segment] = (), *,
                     logs: str | None = None, queue_position: int | None = None) -> None:
        """Publishes a new revision with this progress (clamped to [0, 1]) and these new segments (and, for
        upstream jobs, the log's tail and the provider's queue position, while the job is QUEUED)."""
        if progress is not None:
            progress = min(1.0, max(0.0, progress))
        await self._lifecycle.report(self.job.id, progress, tuple(segments), logs, queue_position)

    def report_threadsafe(self, progress: float | None = None, segments: Sequence[Segment] = ()) -> None:
        """From a worker thread: publishes without waiting for the store, so inference never stalls.
        Reports keep their order (the loop takes them first in, first out), and all of them are
        applied before the job's end, which the loop learns of after them."""
        future = asyncio.run_coroutine_threadsafe(self.report(progress, segments), self._loop)
        future.add_done_callback(_log_report_failure)

    async def started(self) -> None:
        """For backends with ``reports_start``: the job really started (QUEUED -> RUNNING)."""
        await self._lifecycle.started(self.job.id)

    async def save_checkpoint(self, checkpoint: Mapping[str, Any]) -> None:
        """Stores state that a restarted gateway hands back in ``checkpoint`` (no new revision)."""
        self.checkpoint = dict(checkpoint)
        await self._lifecycle.save_checkpoint(self.job.id, self.checkpoint)

    async def upload(self) -> tuple[Path, bool]:
        """The audio of a job that came by Upload, as a file here, and whether it is a copy that the
        backend deletes when done (else it is the store's own file: read it, leave it). JobError
        INPUT_LOST when the store no longer has it."""
        found = await self._lifecycle.open_upload(self.job.id)
        if found is None:
            raise JobError("the job's uploaded audio is gone from the store", "INPUT_LOST", Code.DATA_LOSS)
        return found


def _log_report_failure(future: concurrent.futures.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("publishing a job's progress failed", exc_info=future.exception())


class ReadyState:
    """Readiness with listeners: the route's grpc health status follows it."""

    def __init__(self) -> None:
        self._ready = False
        self._listeners: list[HealthListener] = []

    @property
    def ready(self) -> bool:
        return self._ready

    def set(self, ready: bool) -> None:
        if ready != self._ready:
            self._ready = ready
            for listener in list(self._listeners):
                listener(ready)

    def listen(self, listener: HealthListener) -> None:
        self._listeners.append(listener)
        listener(self._ready)


@runtime_checkable
class TakesUploads(Protocol):
    """A backend that takes audio by Upload (whisper): at most this many bytes of it."""

    max_upload_bytes: int


class Backend(Protocol):
    """One backend instance serves one route.

    A backend whose jobs wait somewhere else first (an upstream queue) sets ``reports_start``: its
    jobs then stay QUEUED when a worker takes them, until the backend calls ``ctx.started()``.
    """

    readiness: ReadyState
    reports_start: bool

    @property
    def concurrency(self) -> int | None:
        """Jobs it takes at once (a batcher's, a model pool's); None: the route's ``workers``."""
        ...

    async def start(self) -> None:
        """Loads and warms up; readiness turns True when jobs can run."""
        ...

    async def close(self) -> None: ...

    async def validate(self, job_input: JobInput) -> JobInput:
        """Cheap checks at Submit (raise InvalidArgument with field violations); may normalise."""
        ...

    async def run(self, ctx: JobContext) -> Result:
        """Runs one job. Raise JobError to fail it with a reason."""
        ...
