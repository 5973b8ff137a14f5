"""The event bus across processes (Redis pub/sub): each event a store script publishes carries a header
that matches the revision it announces, and a process decodes an event's job only when something in
it needs the job (a watcher of the job or of its tenant), not for every event of every replica."""

from __future__ import annotations

import asyncio

from gateway.hub import EventHub
from gateway.jobs import Job, JobState, Segment
from gateway.redis.bus import RedisBus
from gateway.redis.codec import RemoteEvent
from gateway.redis.store import RedisStore
from harness.redis import RedisProcess


async def _arrived(seen: list[RemoteEvent], count: int) -> None:
    async with asyncio.timeout(10):
        while len(seen) < count:  # noqa: ASYNC110 (the handler appends from the bus's task)
            await asyncio.sleep(0.005)


async def test_events_carry_their_revision_header_and_decode_to_the_stored_job(redis_process: RedisProcess) -> None:
    redis_process.flush()
    seen: list[RemoteEvent] = []
    async with RedisStore(redis_process.url) as store:
        bus = RedisBus(redis_process.url)
        await bus.open()
        try:
            bus.subscribe(lambda e: seen.append(e))  # type: ignore[arg-type]
            # A tenant name with the header's separator in it, and non-ASCII: the header counts bytes.
            job = Job(id="j1", tenant="team|é", route="echo", state=JobState.QUEUED, revision=1, created=1.0,
                      labels={"k": "v|w"})
            created = await store.create_job(job, "", b"payload")
            running = job.evolve(state=JobState.RUNNING, revision=2, started=2.0)
            await store.save_revision(running, count_attempt=True)
            words = Segment(start=0.0, end=1.0, text="hello | there")
            with_text = running.evolve(revision=3, segments=(words,), progress=0.5)
            await store.save_revision(with_text, new_segments=(words,))
            done = with_text.evolve(state=JobState.SUCCEEDED, revision=4, finished=3.0, expires=100.0, progress=1.0)
            await store.save_revision(done)
            await _arrived(seen, 4)
        finally:
            await bus.close()
    assert [(e.job_id, e.tenant, e.revision, e.terminal) for e in seen] == [
        ("j1", "team|é", 1, False), ("j1", "team|é", 2, False), ("j1", "team|é", 3, False), ("j1", "team|é", 4, True)]
    assert seen[0].position == created.position
    assert [e.position for e in seen] == sorted({e.position for e in seen})
    assert [e.segments_offset for e in seen] == [0, 0, 0, 1]
    for event, expected in zip(seen, (job, running, with_text, done), strict=True):
        assert event.job.evolve(segments=()) == expected.evolve(segments=())
    assert seen[2].new_segments == (words,) and seen[3].new_segments == ()


async def test_an_event_nobody_here_watches_is_not_decoded(redis_process: RedisProcess) -> None:
    redis_process.flush()
    hub = EventHub()
    seen: list[RemoteEvent] = []
    async with RedisStore(redis_process.url) as store:
        bus = RedisBus(redis_process.url)
        await bus.open()
        try:
            bus.subscribe(hub.publish)
            bus.subscribe(lambda e: seen.append(e))  # type: ignore[arg-type]
            with hub.watch("watched") as channel:
                for job_id in ("other", "watched"):
                    await store.create_job(
                        Job(id=job_id, tenant="t", route="echo", state=JobState.QUEUED, revision=1, created=1.0), "", b"")
                await _arrived(seen, 2)
                events = await channel.next_after(0, timeout=5)
        finally:
            await bus.close()
    other, watched = seen
    assert other._decoded is None  # nothing here needed the job
    assert watched._decoded is not None and events is not None and events[0].job.id == "watched"
    assert hub.position == watched.position  # the hub still follows every position


async def test_a_cut_subscription_is_made_again_and_its_listeners_resync(redis_process: RedisProcess) -> None:
    redis_process.flush()
    seen: list[RemoteEvent] = []
    resyncs: list[int] = []
    async with RedisStore(redis_process.url) as store:
        bus = RedisBus(redis_process.url)
        bus.on_resync(lambda: resyncs.append(1))
        await bus.open()
        try:
            bus.subscribe(lambda e: seen.append(e))  # type: ignore[arg-type]
            job = Job(id="cut", tenant="t", route="echo", state=JobState.QUEUED, revision=1, created=1.0)
            await store.create_job(job, "", b"payload")
            await _arrived(seen, 1)
            import redis.asyncio as aioredis

            async with aioredis.Redis.from_url(redis_process.url) as admin:
                assert await admin.client_kill_filter(_type="pubsub") == 1  # the bus's subscription, cut
            async with asyncio.timeout(10):
                while not resyncs:  # noqa: ASYNC110 (the bus's task resubscribes)
                    await asyncio.sleep(0.01)
            await store.save_revision(job.evolve(state=JobState.RUNNING, revision=2, started=2.0))
            await _arrived(seen, 2)  # events flow again
        finally:
            await bus.close()
    assert bus.reconnects == 1 and [e.revision for e in seen] == [1, 2]
