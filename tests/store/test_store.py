"""The store contract, run against every store: SQLite on real files in tmp_path, and Redis on a real
redis-server (harness/redis.py). SQLite-only behaviour is marked so."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.errors import Code
from gateway.jobs import Job, JobFailure, JobOutput, JobState, Segment, Transcript, WebhookSpec, Word
from gateway.redis import RedisStore
from gateway.store import JobFilter, SqliteStore, Store
from harness.redis import RedisProcess
from tests.helpers.jobs import PAYLOAD, T0, FakeClock, finish, make_job, step


@pytest.fixture
def store(any_store: Store) -> Store:
    """Every store (tests/conftest.py): these tests are the store contract (test_store_contract.py has the rest)."""
    return any_store


async def test_create_then_get(store: Store) -> None:
    job = make_job(labels={"team": "a", "k/x.y": "v"}, request_id="r1")
    outcome = await store.create_job(job, "hash1", PAYLOAD)
    assert outcome.created and outcome.job == job and outcome.request_hash == "hash1"
    assert await store.get_job(job.id) == job
    assert await store.get_payload(job.id) == PAYLOAD
    assert await store.get_result(job.id) is None
    assert await store.get_job("0" * 32) is None
    revisions = await store.revisions_after(job.id, 0)
    assert revisions == [(job, 0)]


async def test_on_commit_runs_in_order_before_the_caller_resumes(store: Store) -> None:
    seen: list[str] = []
    jobs = [make_job() for _ in range(20)]

    async def create(job: Job) -> None:
        await store.create_job(job, "", PAYLOAD, on_commit=lambda outcome: seen.append(outcome.job.id))
        assert job.id in seen  # durable and published before we are answered

    await asyncio.gather(*(create(j) for j in jobs))
    assert seen == [j.id for j in jobs]  # commit order is submission order


async def test_idempotent_create(store: Store) -> None:
    first = make_job(request_id="order-1")
    assert (await store.create_job(first, "h-first", PAYLOAD)).created
    again = make_job(request_id="order-1")
    outcome = await store.create_job(again, "h-second", PAYLOAD)
    assert not outcome.created
    assert outcome.job.id == first.id and outcome.request_hash == "h-first"
    assert await store.get_job(again.id) is None  # nothing new was stored
    # The same request_id in another tenant is another job.
    other = make_job(tenant="other", request_id="order-1")
    outcome = await store.create_job(other, "h-first", PAYLOAD)
    assert outcome.created and outcome.job.id == other.id
    # No request_id: never deduplicated.
    a, b = make_job(), make_job()
    assert (await store.create_job(a, "", PAYLOAD)).created and (await store.create_job(b, "", PAYLOAD)).created


async def test_idempotency_key_is_free_again_once_the_job_expired(store: Store) -> None:
    old = make_job(request_id="k", created=T0)
    await store.create_job(old, "h", PAYLOAD)
    running = step(old, state=JobState.RUNNING, started=T0)
    await store.save_revision(running)
    done = finish(running, JobState.SUCCEEDED, T0 + 1, retention=10)
    await store.save_revision(done, result=JobOutput(1))
    # Still retained: the old job answers.
    outcome = await store.create_job(make_job(request_id="k", created=T0 + 5), "h", PAYLOAD)
    assert not outcome.created and outcome.job.id == old.id
    # Expired (not swept yet): the key makes a new job, and the old one is gone.
    new = make_job(request_id="k", created=T0 + 20)
    outcome = await store.create_job(new, "h2", PAYLOAD)
    assert outcome.created and outcome.job.id == new.id
    assert await store.get_job(old.id) is None and await store.get_result(old.id) is None


async def test_revisions_reconstruct_segment_prefixes(store: Store) -> None:
    job = make_job(route="whisper")
    await store.create_job(job, "", PAYLOAD)
    segs = [Segment(i, i + 1, f" s{i}", words=(Word(i, i + 0.5, f"w{i}", 0.5),)) for i in range(5)]
    history = [job]
    running = step(job, state=JobState.RUNNING, started=T0 + 1, queue_position=0)
    await store.save_revision(running, count_attempt=True)
    history.append(running)
    current = running
    for new in ([segs[0]], [], [segs[1], segs[2]], [segs[3], segs[4]]):
        current = step(current, progress=current.progress + 0.2, segments=current.segments + tuple(new))
        await store.save_revision(current, new_segments=new)
        history.append(current)
    transcript = Transcript(text="".join(s.text for s in segs), segments=tuple(segs), language="en", duration=5.0)
    final = finish(current, JobState.SUCCEEDED, T0 + 9, progress=1.0)
    await store.save_revision(final, result=transcript)
    history.append(final)

    assert await store.get_job(job.id) == final
    # Each revision comes with its segments offset: how many segments the one before it had.
    assert [j for j, _ in await store.revisions_after(job.id, 0)] == history
    assert [o for _, o in await store.revisions_after(job.id, 0)] == [0, 0, 0, 1, 1, 3, 5]
    after3 = await store.revisions_after(job.id, 3)
    assert [j.revision for j, _ in after3] == list(range(4, final.revision + 1))
    assert [len(j.segments) for j, _ in after3] == [1, 3, 5, 5]
    assert [o for _, o in after3] == [1, 1, 3, 5]
    assert [j for j, _ in after3] == history[3:]
    assert await store.revisions_after(job.id, final.revision) == []
    assert await store.revisions_after("nope", 0) == []
    assert await store.get_result(job.id) == transcript


async def test_result_and_terminal_revision_drop_the_payload(store: Store) -> None:
    job = make_job()
    await store.create_job(job, "", PAYLOAD)
    running = step(job, state=JobState.RUNNING, started=T0, queue_position=0)
    await store.save_revision(running, count_attempt=True)
    await store.save_checkpoint(job.id, {"poll": "https://example/1"})
    assert await store.get_payload(job.id) == PAYLOAD  # a non-terminal revision keeps the inputs
    done = finish(running, JobState.SUCCEEDED, T0 + 2, progress=1.0)
    await store.save_revision(done, result=JobOutput({"x": 1}))
    assert await store.get_result(job.id) == JobOutput({"x": 1})
    assert await store.get_payload(job.id) is None
    assert await store.unfinished() == []


async def test_failed_job_keeps_its_error(store: Store) -> None:
    job = make_job()
    await store.create_job(job, "", PAYLOAD)
    failure = JobFailure(Code.UNKNOWN, "ECHO_FAILURE", "no", {"a": "b"})
    failed = finish(job, JobState.FAILED, T0 + 1, error=failure)
    await store.save_revision(failed)
    stored = await store.get_job(job.id)
    assert stored is not None and stored.error == failure and stored.state is JobState.FAILED
    assert await store.get_result(job.id) is None
    assert (await store.revisions_after(job.id, 1))[0][0].error == failure


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("size", [20, 300_000])  # inline in the job, and a payload of its own
async def test_failed_and_cancelled_jobs_keep_their_inputs_for_retry_unless_told_not_to(
        store: Store, keep: bool, size: int) -> None:
    store.keep_failed_inputs = keep
    payload = b'{"inputs":{}}\n' + b"a" * size
    jobs = {state: make_job() for state in (JobState.FAILED, JobState.CANCELLED, JobState.SUCCEEDED)}
    for state, job in jobs.items():
        await store.create_job(job, "", payload)
        await store.save_revision(finish(job, state, T0 + 1, error=None if state is JobState.SUCCEEDED else
                                         JobFailure(Code.UNKNOWN, "X", "x")), result=JobOutput(1) if
                                  state is JobState.SUCCEEDED else None)
    assert await store.get_payload(jobs[JobState.SUCCEEDED].id) is None
    for state in (JobState.FAILED, JobState.CANCELLED):
        assert await store.get_payload(jobs[state].id) == (payload if keep else None)
    await store.delete(jobs[JobState.FAILED].id)
    assert await store.get_payload(jobs[JobState.FAILED].id) is None


async def test_start_attempt_counts(store: Store) -> None:
    job = make_job()
    await store.create_job(job, "", PAYLOAD)
    assert await store.start_attempt(job.id) == 1
    assert await store.start_attempt(job.id) == 2
    await store.save_revision(step(job, state=JobState.RUNNING, started=T0), count_attempt=True)
    assert await store.start_attempt(job.id) == 4
    assert await store.start_attempt("missing") == 0


async def test_unfinished_lists_active_jobs_with_checkpoints(store: Store) -> None:
    queued, running, done = make_job(), make_job(), make_job()
    for job in (queued, running, done):
        await store.create_job(job, "", PAYLOAD)
    run = step(running, state=JobState.RUNNING, started=T0, queue_position=0)
    await store.save_revision(run, count_attempt=True)
    await store.save_checkpoint(running.id, {"url": "u", "n": 2})
    await store.save_revision(finish(done, JobState.CANCELLED, T0))
    pending = await store.unfinished()
    assert [p.job.id for p in pending] == sorted([queued.id, running.id])
    by_id = {p.job.id: p for p in pending}
    assert by_id[queued.id].job == queued and by_id[queued.id].attempts == 0 and by_id[queued.id].checkpoint is None
    assert by_id[running.id].job == run and by_id[running.id].attempts == 1
    assert by_id[running.id].checkpoint == {"url": "u", "n": 2}


async def test_list_filters_order_and_cursor(store: Store) -> None:
    jobs = []
    for i in range(10):
        job = make_job(route="echo" if i % 2 else "whisper",
                       labels={"batch": f"b{i % 3}", "team/x.y": "red" if i < 5 else "blue"})
        await store.create_job(job, "", PAYLOAD)
        if i % 4 == 0:
            job = finish(job, JobState.SUCCEEDED, T0 + 100)
            await store.save_revision(job)
        jobs.append(job)
    await store.create_job(make_job(tenant="someone-else"), "", PAYLOAD)
    now = T0 + 150
    newest_first = sorted(jobs, key=lambda j: j.id, reverse=True)

    everything = await store.list_jobs("t", JobFilter(), None, 100, now)
    assert [j.id for j in everything] == [j.id for j in newest_first]
    assert all(j.segments == () for j in everything)

    succeeded = await store.list_jobs("t", JobFilter(states=frozenset({JobState.SUCCEEDED})), None, 100, now)
    assert {j.id for j in succeeded} == {jobs[0].id, jobs[4].id, jobs[8].id}
    both = await store.list_jobs("t", JobFilter(states=frozenset({JobState.SUCCEEDED, JobState.QUEUED})),
                                 None, 100, now)
    assert len(both) == 10

    echo = await store.list_jobs("t", JobFilter(route="echo"), None, 100, now)
    assert {j.id for j in echo} == {jobs[i].id for i in range(1, 10, 2)}

    b1 = await store.list_jobs("t", JobFilter(labels={"batch": "b1"}), None, 100, now)
    assert {j.id for j in b1} == {jobs[i].id for i in (1, 4, 7)}
    red_b1 = await store.list_jobs("t", JobFilter(labels={"batch": "b1", "team/x.y": "red"}), None, 100, now)
    assert {j.id for j in red_b1} == {jobs[1].id, jobs[4].id}
    assert await store.list_jobs("t", JobFilter(labels={"batch": "zzz"}), None, 100, now) == []
    combined = JobFilter(states=frozenset({JobState.QUEUED}), route="echo", labels={"team/x.y": "blue"})
    assert {j.id for j in await store.list_jobs("t", combined, None, 100, now)} == {jobs[i].id for i in (5, 7, 9)}

    # Pages via before_id.
    pages, before = [], None
    while True:
        page = await store.list_jobs("t", JobFilter(), before, 3, now)
        if not page:
            break
        pages.append([j.id for j in page])
        before = page[-1].id
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert [i for p in pages for i in p] == [j.id for j in newest_first]

    # Expired jobs are not listed.
    later = await store.list_jobs("t", JobFilter(), None, 100, T0 + 300)
    assert {j.id for j in later} == {j.id for j in jobs if j.expires is None}


async def test_sweep_and_tombstones(store: Store) -> None:
    short = make_job()
    long = make_job()
    active = make_job()
    for job in (short, long, active):
        await store.create_job(job, "", PAYLOAD)
    await store.save_revision(finish(short, JobState.SUCCEEDED, T0, retention=10), result=JobOutput(1))
    await store.save_revision(finish(long, JobState.SUCCEEDED, T0, retention=1000), result=JobOutput(2))

    assert await store.sweep(T0 + 5, T0 + 5 + 50) == []
    swept = await store.sweep(T0 + 20, T0 + 20 + 50)
    assert [j.id for j in swept] == [short.id]
    assert await store.get_job(short.id) is None
    assert await store.get_result(short.id) is None and await store.revisions_after(short.id, 0) == []
    assert await store.get_job(long.id) is not None and await store.get_job(active.id) is not None
    assert await store.tombstone(short.id, T0 + 21) == "t"
    assert await store.tombstone(short.id, T0 + 69) == "t"
    assert await store.tombstone(short.id, T0 + 70) is None  # lapsed
    assert await store.tombstone(long.id, T0 + 21) is None

    # A later sweep removes the lapsed tombstones themselves.
    await store.sweep(T0 + 80, T0 + 80 + 50)
    if not isinstance(store, SqliteStore):
        return
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM tombstones WHERE job_id = ?", (short.id,)).fetchone()[0] == 0


async def test_delete_with_and_without_tombstone(store: Store) -> None:
    a, b = make_job(), make_job()
    await store.create_job(a, "", PAYLOAD)
    await store.create_job(b, "", PAYLOAD)
    await store.delete(a.id, tombstone_until=T0 + 100)
    await store.delete(b.id)
    assert await store.get_job(a.id) is None and await store.get_job(b.id) is None
    assert await store.get_payload(a.id) is None
    assert await store.tombstone(a.id, T0) == "t" and await store.tombstone(b.id, T0) is None


async def test_deleting_an_ended_job_frees_its_request_id_and_leaves_its_tenants_tombstone(store: Store) -> None:
    """An ended job is compacted (with Redis its hash keeps its tenant and request id in its JSON alone): a
    delete still finds them, so its request id makes a new job, and its tombstone names its tenant."""
    job = make_job(tenant="acme", request_id="order-9")
    await store.create_job(job, "h", PAYLOAD)
    running = step(job, state=JobState.RUNNING, started=T0)
    await store.save_revision(running)
    await store.save_revision(finish(running, JobState.SUCCEEDED, T0 + 1), result=JobOutput(1))
    again = await store.create_job(make_job(tenant="acme", request_id="order-9", created=T0 + 2), "h", PAYLOAD)
    assert not again.created and again.job.id == job.id  # retained: the request id answers the ended job
    await store.delete(job.id, tombstone_until=T0 + 100)
    assert await store.get_job(job.id) is None and await store.tombstone(job.id, T0) == "acme"
    assert await store.find_request("acme", "order-9", T0 + 3) is None
    fresh = make_job(tenant="acme", request_id="order-9", created=T0 + 3)
    assert (await store.create_job(fresh, "h", PAYLOAD)).created
    assert [j.id for j in await store.list_jobs("acme", JobFilter(), None, 10, T0 + 3)] == [fresh.id]


async def test_500_concurrent_creates_share_commits(store: Store) -> None:
    jobs = [make_job(request_id=f"req-{i}", labels={"i": str(i)}) for i in range(500)]
    outcomes = await asyncio.gather(*(store.create_job(j, f"h{i}", PAYLOAD) for i, j in enumerate(jobs)))
    assert all(o.created for o in outcomes)
    assert [o.job.id for o in outcomes] == [j.id for j in jobs]
    listed = await store.list_jobs("t", JobFilter(), None, 1000, T0)
    assert len(listed) == 500
    # Repeating all of them concurrently answers the existing jobs.
    again = await asyncio.gather(*(store.create_job(make_job(request_id=f"req-{i}"), "x", PAYLOAD)
                                   for i in range(500)))
    assert not any(o.created for o in again)
    assert [o.job.id for o in again] == [j.id for j in jobs]


async def test_a_failing_write_fails_alone(store: Store) -> None:
    job = make_job()
    await store.create_job(job, "", PAYLOAD)
    others = [make_job() for _ in range(5)]
    results = await asyncio.gather(
        *(store.create_job(j, "", PAYLOAD) for j in others[:2]),
        store.create_job(replace(job, labels={"another": "job"}), "", PAYLOAD),  # the same id again: refused
        *(store.create_job(j, "", PAYLOAD) for j in others[2:]),
        return_exceptions=True,
    )
    assert isinstance(results[2], Exception) and not isinstance(results[2], asyncio.CancelledError)
    if isinstance(store, SqliteStore):
        assert isinstance(results[2], sqlite3.IntegrityError)
    assert all(not isinstance(r, BaseException) and r.created for i, r in enumerate(results) if i != 2)
    for j in others:
        assert await store.get_job(j.id) == j


async def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "gateway.sqlite3"
    job = make_job(labels={"a": "b"}, request_id="r")
    running = step(job, state=JobState.RUNNING, started=T0, queue_position=0)
    seg = Segment(0, 1, " hi")
    progressed = step(running, progress=0.5, segments=(seg,))
    done = make_job()
    async with SqliteStore(path) as store:
        await store.create_job(job, "hash", PAYLOAD)
        await store.save_revision(running, count_attempt=True)
        await store.save_revision(progressed, new_segments=[seg])
        await store.save_checkpoint(job.id, {"c": 1})
        await store.create_job(done, "", PAYLOAD)
        finished = finish(done, JobState.SUCCEEDED, T0, retention=10**9)
        await store.save_revision(finished, result=JobOutput([1, 2]))
        await store.create_job(make_job(), "", PAYLOAD)
        gone = make_job()
        await store.create_job(gone, "", PAYLOAD)
        await store.delete(gone.id, tombstone_until=T0 + 10**6)

    async with SqliteStore(path) as store:
        assert await store.get_job(job.id) == progressed
        assert [j for j, _ in await store.revisions_after(job.id, 0)] == [job, running, progressed]
        assert await store.get_payload(job.id) == PAYLOAD
        assert await store.get_job(done.id) == finished
        assert await store.get_result(done.id) == JobOutput([1, 2])
        assert await store.tombstone(gone.id, T0) == "t"
        pending = {p.job.id: p for p in await store.unfinished()}
        assert len(pending) == 2
        assert pending[job.id].attempts == 1 and pending[job.id].checkpoint == {"c": 1}
        outcome = await store.create_job(make_job(request_id="r"), "other", PAYLOAD)
        assert not outcome.created and outcome.request_hash == "hash"
        assert len(await store.list_jobs("t", JobFilter(), None, 100, T0)) == 3


async def test_closed_store_refuses_writes(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "g.sqlite3")
    await store.open()
    await store.close()
    with pytest.raises(RuntimeError):
        await store.create_job(make_job(), "", PAYLOAD)


async def test_a_job_redis_expired_before_the_sweep_leaves_nothing_naming_it(
        redis_process: RedisProcess) -> None:
    """Redis' own expiry and the sweep come due at the same moment, and Redis is usually first: the
    sweep must still clear every index naming the job (or it would find the job again at each sweep,
    and 5,000 of them would stop it for good), and a due webhook of it must not stay due."""
    import redis.asyncio as aioredis

    redis_process.flush()
    async with RedisStore(redis_process.url, clock=FakeClock(T0)) as store:
        job = replace(make_job(), webhook=WebhookSpec("https://hooks.example.com/x", ("completed",)))
        await store.create_job(job, "", PAYLOAD)
        await store.save_revision(finish(job, JobState.SUCCEEDED, T0, retention=10), result=JobOutput(1))
        assert [i for i, _ in await store.webhooks_due(T0 + 10**9, 10)] == [job.id]
        raw = aioredis.Redis.from_url(redis_process.url)
        try:
            # What Redis' expiry removes (the job's keys, its webhook's; the tombstone set in advance stays).
            for key in ("job", "revs", "segs", "webhook"):
                await raw.delete(f"gw:{key}:{job.id}")
            assert await store.webhooks_due(T0 + 10**9, 10) == []  # not due: its job is gone
            assert await raw.zscore("gw:webhooks-due", job.id) is None
            await store.sweep(T0 + 20, T0 + 20 + 50)
            assert await raw.zscore("gw:expiring", job.id) is None
            assert await raw.zscore("gw:jobs:t", job.id) is None and await raw.zscore("gw:changes:t", job.id) is None
            assert await store.tombstone(job.id, T0 + 21) == "t"
        finally:
            await raw.aclose()


async def test_retry_of_and_attempt_are_stored_and_each_revision_keeps_its_attempt(store: Store) -> None:
    job = replace(make_job(), retry_of="a" * 32)
    await store.create_job(job, "", PAYLOAD)
    running = step(job, state=JobState.RUNNING, started=T0, queue_position=0)
    await store.save_revision(running)
    again = step(running, attempt=2, progress=0.0)
    await store.save_revision(again)
    done = finish(again, JobState.SUCCEEDED, T0 + 2, progress=1.0)
    await store.save_revision(done, result=JobOutput(1))
    stored = await store.get_job(job.id)
    assert stored is not None and (stored.retry_of, stored.attempt) == ("a" * 32, 2)
    assert [(j.revision, j.attempt, j.retry_of) for j, _ in await store.revisions_after(job.id, 0)] == [
        (1, 1, "a" * 32), (2, 1, "a" * 32), (3, 2, "a" * 32), (4, 2, "a" * 32)]


async def test_an_ended_job_in_redis_keeps_its_revisions_compacted(redis_process: RedisProcess) -> None:
    """The revisions stream of an ended job goes: its revisions go into one field of the job, the fixed fields
    once. Every revision reads back as it was, with JSON that could fool a search for where the fixed part ends
    (a label named "state", an error whose metadata has one), and a finished job holds a fraction of the bytes."""
    import redis.asyncio as aioredis

    redis_process.flush()
    async with RedisStore(redis_process.url, clock=FakeClock(T0)) as store:
        job = replace(make_job(labels={"state": "3", "x": ',"state":2,'}), request_id="r-compact")
        await store.create_job(job, "h", PAYLOAD)
        running = step(job, state=JobState.RUNNING, started=T0, queue_position=0)
        await store.save_revision(running)
        words = (Word(0.0, 0.5, " one", 0.9),)
        moved = step(running, progress=0.5, segments=(Segment(0.0, 1.0, " one", words=words),), logs="a\nb|c")
        await store.save_revision(moved, moved.segments)
        failure = JobFailure(Code.FAILED_PRECONDITION, "X", "no", {"state": "RUNNING", "revision": "3"})
        ended = finish(moved, JobState.FAILED, T0 + 1, error=failure)
        await store.save_revision(ended)
        history = [j for j, _ in await store.revisions_after(job.id, 0)]
        assert history == [job, running, moved, ended]
        assert [o for _, o in await store.revisions_after(job.id, 2, whole=False)] == [0, 1]
        client = aioredis.from_url(redis_process.url)
        try:
            assert not await client.exists(store.keys.revs(job.id))
            fields = await client.hkeys(store.keys.job(job.id))
            assert b"hist" in fields and b"created_as" not in fields
        finally:
            await client.aclose()
