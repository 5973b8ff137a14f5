"""The blocking client: the asyncio client run on a private event-loop thread.

One implementation serves both flavours, so they behave the same: the same methods, arguments,
retries, resumption and errors, each method blocking until the asyncio one answers. Streams are
plain iterators; futures are ``JobFuture`` (``concurrent.futures``-shaped).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Coroutine, Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar, overload

import grpc

from gateway_client._aio import DEFAULT_TARGET, DEFAULT_TIMEOUT, UPLOAD_ABOVE_BYTES, AsyncClient, Audio, Metadata
from gateway_client._futures import JobFuture
from gateway_client._retry import DEFAULT_RETRY, RetryPolicy
from gateway_client._streams import AsyncJobChanges
from gateway_client._types import Fetched, Heartbeat, Job, JobState, Output, Page, Result, Submitted, Transcript

__all__ = ["Client", "JobChanges"]

T = TypeVar("T")
R = TypeVar("R")
E = TypeVar("E")


class JobChanges(Generic[E]):
    """The stream of ``Client.watch_jobs()``: an iterator of jobs (and heartbeats, when asked for)
    that resumes by itself after a cut. ``resume_token`` is the position after the last item it
    gave; pass it to ``watch_jobs(resume_token=...)`` later to continue from there. ``close()`` (or
    ``with``) ends the stream."""

    def __init__(self, client: Client, inner: AsyncJobChanges[E]) -> None:
        self._client = client
        self._inner = inner
        self._items = client._iterate(inner)

    @property
    def resume_token(self) -> str:
        return self._inner.resume_token

    def __iter__(self) -> JobChanges[E]:
        return self

    def __next__(self) -> E:
        return next(self._items)

    def close(self) -> None:
        self._items.close()

    def __enter__(self) -> JobChanges[E]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """The blocking client: ``with Client("host:port", token=...) as client: ...``. The arguments
    are AsyncClient's (``interceptors`` are grpc.aio client interceptors)."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        metadata: Metadata = (),
        retry: RetryPolicy | None = DEFAULT_RETRY,
        options: Iterable[tuple[str, Any]] = (),
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        upload_above: int = UPLOAD_ABOVE_BYTES,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gateway-client", daemon=True)
        self._thread.start()
        self._closed = False

        async def make() -> AsyncClient:
            return AsyncClient(target, token=token, credentials=credentials, timeout=timeout, metadata=metadata,
                               retry=retry, options=options, interceptors=interceptors, upload_above=upload_above)

        self._async = self._run(make())

    @property
    def timeout(self) -> float:
        return self._async.timeout

    @property
    def retry(self) -> RetryPolicy:
        return self._async.retry

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed or threading.current_thread() is self._thread:
            coro.close()
            if self._closed:
                raise RuntimeError("the client is closed")
            # An update or done callback runs on the client's thread: blocking there would deadlock it.
            raise RuntimeError("a blocking Client method was called from one of its own callbacks")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stops following every future (they end cancelled), closes the channel and the thread."""
        if self._closed:
            return
        self._run(self._async.close())
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _iterate(self, items: AsyncIterator[T]) -> Generator[T, None, None]:
        async def step() -> T:
            return await items.__anext__()

        try:
            while True:
                try:
                    yield self._run(step())
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None and not self._closed:
                if threading.current_thread() is self._thread:  # collected on the loop's own thread
                    self._loop.create_task(aclose())
                else:
                    self._run(aclose())

    def _future(self, coro: Coroutine[Any, Any, Any]) -> JobFuture[Any]:
        return JobFuture(self, self._run(coro))

    # -- Submit ----------------------------------------------------------------------------------

    def submit_job(
        self,
        route: str,
        inputs: Mapping[str, Any] | None = None,
        *,
        audio: Audio | None = None,
        language: str = "",
        task: str = "",
        beam_size: int = 0,
        word_timestamps: bool = False,
        vad_filter: bool | None = None,
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
        webhook: str | None = None,
        webhook_events: Iterable[str] = (),
        queue_timeout: float | None = None,
        run_timeout: float | None = None,
        priority: int | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Submitted:
        """Submits without following the job: ``job, existing = client.submit_job(...)``."""
        return self._run(self._async.submit_job(
            route, inputs, audio=audio, language=language, task=task, beam_size=beam_size,
            word_timestamps=word_timestamps, vad_filter=vad_filter, labels=labels, request_id=request_id,
            webhook=webhook, webhook_events=webhook_events, queue_timeout=queue_timeout, run_timeout=run_timeout,
            priority=priority, timeout=timeout, metadata=metadata,
        ))

    def upload(
        self,
        route: str,
        audio: bytes | str | os.PathLike[str],
        *,
        language: str = "",
        task: str = "",
        beam_size: int = 0,
        word_timestamps: bool = False,
        vad_filter: bool | None = None,
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
        webhook: str | None = None,
        webhook_events: Iterable[str] = (),
        queue_timeout: float | None = None,
        run_timeout: float | None = None,
        priority: int | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Submitted:
        """The Upload RPC, whatever the audio's size (see AsyncClient.upload)."""
        return self._run(self._async.upload(
            route, audio, language=language, task=task, beam_size=beam_size, word_timestamps=word_timestamps,
            vad_filter=vad_filter, labels=labels, request_id=request_id, webhook=webhook,
            webhook_events=webhook_events, queue_timeout=queue_timeout, run_timeout=run_timeout, priority=priority,
            timeout=timeout, metadata=metadata,
        ))

    @overload
    def submit(
        self, route: str, inputs: Mapping[str, Any] | None = None, *, labels: Mapping[str, str] | None = None,
        request_id: str | None = None, priority: int | None = None,
        queue_timeout: float | None = None, run_timeout: float | None = None,
        timeout: float | None = None, metadata: Metadata | None = None,
    ) -> JobFuture[Output]: ...
    @overload
    def submit(
        self, route: str, inputs: Mapping[str, Any] | None = None, *, result_type: type[R],
        labels: Mapping[str, str] | None = None, request_id: str | None = None, priority: int | None = None,
        queue_timeout: float | None = None, run_timeout: float | None = None, timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> JobFuture[R]: ...
    def submit(
        self,
        route: str,
        inputs: Mapping[str, Any] | None = None,
        *,
        result_type: type[Any] = Output,
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
        priority: int | None = None,
        queue_timeout: float | None = None, run_timeout: float | None = None, timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> JobFuture[Any]:
        """Submits JSON inputs and answers the job's future (see AsyncClient.submit)."""
        return self._future(self._async.submit(route, inputs, result_type=result_type, labels=labels,
                                               request_id=request_id, priority=priority,
                                               queue_timeout=queue_timeout, run_timeout=run_timeout,
                                               timeout=timeout, metadata=metadata))

    @overload
    def transcribe(
        self, audio: Audio, *, route: str = "whisper", language: str = "", task: str = "", beam_size: int = 0,
        word_timestamps: bool = False, vad_filter: bool | None = None, labels: Mapping[str, str] | None = None,
        request_id: str | None = None, priority: int | None = None,
        queue_timeout: float | None = None, run_timeout: float | None = None,
        timeout: float | None = None, metadata: Metadata | None = None,
    ) -> JobFuture[Transcript]: ...
    @overload
    def transcribe(
        self, audio: Audio, *, result_type: type[R], route: str = "whisper", language: str = "", task: str = "",
        beam_size: int = 0, word_timestamps: bool = False, vad_filter: bool | None = None,
        labels: Mapping[str, str] | None = None, request_id: str | None = None, priority: int | None = None,
        queue_timeout: float | None = None, run_timeout: float | None = None, timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> JobFuture[R]: ...
    def transcribe(
        self,
        audio: Audio,
        *,
        result_type: type[Any] = Transcript,
        route: str = "whisper",
        language: str = "",
        task: str = "",
        beam_size: int = 0,
        word_timestamps: bool = False,
        vad_filter: bool | None = None,
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
        priority: int | None = None,
        queue_timeout: float | None = None, run_timeout: float | None = None, timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> JobFuture[Any]:
        """Submits audio (bytes or a file path) and answers the job's future (see AsyncClient.transcribe)."""
        return self._future(self._async.transcribe(
            audio, result_type=result_type, route=route, language=language, task=task, beam_size=beam_size,
            word_timestamps=word_timestamps, vad_filter=vad_filter, labels=labels, request_id=request_id,
            priority=priority, queue_timeout=queue_timeout, run_timeout=run_timeout, timeout=timeout,
            metadata=metadata,
        ))

    @overload
    def future(
        self, job_id: str, *, timeout: float | None = None, metadata: Metadata | None = None,
    ) -> JobFuture[Result]: ...
    @overload
    def future(
        self, job_id: str, *, result_type: type[R], timeout: float | None = None, metadata: Metadata | None = None,
    ) -> JobFuture[R]: ...
    def future(
        self,
        job_id: str,
        *,
        result_type: type[Any] | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> JobFuture[Any]:
        """A future for a job submitted earlier (by anyone in the tenant)."""
        if result_type is None:
            return self._future(self._async.future(job_id, timeout=timeout, metadata=metadata))
        return self._future(self._async.future(job_id, result_type=result_type, timeout=timeout, metadata=metadata))

    # -- one job ---------------------------------------------------------------------------------

    def get(self, job_id: str, *, timeout: float | None = None, metadata: Metadata | None = None) -> Job:
        """The job now, with every segment so far."""
        return self._run(self._async.get(job_id, timeout=timeout, metadata=metadata))

    @overload
    def watch(
        self, job_id: str, *, after_revision: int = 0, heartbeats: Literal[False] = False, resume: bool = True,
        timeout: float | None = None, metadata: Metadata | None = None,
    ) -> Iterator[Job]: ...
    @overload
    def watch(
        self, job_id: str, *, after_revision: int = 0, heartbeats: bool, resume: bool = True,
        timeout: float | None = None, metadata: Metadata | None = None,
    ) -> Iterator[Job | Heartbeat]: ...
    def watch(
        self,
        job_id: str,
        *,
        after_revision: int = 0,
        heartbeats: bool = False,
        resume: bool = True,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Iterator[Any]:
        """Every revision of the job, ending after the terminal one; resumes when cut (see AsyncClient.watch)."""
        return self._iterate(self._async.watch(job_id, after_revision=after_revision, heartbeats=heartbeats,
                                               resume=resume, timeout=timeout, metadata=metadata))

    def fetch(
        self,
        job_id: str,
        *,
        wait: float | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Fetched:
        """The job and, once it SUCCEEDED, its result; ``wait`` seconds for it to end (see AsyncClient.fetch)."""
        return self._run(self._async.fetch(job_id, wait=wait, timeout=timeout, metadata=metadata))

    def cancel(self, job_id: str, *, timeout: float | None = None, metadata: Metadata | None = None) -> Job:
        """Asks the job to stop; answers at once with the job then (see AsyncClient.cancel)."""
        return self._run(self._async.cancel(job_id, timeout=timeout, metadata=metadata))

    def retry_job(
        self, job_id: str, *, timeout: float | None = None, metadata: Metadata | None = None,
    ) -> tuple[Job, bool]:
        """Runs a FAILED or CANCELLED job again as a new job; answers (job, existing) (see AsyncClient.retry_job)."""
        return self._run(self._async.retry_job(job_id, timeout=timeout, metadata=metadata))

    def delete(
        self, job_id: str, *, force: bool = False, timeout: float | None = None, metadata: Metadata | None = None,
    ) -> None:
        """Forgets a finished job now; ``force`` for a queued or running one (see AsyncClient.delete)."""
        self._run(self._async.delete(job_id, force=force, timeout=timeout, metadata=metadata))

    # -- many jobs -------------------------------------------------------------------------------

    def list(
        self,
        *,
        states: Sequence[JobState | str] = (),
        route: str = "",
        labels: Mapping[str, str] | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Page:
        """One page of the tenant's jobs, newest first, without segments."""
        return self._run(self._async.list(states=states, route=route, labels=labels, page_size=page_size,
                                          page_token=page_token, timeout=timeout, metadata=metadata))

    def iter_jobs(
        self,
        *,
        states: Sequence[JobState | str] = (),
        route: str = "",
        labels: Mapping[str, str] | None = None,
        page_size: int = 0,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Iterator[Job]:
        """Every job of the tenant matching the filters, page after page."""
        return self._iterate(self._async.iter_jobs(states=states, route=route, labels=labels, page_size=page_size,
                                                   timeout=timeout, metadata=metadata))

    @overload
    def watch_jobs(
        self, *, states: Sequence[JobState | str] = (), route: str = "", labels: Mapping[str, str] | None = None,
        resume_token: str = "", heartbeats: Literal[False] = False, resume: bool = True,
        timeout: float | None = None, metadata: Metadata | None = None,
    ) -> JobChanges[Job]: ...
    @overload
    def watch_jobs(
        self, *, states: Sequence[JobState | str] = (), route: str = "", labels: Mapping[str, str] | None = None,
        resume_token: str = "", heartbeats: bool, resume: bool = True,
        timeout: float | None = None, metadata: Metadata | None = None,
    ) -> JobChanges[Job | Heartbeat]: ...
    def watch_jobs(
        self,
        *,
        states: Sequence[JobState | str] = (),
        route: str = "",
        labels: Mapping[str, str] | None = None,
        resume_token: str = "",
        heartbeats: bool = False,
        resume: bool = True,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> JobChanges[Any]:
        """Every change of the tenant's jobs (see AsyncClient.watch_jobs); ``.resume_token`` on the
        answer is the position to continue from."""
        async def make() -> AsyncJobChanges[Any]:
            return self._async.watch_jobs(states=states, route=route, labels=labels, resume_token=resume_token,
                                          heartbeats=heartbeats, resume=resume, timeout=timeout, metadata=metadata)

        return JobChanges(self, self._run(make()))
