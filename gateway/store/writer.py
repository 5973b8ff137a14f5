"""The one writer both engines write through: it takes the writes in the order they are handed over,
commits them in batches, and answers each one on the event loop, in commit order.

What an engine supplies is only its step: one try at committing one batch, answering one (result,
error) per write, in the batch's order. SQLite's runs the batch as one transaction on its connection;
Redis' sends the batch's scripts as one pipeline. Everything around that is here, once, so that both
engines behave alike:

- Order: one writer, one queue; a batch is the first waiting write and those behind it (``take_batch``,
  up to ``max_batch``), and the next batch is taken only once this one is done.
- A store that cannot write for now (a full disk, Redis out of memory, read-only or unreachable): the
  step raises ``CannotWrite``, and the same batch is tried again, in order, after growing pauses
  (``Backoff``), while the store reports itself not writable (``Writability``, which refuses new jobs
  and sets health), and writable again once a batch goes through. No accepted write is left behind.
- Closing (``close``): the writes handed over before are still written; but a batch the store refuses
  then fails (nobody will make room now), with the error the engine named for that.
- A bug in a step fails that batch only: its callers get the error, and the writer goes on.
- Nothing of a batch is kept while waiting for the next write: a batch holds its inputs (MiBs of audio).

Where the writer runs follows from the step. ``TaskWriter`` is a task on the event loop, for a step that
awaits (Redis). ``ThreadWriter`` is a thread of its own, for a step that blocks (SQLite: the thread holds
the connection, and commits batch after batch without waiting for the loop; only the answers go to the
loop, in one callback per batch). A task awaiting such a step on a thread was measured slower: every
batch then waits for the loop twice more (to be taken, and to be answered), which cost SQLite's writes
8-17% of their throughput under load and a quarter more time for a write alone. The rules (``_Tries``)
are the same code for both; only the waiting differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from gateway.errors import Unavailable
from gateway.store.base import Backoff, Writability, settle, take_batch

__all__ = ["BatchFailed", "CannotWrite", "Outcome", "Pending", "TaskWriter", "ThreadWriter", "Writer"]

log = logging.getLogger(__name__)

Outcome = tuple[Any, BaseException | None]  # a write's result, or the error it failed with


class Pending(Protocol):
    """A write as the writer sees it: whom to answer, and what runs once it is stored."""

    @property
    def future(self) -> asyncio.Future[Any]: ...

    @property
    def on_commit(self) -> Callable[[Any], None] | None: ...


W = TypeVar("W", bound=Pending)


class CannotWrite(Exception):
    """Raised by a step: the store refuses the batch for now and applied nothing of it that a second
    try would store twice; the writer tries the same batch again after a pause.

    ``why``: said in the log when the store becomes not writable (empty: the Writability's own words).
    A spell of refusals of one ``kind`` in a row pauses ``first_pause``, then twice as long each time;
    the store reports itself not writable once the spell has lasted ``report_after`` seconds (0: at
    once; Redis unreachable for a restart's blink is not worth refusing jobs for). ``warn``: a line
    logged at each try again, with the pause."""

    def __init__(self, why: str = "", *, kind: str = "refused", first_pause: float = 0.1,
                 report_after: float = 0.0, warn: str = "") -> None:
        super().__init__(why or kind)
        self.why = why
        self.kind = kind
        self.first_pause = first_pause
        self.report_after = report_after
        self.warn = warn


class BatchFailed(Exception):
    """Raised by a step: every write of the batch fails with ``error`` (say a connection lost halfway
    through), not tried again. Unlike a bug, nothing is logged, and whether the store is writable is
    left as it was."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _closing_error() -> BaseException:
    return Unavailable("the store could not write while closing", reason="STORE_UNAVAILABLE")


@dataclass(slots=True)
class _Spell:
    """Refusals of one kind in a row, of one batch: since when (the start of the first refused try),
    and the pauses between them."""

    kind: str
    since: float
    backoff: Backoff


class Writer(Generic[W]):
    """The single writer of one store: ``start`` it on the event loop the writes are answered on,
    ``put`` each write (in order), ``close`` it at the end. ``name`` names its log lines; ``logger`` is
    the engine's, so that what it says comes from the store it writes for. Made as a ``TaskWriter`` or
    a ``ThreadWriter``, which differ only in how they wait."""

    def __init__(self, name: str, writability: Writability, *, max_batch: int,
                 closing_error: Callable[[], BaseException] = _closing_error, logger: logging.Logger = log) -> None:
        self.name = name
        self._writability = writability
        self._max_batch = max_batch
        self._closing_error = closing_error  # what a batch refused while closing fails with
        self._log = logger
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False
        self.closing = False  # set by close: a batch the store refuses fails instead of waiting

    def start(self) -> None:
        """From the event loop the writes are answered on."""
        self._loop = asyncio.get_running_loop()
        self._begin()
        self._accepting = True

    def put(self, write: W) -> None:
        """Hands a write over: it is committed after every write handed over before it."""
        if not self._accepting:
            raise RuntimeError("store is closed")
        self._enqueue(write)

    async def close(self) -> None:
        """Writes what was handed over (a batch the store refuses now fails), then stops. Writes
        handed over from now on are refused (RuntimeError), not left waiting for a writer gone."""
        self.closing = True
        if self._loop is None:
            return
        if self._accepting:
            self._accepting = False
            self._enqueue(None)
        await self._ended()

    # -- what a runner is made of

    def _begin(self) -> None:
        raise NotImplementedError

    def _enqueue(self, write: W | None) -> None:
        raise NotImplementedError

    async def _ended(self) -> None:
        raise NotImplementedError

    def _done(self, batch: list[W], outcomes: Iterable[Outcome]) -> None:
        """A batch that went through: the store is writable, and each write is answered."""
        raise NotImplementedError

    def _failed(self, batch: list[W], error: BaseException) -> None:
        """Every write of the batch fails with ``error``."""
        raise NotImplementedError

    # -- on the loop

    def _answer(self, batch: list[W], outcomes: Iterable[Outcome]) -> None:
        """In order: each write that was stored runs its ``on_commit``, then its caller resumes."""
        try:
            for write, (result, error) in zip(batch, outcomes, strict=True):
                settle(write.future, write.on_commit, result, error)
        except Exception as exc:  # a bug in the answers (too few, say): those not answered yet fail
            self._log.exception("%s writer failed", self.name)
            self._fail(batch, exc)

    @staticmethod
    def _fail(batch: list[W], error: BaseException) -> None:
        for write in batch:
            settle(write.future, None, None, error)


class _Tries(Generic[W]):
    """One batch's tries, and the writer's rules after each: the same code whichever runner waits."""

    __slots__ = ("batch", "spell", "writer")

    def __init__(self, writer: Writer[W], batch: list[W]) -> None:
        self.writer = writer
        self.batch = batch
        self.spell: _Spell | None = None

    def after(self, started: float, result: Iterable[Outcome] | Exception) -> float | None:
        """After the try begun at ``started`` (``time.monotonic()``), given its outcomes or what it
        raised: the pause before trying the batch again, or None once the batch is done."""
        writer = self.writer
        assert writer._loop is not None
        if isinstance(result, CannotWrite):
            spell = self.spell
            if spell is None or spell.kind != result.kind:
                spell = self.spell = _Spell(result.kind, started, Backoff(result.first_pause))
            if result.report_after <= 0 or time.monotonic() - spell.since > result.report_after:
                writer._writability.set(False, writer._loop, result.why)
            if writer.closing:  # nobody will make room now: the writes fail
                writer._failed(self.batch, writer._closing_error())
                return None
            pause = spell.backoff.next()
            if result.warn:
                writer._log.warning("%s; writing again in %.1f s", result.warn, pause)
            return pause
        if isinstance(result, BatchFailed):
            writer._failed(self.batch, result.error)
        elif isinstance(result, Exception):  # a bug: fail the batch, keep the writer alive
            writer._log.error("%s writer failed", writer.name, exc_info=result)
            writer._failed(self.batch, result)
        else:
            writer._done(self.batch, result)
        return None


class TaskWriter(Writer[W]):
    """The writer as a task on the event loop (``<name>-writer``), for a step that awaits."""

    def __init__(self, name: str, step: Callable[[list[W]], Awaitable[Iterable[Outcome]]], writability: Writability,
                 *, max_batch: int, closing_error: Callable[[], BaseException] = _closing_error,
                 logger: logging.Logger = log) -> None:
        """``step(batch)``: the batch's outcomes (an iterable, so that an engine may make each one just
        before it is answered: Redis' decoding notes change positions)."""
        super().__init__(name, writability, max_batch=max_batch, closing_error=closing_error, logger=logger)
        self._step = step
        self._writes: asyncio.Queue[W | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def _begin(self) -> None:
        assert self._loop is not None
        self._task = self._loop.create_task(self._run(), name=f"{self.name}-writer")

    def _enqueue(self, write: W | None) -> None:
        self._writes.put_nowait(write)

    async def _ended(self) -> None:
        assert self._task is not None
        await self._task

    def _done(self, batch: list[W], outcomes: Iterable[Outcome]) -> None:
        assert self._loop is not None
        self._writability.set(True, self._loop)
        self._answer(batch, outcomes)

    def _failed(self, batch: list[W], error: BaseException) -> None:
        self._fail(batch, error)

    async def _run(self) -> None:  # (ThreadWriter._run is the same loop, blocking)
        while True:
            first = await self._writes.get()
            if first is None:
                return
            batch, stop = take_batch(first, self._writes.get_nowait, self._max_batch)
            tries = _Tries(self, batch)
            del first, batch
            while True:
                pause = tries.after(*await self._try(tries.batch))
                if pause is None:
                    break
                await asyncio.sleep(pause)
            del tries  # not kept while waiting for the next write: inputs may be MiBs
            if stop:
                return

    async def _try(self, batch: list[W]) -> tuple[float, Iterable[Outcome] | Exception]:
        started = time.monotonic()
        try:
            return started, await self._step(batch)
        except Exception as exc:
            return started, exc


class ThreadWriter(Writer[W]):
    """The writer as a thread of its own (``<name>-write``), for a step that blocks; ``finish`` runs on
    that thread as it ends (SQLite closes its connection there). The answers go to the loop, one
    callback per batch; nothing of the writer waits for the loop."""

    def __init__(self, name: str, step: Callable[[list[W]], Iterable[Outcome]], writability: Writability,
                 *, max_batch: int, closing_error: Callable[[], BaseException] = _closing_error,
                 logger: logging.Logger = log, finish: Callable[[], None] | None = None) -> None:
        super().__init__(name, writability, max_batch=max_batch, closing_error=closing_error, logger=logger)
        self._step = step
        self._finish = finish
        self._writes: queue.SimpleQueue[W | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-write", daemon=True)

    def _begin(self) -> None:
        self._thread.start()

    def _enqueue(self, write: W | None) -> None:
        self._writes.put(write)

    async def _ended(self) -> None:
        await asyncio.to_thread(self._thread.join)

    def _done(self, batch: list[W], outcomes: Iterable[Outcome]) -> None:
        assert self._loop is not None
        self._on_loop(self._answer, batch, outcomes)
        self._writability.set(True, self._loop)

    def _failed(self, batch: list[W], error: BaseException) -> None:
        self._on_loop(self._fail, batch, error)

    def _on_loop(self, fn: Callable[[list[W], Any], None], batch: list[W], arg: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(fn, batch, arg)

    def _run(self) -> None:  # (TaskWriter._run is the same loop, awaiting)
        try:
            while True:
                first = self._writes.get()
                if first is None:
                    return
                batch, stop = take_batch(first, self._writes.get_nowait, self._max_batch)
                tries = _Tries(self, batch)
                del first, batch
                while True:
                    pause = tries.after(*self._try(tries.batch))
                    if pause is None:
                        break
                    time.sleep(pause)
                del tries  # not kept while waiting for the next write: inputs may be MiBs
                if stop:
                    return
        finally:
            if self._finish is not None:
                self._finish()

    def _try(self, batch: list[W]) -> tuple[float, Iterable[Outcome] | Exception]:
        started = time.monotonic()
        try:
            return started, self._step(batch)
        except Exception as exc:
            return started, exc
