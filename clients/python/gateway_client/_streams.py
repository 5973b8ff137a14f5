"""What the client keeps while it follows a stream: a job's transcript, the jobs stream's position.

A Watch stream sends the whole transcript in its first message, then only the segments each
revision adds, with their index (``segments_offset``). ``TranscriptBuilder`` rebuilds the whole
list from those increments, so every Job the client hands out carries every segment so far,
exactly as if the server had sent them all; a resumed stream (after revision N) continues from
revision N's transcript and rebuilds the same list.

``JobWatch`` and ``JobsWatch`` are the client's Watch and WatchJobs streams: the position each
resumes from (the last revision, the last resume token) and what its messages yield, on the one
resumption loop of ``_resume``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from inferencegateway.gateway.v1 import gateway_pb2 as pb

from gateway_client._errors import DataLossError, DeadlineExceededError
from gateway_client._resume import ResumedStream, Resumption
from gateway_client._types import Heartbeat, Job, Segment, Segments

if TYPE_CHECKING:
    from gateway_client._aio import AsyncClient

__all__ = ["AsyncJobChanges", "JobWatch", "JobsWatch", "TranscriptBuilder"]

log = logging.getLogger("gateway_client")

E = TypeVar("E")
# Gaps in a Watch stream's segments that resuming did not mend, before giving up with DATA_LOSS.
_MAX_GAPS = 3


class _Gap(Exception):
    """A Watch update whose segments_offset is past the transcript received."""


class TranscriptBuilder:
    """The segments of one job so far, rebuilt as ``transcript[:offset] + added``. Appends in place: the jobs
    it made share its lists (each its own length), and a revision that rewrites the tail gets new lists, so
    the ones already made keep theirs. An update costs what it adds, not the whole transcript."""

    def __init__(self, raw: Sequence[pb.Segment] = (), segments: Sequence[Segment] | None = None) -> None:
        self._raw: list[pb.Segment] = list(raw)
        self._segments: list[Segment] = (
            list(segments) if segments is not None else [Segment.from_proto(s) for s in raw]
        )

    def __len__(self) -> int:
        return len(self._raw)

    @property
    def segments(self) -> Segments:
        return Segments(self._segments, len(self._segments))

    def apply(self, offset: int, added: Sequence[pb.Segment]) -> bool:
        """Adds a revision's segments; False (and nothing changed) when ``offset`` leaves a gap,
        that is, when segments before it were never received."""
        if offset < 0 or offset > len(self._raw):
            return False
        if offset == len(self._raw) and not added:
            return True
        if offset < len(self._raw):  # the tail rewritten: new lists, the jobs already made keep theirs
            self._raw = self._raw[:offset]
            self._segments = self._segments[:offset]
        self._raw.extend(added)
        self._segments.extend(Segment.from_proto(s) for s in added)
        return True

    def job(self, message: pb.Job) -> Job:
        """The job of an update's message, with the whole transcript instead of the increment (its ``raw``
        message with every segment is made when first read)."""
        segments = self.segments
        if len(message.segments) == len(self._raw):
            return Job.from_proto(message, segments)
        raw, count = self._raw, len(self._raw)

        def whole() -> pb.Job:
            made = pb.Job()
            made.CopyFrom(message)
            del made.segments[:]
            made.segments.extend(raw[:count])
            return made

        return Job.from_proto(message, segments, raw=whole)


class AsyncJobChanges(Generic[E]):
    """The stream of ``AsyncClient.watch_jobs()``: an async iterator of jobs (and heartbeats, when
    asked for) that resumes by itself after a cut.

    ``resume_token`` is the stream's position after the last item it gave (heartbeats move it
    too); pass it to ``watch_jobs(resume_token=...)`` later to get every job changed since, then
    the live changes. ``aclose()`` (or ``async with``) ends the stream.
    """

    def __init__(self, start: Callable[[AsyncJobChanges[E]], AsyncIterator[E]], resume_token: str) -> None:
        self.resume_token = resume_token
        self._items = start(self)

    def __aiter__(self) -> AsyncJobChanges[E]:
        return self

    async def __anext__(self) -> E:
        return await self._items.__anext__()

    async def aclose(self) -> None:
        aclose = getattr(self._items, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> AsyncJobChanges[E]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class JobWatch(ResumedStream[pb.WatchResponse, "Job | Heartbeat"]):
    """One job's Watch stream, from the last revision seen, each Job with the whole transcript so
    far. A gap in the segments (an update whose segments_offset is past the transcript received)
    reopens the stream too, up to _MAX_GAPS times in a row before DATA_LOSS."""

    def __init__(self, client: AsyncClient, job_id: str, after_revision: int, base: Job | None, heartbeats: bool,
                 resumption: Resumption, timeout: float | None, metadata: tuple[tuple[str, str], ...]) -> None:
        super().__init__(resumption)
        self._client = client
        self._job_id = job_id
        self._last = after_revision
        self._heartbeats = heartbeats
        self._timeout = timeout
        self._metadata = metadata
        self._transcript: TranscriptBuilder | None = None
        if base is not None:
            self._transcript = TranscriptBuilder(base.raw.segments, base.segments)
        elif after_revision == 0:
            self._transcript = TranscriptBuilder()
        self._gaps = 0

    def start(self) -> None:
        self._client._check_open()

    def open(self, timeout: float | None) -> Any:
        return self._client._stub.Watch(pb.WatchRequest(job_id=self._job_id, after_revision=self._last),
                                        timeout=timeout, metadata=self._metadata)

    async def take(self, message: pb.WatchResponse) -> Job | Heartbeat | None:
        kind = message.WhichOneof("event")
        if kind == "update":
            update = message.update
            if update.job.revision <= self._last:
                return None  # never a revision twice
            if self._transcript is None:  # began after a revision whose transcript we lack
                self._transcript = await self._client._transcript_until(self._job_id, update.segments_offset)
            if not self._transcript.apply(update.segments_offset, update.job.segments):
                raise _Gap(f"segments_offset {update.segments_offset} > {len(self._transcript)}")
            job = self._transcript.job(update.job)
            self._last, self._gaps = job.revision, 0
            self.resumption.progressed()
            return job
        if kind == "heartbeat" and self._heartbeats:
            return Heartbeat.from_proto(message.heartbeat)
        return None

    def timed_out(self) -> Exception:
        return DeadlineExceededError(f"watching job {self._job_id}: the timeout of {self._timeout} s passed")

    def resumes(self, error: Exception) -> bool:
        if isinstance(error, _Gap):
            self._gaps += 1
            if not self.resumption.resume or self._gaps > _MAX_GAPS:
                raise DataLossError(f"watching job {self._job_id}: {error}", reason="SEGMENTS_GAP") from None
            log.debug("watch %s: %s; resuming after revision %d", self._job_id, error, self._last)
            return True
        return super().resumes(error)

    def cut(self, error: Exception) -> None:
        log.debug("watch %s cut (%s); resuming after revision %d", self._job_id, error, self._last)


class JobsWatch(ResumedStream[pb.WatchJobsResponse, "Job | Heartbeat"]):
    """The WatchJobs stream, from the resume token of the last message (kept on ``changes``)."""

    def __init__(self, client: AsyncClient, changes: AsyncJobChanges[Any], request: pb.WatchJobsRequest,
                 heartbeats: bool, resumption: Resumption, timeout: float | None,
                 metadata: tuple[tuple[str, str], ...]) -> None:
        super().__init__(resumption)
        self._client = client
        self._changes = changes
        self._request = request
        self._heartbeats = heartbeats
        self._timeout = timeout
        self._metadata = metadata

    def start(self) -> None:
        self._client._check_open()

    def open(self, timeout: float | None) -> Any:
        self._request.resume_token = self._changes.resume_token
        return self._client._stub.WatchJobs(self._request, timeout=timeout, metadata=self._metadata)

    async def take(self, message: pb.WatchJobsResponse) -> Job | Heartbeat | None:
        self.resumption.progressed()
        if message.resume_token:
            self._changes.resume_token = message.resume_token
        kind = message.WhichOneof("event")
        if kind == "job":
            return Job.from_proto(message.job)
        if kind == "heartbeat" and self._heartbeats:
            return Heartbeat.from_proto(message.heartbeat)
        return None

    def timed_out(self) -> Exception:
        return DeadlineExceededError(f"watching jobs: the timeout of {self._timeout} s passed")

    def cut(self, error: Exception) -> None:
        log.debug("watch_jobs cut (%s); resuming from %r", error, self._changes.resume_token)
