"""The asyncio client: one method per RPC, typed results, retries, streams that resume.

What is a coroutine: every method that makes a call and answers once (``submit``, ``get``,
``fetch``, ``cancel``, ``delete``, ``list``...) is ``async``, to ``await``; the streams are used
with ``async for`` and no ``await``: ``watch`` and ``iter_jobs`` are async generators,
``watch_jobs`` answers an ``AsyncJobChanges`` (an async iterator that also holds the stream's
resume token). A stream's call starts at its first iteration. Job futures follow the same rule
(see ``_futures``).

Every RPC method takes ``timeout`` (seconds for the whole call, retries included; None: the
client's ``timeout``; for streams None means no limit) and ``metadata`` (pairs sent after the
client's own ``metadata`` and token).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import grpc
from google.protobuf import duration_pb2, json_format, struct_pb2
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from gateway_client._errors import DataLossError, RpcError, translate_errors
from gateway_client._futures import AsyncJobFuture
from gateway_client._resume import Resumption
from gateway_client._retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy, retry_floor
from gateway_client._streams import AsyncJobChanges, JobsWatch, JobWatch, TranscriptBuilder
from gateway_client._types import (
    Fetched,
    Heartbeat,
    Job,
    JobState,
    Output,
    Page,
    Result,
    Submitted,
    Transcript,
    result_from_proto,
    state_values,
)

__all__ = ["DEFAULT_TARGET", "DEFAULT_TIMEOUT", "AsyncClient", "Metadata", "tls_credentials"]

log = logging.getLogger("gateway_client")

DEFAULT_TARGET = "127.0.0.1:50051"


def tls_credentials(
    ca_file: str | os.PathLike[str] | None = None,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> grpc.ChannelCredentials:
    """Credentials for a gateway that serves TLS: ``ca_file`` verifies its certificate (default: the
    system's roots); ``cert_file`` and ``key_file`` (both or neither) are this client's certificate,
    for a gateway that asks for one (mTLS). Pass as ``credentials=`` to ``Client`` or ``AsyncClient``."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("give both cert_file and key_file, or neither")

    def read(path: str | os.PathLike[str] | None) -> bytes | None:
        return Path(path).read_bytes() if path is not None else None

    return grpc.ssl_channel_credentials(read(ca_file), read(key_file), read(cert_file))
DEFAULT_TIMEOUT = 30.0

Metadata = Sequence[tuple[str, str]]
"""gRPC metadata: (key, value) pairs, keys in lowercase."""
class AudioUrl(str):
    """Audio by URL: ``client.transcribe(AudioUrl("https://..."))``. The process that runs the job fetches
    it (the server's ``[audio_url]`` rules say from where); a presigned URL is sent as given."""

    __slots__ = ()


Audio = bytes | str | os.PathLike[str]  # the audio itself (a path or bytes), or an AudioUrl
"""Audio bytes, or the path of an audio file."""

R = TypeVar("R")

CHANNEL_OPTIONS = [  # the client's and the CLI's channels
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]
_WEBHOOK_EVENTS = {"start": pb.WEBHOOK_EVENT_START, "progress": pb.WEBHOOK_EVENT_PROGRESS,
                   "completed": pb.WEBHOOK_EVENT_COMPLETED}


def webhook_event(name: str) -> pb.WebhookEvent.ValueType:
    """A webhook event by name: start, progress or completed."""
    try:
        return _WEBHOOK_EVENTS[name]
    except KeyError:
        raise ValueError(f"unknown webhook event {name!r}: start, progress or completed") from None


_TASKS = {"": pb.TRANSCRIPTION_TASK_UNSPECIFIED, "transcribe": pb.TRANSCRIPTION_TASK_TRANSCRIBE,
          "translate": pb.TRANSCRIPTION_TASK_TRANSLATE}


UPLOAD_ABOVE_BYTES = 4 * 1024 * 1024  # audio larger than this goes by the Upload RPC, in chunks
UPLOAD_CHUNK_BYTES = 1024 * 1024
UPLOAD_SECONDS_PER_MIB = 0.25  # an Upload's default time: the client's timeout plus this per MiB (4 MiB/s)


def _audio_bytes(audio: Audio) -> bytes:
    return audio if isinstance(audio, bytes) else Path(audio).read_bytes()


def _submit_request(route: str, labels: Mapping[str, str] | None, request_id: str | None, webhook: str | None,
                    webhook_events: Iterable[str], queue_timeout: float | None = None,
                    run_timeout: float | None = None, priority: int | None = None) -> pb.SubmitRequest:
    """A SubmitRequest without its input; a request_id is generated when none is given."""
    request = pb.SubmitRequest(route=route, labels=dict(labels or {}), request_id=request_id or uuid.uuid4().hex)
    if webhook is not None:
        request.webhook.url = webhook
        request.webhook.events.extend(webhook_event(e) for e in webhook_events)
    if queue_timeout is not None:
        request.queue_timeout.CopyFrom(_duration(queue_timeout))
    if run_timeout is not None:
        request.run_timeout.CopyFrom(_duration(run_timeout))
    if priority is not None:
        if not 1 <= priority <= 5:
            raise ValueError(f"priority is 1 (most urgent) to 5, not {priority}")
        request.priority = priority
    return request


def _set_transcription(request: pb.SubmitRequest, language: str, task: str, beam_size: int, word_timestamps: bool,
                       vad_filter: bool | None) -> None:
    """The request's input: a transcription request with these options (and no audio yet)."""
    if task not in _TASKS:
        raise ValueError(f"task must be one of {sorted(t for t in _TASKS if t)}")
    request.transcription.CopyFrom(pb.TranscriptionRequest(
        language_code=language, task=_TASKS[task], beam_size=beam_size, word_timestamps=word_timestamps,
    ))
    if vad_filter is not None:
        request.transcription.vad_filter = vad_filter


def _audio_size(audio: Audio) -> int:
    return len(audio) if isinstance(audio, bytes) else os.stat(audio).st_size


async def upload_messages(request: pb.SubmitRequest, audio: Audio) -> AsyncIterator[pb.UploadRequest]:
    """The request first (the server checks the route before the audio comes), then the audio's chunks,
    read one at a time from the file: the client never holds the whole file."""
    yield pb.UploadRequest(submit=request)
    if isinstance(audio, bytes):
        view = memoryview(audio)
        for start in range(0, len(view), UPLOAD_CHUNK_BYTES):
            yield pb.UploadRequest(audio_chunk=bytes(view[start:start + UPLOAD_CHUNK_BYTES]))
        return
    file = await asyncio.to_thread(open, audio, "rb")
    try:
        while chunk := await asyncio.to_thread(file.read, UPLOAD_CHUNK_BYTES):
            yield pb.UploadRequest(audio_chunk=chunk)
    finally:
        file.close()


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


class AsyncClient:
    """The asyncio client: ``async with AsyncClient("host:port", token=...) as client: ...``.

    ``timeout``: the default seconds of a call (retries included). ``metadata``: pairs sent with
    every call. ``retry``: the RetryPolicy (None: no retries; streams still resume for the default
    policy's resume_timeout). ``options``: gRPC channel options. ``interceptors``: grpc.aio client
    interceptors. ``upload_above``: audio larger than this many bytes is sent by the Upload RPC, in
    chunks read from the file as they are sent (any size; the server writes them to disk), not in
    one Submit message.
    """

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
        channel_options = [*CHANNEL_OPTIONS, *options]
        chosen = list(interceptors) or None
        if credentials is not None:
            self._channel = grpc.aio.secure_channel(target, credentials, options=channel_options, interceptors=chosen)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=channel_options, interceptors=chosen)
        self._stub = pb_grpc.GatewayServiceStub(self._channel)
        auth = (("authorization", f"Bearer {token}"),) if token else ()
        self._metadata: tuple[tuple[str, str], ...] = (*auth, *metadata)
        self.target = target
        self.timeout = timeout
        self.retry: RetryPolicy = retry if retry is not None else NO_RETRY
        self._futures: set[AsyncJobFuture[Any]] = set()
        self._closed = False
        self.upload_above = upload_above

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stops following every future (they end cancelled) and closes the channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks = [fut._task for fut in self._futures]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._channel.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the client is closed")

    def _merge(self, metadata: Metadata | None) -> tuple[tuple[str, str], ...]:
        return (*self._metadata, *metadata) if metadata else self._metadata

    async def _call(
        self,
        method: str,
        make_request: Callable[[float], Any],
        timeout: float | None,
        metadata: Metadata | None,
        *,
        patient: bool = False,
    ) -> Any:
        """One unary RPC, retried as the RetryPolicy allows within ``timeout`` seconds. ``patient``:
        as a future does for itself, keep retrying UNAVAILABLE for the policy's resume_timeout."""
        self._check_open()
        rpc = getattr(self._stub, method)
        loop = asyncio.get_running_loop()
        policy = self.retry
        total = self.timeout + policy.resume_timeout if patient else (self.timeout if timeout is None else timeout)
        attempts = sys.maxsize if patient else policy.max_attempts
        deadline = loop.time() + total
        metadata_sent = self._merge(metadata)
        attempt = 1
        while True:
            remaining = max(0.0, deadline - loop.time())
            per_try = min(remaining, self.timeout) if patient else remaining
            try:
                with translate_errors():
                    return await rpc(make_request(per_try), timeout=per_try, metadata=metadata_sent)
            except RpcError as exc:
                floor = retry_floor(method, exc)
                if floor is None or attempt >= attempts:
                    raise
                delay = max(floor, policy.backoff(attempt))
                if loop.time() + delay >= deadline:
                    raise
                log.debug("%s failed (%s); retry %d in %.2f s", method, exc, attempt, delay)
            await asyncio.sleep(delay)
            attempt += 1

    # -- Submit ----------------------------------------------------------------------------------

    async def submit_job(
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
        """Submits without following the job: ``job, existing = await client.submit_job(...)``.

        JSON ``inputs``, or ``audio`` (bytes, a path, or an AudioUrl; above ``upload_above`` bytes it is
        streamed by the Upload RPC, retried from the start if need be) for the typed transcription request with
        ``language`` (a BCP-47 code), ``task`` ("transcribe" or "translate"), ``beam_size``,
        ``word_timestamps`` and ``vad_filter``. A request_id is generated when none is given, so
        that a retried Submit never creates a second job. ``queue_timeout``, ``run_timeout``: seconds
        the job may wait queued, and run (past them it ends FAILED, QUEUE_TIMEOUT or RUN_TIMEOUT; None:
        the route's defaults). ``priority``: 1 (most urgent) to 5 among this tenant's waiting jobs (None:
        3). ``webhook``: a URL the server POSTs the
        job to (signed, Standard Webhooks) on the ``webhook_events`` ("start", "progress",
        "completed"; default: "completed").
        """
        request = _submit_request(route, labels, request_id, webhook, webhook_events, queue_timeout, run_timeout,
                                  priority)
        if audio is not None:
            if inputs is not None:
                raise ValueError("give inputs or audio, not both")
            _set_transcription(request, language, task, beam_size, word_timestamps, vad_filter)
            if isinstance(audio, AudioUrl):
                request.transcription.audio_url = str(audio)
            elif _audio_size(audio) > self.upload_above:
                return await self._upload(request, audio, timeout, metadata)
            else:
                request.transcription.audio = _audio_bytes(audio)
        else:
            request.inputs.CopyFrom(json_format.ParseDict(dict(inputs or {}), struct_pb2.Struct()))
        response = await self._call("Submit", lambda _: request, timeout, metadata)
        return Submitted(Job.from_proto(response.job), response.existing)

    async def upload(
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
        """The Upload RPC, whatever the audio's size (``submit_job`` and ``transcribe`` pick it by
        themselves above ``upload_above``): the request, then the audio in chunks read from the file as
        they are sent, so that a file of any size is never whole in memory here or on the server.
        Retried from the start as Submit is (its request_id makes a retry the same job). Without a
        ``timeout``: the client's, plus a quarter second per MiB."""
        if isinstance(audio, AudioUrl):
            raise ValueError("an AudioUrl is fetched by the server: pass it to submit_job")
        request = _submit_request(route, labels, request_id, webhook, webhook_events, queue_timeout, run_timeout,
                                  priority)
        _set_transcription(request, language, task, beam_size, word_timestamps, vad_filter)
        return await self._upload(request, audio, timeout, metadata)

    async def _upload(self, request: pb.SubmitRequest, audio: Audio, timeout: float | None,
                      metadata: Metadata | None) -> Submitted:
        if timeout is None:
            timeout = self.timeout + _audio_size(audio) / (1024 * 1024) * UPLOAD_SECONDS_PER_MIB
        response = await self._call("Upload", lambda _: upload_messages(request, audio), timeout, metadata)
        return Submitted(Job.from_proto(response.job), response.existing)

    @overload
    async def submit(
        self, route: str, inputs: Mapping[str, Any] | None = None, *, labels: Mapping[str, str] | None = None,
        request_id: str | None = None, priority: int | None = None,
        queue_timeout: float | None = None, run_timeout: float | None = None,
        timeout: float | None = None, metadata: Metadata | None = None,
    ) -> AsyncJobFuture[Output]: ...
    @overload
    async def submit(
        self, route: str, inputs: Mapping[str, Any] | None = None, *, result_type: type[R],
        labels: Mapping[str, str] | None = None, request_id: str | None = None, priority: int | None = None,
        queue_timeout: float | None = None, run_timeout: float | None = None, timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncJobFuture[R]: ...
    async def submit(
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
    ) -> AsyncJobFuture[Any]:
        """Submits JSON inputs and answers the job's future (an ``Output``; a whisper route given
        OctoAI-style JSON answers a ``Transcript``: pass ``result_type=Transcript``)."""
        job, _ = await self.submit_job(route, inputs, labels=labels, request_id=request_id, priority=priority,
                                       queue_timeout=queue_timeout, run_timeout=run_timeout, timeout=timeout,
                                       metadata=metadata)
        return AsyncJobFuture(self, job, result_type)

    @overload
    async def transcribe(
        self, audio: Audio, *, route: str = "whisper", language: str = "", task: str = "", beam_size: int = 0,
        word_timestamps: bool = False, vad_filter: bool | None = None, labels: Mapping[str, str] | None = None,
        request_id: str | None = None, priority: int | None = None,
        queue_timeout: float | None = None, run_timeout: float | None = None,
        timeout: float | None = None, metadata: Metadata | None = None,
    ) -> AsyncJobFuture[Transcript]: ...
    @overload
    async def transcribe(
        self, audio: Audio, *, result_type: type[R], route: str = "whisper", language: str = "", task: str = "",
        beam_size: int = 0, word_timestamps: bool = False, vad_filter: bool | None = None,
        labels: Mapping[str, str] | None = None, request_id: str | None = None, priority: int | None = None,
        queue_timeout: float | None = None, run_timeout: float | None = None, timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncJobFuture[R]: ...
    async def transcribe(
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
    ) -> AsyncJobFuture[Any]:
        """Submits audio (bytes or a file path) as a typed transcription request and answers the
        job's future (a ``Transcript``; an upstream route answers an ``Output``: pass
        ``result_type=Output``). See submit_job for the options."""
        job, _ = await self.submit_job(
            route, audio=audio, language=language, task=task, beam_size=beam_size, word_timestamps=word_timestamps,
            vad_filter=vad_filter, labels=labels, request_id=request_id, priority=priority,
            queue_timeout=queue_timeout, run_timeout=run_timeout, timeout=timeout, metadata=metadata,
        )
        return AsyncJobFuture(self, job, result_type)

    @overload
    async def future(
        self, job_id: str, *, timeout: float | None = None, metadata: Metadata | None = None,
    ) -> AsyncJobFuture[Result]: ...
    @overload
    async def future(
        self, job_id: str, *, result_type: type[R], timeout: float | None = None, metadata: Metadata | None = None,
    ) -> AsyncJobFuture[R]: ...
    async def future(
        self,
        job_id: str,
        *,
        result_type: type[Any] | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncJobFuture[Any]:
        """A future for a job submitted earlier (by anyone in the tenant)."""
        return AsyncJobFuture(self, await self.get(job_id, timeout=timeout, metadata=metadata), result_type)

    # -- reading one job -------------------------------------------------------------------------

    async def get(self, job_id: str, *, timeout: float | None = None, metadata: Metadata | None = None) -> Job:
        """The job now, with every segment so far."""
        response = await self._call("Get", lambda _: pb.GetRequest(job_id=job_id), timeout, metadata)
        return Job.from_proto(response.job)

    async def _get_patiently(self, job_id: str) -> Job:
        response = await self._call("Get", lambda _: pb.GetRequest(job_id=job_id), None, None, patient=True)
        return Job.from_proto(response.job)

    @overload
    def watch(
        self, job_id: str, *, after_revision: int = 0, heartbeats: Literal[False] = False, resume: bool = True,
        timeout: float | None = None, metadata: Metadata | None = None,
    ) -> AsyncIterator[Job]: ...
    @overload
    def watch(
        self, job_id: str, *, after_revision: int = 0, heartbeats: bool, resume: bool = True,
        timeout: float | None = None, metadata: Metadata | None = None,
    ) -> AsyncIterator[Job | Heartbeat]: ...
    async def watch(
        self,
        job_id: str,
        *,
        after_revision: int = 0,
        heartbeats: bool = False,
        resume: bool = True,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[Any]:
        """Every revision of the job (the whole job first when ``after_revision`` is 0, else each
        revision after it), ending after the terminal one; with ``heartbeats``, the heartbeats too.

        Each Job carries the whole transcript so far, rebuilt from the stream's increments. With
        ``resume`` (the default), a stream cut with UNAVAILABLE is reopened after the last revision
        seen (see RetryPolicy.resume_timeout). ``timeout``: seconds for the whole stream (None: no
        limit)."""
        items = self._watch(job_id, after_revision, None, heartbeats=heartbeats, resume=resume, timeout=timeout,
                            metadata=metadata)
        try:
            async for item in items:
                yield item
        finally:
            await items.aclose()  # at once, not when collected: it cancels the call

    def _watch(
        self,
        job_id: str,
        after_revision: int,
        base: Job | None,
        *,
        heartbeats: bool,
        resume: bool,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> AsyncGenerator[Job | Heartbeat, None]:
        """watch(), continuing the transcript of ``base`` (the job as of after_revision) when given."""
        resumption = Resumption(self.retry, resume=resume, timeout=timeout)
        return JobWatch(self, job_id, after_revision, base, heartbeats, resumption, timeout,
                         self._merge(metadata)).follow()

    async def _transcript_until(self, job_id: str, offset: int) -> TranscriptBuilder:
        """The transcript's first ``offset`` segments (transcripts only grow, so the job now has them)."""
        if offset == 0:
            return TranscriptBuilder()
        job = await self._get_patiently(job_id)
        if len(job.segments) < offset:
            raise DataLossError(f"job {job_id} has {len(job.segments)} segments, the stream needs {offset}",
                                reason="SEGMENTS_GAP")
        return TranscriptBuilder(job.raw.segments[:offset], job.segments[:offset])

    async def fetch(
        self,
        job_id: str,
        *,
        wait: float | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Fetched:
        """The job (without segments) and, once it SUCCEEDED, its result: ``job, result = await
        client.fetch(job_id)``.

        Without ``wait``, a job still queued or running raises FailedPreconditionError (reason
        JOB_NOT_DONE). With ``wait`` (seconds), the server waits up to that long for the job to
        end, then answers it as it is: ``job.done`` False and no result if it still runs. The call's
        deadline is ``timeout``, or ``wait`` plus the client's timeout."""
        if wait is not None and wait < 0:
            raise ValueError("wait must not be negative")
        loop = asyncio.get_running_loop()
        wait_until = None if not wait else loop.time() + wait
        if timeout is None and wait:
            timeout = wait + self.timeout

        def request(_: float) -> pb.FetchRequest:
            message = pb.FetchRequest(job_id=job_id)
            if wait_until is not None:  # what is left of the wait on a retry; never 0 (0 means "don't wait")
                message.timeout.CopyFrom(_duration(max(0.001, wait_until - loop.time())))
            return message

        response = await self._call("Fetch", request, timeout, metadata)
        return Fetched(Job.from_proto(response.job), result_from_proto(response))

    async def _fetch_patiently(self, job_id: str) -> Fetched:
        response = await self._call("Fetch", lambda _: pb.FetchRequest(job_id=job_id), None, None, patient=True)
        return Fetched(Job.from_proto(response.job), result_from_proto(response))

    # -- changing one job ------------------------------------------------------------------------

    async def cancel(self, job_id: str, *, timeout: float | None = None, metadata: Metadata | None = None) -> Job:
        """Asks the job to stop; answers at once with the job then: CANCELLED if it was queued,
        still RUNNING if it was running (it ends CANCELLED on its Watch stream), unchanged if done."""
        response = await self._call("Cancel", lambda _: pb.CancelRequest(job_id=job_id), timeout, metadata)
        return Job.from_proto(response.job)

    async def retry_job(
        self, job_id: str, *, timeout: float | None = None, metadata: Metadata | None = None,
    ) -> tuple[Job, bool]:
        """Runs a FAILED or CANCELLED job again as a new job (same inputs, route, labels, priority, deadlines,
        webhook; its ``retry_of`` names the old one); answers (new job, existing). A job is retried once: a
        second call answers the first's job (existing True). FailedPreconditionError JOB_NOT_DONE while the
        job runs, JOB_NOT_RETRYABLE if it SUCCEEDED, INPUT_LOST if its inputs are no longer kept."""
        response = await self._call("Retry", lambda _: pb.RetryRequest(job_id=job_id), timeout, metadata)
        return Job.from_proto(response.job), response.existing

    async def delete(
        self, job_id: str, *, force: bool = False, timeout: float | None = None, metadata: Metadata | None = None,
    ) -> None:
        """Forgets a finished job now. A queued or running job raises FailedPreconditionError
        (JOB_NOT_DONE) unless ``force``: then it is cancelled, and forgotten once it has stopped."""
        await self._call("Delete", lambda _: pb.DeleteRequest(job_id=job_id, force=force), timeout, metadata)

    # -- many jobs -------------------------------------------------------------------------------

    async def list(
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
        """One page of the tenant's jobs, newest first, without segments (``page_size`` 0: 50)."""
        request = pb.ListRequest(page_size=page_size, page_token=page_token, route=route, labels=dict(labels or {}),
                                 states=state_values(states))
        response = await self._call("List", lambda _: request, timeout, metadata)
        return Page([Job.from_proto(j) for j in response.jobs], response.next_page_token)

    async def iter_jobs(
        self,
        *,
        states: Sequence[JobState | str] = (),
        route: str = "",
        labels: Mapping[str, str] | None = None,
        page_size: int = 0,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[Job]:
        """Every job of the tenant matching the filters, page after page (``timeout`` per page)."""
        token = ""
        while True:
            page = await self.list(states=states, route=route, labels=labels, page_size=page_size, page_token=token,
                                   timeout=timeout, metadata=metadata)
            for job in page.jobs:
                yield job
            token = page.next_page_token
            if not token:
                return

    @overload
    def watch_jobs(
        self, *, states: Sequence[JobState | str] = (), route: str = "", labels: Mapping[str, str] | None = None,
        resume_token: str = "", heartbeats: Literal[False] = False, resume: bool = True,
        timeout: float | None = None, metadata: Metadata | None = None,
    ) -> AsyncJobChanges[Job]: ...
    @overload
    def watch_jobs(
        self, *, states: Sequence[JobState | str] = (), route: str = "", labels: Mapping[str, str] | None = None,
        resume_token: str = "", heartbeats: bool, resume: bool = True,
        timeout: float | None = None, metadata: Metadata | None = None,
    ) -> AsyncJobChanges[Job | Heartbeat]: ...
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
    ) -> AsyncJobChanges[Any]:
        """Every change of the tenant's jobs, for dashboards: the active jobs first (or, with a
        ``resume_token``, every job changed since it), then each change; jobs without segments.
        Endless; resumes by itself after a cut from its ``resume_token`` (see AsyncJobChanges)."""
        request = pb.WatchJobsRequest(route=route, labels=dict(labels or {}), states=state_values(states))

        def start(changes: AsyncJobChanges[Any]) -> AsyncIterator[Any]:
            return self._watch_jobs(changes, request, heartbeats, resume, timeout, metadata)

        return AsyncJobChanges(start, resume_token)

    def _watch_jobs(
        self,
        changes: AsyncJobChanges[Any],
        request: pb.WatchJobsRequest,
        heartbeats: bool,
        resume: bool,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> AsyncIterator[Job | Heartbeat]:
        resumption = Resumption(self.retry, resume=resume, timeout=timeout)
        return JobsWatch(self, changes, request, heartbeats, resumption, timeout, self._merge(metadata)).follow()

