"""The job service in-process: a real Gateway (event hub, echo routes) with a fake clock, on every store
(the ``every_store`` fixture: SQLite in tmp_path, and a real redis-server)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.errors import AlreadyExists, Code, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from gateway.jobs import JobInput, JobOutput, JobState
from gateway.server import Gateway, make_store
from gateway.service import Heartbeat, JobService, Update
from gateway.settings import EchoRoute
from gateway.store import JobFilter
from tests.helpers.jobs import T0, FakeClock
from tests.helpers.service import (
    TENANT,
    inputs,
    make_settings,
    on_shared_store,
    running,
    state_of,
    submit,
    until,
    use_store,
)

pytestmark = pytest.mark.usefixtures("every_store")

async def test_submit_run_fetch(tmp_path: Path) -> None:
    clock = FakeClock()
    async with running(make_settings(tmp_path), clock) as gw:
        service = gw.service
        job = await submit(service, labels={"team": "a"}, delay_ms=50, steps=2, note="hi")
        assert job.state is JobState.QUEUED and job.revision == 1 and job.created == T0
        async with asyncio.timeout(10):
            done, result = await service.fetch(TENANT, job.id, wait=60)
        assert done.state is JobState.SUCCEEDED and done.progress == 1.0 and done.revision == 5
        assert result == JobOutput({"delay_ms": 50, "steps": 2, "note": "hi"})
        assert done.finished == T0 and done.expires == T0 + gw.settings.retention_seconds
        revisions = [j for j, _ in await gw.store.revisions_after(job.id, 0)]
        assert [j.revision for j in revisions] == [1, 2, 3, 4, 5]
        assert [j.state for j in revisions] == [JobState.QUEUED] + [JobState.RUNNING] * 3 + [JobState.SUCCEEDED]


async def test_expiry_with_the_injected_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    retention = 100.0
    async with running(make_settings(tmp_path, retention_seconds=retention), clock) as gw:
        service = gw.service
        job = await submit(service, x=1)
        async with asyncio.timeout(10):
            done, result = await service.fetch(TENANT, job.id, wait=60)
        assert result == JobOutput({"x": 1}) and done.expires == T0 + retention

        clock.advance(retention - 1)  # still retained
        assert (await service.get(TENANT, job.id)).id == job.id
        assert len((await service.list(TENANT, JobFilter(), 0, ""))[0]) == 1

        clock.advance(1)  # expires <= now: expired, though not swept yet
        for call in (lambda: service.get(TENANT, job.id), lambda: service.fetch(TENANT, job.id),
                     lambda: service.fetch(TENANT, job.id, wait=60), lambda: service.cancel(TENANT, job.id)):
            with pytest.raises(NotFound) as expired:
                await call()
            assert expired.value.reason == "JOB_EXPIRED" and expired.value.code is Code.NOT_FOUND
        with pytest.raises(NotFound) as watched:
            async for _ in service.watch(TENANT, job.id):
                pass
        assert watched.value.reason == "JOB_EXPIRED"
        assert (await service.list(TENANT, JobFilter(), 0, ""))[0] == []

        assert await service.sweep() == 1
        assert await gw.store.get_job(job.id) is None
        # The tombstone still answers JOB_EXPIRED (not JOB_NOT_FOUND) to the job's tenant...
        with pytest.raises(NotFound) as tomb:
            await service.fetch(TENANT, job.id)
        assert tomb.value.reason == "JOB_EXPIRED"
        # ...but another tenant learns nothing.
        with pytest.raises(NotFound) as foreign:
            await service.get("other", job.id)
        assert foreign.value.reason == "JOB_NOT_FOUND"
        assert await service.sweep() == 0

        clock.advance(retention + 1)  # the tombstone lapsed
        with pytest.raises(NotFound) as gone:
            await service.get(TENANT, job.id)
        assert gone.value.reason == "JOB_NOT_FOUND"


async def test_idempotency(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path), FakeClock()) as gw:
        service = gw.service
        first, existing = await service.submit(TENANT, "echo", inputs(a=1), {"k": "v"}, "order-1")
        assert not existing
        again, existing = await service.submit(TENANT, "echo", inputs(a=1), {"k": "v"}, "order-1")
        assert existing and again.id == first.id
        for changed in ((inputs(a=2), {"k": "v"}), (inputs(a=1), {"k": "w"})):
            with pytest.raises(AlreadyExists) as conflict:
                await service.submit(TENANT, "echo", changed[0], changed[1], "order-1")
            assert conflict.value.reason == "REQUEST_ID_CONFLICT" and conflict.value.code is Code.ALREADY_EXISTS
            assert conflict.value.metadata == {"request_id": "order-1", "job_id": first.id}
        other, existing = await service.submit("other-tenant", "echo", inputs(a=2), {}, "order-1")
        assert not existing and other.id != first.id


async def test_submission_validation(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path), FakeClock()) as gw:
        service = gw.service

        async def violations(route: str = "echo", labels: dict[str, str] | None = None, request_id: str = "",
                             job_input: JobInput | None = None) -> set[str]:
            with pytest.raises(InvalidArgument) as bad:
                await service.submit(TENANT, route, job_input or inputs(), labels or {}, request_id)
            assert bad.value.code is Code.INVALID_ARGUMENT and bad.value.reason == "INVALID_REQUEST"
            assert bad.value.field_violations
            return {v.field for v in bad.value.field_violations}

        assert await violations(route="Echo!") == {"route"}
        assert await violations(labels={"bad key": "v"}) == {"labels['bad key']"}
        assert await violations(labels={"": "v"}) == {"labels['']"}
        assert await violations(labels={"k" * 64: "v"}) == {f"labels[{'k' * 64!r}]"}
        assert await violations(labels={"k": "line\nbreak"}) == {"labels['k']"}
        assert await violations(labels={"k": "x" * 257}) == {"labels['k']"}
        assert await violations(labels={f"k{i}": "v" for i in range(65)}) == {"labels"}
        assert await violations(request_id="has space") == {"request_id"}
        assert await violations(request_id="x" * 129) == {"request_id"}
        assert await violations(request_id="ünïcode") == {"request_id"}
        assert await violations(route="BAD", labels={"-x": "v"}, request_id=" ") == {"route", "labels['-x']",
                                                                                       "request_id"}
        assert await violations(job_input=inputs(delay_ms=-1, steps=1.5, fail_with="")) == {
            "inputs.delay_ms", "inputs.steps", "inputs.fail_with"}
        with pytest.raises(NotFound) as route:
            await service.submit(TENANT, "nope", inputs(), {}, "")
        assert route.value.reason == "ROUTE_NOT_FOUND" and route.value.metadata == {"route": "nope"}
        # The edges that are fine.
        ok = await submit(service, labels={"a" * 63: "x" * 256, "k8s.io/name-x_y": ""}, request_id="x" * 128)
        assert ok.request_id == "x" * 128


async def test_queue_full(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, EchoRoute(max_queue=2, workers=1))
    async with running(settings, FakeClock()) as gw:
        service = gw.service
        first = await submit(service, delay_ms=60_000)
        await until(lambda: _is(service, first.id, JobState.RUNNING))
        queued = [await submit(service, delay_ms=60_000, request_id=f"q{i}") for i in range(2)]
        assert [j.queue_position for j in queued] == ([0, 0] if on_shared_store() else [1, 2])  # a shared queue: unknown
        with pytest.raises(ResourceExhausted) as full:
            await submit(service, delay_ms=1)
        error = full.value
        assert error.reason == "QUEUE_FULL" and error.code is Code.RESOURCE_EXHAUSTED
        # The details are true: the limit it names is the limit, and the delay is about one job's
        # duration over the workers (a place frees when any job ends), not the whole queue's.
        assert "2 jobs waiting, its limit" in error.message
        assert error.retry_after is not None and 0.5 <= error.retry_after <= 5.0
        assert error.metadata == {"route": "echo", "max_queue": "2"}
        # A refused Submit stored nothing, and a cancelled queued job frees its slot.
        assert len((await service.list(TENANT, JobFilter(), 0, ""))[0]) == 3
        assert (await service.cancel(TENANT, queued[1].id)).state is JobState.CANCELLED
        await submit(service, delay_ms=1)
        with pytest.raises(ResourceExhausted):
            await submit(service, delay_ms=1)


async def test_repeating_an_accepted_submit_while_the_queue_is_full(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, EchoRoute(max_queue=1, workers=1))
    async with running(settings, FakeClock()) as gw:
        service = gw.service
        first = await submit(service, delay_ms=60_000)
        await until(lambda: _is(service, first.id, JobState.RUNNING))
        queued = await submit(service, delay_ms=60_000, request_id="retry-me")
        # The client's retry of the same Submit (e.g. after UNAVAILABLE) must answer the job it created.
        again, existing = await service.submit(TENANT, "echo", inputs(delay_ms=60_000), {}, "retry-me")
        assert existing and again.id == queued.id


async def _is(service: JobService, job_id: str, state: JobState) -> bool:
    return await state_of(service, job_id) is state


async def test_cancel_and_delete(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, EchoRoute(workers=1))
    async with running(settings, FakeClock()) as gw:
        service = gw.service
        run = await submit(service, delay_ms=60_000, steps=600)
        await until(lambda: _is(service, run.id, JobState.RUNNING))
        waiting = await submit(service, delay_ms=1)
        cancelled = await service.cancel(TENANT, waiting.id)
        assert cancelled.state is JobState.CANCELLED and cancelled.error is not None
        assert cancelled.error.reason == "CANCELLED" and cancelled.error.code is Code.CANCELLED
        # A running job: Cancel answers at once, while it still runs; it ends CANCELLED soon after.
        asked = await service.cancel(TENANT, run.id)
        assert asked.state is JobState.RUNNING and not asked.terminal
        async with asyncio.timeout(10):
            stopped, result = await service.fetch(TENANT, run.id, wait=60)
        assert stopped.state is JobState.CANCELLED and result is None
        assert (await service.cancel(TENANT, run.id)).revision == stopped.revision  # idempotent
        await service.delete(TENANT, run.id)
        with pytest.raises(NotFound) as gone:
            await service.get(TENANT, run.id)
        assert gone.value.reason == "JOB_NOT_FOUND"
        # The worker is free again.
        after = await submit(service, y=2)
        async with asyncio.timeout(10):
            assert (await service.fetch(TENANT, after.id, wait=60))[1] == JobOutput({"y": 2})


async def test_watch_sends_every_revision_once_in_order(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path, heartbeat_seconds=0.05), FakeClock()) as gw:
        service = gw.service
        job = await submit(service, delay_ms=300, steps=3)
        seen: list[Update | Heartbeat] = []
        async with asyncio.timeout(10):
            async for item in service.watch(TENANT, job.id):
                seen.append(item)
        revisions = [i.job.revision for i in seen if isinstance(i, Update)]
        assert revisions == list(range(revisions[0], 7)) and revisions[-1] == 6
        assert isinstance(seen[-1], Update) and seen[-1].job.state is JobState.SUCCEEDED
        # After the end: the snapshot only; after N: the stored revisions after N.
        replay = [i.job.revision async for i in service.watch(TENANT, job.id, after_revision=2)]  # type: ignore[union-attr]
        assert replay == [3, 4, 5, 6]
        with pytest.raises(InvalidArgument):
            async for _ in service.watch(TENANT, job.id, after_revision=-1):
                pass


async def test_shutdown_refuses_submits(tmp_path: Path) -> None:
    gw = Gateway(make_settings(tmp_path), clock=FakeClock())
    await gw.start()
    await gw.stop()
    with pytest.raises(Unavailable) as refused:
        await gw.service.submit(TENANT, "echo", inputs(), {}, "")
    assert refused.value.reason == "SHUTTING_DOWN"


async def test_stops_however_soon_after_it_starts(tmp_path: Path) -> None:
    """Stopped as soon as started, while its loops are in their first store commands: a cancellation
    lost inside one (redis-py on Python 3.11) must not leave stop() waiting for ever."""
    for i in range(15):
        gw = Gateway(make_settings(tmp_path / str(i)), clock=FakeClock())
        await gw.start()
        async with asyncio.timeout(10):
            await gw.stop()


async def test_resume_finishes_queued_and_running_jobs(tmp_path: Path) -> None:
    clock = FakeClock()
    settings = make_settings(tmp_path, EchoRoute(workers=1))
    async with running(settings, clock) as gw:
        service = gw.service
        long = await submit(service, delay_ms=1000, steps=2, which="long")
        await until(lambda: _is(service, long.id, JobState.RUNNING))
        queued = [await submit(service, which=f"q{i}") for i in range(3)]
        # Stopped with shutdown_grace_seconds=0: the running job is interrupted, the rest never start.

    async with make_store(settings, clock) as store:
        pending = {p.job.id: p for p in await store.unfinished()}
    assert set(pending) == {long.id, *(q.id for q in queued)}
    # Interrupted by the drain, not crashed: its run does not count against max_attempts.
    assert pending[long.id].job.state is JobState.RUNNING and pending[long.id].attempts == 0
    assert all(pending[q.id].job.state is JobState.QUEUED for q in queued)
    before = pending[long.id].job.revision

    clock.advance(10)
    async with running(settings, clock) as gw:
        service = gw.service
        async with asyncio.timeout(20):
            for job in (long, *queued):
                done, result = await service.fetch(TENANT, job.id, wait=60)
                assert done.state is JobState.SUCCEEDED, done
                assert result is not None and isinstance(result, JobOutput)
        assert (await service.fetch(TENANT, long.id))[1] == JobOutput({"delay_ms": 1000, "steps": 2, "which": "long"})
        history = [j for j, _ in await gw.store.revisions_after(long.id, 0)]
        assert [j.revision for j in history] == list(range(1, history[-1].revision + 1))
        assert history[-1].revision > before and history[-1].finished == T0 + 10
        assert await gw.store.unfinished() == []


async def test_resume_gives_up_after_max_attempts(tmp_path: Path) -> None:
    clock = FakeClock()
    settings = make_settings(tmp_path, EchoRoute(workers=1), max_attempts=1)
    async with running(settings, clock) as gw:
        job = await submit(gw.service, delay_ms=60_000)
        await until(lambda: _is(gw.service, job.id, JobState.RUNNING))
    # That stop was a drain, which does not count; a run that began and crashed does (what a kill -9
    # leaves: its attempt counted and never given back).
    async with make_store(settings, clock) as store:
        assert (await store.start_attempt(job.id)) == 1
    async with running(settings, clock) as gw:
        async with asyncio.timeout(10):
            done, result = await gw.service.fetch(TENANT, job.id, wait=60)
        assert done.state is JobState.FAILED and result is None and done.error is not None
        assert done.error.reason == "TOO_MANY_ATTEMPTS" and done.error.code is Code.ABORTED


class TestOneProcess:
    """On a shared store a job waits for a worker of its route, wherever one may run: a process without
    the route does not fail it (tests/e2e/test_workers.py runs jobs through workers of other processes)."""

    @pytest.fixture
    def every_store(self) -> None:  # SQLite only (overrides the module's every store)
        use_store("")

    async def test_resume_fails_jobs_of_a_route_no_longer_configured(self, tmp_path: Path) -> None:
        clock = FakeClock()
        settings = make_settings(tmp_path, EchoRoute(workers=1))
        async with running(settings, clock) as gw:
            busy = await submit(gw.service, delay_ms=60_000)
            await until(lambda: _is(gw.service, busy.id, JobState.RUNNING))
            orphan = await submit(gw.service, z=1)
        renamed = settings.model_copy(update={"routes": {"echo2": EchoRoute()}})
        async with running(renamed, clock) as gw:
            for job_id in (busy.id, orphan.id):
                job = await gw.service.get(TENANT, job_id)
                assert job.state is JobState.FAILED and job.error is not None
                assert job.error.reason == "ROUTE_NOT_CONFIGURED"
