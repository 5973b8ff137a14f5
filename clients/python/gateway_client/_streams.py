"""What the client keeps while it follows a stream: a job's transcript, the jobs stream's position.

A Watch stream sends the whole transcript in its first message, then only the segments each
revision adds, with their index (``segments_offset``). ``TranscriptBuilder`` rebuilds the whole
list from those increments, so every Job the client hands out carries every segment so far,
exactly as if the server had sent them all; a resumed stream (after revision N) continues from
revision N's transcript and rebuilds the same list.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Generic, TypeVar

from inferencegateway.gateway.v1 import gateway_pb2 as pb

from gateway_client._types import Job, Segment

__all__ = ["AsyncJobChanges", "TranscriptBuilder"]

E = TypeVar("E")


class TranscriptBuilder:
    """The segments of one job so far, rebuilt as ``transcript[:offset] + added``."""

    def __init__(self, raw: Sequence[pb.Segment] = (), segments: Sequence[Segment] | None = None) -> None:
        self._raw: list[pb.Segment] = list(raw)
        self._segments: tuple[Segment, ...] = (
            tuple(segments) if segments is not None else tuple(Segment.from_proto(s) for s in raw)
        )

    def __len__(self) -> int:
        return len(self._raw)

    @property
    def segments(self) -> tuple[Segment, ...]:
        return self._segments

    def apply(self, offset: int, added: Sequence[pb.Segment]) -> bool:
        """Adds a revision's segments; False (and nothing changed) when ``offset`` leaves a gap,
        that is, when segments before it were never received."""
        if offset < 0 or offset > len(self._raw):
            return False
        if offset == len(self._raw) and not added:
            return True
        self._raw[offset:] = list(added)
        self._segments = self._segments[:offset] + tuple(Segment.from_proto(s) for s in added)
        return True

    def job(self, message: pb.Job) -> Job:
        """The job of an update's message, with the whole transcript instead of the increment."""
        if len(message.segments) != len(self._raw):
            whole = pb.Job()
            whole.CopyFrom(message)
            del whole.segments[:]
            whole.segments.extend(self._raw)
            message = whole
        return Job.from_proto(message, self._segments)


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
