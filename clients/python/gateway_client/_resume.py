"""Resuming a cut server stream: the one loop behind ``watch``, ``watch_jobs``, job futures and the CLI.

A ``ResumedStream`` (iterate ``follow()``) opens its call from the position it has reached (the
last revision, or resume token, seen) and hands out what its messages make. When the call is cut
by an error that ``stream_resumable`` accepts (UNAVAILABLE, or a reset under it), it is opened
again from that position after the RetryPolicy's backoff. ``Resumption`` keeps the state this needs:

- patience: the stream gives up, raising the cut's error, once ``resume_timeout`` seconds have
  passed without a message from the server (any message restarts it, heartbeats included);
- the backoff count, restarted when the stream makes progress (``Resumption.progressed``);
- the stream's own deadline (``timeout``): it is never overrun by a backoff; the stream ends with
  its ``timed_out()`` error instead;
- whether anything was received at all: a stream may refuse to resume before its first message
  (the CLI: a gateway down from the start is an error, not a wait).

gRPC's errors become RpcError subclasses here, around the call and ``take`` alike. Nothing
happens before the first iteration: the deadline and patience count from it. A stream that ends
cleanly is over (opening it again is the caller's business, as a job future does), and the call
is cancelled whenever the stream stops, so closing the iterator ends the call at once. The
streams are ``_streams.JobWatch`` and ``JobsWatch`` (the asyncio client, hence the blocking one
through ``Client._iterate``, and job futures) and ``cli.streams.WatchResponses``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Generic, Protocol, TypeVar

from gateway_client._errors import RpcError, translate_errors
from gateway_client._retry import RetryPolicy, stream_resumable

__all__ = ["ResumedStream", "Resumption", "StreamCall"]

M = TypeVar("M")  # the messages of the stream's call
M_co = TypeVar("M_co", covariant=True)
T = TypeVar("T")  # what the stream hands out


class StreamCall(Protocol[M_co]):
    """A server-streaming call: its messages, and a way to end it (a ``grpc.aio`` call is one)."""

    def __aiter__(self) -> AsyncIterator[M_co]: ...

    def cancel(self) -> bool: ...


class Resumption:
    """The state of one resumed stream: its deadline, its patience, its failed tries."""

    def __init__(self, policy: RetryPolicy, *, resume: bool = True, timeout: float | None = None,
                 deadline: float | None = None, resume_before_first: bool = True) -> None:
        """``timeout``: seconds from the first iteration; or ``deadline``, a time on the loop's clock
        (a stream that is part of a longer wait). ``resume_before_first``: whether a stream that
        has received nothing yet resumes too."""
        self.policy = policy
        self.resume = resume
        self.resume_before_first = resume_before_first
        self._timeout = timeout
        self._clock = time.monotonic  # the loop's clock, once started
        self.deadline = deadline
        self.give_up_at = 0.0
        self.failures = 0
        self.received = False

    def start(self) -> None:
        """The stream's first iteration: its deadline and patience count from here."""
        self._clock = asyncio.get_running_loop().time
        now = self._clock()
        if self._timeout is not None:
            self.deadline = now + self._timeout
        self.give_up_at = now + self.policy.resume_timeout

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None: no deadline)."""
        return None if self.deadline is None else self.deadline - self._clock()

    def heard(self) -> None:
        """A message arrived: the server is there, patience starts over."""
        self.received = True
        self.give_up_at = self._clock() + self.policy.resume_timeout

    def progressed(self) -> None:
        """The stream moved on: the next failure waits the shortest backoff again."""
        self.failures = 0

    def may_resume(self, error: RpcError) -> bool:
        """Whether a call cut with ``error`` is opened again."""
        return (self.resume and (self.received or self.resume_before_first) and stream_resumable(error)
                and self._clock() <= self.give_up_at)

    def backoff(self) -> float | None:
        """Counts a failure; the seconds to wait before the next try, None when that wait would
        pass the deadline."""
        self.failures += 1
        delay = self.policy.backoff(self.failures)
        if self.deadline is not None and self._clock() + delay >= self.deadline:
            return None
        return delay


class ResumedStream(Generic[M, T]):
    """A stream that resumes itself: subclasses say how to open the call from the position
    reached, what a message yields, and how the stream reports a cut and its timeout."""

    def __init__(self, resumption: Resumption) -> None:
        self.resumption = resumption

    def open(self, timeout: float | None) -> StreamCall[M]:
        """The call, from the position reached; ``timeout``: the seconds left to the deadline."""
        raise NotImplementedError

    async def take(self, message: M) -> T | None:
        """What ``message`` hands out (None: nothing); it moves the position on. Raising an error
        that ``resumes`` accepts drops the call and opens it again."""
        raise NotImplementedError

    def timed_out(self) -> Exception:
        """The error that ends the stream at its deadline."""
        raise NotImplementedError

    def start(self) -> None:
        """Called at the first iteration, before anything else (a check that the client is open)."""

    def resumes(self, error: Exception) -> bool:
        """Whether the stream is opened again after ``error``; says why (a log line, a note) if so."""
        if isinstance(error, RpcError) and self.resumption.may_resume(error):
            self.cut(error)
            return True
        return False

    def cut(self, error: Exception) -> None:
        """The call was cut by ``error`` and is opened again."""

    async def follow(self) -> AsyncGenerator[T, None]:
        """What the stream hands out, across every reopening; ``aclose()`` it to end the call."""
        self.start()
        resumption = self.resumption
        resumption.start()
        while True:
            remaining = resumption.remaining()
            if remaining is not None and remaining <= 0:
                raise self.timed_out()
            call = self.open(remaining)
            try:
                with translate_errors():
                    async for message in call:
                        resumption.heard()
                        item = await self.take(message)
                        if item is not None:
                            yield item
                return
            except Exception as exc:
                if not self.resumes(exc):
                    raise
            finally:
                call.cancel()
            delay = resumption.backoff()
            if delay is None:
                raise self.timed_out()
            await asyncio.sleep(delay)
