"""Job futures: a submitted job, completed by its Watch stream (no polling anywhere).

``AsyncJobFuture[T]`` lives on the client's event loop. What talks to the server is a coroutine
(``await fut.cancel()``); what only looks at what the future already knows is a plain method
(``fut.done()``, ``fut.cancelled()``, ``fut.result()``, ``fut.exception()``, ``fut.job``); ``await
fut`` waits for the result. ``JobFuture[T]`` is the blocking twin, shaped like
``concurrent.futures.Future`` (``result(timeout)``, ``exception(timeout)``, ``cancel()``...).

``T`` is the result's type: ``Transcript`` for ``transcribe()``, ``Output`` for ``submit()``, any
``Result`` for ``future(job_id)``, or the ``result_type`` given. A job whose result is not of that
type ends its future with TypeError. A job that FAILED ends it with JobFailedError, a CANCELLED
one with JobCancelledError (``.job`` holds the terminal revision in both).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from gateway_client._errors import DataLossError, JobCancelledError, JobError, JobFailedError
from gateway_client._resume import Resumption
from gateway_client._types import Job, JobState

if TYPE_CHECKING:
    from gateway_client._aio import AsyncClient, Metadata
    from gateway_client._sync import Client

__all__ = ["AsyncJobFuture", "JobFuture"]

log = logging.getLogger("gateway_client")

T = TypeVar("T")


class AsyncJobFuture(Generic[T]):
    """A submitted job, awaitable: ``result = await fut``.

    The Watch stream behind it resumes from the last revision seen whenever it is cut (server
    restart, UNAVAILABLE), for the client's ``RetryPolicy.resume_timeout``, so nothing is missed.
    """

    def __init__(self, client: AsyncClient, job: Job, result_type: type[T] | None) -> None:
        loop = asyncio.get_running_loop()
        self._client = client
        self._job = job
        self._result_type = result_type
        self._future: asyncio.Future[T] = loop.create_future()
        self._update_callbacks: list[Callable[[Job], object]] = []
        client._futures.add(self)
        self._task = loop.create_task(self._track(), name=f"gateway-job-{job.id}")

    @property
    def job_id(self) -> str:
        return self._job.id

    @property
    def job(self) -> Job:
        """The latest revision of the job seen (with every segment so far)."""
        return self._job

    def __await__(self) -> Generator[Any, None, T]:
        # shield: a caller that stops waiting (wait_for, a cancelled task) must not end the future.
        return asyncio.shield(self._future).__await__()

    def done(self) -> bool:
        """True once the job has ended (or the client was closed)."""
        return self._future.done()

    def cancelled(self) -> bool:
        """True once the job ended CANCELLED, or the client was closed before it ended. Never raises."""
        if not self._future.done():
            return False
        if self._future.cancelled():
            return True
        return isinstance(self._future.exception(), JobCancelledError)

    def result(self) -> T:
        """The result of a done future (its error raised); asyncio.InvalidStateError before."""
        return self._future.result()

    def exception(self) -> BaseException | None:
        """The error of a done future, or None; asyncio.InvalidStateError before."""
        return self._future.exception()

    def add_done_callback(self, fn: Callable[[AsyncJobFuture[T]], object]) -> None:
        """Called (soon, on the loop) with this future once it is done."""
        self._future.add_done_callback(lambda _: fn(self))

    def add_update_callback(self, fn: Callable[[Job], object]) -> None:
        """Called with every new revision of the job (state, progress, the whole transcript so far)."""
        self._update_callbacks.append(fn)

    async def cancel(self, *, timeout: float | None = None, metadata: Metadata | None = None) -> bool:
        """Asks the server to cancel the job; False if the future was already done. The future then
        ends with JobCancelledError (or with the result, if the job ended first)."""
        if self.done():
            return False
        await self._client.cancel(self.job_id, timeout=timeout, metadata=metadata)
        return True

    # -- following the job -----------------------------------------------------------------------

    async def _track(self) -> None:
        try:
            job = await self._follow()
            self._set(result=await self._outcome(job))
        except asyncio.CancelledError:
            if not self._future.done():
                self._future.cancel()
            raise
        except Exception as exc:  # GatewayError, or TypeError for a result of another type
            self._set(error=exc)
        finally:
            self._client._futures.discard(self)

    def _set(self, result: Any = None, error: BaseException | None = None) -> None:
        if self._future.done():
            return
        if error is not None:
            self._future.set_exception(error)
        else:
            self._future.set_result(result)

    def _updated(self, job: Job) -> None:
        self._job = job
        for fn in list(self._update_callbacks):
            try:
                fn(job)
            except Exception:
                log.exception("update callback of job %s failed", job.id)

    async def _follow(self) -> Job:
        """Follows the Watch stream to the terminal revision. The stream resumes by itself after a
        cut; one that ends cleanly before the terminal revision is followed by a Get, then opened
        again, with the policy's backoff while nothing changes."""
        client = self._client
        idle = Resumption(client.retry)  # counts the reopenings that found nothing new; no deadline
        while not self._job.done:
            before = self._job.revision
            async for job in client._watch(self.job_id, self._job.revision, self._job, heartbeats=False,
                                           resume=True, timeout=None, metadata=None):
                if isinstance(job, Job):  # always: no heartbeats were asked for
                    self._updated(job)
            if self._job.done:
                break
            # The stream ended without a terminal revision after ours: read the job as it is.
            job = await client._get_patiently(self.job_id)
            if job.revision > self._job.revision:
                self._updated(job)
            if self._job.revision == before:
                await asyncio.sleep(idle.backoff() or 0.0)  # never None: there is no deadline
            else:
                idle.progressed()
        return self._job

    async def _outcome(self, job: Job) -> T:
        if job.state is JobState.FAILED:
            raise JobFailedError(job)
        if job.state is JobState.CANCELLED:
            raise JobCancelledError(job)
        fetched = await self._client._fetch_patiently(self.job_id)
        result = fetched.result
        if result is None:
            if job.state is JobState.SUCCEEDED:
                raise DataLossError(f"job {job.id} succeeded without a result", reason="NO_RESULT")
            raise JobFailedError(fetched.job) if fetched.job.error is not None else JobError(fetched.job)
        if self._result_type is not None and not isinstance(result, self._result_type):
            raise TypeError(
                f"job {job.id} (route {job.route!r}) answered a {type(result).__name__}, not a "
                f"{self._result_type.__name__}: pass result_type={type(result).__name__}"
            )
        return result  # type: ignore[return-value]


class JobFuture(Generic[T]):
    """A submitted job, completed by its Watch stream; the blocking client's future.

    Shaped like ``concurrent.futures.Future``: ``result(timeout)`` blocks for the typed result
    (JobFailedError if the job FAILED, JobCancelledError if it was CANCELLED, TimeoutError if the
    timeout passes first), ``done()``, ``cancelled()``, ``exception(timeout)``,
    ``add_done_callback``; ``cancel()`` asks the server. Use ``gateway_client.wait`` and
    ``gateway_client.as_completed`` for many futures. Also awaitable from asyncio code.
    """

    def __init__(self, client: Client, inner: AsyncJobFuture[T]) -> None:
        self._client = client
        self._inner = inner
        self._future: concurrent.futures.Future[T] = concurrent.futures.Future()
        client._loop.call_soon_threadsafe(inner.add_done_callback, self._transfer)

    def _transfer(self, inner: AsyncJobFuture[T]) -> None:
        if inner._future.cancelled():
            self._future.cancel()
            self._future.set_running_or_notify_cancel()
        elif inner._future.exception() is not None:
            self._future.set_exception(inner._future.exception())
        else:
            self._future.set_result(inner._future.result())

    @property
    def job_id(self) -> str:
        return self._inner.job_id

    @property
    def job(self) -> Job:
        """The latest revision of the job seen (with every segment so far)."""
        return self._inner.job

    def result(self, timeout: float | None = None) -> T:
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            raise TimeoutError(f"job {self.job_id} did not end within {timeout} s") from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return self._future.exception(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"job {self.job_id} did not end within {timeout} s") from None

    def done(self) -> bool:
        return self._future.done()

    def cancelled(self) -> bool:
        """True once the job ended CANCELLED, or the client was closed before it ended. Never raises."""
        if not self._future.done():
            return False
        if self._future.cancelled():
            return True
        return isinstance(self._future.exception(), JobCancelledError)

    def cancel(self, *, timeout: float | None = None, metadata: Metadata | None = None) -> bool:
        """Asks the server to cancel the job; False if the future was already done."""
        if self.done():
            return False
        return self._client._run(self._inner.cancel(timeout=timeout, metadata=metadata))

    def add_done_callback(self, fn: Callable[[JobFuture[T]], object]) -> None:
        """Called with this future once it is done (at once if it is), on the client's thread: it
        must not call the blocking Client's methods (they raise RuntimeError there)."""
        self._future.add_done_callback(lambda _: fn(self))

    def add_update_callback(self, fn: Callable[[Job], object]) -> None:
        """Called with every new revision of the job, on the client's thread (see add_done_callback)."""
        self._client._loop.call_soon_threadsafe(self._inner.add_update_callback, fn)

    def __await__(self) -> Generator[Any, None, T]:
        return asyncio.wrap_future(self._future).__await__()

