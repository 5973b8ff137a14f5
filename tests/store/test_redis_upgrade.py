"""What an older gateway wrote to Redis is read by this one, as in a rolling upgrade: a running job's
revisions kept whole in its stream (a 'job' field per entry, before deltas), and an ended job compacted
the older way (its history's lines whole, "=" or "+" after the fixed fields with 'hn' their length, and
the hash's own tenant, request id and expiry fields, which an ended job no longer keeps)."""

from __future__ import annotations

from gateway.jobs import Job, JobOutput, JobState
from gateway.redis.codec import fixed_length, job_json
from gateway.redis.store import RedisStore
from harness.redis import RedisProcess
from tests.helpers.jobs import PAYLOAD, T0, FakeClock, finish, make_job, step


def _seen(replay: list) -> list[tuple[int, JobState, float]]:
    return [(job.revision, job.state, job.progress) for job, _offset in replay]


async def _started(store: RedisStore, request_id: str) -> tuple[Job, Job]:
    """A job of tenant acme, created and then RUNNING (as this gateway writes them): (created, running)."""
    job = make_job(tenant="acme", request_id=request_id)
    await store.create_job(job, "h", PAYLOAD)
    running = step(job, state=JobState.RUNNING, started=T0)
    await store.save_revision(running)
    return job, running


async def test_a_running_jobs_revisions_written_whole_are_replayed_and_it_ends(redis_process: RedisProcess) -> None:
    redis_process.flush()
    async with RedisStore(redis_process.url, clock=FakeClock(T0)) as store:
        job, running = await _started(store, "order-1")
        halfway = step(running, progress=0.5)
        raw = store._redis  # as the older gateway wrote revision 3: the whole JSON in the entry, and the hash
        await raw.xadd(store.keys.revs(job.id), {"job": job_json(halfway), "seg": 0}, id="0-3")
        await raw.hset(store.keys.job(job.id), mapping={"job": job_json(halfway), "rev": 3})
        assert _seen(await store.revisions_after(job.id, 0)) == [
            (1, JobState.QUEUED, 0.0), (2, JobState.RUNNING, 0.0), (3, JobState.RUNNING, 0.5)]
        done = finish(halfway, JobState.SUCCEEDED, T0 + 1, progress=1.0)
        await store.save_revision(done, result=JobOutput("ok"))  # compacted now: the old entry among the new
        assert _seen(await store.revisions_after(job.id, 0)) == [
            (1, JobState.QUEUED, 0.0), (2, JobState.RUNNING, 0.0), (3, JobState.RUNNING, 0.5),
            (4, JobState.SUCCEEDED, 1.0)]
        assert (await store.get_job(job.id)).state is JobState.SUCCEEDED  # type: ignore[union-attr]


async def test_an_ended_job_compacted_the_older_way_is_read_found_and_deleted(redis_process: RedisProcess) -> None:
    redis_process.flush()
    async with RedisStore(redis_process.url, clock=FakeClock(T0)) as store:
        job, running = await _started(store, "order-2")
        done = finish(running, JobState.SUCCEEDED, T0 + 1, progress=1.0)
        await store.save_revision(done, result=JobOutput("ok"))
        final = job_json(done)
        fixed = fixed_length(done)
        old_history = "\n".join([
            f"1|0|={job_json(job)}",  # whole
            f"2|0|+{job_json(running)[fixed:]}",  # after the fixed fields, whose length is 'hn'
            "3|0|^",  # the end itself: the JSON in 'job'
        ])
        await store._redis.hset(store.keys.job(job.id), mapping={
            "hist": old_history, "hn": fixed, "tenant": "acme", "request_id": "order-2", "expires": repr(done.expires),
            "job": final})
        assert _seen(await store.revisions_after(job.id, 0)) == [
            (1, JobState.QUEUED, 0.0), (2, JobState.RUNNING, 0.0), (3, JobState.SUCCEEDED, 1.0)]
        found = await store.find_request("acme", "order-2", T0 + 2)
        assert found is not None and found[0].id == job.id
        again = await store.create_job(make_job(tenant="acme", request_id="order-2", created=T0 + 2), "h", PAYLOAD)
        assert not again.created and again.job.id == job.id
        await store.delete(job.id, tombstone_until=T0 + 100)
        assert await store.get_job(job.id) is None and await store.tombstone(job.id, T0) == "acme"
        assert await store.find_request("acme", "order-2", T0 + 3) is None
