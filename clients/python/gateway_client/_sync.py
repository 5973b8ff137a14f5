"""The blocking client: the asyncio client run on a private event-loop thread.

One implementation serves both flavours, so they behave the same; the sync JobFuture follows
``concurrent.futures.Future``'s interface (result(timeout), done(), add_done_callback, cancel()) and
is also awaitable from asyncio code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable, Coroutine, Generator, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import grpc

from gateway_client._aio import DEFAULT_TARGET, DEFAULT_TIMEOUT, AsyncClient, AsyncJobFuture
from gateway_client._errors import JobCancelledError
from gateway_client._types import Heartbeat, Job, JobState, Page, Result

__all__ = ["Client", "JobFuture"]

T = TypeVar("T")


class JobFuture:
    """A submitted job, completed by its Watch stream.

    ``result(timeout)`` blocks for the typed result (JobFailedError if the job FAILED,
    JobCancelledError if it was CANCELLED, TimeoutError if the timeout passes first).
    """

    def __init__(self, client: Client, inner: AsyncJobFuture) -> None:
        self._client = client
        self._inner = inner
        self._future: concurrent.futures.Future[Result] = concurrent.futures.Future()
        client._loop.call_soon_threadsafe(inner.add_done_callback, self._transfer)

    def _transfer(self, inner: AsyncJobFuture) -> None:
        if inner._future.cancelled():
            self._future.cancel()
        elif inner.exception() is not None:
            self._future.set_exception(inner.exception())  # type: ignore[arg-type]
        else:
            self._future.set_result(inner.result())

    @property
    def job_id(self) -> str:
        return self._inner.job_id

    @property
    def job(self) -> Job:
        """The latest revision of the job seen on the stream."""
        return self._inner.job

    def result(self, timeout: float | None = None) -> Result:
        return self._future.result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._future.exception(timeout)

    def done(self) -> bool:
        return self._future.done()

    def cancelled(self) -> bool:
        """True once the job ended CANCELLED."""
        return self._future.done() and isinstance(self._future.exception(), JobCancelledError)

    def cancel(self) -> bool:
        """Asks the server to cancel the job; False if the job was already done."""
        return self._client._run(self._inner.cancel())

    def add_done_callback(self, fn: Callable[[JobFuture], None]) -> None:
        self._future.add_done_callback(lambda _: fn(self))

    def add_update_callback(self, fn: Callable[[Job], None]) -> None:
        """Called (on the client's thread) with every new revision of the job."""
        self._client._loop.call_soon_threadsafe(self._inner.add_update_callback, fn)

    def __await__(self) -> Generator[Any, None, Result]:
        return asyncio.wrap_future(self._future).__await__()


class Client:
    """The blocking client. ``with Client("host:port", token=...) as client: ...``"""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gateway-client", daemon=True)
        self._thread.start()
        self._closed = False

        async def make() -> AsyncClient:
            return AsyncClient(target, token=token, credentials=credentials, timeout=timeout, options=options)

        self._async = self._run(make())

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("the client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._run(self._async.close())
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _iterate(self, agen: Any) -> Iterator[Any]:
        async def step() -> Any:
            return await agen.__anext__()

        try:
            while True:
                try:
                    yield self._run(step())
                except StopAsyncIteration:
                    return
        finally:
            if not self._closed:
                self._run(agen.aclose())

    # -- Submit ----------------------------------------------------------------------------------

    def submit_job(self, route: str, inputs: Mapping[str, Any] | None = None, **kwargs: Any) -> tuple[Job, bool]:
        """Submits without following: (job, existing)."""
        return self._run(self._async.submit_job(route, inputs, **kwargs))

    def submit(self, route: str, inputs: Mapping[str, Any] | None = None, **kwargs: Any) -> JobFuture:
        """Submits a job and answers its future. kwargs: audio, language, task, beam_size,
        word_timestamps, vad_filter, labels, request_id."""
        return JobFuture(self, self._run(self._async.submit(route, inputs, **kwargs)))

    def transcribe(self, audio: bytes | str | os.PathLike[str], *, route: str = "whisper", **kwargs: Any) -> JobFuture:
        return JobFuture(self, self._run(self._async.transcribe(audio, route=route, **kwargs)))

    def future(self, job_id: str) -> JobFuture:
        """A future for a job submitted earlier."""
        return JobFuture(self, self._run(self._async.future(job_id)))

    # -- the other RPCs --------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        return self._run(self._async.get(job_id))

    def watch(self, job_id: str, after_revision: int = 0, **kwargs: Any) -> Iterator[Job | Heartbeat]:
        """Every revision of the job, ending after the terminal one; resumes when cut."""
        return self._iterate(self._async.watch(job_id, after_revision, **kwargs))

    def fetch(self, job_id: str, wait: bool = False, timeout: float | None = None) -> Result | None:
        return self._run(self._async.fetch(job_id, wait, timeout))

    def fetch_job(self, job_id: str, wait: bool = False, timeout: float | None = None) -> tuple[Job, Result | None]:
        return self._run(self._async.fetch_job(job_id, wait, timeout))

    def cancel(self, job_id: str) -> Job:
        return self._run(self._async.cancel(job_id))

    def delete(self, job_id: str) -> None:
        self._run(self._async.delete(job_id))

    def list(
        self,
        *,
        states: Iterable[JobState | str] = (),
        route: str = "",
        labels: Mapping[str, str] | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page:
        return self._run(self._async.list(
            states=states, route=route, labels=labels, page_size=page_size, page_token=page_token
        ))

    def iter_jobs(self, **filters: Any) -> Iterator[Job]:
        return self._iterate(self._async.iter_jobs(**filters))

    def watch_jobs(self, **kwargs: Any) -> Iterator[Job | Heartbeat]:
        return self._iterate(self._async.watch_jobs(**kwargs))

