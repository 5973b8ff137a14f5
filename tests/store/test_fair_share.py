"""The order a route's workers take jobs in: tenants in weighted round robin, then priority, on every
store (the in-process gateway on SQLite with its memory queue, and on a real redis-server with the
Redis scheduler). The order is read from the jobs' start times, one worker taking them one by one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.errors import InvalidArgument, ResourceExhausted
from gateway.jobs import Job, JobState
from gateway.server import Gateway
from gateway.service import Update
from gateway.settings import EchoRoute, TenantSettings
from tests.helpers.service import inputs, make_settings

pytestmark = pytest.mark.usefixtures("every_store")

RUN_MS = 30  # each job's run: long enough that the backlog is queued before the first one ends


async def _submit(gw: Gateway, tenant: str, priority: int = 3, delay_ms: int = RUN_MS, which: str = "") -> Job:
    job, _ = await gw.service.submit(tenant, "echo", inputs(delay_ms=delay_ms, which=which), {}, "",
                                     priority=priority)
    return job


async def _start_order(gw: Gateway, jobs: list[Job]) -> list[Job]:
    """The jobs once all have ended, in the order they started."""
    done = []
    async with asyncio.timeout(60):
        for job in jobs:
            ended, _ = await gw.service.fetch(job.tenant, job.id, wait=60)
            assert ended.state is JobState.SUCCEEDED, ended
            done.append(ended)
    return sorted(done, key=lambda j: (j.started or 0.0))


async def _blocked(gw: Gateway, delay_ms: int = 400) -> Job:
    """A job that holds the only worker while the test queues the rest behind it."""
    blocker = await _submit(gw, "blocker", delay_ms=delay_ms)
    async with asyncio.timeout(10):
        while (await gw.service.get("blocker", blocker.id)).state is JobState.QUEUED:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    return blocker


async def test_a_tenant_does_not_wait_behind_another_tenants_backlog(tmp_path: Path) -> None:
    async with Gateway(make_settings(tmp_path, EchoRoute(workers=1))) as gw:
        blocker = await _blocked(gw)
        backlog = [await _submit(gw, "heavy", which=f"h{i}") for i in range(20)]
        light = await _submit(gw, "light", which="light")
        order = await _start_order(gw, [blocker, *backlog, light])
    names = [j.tenant for j in order]
    # FIFO would start it 22nd; in round robin it is the next one (or the one after, on a tie).
    assert names.index("light") <= 2, names


async def test_tenants_share_the_workers_by_weight(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, EchoRoute(workers=1), tenants={"a": TenantSettings(weight=3)})
    async with Gateway(settings) as gw:
        blocker = await _blocked(gw)
        jobs = [await _submit(gw, tenant, which=f"{tenant}{i}") for i in range(12) for tenant in ("a", "b")]
        order = await _start_order(gw, [blocker, *jobs])
    first = [j.tenant for j in order[1:13]]
    # Weight 3 against the default 1: three of a's for each of b's while both have jobs waiting.
    assert 8 <= first.count("a") <= 10, first
    assert [j.tenant for j in order[13:]].count("a") <= 4  # then b's remaining ones, a's being used up


async def test_within_a_tenant_the_most_urgent_job_runs_first_then_first_come(tmp_path: Path) -> None:
    async with Gateway(make_settings(tmp_path, EchoRoute(workers=1))) as gw:
        blocker = await _blocked(gw)
        jobs = [await _submit(gw, "t", priority=p, which=f"{i}") for i, p in enumerate([5, 3, 1, 3, 1, 2])]
        order = await _start_order(gw, [blocker, *jobs])
    arrival = {job.id: i for i, job in enumerate(jobs)}
    assert [(j.priority, arrival[j.id]) for j in order[1:]] == sorted((j.priority, arrival[j.id]) for j in jobs)


async def test_a_cancelled_waiting_job_leaves_the_round(tmp_path: Path) -> None:
    """A tenant whose only waiting job is cancelled takes no turn; the queue's count goes down."""
    async with Gateway(make_settings(tmp_path, EchoRoute(workers=1))) as gw:
        blocker = await _blocked(gw)
        gone = await _submit(gw, "gone")
        others = [await _submit(gw, "other") for _ in range(3)]
        await gw.service.cancel("gone", gone.id)
        order = await _start_order(gw, [blocker, *others])
        assert (await gw.service.get("gone", gone.id)).state is JobState.CANCELLED
        assert [j.tenant for j in order] == ["blocker", "other", "other", "other"]
        async with asyncio.timeout(10):
            while gw.runners["echo"].queued():  # (the Redis count refreshes each second)  # noqa: ASYNC110
                await asyncio.sleep(0.05)


async def test_priority_out_of_range_is_refused(tmp_path: Path) -> None:
    async with Gateway(make_settings(tmp_path, EchoRoute(workers=1))) as gw:
        for priority in (0, 6, -1):
            with pytest.raises(InvalidArgument) as refused:
                await _submit(gw, "t", priority=priority)
            assert refused.value.field_violations[0].field == "priority"


async def test_a_tenant_past_its_max_queued_is_refused_and_the_others_are_not(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, EchoRoute(workers=1), tenants={"capped": TenantSettings(max_queued=2)})
    async with Gateway(settings) as gw:
        await _blocked(gw)
        kept = [await _submit(gw, "capped") for _ in range(2)]
        with pytest.raises(ResourceExhausted) as refused:
            await _submit(gw, "capped")
        assert refused.value.reason == "TENANT_QUEUE_FULL" and refused.value.retry_after
        assert refused.value.metadata["max_queued"] == "2"
        await _submit(gw, "other")  # another tenant's jobs wait as before
        await gw.service.cancel("capped", kept[0].id)  # one fewer waiting: room for one more
        await _submit(gw, "capped")


async def test_a_tenant_past_its_submit_rate_waits_the_delay_it_is_told(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, EchoRoute(), tenants={"default": TenantSettings(submit_rate=4, submit_burst=2)})
    async with Gateway(settings) as gw:
        first, _ = await gw.service.submit("any", "echo", inputs(delay_ms=0), {}, "same")
        await _submit(gw, "any", delay_ms=0)
        with pytest.raises(ResourceExhausted) as refused:
            await _submit(gw, "any", delay_ms=0)
        wait = refused.value.retry_after
        assert refused.value.reason == "TENANT_RATE_LIMITED" and wait is not None and 0 < wait <= 0.25
        # A retried Submit of a job it made answers that job, rate or not.
        retried, existing = await gw.service.submit("any", "echo", inputs(delay_ms=0), {}, "same")
        assert existing and retried.id == first.id
        await asyncio.sleep(wait)  # the delay the refusal gave: then it is allowed
        await _submit(gw, "any", delay_ms=0)


async def test_a_tenant_at_its_max_running_waits_while_the_others_run(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, EchoRoute(workers=3), tenants={"capped": TenantSettings(max_running=1)})
    async with Gateway(settings) as gw:
        capped = [await _submit(gw, "capped", delay_ms=300, which=f"c{i}") for i in range(3)]
        others = [await _submit(gw, "other", delay_ms=300, which=f"o{i}") for i in range(2)]
        most = 0
        async with asyncio.timeout(30):
            while True:
                states = [(await gw.service.get(j.tenant, j.id)).state for j in capped]
                most = max(most, states.count(JobState.RUNNING))
                if all(s is JobState.SUCCEEDED for s in states):
                    break
                await asyncio.sleep(0.02)
        order = await _start_order(gw, [*capped, *others])
    assert most == 1
    # The other tenant's two ran beside the first capped one, not after all three.
    assert [j.tenant for j in order[:3]].count("other") == 2, [j.tenant for j in order]


def _samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
    from prometheus_client.parser import text_string_to_metric_families

    from gateway import metrics

    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def test_the_scheduler_metrics_show_priorities_age_and_named_tenants(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, EchoRoute(workers=1), tenants={"named": TenantSettings()})
    async with Gateway(settings) as gw:
        await _blocked(gw, delay_ms=5000)  # (long enough for Redis's once-a-second read)
        for priority in (1, 1, 4):
            await _submit(gw, "named", priority=priority)
        await _submit(gw, "someone", priority=2)
        await _submit(gw, "anyone", priority=2)
        route = (("route", "echo"),)

        def figures() -> tuple[dict[int, float], dict[str, float], dict[str, float], float]:
            waiting = {int(dict(k)["priority"]): v for k, v in _samples("gateway_queue_waiting").items() if k[1:] == route}
            tenants = {dict(k)["tenant"]: v for k, v in _samples("gateway_tenant_waiting").items() if dict(k)["route"] == "echo"}
            running = {dict(k)["tenant"]: v for k, v in _samples("gateway_tenant_running").items() if dict(k)["route"] == "echo"}
            return waiting, tenants, running, _samples("gateway_queue_oldest_seconds").get(route, 0.0)

        async with asyncio.timeout(10):  # (with Redis: read from Redis once a second)
            while figures()[0] != {1: 2, 2: 2, 3: 0, 4: 1, 5: 0}:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        _waiting, tenants, running, oldest = figures()
        assert tenants == {"named": 3, "other": 2}
        assert running.get("other") == 1  # the blocker, a tenant not named
        assert oldest > 0


async def test_queue_positions_are_the_order_the_jobs_start_in(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, EchoRoute(workers=1), tenants={"a": TenantSettings(weight=2)})
    async with Gateway(settings) as gw:
        blocker = await _blocked(gw, delay_ms=1500)
        plan = [("a", 3), ("a", 3), ("b", 3), ("a", 1), ("c", 5), ("b", 2), ("a", 3), ("c", 5)]
        jobs = [await _submit(gw, tenant, priority=priority, which=str(i)) for i, (tenant, priority) in enumerate(plan)]
        positions = {j.id: (await gw.service.get(j.tenant, j.id)).queue_position for j in jobs}
        assert (await gw.service.get("blocker", blocker.id)).queue_position == 0  # running: not queued
        order = await _start_order(gw, [blocker, *jobs])
    assert sorted(positions.values()) == list(range(1, len(jobs) + 1)), positions
    assert [positions[j.id] for j in order[1:]] == list(range(1, len(jobs) + 1))


async def test_a_queued_job_has_an_estimated_start_from_the_routes_run_times(tmp_path: Path) -> None:
    async with Gateway(make_settings(tmp_path, EchoRoute(workers=2))) as gw:
        for _ in range(2):  # run times to go by: 200 ms each
            await _start_order(gw, [await _submit(gw, "t", delay_ms=200)])
        busy = [await _submit(gw, "t", delay_ms=3000) for _ in range(2)]
        async with asyncio.timeout(10):
            while [(await gw.service.get("t", j.id)).state for j in busy] != [JobState.RUNNING] * 2:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        waiting = [await _submit(gw, "t", delay_ms=10) for _ in range(4)]
        async with asyncio.timeout(10):  # (with Redis: the run times are shared once a second)
            while (await gw.service.get("t", waiting[-1].id)).estimated_start is None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        now = gw.clock.now()
        estimates = [(await gw.service.get("t", j.id)).estimated_start for j in waiting]
        assert all(e is not None for e in estimates)
        waits = [e - now for e in estimates]  # type: ignore[operator]
        # 2 workers, ~0.2 s a job: the 4th waits about twice the 2nd, each within reason.
        assert waits == sorted(waits) and 0.05 < waits[0] < 2 and waits[-1] < 5, waits
        assert (await gw.service.get("t", busy[0].id)).estimated_start is None  # running: no estimate


async def test_a_retried_submit_spends_none_of_the_rate(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, EchoRoute(), tenants={"default": TenantSettings(submit_rate=0.01, submit_burst=2)})
    async with Gateway(settings) as gw:
        first, _ = await gw.service.submit("any", "echo", inputs(delay_ms=0), {}, "again")
        for _ in range(3):  # the same Submit, retried: answered with its job, no token spent
            retried, existing = await gw.service.submit("any", "echo", inputs(delay_ms=0), {}, "again")
            assert existing and retried.id == first.id
        await _submit(gw, "any", delay_ms=0)  # the burst's second
        with pytest.raises(ResourceExhausted):
            await _submit(gw, "any", delay_ms=0)


async def test_a_watch_of_a_queued_job_starts_with_its_position_now(tmp_path: Path) -> None:
    async with Gateway(make_settings(tmp_path, EchoRoute(workers=1))) as gw:
        await _blocked(gw, delay_ms=1500)
        jobs = [await _submit(gw, "t") for _ in range(3)]
        stream = gw.service.watch("t", jobs[2].id)
        first = await anext(stream)
        await stream.aclose()
        assert isinstance(first, Update) and first.whole
        assert first.job.queue_position == 3 == (await gw.service.get("t", jobs[2].id)).queue_position
