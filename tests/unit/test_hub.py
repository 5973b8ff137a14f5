"""Units of the event hub: per-job channels with a ring, and per-tenant subscriptions."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from gateway.hub import RING_SIZE, EventHub, HubClosed, JobEvent
from gateway.jobs import Job, JobState
from gateway.store.base import JobFilter

T0 = 1_700_000_000.0


def job(job_id: str = "j1", revision: int = 1, state: JobState = JobState.QUEUED, tenant: str = "t",
        **kw: object) -> Job:
    return Job(id=job_id, tenant=tenant, route="echo", state=state, revision=revision, created=T0, **kw)  # type: ignore[arg-type]


def revisions(job_id: str, first: int, last: int, terminal_last: bool = False, tenant: str = "t") -> list[JobEvent]:
    events = []
    for r in range(first, last + 1):
        state = JobState.RUNNING
        if terminal_last and r == last:
            state = JobState.SUCCEEDED
        events.append(JobEvent(job(job_id, r, state, tenant=tenant, progress=r / last)))
    return events


async def test_fan_out_in_order_to_many_watchers() -> None:
    hub = EventHub()
    n_watchers, last = 50, 40

    async def watcher() -> list[int]:
        seen: list[int] = []
        with hub.watch("j1") as channel:
            ready.release()
            revision = 1
            while True:
                events = await channel.next_after(revision, timeout=5)
                assert events is not None
                for event in events:
                    seen.append(event.job.revision)
                    revision = event.job.revision
                    if event.job.terminal:
                        return seen

    ready = asyncio.Semaphore(0)
    tasks = [asyncio.create_task(watcher()) for _ in range(n_watchers)]
    for _ in range(n_watchers):
        await ready.acquire()
    assert hub.watcher_count() == n_watchers
    for i, event in enumerate(revisions("j1", 2, last, terminal_last=True)):
        hub.publish(event)
        if i % 3 == 0:
            await asyncio.sleep(0)  # let some watchers run between publishes, others lag
    results = await asyncio.gather(*tasks)
    for seen in results:
        assert seen == list(range(2, last + 1))
    assert hub.watcher_count() == 0


async def test_the_encoding_is_computed_once_and_shared() -> None:
    event = JobEvent(job())
    calls = []

    def encode(e: JobEvent) -> bytes:
        calls.append(e)
        return b"x"

    assert event.encoded("k", encode) is event.encoded("k", encode)
    assert len(calls) == 1
    event.encoded("other", encode)
    assert len(calls) == 2


async def test_a_lagging_watcher_sees_the_gap() -> None:
    hub = EventHub()
    with hub.watch("j1") as channel:
        for event in revisions("j1", 1, RING_SIZE + 10):
            hub.publish(event)
        # Revision 6 has left the ring: the watcher gets what is left, starting past a gap it can
        # see (and fills from the store).
        lagging = await channel.next_after(5, timeout=1)
        assert lagging is not None and lagging[0].job.revision > 6
        assert [e.job.revision for e in lagging] == list(range(11, RING_SIZE + 11))
        # A watcher that is still inside the ring gets everything after it.
        oldest_kept = RING_SIZE + 10 - RING_SIZE + 1
        caught_up = await channel.next_after(oldest_kept - 1, timeout=1)
        assert caught_up is not None
        assert [e.job.revision for e in caught_up] == list(range(oldest_kept, RING_SIZE + 11))


async def test_resync_wakes_watchers_to_check_the_store() -> None:
    hub = EventHub()
    with hub.watch("j1") as channel, hub.watch_tenant("t", JobFilter()) as sub:
        generation = channel.generation
        waiting = asyncio.ensure_future(channel.next_after(0, timeout=10, generation=generation))
        dashboard = asyncio.ensure_future(sub.next(timeout=10))
        await asyncio.sleep(0)
        hub.resync()
        assert await asyncio.wait_for(waiting, 1) == [] and channel.generation == generation + 1
        assert await asyncio.wait_for(dashboard, 1) == [] and sub.resync_needed


async def test_next_after_times_out_with_none() -> None:
    hub = EventHub()
    with hub.watch("j1") as channel:
        assert await channel.next_after(0, timeout=0.05) is None
        hub.publish(JobEvent(job(revision=1)))
        assert await channel.next_after(1, timeout=0.05) is None  # nothing newer
        # Once something newer comes, it is handed over.
        hub.publish(JobEvent(job(revision=2, state=JobState.RUNNING)))
        got = await channel.next_after(1, timeout=0.05)
        assert got is not None and [e.job.revision for e in got] == [2]


async def test_timed_out_waiters_do_not_accumulate() -> None:
    hub = EventHub()
    with hub.watch("j1") as channel, hub.watch_tenant("t", JobFilter()) as sub:
        for _ in range(20):  # an idle job: one timeout per heartbeat
            assert await channel.next_after(0, timeout=0.001) is None
            assert await sub.next(timeout=0.001) is None
        assert len(channel._waiters) == 0
        assert len(sub._waiters) == 0


async def _until_waiting(waitable: Any) -> None:
    """Until a task is waiting on it (so that what follows wakes a waiter, not a newcomer)."""
    async with asyncio.timeout(5):
        while not waitable._waiters:  # noqa: ASYNC110 (the waiter is another task of this loop)
            await asyncio.sleep(0)


async def test_a_waiting_watcher_is_woken() -> None:
    hub = EventHub()
    with hub.watch("j1") as channel:
        waiter = asyncio.create_task(channel.next_after(1, timeout=5))
        await _until_waiting(channel)
        hub.publish(JobEvent(job(revision=2, state=JobState.RUNNING)))
        got = await waiter
        assert got is not None and [e.job.revision for e in got] == [2]


async def test_publish_without_watchers_keeps_nothing() -> None:
    hub = EventHub()
    for event in revisions("j9", 1, 10):
        hub.publish(event)
    assert hub._channels == {} and hub._tenants == {}


async def test_tenant_subscription_coalesces_per_job_and_filters() -> None:
    hub = EventHub()
    flt = JobFilter(states=frozenset({JobState.RUNNING, JobState.SUCCEEDED}), route="echo", labels={"team": "a"})
    with hub.watch_tenant("t", flt) as sub:
        labelled = {"team": "a"}
        for r in range(1, 6):
            hub.publish(JobEvent(job("a", r, JobState.RUNNING, labels=labelled)))
        hub.publish(JobEvent(job("b", 1, JobState.RUNNING, labels=labelled)))
        hub.publish(JobEvent(job("a", 6, JobState.SUCCEEDED, labels=labelled)))
        hub.publish(JobEvent(job("c", 1, JobState.QUEUED, labels=labelled)))  # state filtered out
        hub.publish(JobEvent(job("d", 1, JobState.RUNNING, labels={"team": "b"})))  # label filtered out
        hub.publish(JobEvent(replace(job("e", 1, JobState.RUNNING, labels=labelled), route="whisper")))
        hub.publish(JobEvent(job("f", 1, JobState.RUNNING, tenant="other", labels=labelled)))  # other tenant
        events = await sub.next(timeout=1)
        assert events is not None
        # One pending snapshot per job (the latest), in order of their latest change.
        assert [(e.job.id, e.job.revision) for e in events] == [("b", 1), ("a", 6)]
        assert await sub.next(timeout=0.05) is None
        waiter = asyncio.create_task(sub.next(timeout=5))
        await _until_waiting(sub)
        hub.publish(JobEvent(job("g", 2, JobState.RUNNING, labels=labelled)))
        got = await waiter
        assert got is not None and [e.job.id for e in got] == ["g"]
    assert hub._tenants == {}


async def test_tenant_subscription_without_filter_sees_everything_of_its_tenant() -> None:
    hub = EventHub()
    with hub.watch_tenant("t", JobFilter()) as sub, hub.watch_tenant("u", JobFilter()) as other:
        hub.publish(JobEvent(job("a", 1)))
        hub.publish(JobEvent(job("b", 1, tenant="u")))
        got = await sub.next(timeout=1)
        assert got is not None and [e.job.id for e in got] == ["a"]
        got = await other.next(timeout=1)
        assert got is not None and [e.job.id for e in got] == ["b"]
        assert hub.watcher_count() == 2


async def test_close_makes_waiters_raise_hub_closed() -> None:
    hub = EventHub()
    with hub.watch("j1") as channel, hub.watch_tenant("t", JobFilter()) as sub:
        job_waiter = asyncio.create_task(channel.next_after(0, timeout=30))
        tenant_waiter = asyncio.create_task(sub.next(timeout=30))
        await _until_waiting(channel)
        await _until_waiting(sub)
        hub.close()
        with pytest.raises(HubClosed):
            await job_waiter
        with pytest.raises(HubClosed):
            await tenant_waiter
        # Waiting again on a closed channel raises at once.
        with pytest.raises(HubClosed):
            await channel.next_after(0, timeout=30)
    with pytest.raises(HubClosed), hub.watch("j2"):
        pass
    with pytest.raises(HubClosed), hub.watch_tenant("t", JobFilter()):
        pass


async def test_a_closed_channel_still_hands_over_what_it_has() -> None:
    hub = EventHub()
    with hub.watch("j1") as channel:
        hub.publish(JobEvent(job(revision=1)))
        hub.close()
        got = await channel.next_after(0, timeout=1)
        assert got is not None and [e.job.revision for e in got] == [1]


async def test_channels_are_removed_when_the_last_watcher_leaves() -> None:
    hub = EventHub()
    with hub.watch("j1") as first:
        with hub.watch("j1") as second:
            assert first is second and first.refs == 2
            with hub.watch("j2"):
                assert set(hub._channels) == {"j1", "j2"}
            assert set(hub._channels) == {"j1"}
        assert set(hub._channels) == {"j1"} and first.refs == 1
    assert hub._channels == {}
    assert hub.watcher_count() == 0

    # Also when a watcher leaves by an exception or a cancellation.
    with pytest.raises(ZeroDivisionError), hub.watch("j3"):
        1 / 0  # noqa: B018
    task_started = asyncio.Event()

    async def stuck() -> None:
        with hub.watch("j4") as channel:
            task_started.set()
            await channel.next_after(0, timeout=60)

    task = asyncio.create_task(stuck())
    await task_started.wait()
    assert "j4" in hub._channels
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert hub._channels == {} and hub.watcher_count() == 0


async def test_many_watchers_come_and_go_without_leaking() -> None:
    hub = EventHub()

    async def brief(i: int) -> None:
        with hub.watch(f"job-{i % 7}") as channel:
            await channel.next_after(0, timeout=0.01)

    await asyncio.gather(*(brief(i) for i in range(200)))
    assert hub._channels == {} and hub.watcher_count() == 0
