"""How the CLI reads a stream: within the command's --timeout, and, for Watch, resumed after a cut.

Watch goes through the client library's ResumedStream (its backoff and patience, DEFAULT_RETRY),
with two differences of a command line: a cut is noted on stderr, and a stream that has delivered
nothing yet is not resumed (a gateway that is down from the start is an RPC error, not a wait).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from inferencegateway.gateway.v1 import gateway_pb2 as pb

from gateway_client._resume import ResumedStream, Resumption
from gateway_client._retry import DEFAULT_RETRY
from gateway_client.cli.connection import Session
from gateway_client.cli.output import note

__all__ = ["Reading", "TimedOut", "WatchResponses", "deadline_after"]


class TimedOut(Exception):
    """--timeout passed."""


def deadline_after(timeout: float | None) -> float | None:
    return None if timeout is None else asyncio.get_running_loop().time() + timeout


class Reading:
    """A stream's call, read until ``deadline`` (a time on the loop's clock): TimedOut once it has passed."""

    def __init__(self, call: Any, deadline: float | None) -> None:
        self._call = call
        self._deadline = deadline

    def __aiter__(self) -> Reading:
        return self

    async def __anext__(self) -> Any:
        call, deadline = self._call, self._deadline
        if deadline is None:
            message = await call.read()
        else:
            # asyncio.wait rather than wait_for: no TimeoutError, whose asyncio alias differs before 3.11.
            read = asyncio.ensure_future(call.read())
            try:
                done, _ = await asyncio.wait({read}, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
            finally:
                if not read.done():
                    read.cancel()
            if not done:
                raise TimedOut
            message = read.result()
        if message is grpc.aio.EOF:
            raise StopAsyncIteration
        return message

    def cancel(self) -> bool:
        return bool(self._call.cancel())


class WatchResponses(ResumedStream[pb.WatchResponse, pb.WatchResponse]):
    """The job's WatchResponses, as received; a cut after the first is resumed after the last revision seen."""

    def __init__(self, session: Session, job_id: str, after_revision: int, deadline: float | None) -> None:
        super().__init__(Resumption(DEFAULT_RETRY, deadline=deadline, resume_before_first=False))
        self._session = session
        self._job_id = job_id
        self._last = after_revision
        self._deadline = deadline

    def open(self, timeout: float | None) -> Reading:
        return Reading(self._session.stream("Watch", pb.WatchRequest(job_id=self._job_id, after_revision=self._last)),
                       self._deadline)

    async def take(self, message: pb.WatchResponse) -> pb.WatchResponse:
        self.resumption.progressed()
        if message.HasField("update"):
            self._last = message.update.job.revision
        return message

    def timed_out(self) -> Exception:
        return TimedOut()

    def cut(self, error: Exception) -> None:
        note(f"the stream was cut ({error}); resuming after revision {self._last}")
