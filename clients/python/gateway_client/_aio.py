"""The asyncio client, and job futures completed by the Watch stream (no polling anywhere)."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from gateway_client._errors import GatewayError, JobCancelledError, JobFailedError, translate_errors
from gateway_client._proto.gateway.v1 import gateway_pb2 as pb
from gateway_client._proto.gateway.v1 import gateway_pb2_grpc as pb_grpc
from gateway_client._types import Heartbeat, Job, JobState, Page, Result, result_from_proto

__all__ = ["DEFAULT_TARGET", "AsyncClient", "AsyncJobFuture"]

log = logging.getLogger(__name__)

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 30.0
# Watch is read-only, so resuming it after any of these is safe; the server restarting, a proxy
# cutting a long stream, or a connection recycled by max_connection_age all end up here.
_RESUMABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
})
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]
_TASKS = {"": pb.TRANSCRIPTION_TASK_UNSPECIFIED, "transcribe": pb.TRANSCRIPTION_TASK_TRANSCRIBE,
          "translate": pb.TRANSCRIPTION_TASK_TRANSLATE}


def _audio_bytes(audio: bytes | str | os.PathLike[str]) -> bytes:
    return audio if isinstance(audio, bytes) else Path(audio).read_bytes()


class AsyncJobFuture:
    """A submitted job: awaitable, completed by the job's Watch stream.

    ``await fut`` (or ``fut.result()`` once done) gives the typed result; a FAILED job raises
    JobFailedError, a CANCELLED one JobCancelledError. The stream resumes from the last revision
    seen whenever it is cut (server restart, UNAVAILABLE), so nothing is missed.
    """

    def __init__(self, client: AsyncClient, job: Job, resume_timeout: float = 300.0) -> None:
        self._client = client
        self.job = job
        self._future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._update_callbacks: list[Callable[[Job], None]] = []
        self._resume_timeout = resume_timeout
        self._task = asyncio.get_running_loop().create_task(self._track(), name=f"watch-{job.id}")
        client._futures.add(self)

    @property
    def job_id(self) -> str:
        return self.job.id

    def __await__(self) -> Generator[Any, None, Result]:
        return asyncio.shield(self._future).__await__()

    def done(self) -> bool:
        return self._future.done()

    def cancelled(self) -> bool:
        """True once the job ended CANCELLED."""
        return self._future.done() and isinstance(self._future.exception(), JobCancelledError)

    def result(self) -> Result:
        """The result of a done future (raises asyncio.InvalidStateError before)."""
        return self._future.result()

    def exception(self) -> BaseException | None:
        return self._future.exception()

    def add_done_callback(self, fn: Callable[[AsyncJobFuture], None]) -> None:
        self._future.add_done_callback(lambda _: fn(self))

    def add_update_callback(self, fn: Callable[[Job], None]) -> None:
        """Called with every new revision of the job (progress, segments, state)."""
        self._update_callbacks.append(fn)

    async def cancel(self) -> bool:
        """Asks the server to cancel the job; the future then ends with JobCancelledError (or with
        the result, if the job finished first). False if it was already done."""
        if self.done():
            return False
        await self._client.cancel(self.job_id)
        return True

    async def _track(self) -> None:
        try:
            job = await self._follow()
            if job.state is JobState.SUCCEEDED:
                result = await self._retrying(lambda: self._client.fetch(self.job_id))
                if result is None:
                    raise GatewayError(grpc.StatusCode.DATA_LOSS, "the job succeeded without a result", "NO_RESULT")
                self._set(result=result)
            elif job.state is JobState.FAILED:
                self._set(error=JobFailedError(job))
            else:
                self._set(error=JobCancelledError(job))
        except GatewayError as exc:
            self._set(error=exc)
        except asyncio.CancelledError:
            if not self._future.done():
                self._future.cancel()
            raise
        finally:
            self._client._futures.discard(self)

    def _set(self, result: Result | None = None, error: BaseException | None = None) -> None:
        if self._future.done():
            return
        if error is not None:
            self._future.set_exception(error)
        else:
            self._future.set_result(result)  # type: ignore[arg-type]

    async def _follow(self) -> Job:
        """Follows the Watch stream to the terminal revision, resuming whenever it is cut."""
        async for job in self._client.watch(self.job_id, after_revision=self.job.revision,
                                            resume_timeout=self._resume_timeout):
            assert isinstance(job, Job)  # no heartbeats were asked for
            self.job = job
            for fn in list(self._update_callbacks):
                try:
                    fn(job)
                except Exception:
                    log.exception("update callback failed")
        if not self.job.done:  # the job was already done when the stream started
            self.job = await self._retrying(lambda: self._client.get(self.job_id))
        return self.job

    async def _retrying(self, call: Callable[[], Any]) -> Any:
        deadline = asyncio.get_running_loop().time() + self._resume_timeout
        delay = 0.1
        while True:
            try:
                return await call()
            except GatewayError as exc:
                if exc.code is not grpc.StatusCode.UNAVAILABLE or asyncio.get_running_loop().time() > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)


class AsyncClient:
    """The asyncio client. ``async with AsyncClient("host:port", token=...) as client: ...``"""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        channel_options = [*_CHANNEL_OPTIONS, *options]
        if credentials is not None:
            self._channel = grpc.aio.secure_channel(target, credentials, options=channel_options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=channel_options)
        self._stub = pb_grpc.GatewayServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self._futures: set[AsyncJobFuture] = set()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for fut in list(self._futures):
            fut._task.cancel()
        await self._channel.close()

    # -- Submit ----------------------------------------------------------------------------------

    async def submit_job(
        self,
        route: str,
        inputs: Mapping[str, Any] | None = None,
        *,
        audio: bytes | str | os.PathLike[str] | None = None,
        language: str = "",
        task: str = "",
        beam_size: int = 0,
        word_timestamps: bool = False,
        vad_filter: bool | None = None,
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> tuple[Job, bool]:
        """Submits and answers (job, existing) without following it. A request_id is generated when
        none is given, so the Submit can be retried safely when the server is briefly unavailable."""
        request = pb.SubmitRequest(route=route, labels=dict(labels or {}), request_id=request_id or uuid.uuid4().hex)
        if audio is not None:
            if task not in _TASKS:
                raise ValueError(f"task must be one of {sorted(t for t in _TASKS if t)}")
            request.transcription.CopyFrom(pb.TranscriptionRequest(
                audio=_audio_bytes(audio), language=language, task=_TASKS[task], beam_size=beam_size,
                word_timestamps=word_timestamps,
            ))
            if vad_filter is not None:
                request.transcription.vad_filter = vad_filter
        else:
            request.inputs.CopyFrom(json_format.ParseDict(dict(inputs or {}), struct_pb2.Struct()))
        delay = 0.1
        for attempt in range(6):
            try:
                with translate_errors():
                    response = await self._stub.Submit(request, timeout=self.timeout, metadata=self._metadata)
                return Job.from_proto(response.job), response.existing
            except GatewayError as exc:
                if exc.code is not grpc.StatusCode.UNAVAILABLE or attempt == 5:
                    raise
            await asyncio.sleep(delay * (1 + random.random()))
            delay *= 2
        raise AssertionError("unreachable")

    async def submit(self, route: str, inputs: Mapping[str, Any] | None = None, **kwargs: Any) -> AsyncJobFuture:
        """Submits a job and answers its future (see submit_job for the arguments)."""
        job, _ = await self.submit_job(route, inputs, **kwargs)
        return AsyncJobFuture(self, job)

    async def transcribe(
        self, audio: bytes | str | os.PathLike[str], *, route: str = "whisper", **kwargs: Any
    ) -> AsyncJobFuture:
        """Submits audio (bytes or a file path) to a whisper route; answers the job's future."""
        return await self.submit(route, audio=audio, **kwargs)

    async def future(self, job_id: str) -> AsyncJobFuture:
        """A future for a job submitted earlier (by anyone in the tenant)."""
        job = await self.get(job_id)
        return AsyncJobFuture(self, job)

    # -- the other RPCs --------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        with translate_errors():
            response = await self._stub.Get(pb.GetRequest(job_id=job_id), timeout=self.timeout, metadata=self._metadata)
        return Job.from_proto(response.job)

    async def watch(
        self,
        job_id: str,
        after_revision: int = 0,
        *,
        heartbeats: bool = False,
        resume: bool = True,
        resume_timeout: float = 300.0,
    ) -> AsyncIterator[Job | Heartbeat]:
        """Every revision of the job (the snapshot first when after_revision is 0), ending after the
        terminal one. With resume (the default), a cut stream is reopened after the last revision
        seen, for up to resume_timeout seconds without a successful reconnection."""
        last = after_revision
        loop = asyncio.get_running_loop()
        deadline = loop.time() + resume_timeout
        delay = 0.1
        while True:
            call = self._stub.Watch(
                pb.WatchRequest(job_id=job_id, after_revision=last), metadata=self._metadata
            )
            try:
                with translate_errors():
                    async for response in call:
                        deadline = loop.time() + resume_timeout
                        delay = 0.1
                        if response.HasField("job"):
                            job = Job.from_proto(response.job)
                            last = job.revision
                            yield job
                        elif heartbeats:
                            hb = response.heartbeat
                            yield Heartbeat(
                                hb.time.ToDatetime() if hb.HasField("time") else None, hb.revision
                            )
                return
            except GatewayError as exc:
                if not resume or exc.code not in _RESUMABLE or loop.time() > deadline:
                    raise
                log.debug("watch %s cut (%s); resuming after revision %d", job_id, exc, last)
            finally:
                call.cancel()
            await asyncio.sleep(delay * (1 + random.random()))
            delay = min(5.0, delay * 2)

    async def fetch(self, job_id: str, wait: bool = False, timeout: float | None = None) -> Result | None:
        """The result of a finished job (None for a job that failed or was cancelled). Without wait,
        a job still running raises FAILED_PRECONDITION (reason JOB_NOT_DONE)."""
        with translate_errors():
            response = await self._stub.Fetch(
                pb.FetchRequest(job_id=job_id, wait=wait),
                timeout=timeout if wait else (timeout or self.timeout),
                metadata=self._metadata,
            )
        return result_from_proto(response)

    async def fetch_job(self, job_id: str, wait: bool = False, timeout: float | None = None) -> tuple[Job, Result | None]:
        """Like fetch, with the finished job too."""
        with translate_errors():
            response = await self._stub.Fetch(
                pb.FetchRequest(job_id=job_id, wait=wait),
                timeout=timeout if wait else (timeout or self.timeout),
                metadata=self._metadata,
            )
        return Job.from_proto(response.job), result_from_proto(response)

    async def cancel(self, job_id: str) -> Job:
        with translate_errors():
            response = await self._stub.Cancel(pb.CancelRequest(job_id=job_id), timeout=self.timeout,
                                               metadata=self._metadata)
        return Job.from_proto(response.job)

    async def delete(self, job_id: str) -> None:
        with translate_errors():
            await self._stub.Delete(pb.DeleteRequest(job_id=job_id), timeout=self.timeout, metadata=self._metadata)

    async def list(
        self,
        *,
        states: Iterable[JobState | str] = (),
        route: str = "",
        labels: Mapping[str, str] | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page:
        """One page of the tenant's jobs, newest first (jobs without segments)."""
        request = pb.ListRequest(
            page_size=page_size, page_token=page_token, route=route, labels=dict(labels or {}),
            states=[(s if isinstance(s, JobState) else JobState.parse(s)).value for s in states],
        )
        with translate_errors():
            response = await self._stub.List(request, timeout=self.timeout, metadata=self._metadata)
        return Page([Job.from_proto(j) for j in response.jobs], response.next_page_token)

    async def iter_jobs(self, **filters: Any) -> AsyncIterator[Job]:
        """All the tenant's jobs matching the filters, page after page."""
        token = ""
        while True:
            page = await self.list(page_token=token, **filters)
            for job in page.jobs:
                yield job
            token = page.next_page_token
            if not token:
                return

    async def watch_jobs(
        self,
        *,
        states: Iterable[JobState | str] = (),
        route: str = "",
        labels: Mapping[str, str] | None = None,
        heartbeats: bool = False,
    ) -> AsyncIterator[Job | Heartbeat]:
        """Every change of the tenant's jobs (the active ones first), for dashboards. Endless."""
        request = pb.WatchJobsRequest(
            route=route, labels=dict(labels or {}),
            states=[(s if isinstance(s, JobState) else JobState.parse(s)).value for s in states],
        )
        call = self._stub.WatchJobs(request, metadata=self._metadata)
        try:
            with translate_errors():
                async for response in call:
                    if response.HasField("job"):
                        yield Job.from_proto(response.job)
                    elif heartbeats:
                        yield Heartbeat(response.heartbeat.time.ToDatetime(), response.heartbeat.revision)
        finally:
            call.cancel()
