"""The stores' one writer (gateway.store.writer) on its own, with a fake engine step: batches in order,
a batch the store refuses tried again (not writable meanwhile, writable after), closing, a bug in a step,
and nothing of a batch kept while the writer waits; each as a task (a step that awaits, like Redis') and
as a thread (a step that blocks, like SQLite's). The engines' own steps are tested through the stores
(test_store.py, test_disk_full.py, test_redis_full.py, test_redis_restart.py)."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.errors import Unavailable
from gateway.store.base import Writability
from gateway.store.writer import BatchFailed, CannotWrite, Outcome, TaskWriter, ThreadWriter, Writer


@dataclass(eq=False)
class FakeWrite:
    """Not slotted: a weak reference tells whether the writer still holds it."""

    value: Any
    future: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    on_commit: Callable[[Any], None] | None = None


def doubled(values: list[Any]) -> list[Outcome]:
    return [(v * 2, None) for v in values]


class FakeEngine:
    """A step that stores each batch's values (``answer`` makes the outcomes: each value doubled), or
    refuses ``refusals`` tries in a row (``CannotWrite``), or raises what ``fail`` says for a batch.
    ``step`` is for a TaskWriter, ``blocking_step`` for a ThreadWriter (it runs on the writer's thread)."""

    def __init__(self, refusals: int = 0, refusal: Callable[[], CannotWrite] | None = None) -> None:
        self.tries: list[list[Any]] = []  # every try, refused or not
        self.stored: list[list[Any]] = []
        self.refusals = refusals
        self.refusal = refusal or (lambda: CannotWrite("the fake disk is full", first_pause=0.001))
        self.fail: Callable[[list[Any]], BaseException | None] = lambda values: None
        self.answer: Callable[[list[Any]], Iterable[Outcome]] = doubled
        self.gate = threading.Event()  # a try waits until it is set
        self.gate.set()
        self.entered = asyncio.Event()  # set (on the loop) as a try begins
        self.tried = asyncio.Event()  # set (on the loop) as a try ends
        self._loop = asyncio.get_running_loop()

    async def step(self, batch: list[FakeWrite]) -> Iterable[Outcome]:
        self.entered.set()
        if not self.gate.is_set():
            await asyncio.to_thread(self.gate.wait)
        return self._try(batch)

    def blocking_step(self, batch: list[FakeWrite]) -> Iterable[Outcome]:
        self._loop.call_soon_threadsafe(self.entered.set)
        self.gate.wait()
        return self._try(batch)

    def _try(self, batch: list[FakeWrite]) -> Iterable[Outcome]:
        values = [w.value for w in batch]
        self.tries.append(values)
        self._loop.call_soon_threadsafe(self.tried.set)
        if self.refusals:
            self.refusals -= 1
            raise self.refusal()
        error = self.fail(values)
        if error is not None:
            raise error
        self.stored.append(values)
        return self.answer(values)


@pytest.fixture(params=["task", "thread"])
def runner(request: pytest.FixtureRequest) -> str:
    """Every test, with each way the writer runs."""
    return str(request.param)


def make_writer(runner: str, engine: FakeEngine, max_batch: int = 4,
                **options: Any) -> tuple[Writer[FakeWrite], Writability, list[bool]]:
    """The writer, started; its Writability; and what that told its listener."""
    writability = Writability("is the fake disk full?")
    seen: list[bool] = []
    writability.listen(seen.append)
    writer: Writer[FakeWrite]
    if runner == "task":
        writer = TaskWriter("fake", engine.step, writability, max_batch=max_batch, **options)
    else:
        writer = ThreadWriter("fake", engine.blocking_step, writability, max_batch=max_batch, **options)
    writer.start()
    return writer, writability, seen


async def put_behind_one(engine: FakeEngine, writer: Writer[FakeWrite], first: FakeWrite,
                         rest: list[FakeWrite]) -> None:
    """``first`` taken alone and held in its try, ``rest`` handed over meanwhile, then let go: so the
    batches are the same whichever way the writer runs (a thread may wake before the rest is in)."""
    engine.gate.clear()
    engine.entered.clear()
    writer.put(first)
    await engine.entered.wait()
    for w in rest:
        writer.put(w)
    engine.gate.set()


async def tried(engine: FakeEngine, times: int) -> None:
    while len(engine.tries) < times:
        engine.tried.clear()
        await engine.tried.wait()


async def settled() -> None:
    """Lets what was scheduled run: the writability listeners (called soon, not at once), and a writer
    thread's next steps (the loop waits a little, so the thread gets to run)."""
    await asyncio.sleep(0.02)
    for _ in range(5):
        await asyncio.sleep(0)


async def test_batches_are_the_writes_in_order_and_answered_in_order(runner: str) -> None:
    engine = FakeEngine()
    writer, _, _ = make_writer(runner, engine, max_batch=4)
    committed: list[int] = []
    resumed: list[int] = []

    async def answered(w: FakeWrite) -> None:
        assert await w.future == w.value * 2
        assert w.value * 2 in committed  # its on_commit (given its result) ran before its caller resumed
        resumed.append(w.value)

    writes = [FakeWrite(i, on_commit=committed.append) for i in range(10)]
    waiting = [asyncio.get_running_loop().create_task(answered(w)) for w in writes]
    await put_behind_one(engine, writer, writes[0], writes[1:])
    await asyncio.gather(*waiting)
    # The writes handed over meanwhile share batches, up to the limit, each in order.
    assert engine.stored == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert committed == [i * 2 for i in range(10)]
    assert resumed == list(range(10))
    await writer.close()


async def test_a_refused_batch_is_tried_again_while_the_store_says_it_cannot_write(
        runner: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="gateway.store.base")
    engine = FakeEngine(refusals=3)
    writer, writability, seen = make_writer(runner, engine)
    first = FakeWrite(1)
    writer.put(first)
    await tried(engine, 1)
    second = FakeWrite(2)  # handed over while the first batch is refused: it waits behind it
    writer.put(second)
    assert await first.future == 2
    assert await second.future == 4
    assert engine.tries == [[1], [1], [1], [1], [2]]  # the same batch again, then the next one
    assert engine.stored == [[1], [2]]
    await settled()
    assert seen == [False, True]  # not writable while refused, writable once it went through
    assert writability.writable
    assert caplog.text.count("the fake disk is full") == 1  # the step's reason, said once
    await writer.close()


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The writer's pauses, recorded instead of made (asyncio's and time's sleep, whichever it uses)."""
    made: list[float] = []
    asleep, sleep = asyncio.sleep, time.sleep

    async def recorded(delay: float) -> None:
        made.append(delay)
        await asleep(0)

    def blocking_recorded(delay: float) -> None:
        made.append(delay)
        sleep(0)

    monkeypatch.setattr("gateway.store.writer.asyncio.sleep", recorded)
    monkeypatch.setattr("gateway.store.writer.time.sleep", blocking_recorded)
    return made


async def test_pauses_grow_and_a_short_spell_is_not_reported_when_the_step_says_so(
        runner: str, pauses: list[float], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    engine = FakeEngine(refusals=4, refusal=lambda: CannotWrite(
        "unreachable", kind="unreachable", first_pause=0.05, report_after=60.0, warn="fake store: gone"))
    writer, writability, seen = make_writer(runner, engine)
    w = FakeWrite(1)
    with caplog.at_level(logging.WARNING, logger="gateway.store.writer"):
        writer.put(w)
        assert await w.future == 2
    assert pauses == [0.05, 0.1, 0.2, 0.4]
    monkeypatch.undo()
    await settled()
    assert seen == [] and writability.writable  # a blink, under report_after: nobody is told
    assert caplog.text.count("fake store: gone; writing again in") == 4
    await writer.close()


async def test_another_kind_of_refusal_starts_a_spell_of_its_own(runner: str, pauses: list[float]) -> None:
    kinds = iter(["a", "a", "b", "a"])
    engine = FakeEngine(refusals=4, refusal=lambda: CannotWrite(kind=next(kinds), first_pause=0.05))
    writer, _, _ = make_writer(runner, engine)
    w = FakeWrite(1)
    writer.put(w)
    assert await w.future == 2
    assert pauses == [0.05, 0.1, 0.05, 0.05]


async def test_closing_fails_the_writes_the_store_refuses_and_stops(runner: str) -> None:
    engine = FakeEngine(refusals=10**9)
    writer, writability, _ = make_writer(runner, engine, max_batch=2)
    writes = [FakeWrite(i) for i in range(5)]
    for w in writes:
        writer.put(w)
    await tried(engine, 2)
    assert not writability.writable and not any(w.future.done() for w in writes)  # still retrying
    await writer.close()
    for w in writes:  # the batch being retried, and those behind it (each tried once more)
        error = w.future.exception()
        assert isinstance(error, Unavailable) and error.reason == "STORE_UNAVAILABLE"
    assert engine.stored == []
    with pytest.raises(RuntimeError, match="store is closed"):
        writer.put(FakeWrite(9))


async def test_closing_fails_with_the_engines_error(runner: str) -> None:
    engine = FakeEngine(refusals=10**9)
    writer, _, _ = make_writer(runner, engine, closing_error=lambda: KeyError("the engine's words"))
    w = FakeWrite(1)
    writer.put(w)
    await tried(engine, 1)
    await writer.close()
    with pytest.raises(KeyError, match="the engine's words"):
        await w.future


async def test_closing_still_writes_what_was_handed_over(runner: str) -> None:
    engine = FakeEngine()
    writer, _, _ = make_writer(runner, engine, max_batch=2)
    writes = [FakeWrite(i) for i in range(5)]
    engine.gate.clear()
    writer.put(writes[0])
    await engine.entered.wait()  # its try holds until the gate opens
    for w in writes[1:]:
        writer.put(w)
    closing = asyncio.get_running_loop().create_task(writer.close())
    await settled()
    assert not closing.done()  # it waits for the writer
    engine.gate.set()
    await closing
    assert [await w.future for w in writes] == [0, 2, 4, 6, 8]
    assert engine.stored == [[0], [1, 2], [3, 4]]


async def test_a_bug_in_a_step_fails_that_batch_and_the_writer_lives_on(
        runner: str, caplog: pytest.LogCaptureFixture) -> None:
    engine = FakeEngine()
    engine.fail = lambda values: ValueError("a bug") if "bad" in values else None
    writer, writability, seen = make_writer(runner, engine, max_batch=2)
    ok, bad = FakeWrite(0), [FakeWrite("bad"), FakeWrite(1)]
    with caplog.at_level(logging.ERROR, logger="gateway.store.writer"):
        await put_behind_one(engine, writer, ok, bad)
        assert await ok.future == 0
        for w in bad:  # the whole batch
            with pytest.raises(ValueError, match="a bug"):
                await w.future
    assert "fake writer failed" in caplog.text and "ValueError: a bug" in caplog.text
    good = FakeWrite(2)
    writer.put(good)
    assert await good.future == 4
    await settled()
    assert seen == [] and writability.writable
    await writer.close()


async def test_a_failed_batch_fails_its_writes_without_a_word(runner: str, caplog: pytest.LogCaptureFixture) -> None:
    engine = FakeEngine()
    lost = ConnectionError("the connection broke halfway")
    engine.fail = lambda values: BatchFailed(lost) if 1 in values else None
    writer, writability, seen = make_writer(runner, engine)
    writability.set(False, asyncio.get_running_loop(), "not writable, say, before")
    w = FakeWrite(1)
    with caplog.at_level(logging.DEBUG, logger="gateway.store.writer"):
        writer.put(w)
        with pytest.raises(ConnectionError) as raised:
            await w.future
    assert raised.value is lost
    assert [r for r in caplog.records if r.name == "gateway.store.writer"] == []  # not a bug: nothing said
    await settled()
    assert seen == [False] and not writability.writable  # left as it was
    after = FakeWrite(2)
    writer.put(after)
    assert await after.future == 4
    await settled()
    assert seen == [False, True]
    await writer.close()


async def test_answers_that_do_not_match_the_batch_fail_those_left_and_the_writer_lives_on(
        runner: str, caplog: pytest.LogCaptureFixture) -> None:
    engine = FakeEngine()
    engine.answer = lambda values: doubled(values)[:1]  # one answer, whatever the batch
    writer, _, _ = make_writer(runner, engine)
    first, rest = FakeWrite(0), [FakeWrite(1), FakeWrite(2)]
    with caplog.at_level(logging.ERROR, logger="gateway.store.writer"):
        await put_behind_one(engine, writer, first, rest)
        assert await first.future == 0
        assert await rest[0].future == 2
        with pytest.raises(ValueError):  # zip(strict=True): the step answered one write of two
            await rest[1].future
    assert "fake writer failed" in caplog.text
    again = FakeWrite(3)
    writer.put(again)
    assert await again.future == 6
    await writer.close()


async def test_an_error_outcome_fails_only_its_write_and_on_commit_runs_only_for_the_stored(runner: str) -> None:
    engine = FakeEngine()
    engine.answer = lambda values: [(None, KeyError(v)) if v % 2 else (v, None) for v in values]
    writer, _, _ = make_writer(runner, engine)
    committed: list[Any] = []
    writes = [FakeWrite(i, on_commit=committed.append) for i in range(4)]
    for w in writes:
        writer.put(w)
    assert await writes[0].future == 0 and await writes[2].future == 2
    for w in (writes[1], writes[3]):
        with pytest.raises(KeyError):
            await w.future
    assert committed == [0, 2]
    await writer.close()


async def test_nothing_of_a_batch_is_kept_while_the_writer_waits(runner: str) -> None:
    engine = FakeEngine(refusals=1)  # a batch tried again, too
    writer, _, _ = make_writer(runner, engine)
    w = FakeWrite(bytearray(1 << 20))  # (inputs may be MiBs)
    gone = weakref.ref(w)
    writer.put(w)
    await w.future
    del w
    await settled()  # the writer is waiting for the next write now
    gc.collect()
    assert gone() is None
    await writer.close()


async def test_a_writer_not_started_refuses_writes_and_closes(runner: str) -> None:
    engine = FakeEngine()
    writer: Writer[FakeWrite] = (TaskWriter("fake", engine.step, Writability("?"), max_batch=4) if runner == "task"
                                 else ThreadWriter("fake", engine.blocking_step, Writability("?"), max_batch=4))
    with pytest.raises(RuntimeError, match="store is closed"):
        writer.put(FakeWrite(1))
    await writer.close()


async def test_a_thread_writer_finishes_on_its_own_thread() -> None:
    """SQLite closes its connection there: the thread that used it, once nothing is left to write."""
    engine = FakeEngine()
    finished: list[str] = []
    writer, _, _ = make_writer("thread", engine, finish=lambda: finished.append(threading.current_thread().name))
    w = FakeWrite(1)
    writer.put(w)
    await writer.close()
    assert await w.future == 2
    assert finished == ["fake-write"]
