"""The store contract, run against every store (the ``any_store`` fixture's parameters): revisions
are a compare-and-set on the job's revision and attempt, each revision comes back with its segments
offset, and change positions order every job's changes for WatchJobs to resume from."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from gateway.jobs import Job, JobOutput, JobState, Segment, WebhookSpec
from gateway.redis import RedisStore
from gateway.store import JobFilter, RevisionConflict, Store
from harness.redis import RedisProcess
from tests.helpers.jobs import PAYLOAD, T0, FakeClock, finish, make_job, step


async def test_a_revision_must_follow_the_stored_one(any_store: Store) -> None:
    job = make_job()
    await any_store.create_job(job, "", PAYLOAD)
    running = step(job, state=JobState.RUNNING, started=T0)
    skipping = step(running, progress=0.5)  # revision 3 while the store holds 1
    with pytest.raises(RevisionConflict):
        await any_store.save_revision(skipping)
    assert await any_store.get_job(job.id) == job  # nothing stored
    await any_store.save_revision(running)
    with pytest.raises(RevisionConflict):
        await any_store.save_revision(finish(job, JobState.CANCELLED, T0))  # another revision 2
    assert [j.revision for j, _ in await any_store.revisions_after(job.id, 0)] == [1, 2]


async def test_two_writers_of_the_same_revision_one_wins(any_store: Store) -> None:
    job = make_job()
    await any_store.create_job(job, "", PAYLOAD)
    mine = step(job, state=JobState.RUNNING, started=T0)
    theirs = finish(job, JobState.CANCELLED, T0)
    outcomes = await asyncio.gather(any_store.save_revision(mine), any_store.save_revision(theirs),
                                    return_exceptions=True)
    assert sum(isinstance(o, RevisionConflict) for o in outcomes) == 1
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 1
    stored = await any_store.get_job(job.id)
    assert stored is not None and stored.revision == 2
    assert len(await any_store.revisions_after(job.id, 0)) == 2


async def test_a_run_whose_job_was_taken_over_cannot_complete_it(any_store: Store) -> None:
    job = make_job()
    await any_store.create_job(job, "", PAYLOAD)
    running = step(job, state=JobState.RUNNING, started=T0)
    await any_store.save_revision(running, count_attempt=True, attempt=1)  # run 1 starts
    assert await any_store.start_attempt(job.id) == 2  # run 2 takes the job over
    stale = finish(running, JobState.SUCCEEDED, T0 + 1)
    with pytest.raises(RevisionConflict):
        await any_store.save_revision(stale, result=JobOutput("stale"), attempt=1)
    assert await any_store.get_result(job.id) is None
    await any_store.save_revision(stale, result=JobOutput("current"), attempt=2)
    assert await any_store.get_result(job.id) == JobOutput("current")


async def test_a_drained_run_is_given_back_only_while_it_is_the_current_one(any_store: Store) -> None:
    job = make_job()
    await any_store.create_job(job, "", PAYLOAD)
    await any_store.save_revision(step(job, state=JobState.RUNNING, started=T0), count_attempt=True, attempt=1)
    await any_store.spare_attempt(job.id, 1)  # run 1 was drained: it does not count
    assert await any_store.start_attempt(job.id) == 1  # the next run is run 1 again
    await any_store.spare_attempt(job.id, 7)  # not the current run: nothing changes
    assert await any_store.start_attempt(job.id) == 2


async def test_a_conflict_fails_only_its_own_write(any_store: Store) -> None:
    jobs = [make_job() for _ in range(5)]
    for job in jobs:
        await any_store.create_job(job, "", PAYLOAD)
    writes = [step(j, state=JobState.RUNNING, started=T0) for j in jobs]
    writes[2] = step(writes[2], progress=0.5)  # skips a revision
    outcomes = await asyncio.gather(*(any_store.save_revision(w) for w in writes), return_exceptions=True)
    assert [isinstance(o, RevisionConflict) for o in outcomes] == [False, False, True, False, False]
    for job, write in zip(jobs, writes, strict=True):
        stored = await any_store.get_job(job.id)
        assert stored is not None and stored.revision == (1 if write is writes[2] else 2)


async def test_revisions_come_back_with_their_segments_offsets(any_store: Store) -> None:
    job = make_job(route="whisper")
    await any_store.create_job(job, "", PAYLOAD)
    current = step(job, state=JobState.RUNNING, started=T0)
    await any_store.save_revision(current)
    for batch in ([Segment(0, 1, "a")], [], [Segment(1, 2, "b"), Segment(2, 3, "c")]):
        current = step(current, segments=current.segments + tuple(batch))
        await any_store.save_revision(current, new_segments=batch)
    history = await any_store.revisions_after(job.id, 2)
    assert [(j.revision, len(j.segments), offset) for j, offset in history] == [(3, 1, 0), (4, 1, 1), (5, 3, 1)]


async def test_changed_since_gives_each_job_once_at_its_latest_change(any_store: Store) -> None:
    first, second, other = make_job(), make_job(), make_job(tenant="other")
    for job in (first, second, other):
        await any_store.create_job(job, "", PAYLOAD)
    mark = any_store.current_position()
    running = step(first, state=JobState.RUNNING, started=T0)
    await any_store.save_revision(running)
    await any_store.save_revision(finish(running, JobState.SUCCEEDED, T0 + 1), result=JobOutput(1))
    await any_store.save_revision(step(other, state=JobState.RUNNING, started=T0))
    changed = await any_store.changed_since("t", JobFilter(), mark, 100, T0)
    assert [(j.id, j.state) for j, _ in changed] == [(first.id, JobState.SUCCEEDED)]
    assert changed[0][1] == any_store.current_position() - 1  # the other tenant's change came last
    assert await any_store.changed_since("t", JobFilter(), any_store.current_position(), 100, T0) == []
    everything = await any_store.changed_since("t", JobFilter(), 0, 100, T0)
    assert [j.id for j, _ in everything] == [second.id, first.id]  # oldest change first
    succeeded = await any_store.changed_since("t", JobFilter(states=frozenset({JobState.SUCCEEDED})), 0, 100, T0)
    assert [j.id for j, _ in succeeded] == [first.id]


async def test_a_write_sent_again_is_stored_once(redis_process: RedisProcess) -> None:
    """Redis: after a lost answer (a connection cut) the writer sends its batch again; each script
    answers a write it already applied as done, so nothing is stored twice or refused."""
    redis_process.flush()
    async with RedisStore(redis_process.url, clock=FakeClock(T0)) as store:
        job = make_job()
        first = await store.create_job(job, "", PAYLOAD)
        again = await store.create_job(job, "", PAYLOAD)
        assert first.created and again.created and again.position == first.position
        running = step(job, state=JobState.RUNNING, started=T0)
        stored_at = await store.save_revision(running, count_attempt=True, attempt=1)
        assert await store.save_revision(running, count_attempt=True, attempt=1) == stored_at
        assert [j.revision for j, _ in await store.revisions_after(job.id, 0)] == [1, 2]
        assert (await store.resumable(job.id)).attempts == 1  # type: ignore[union-attr]


async def test_large_inputs_come_back_byte_for_byte_and_go_when_the_job_ends(any_store: Store) -> None:
    payloads = [bytes(range(256)) * (12_345 + i) for i in range(3)]  # a few MiB each, none alike
    jobs = [make_job() for _ in range(3)]
    await asyncio.gather(*(any_store.create_job(j, "", p) for j, p in zip(jobs, payloads, strict=True)))
    for job, payload in zip(jobs, payloads, strict=True):
        assert await any_store.get_payload(job.id) == payload
    running = step(jobs[0], state=JobState.RUNNING, started=T0)
    await any_store.save_revision(running)
    await any_store.save_revision(finish(running, JobState.SUCCEEDED, T0), result=JobOutput({"ok": True}))
    assert await any_store.get_payload(jobs[0].id) is None
    assert await any_store.get_payload(jobs[1].id) == payloads[1]


# -- webhooks: marked due in the revision's own write, claimed by one process at a time ----------------

def _hooked(events: frozenset[str]) -> Job:
    return replace(make_job(), webhook=WebhookSpec("https://hooks.example.com/x", events))


async def _due(store: Store) -> list[str]:
    return [job_id for job_id, _ in await store.webhooks_due(time.time() + 1, 100)]


async def test_a_revision_the_webhook_wants_marks_it_due_in_the_same_write(any_store: Store) -> None:
    job = _hooked(frozenset({"completed"}))
    await any_store.create_job(job, "", PAYLOAD)
    stored = await any_store.get_job(job.id)
    assert stored is not None and stored.webhook == job.webhook  # kept with the job
    running = step(job, state=JobState.RUNNING, started=T0)
    await any_store.save_revision(running)
    assert await _due(any_store) == []  # RUNNING is no event of a completed-only webhook
    await any_store.save_revision(finish(running, JobState.SUCCEEDED, T0 + 1), result=JobOutput(1))
    assert await any_store.webhooks_due(time.time() + 1, 100) == [(job.id, "https://hooks.example.com/x")]
    assert await any_store.webhook_state(job.id) is None  # nothing attempted yet


async def test_a_refused_revision_marks_nothing(any_store: Store) -> None:
    job = _hooked(frozenset({"start"}))
    await any_store.create_job(job, "", PAYLOAD)
    with pytest.raises(RevisionConflict):
        await any_store.save_revision(step(step(job), state=JobState.RUNNING, started=T0))  # skips revision 2
    assert await _due(any_store) == []


async def test_one_claim_at_a_time_and_a_mark_during_it_makes_the_job_due_again(any_store: Store) -> None:
    job = _hooked(frozenset({"start", "progress"}))
    await any_store.create_job(job, "", PAYLOAD)
    running = step(job, state=JobState.RUNNING, started=T0)
    await any_store.save_revision(running)
    now = time.time() + 1
    claim = await any_store.claim_webhook(job.id, now, now + 30)
    assert claim is not None and claim.pending == 2 and claim.state == {}
    assert await any_store.claim_webhook(job.id, now, now + 30) is None  # held
    assert await _due(any_store) == []  # hidden while claimed
    moved = step(running, progress=0.5)
    await any_store.save_revision(moved)  # stored while the claim is held
    assert await _due(any_store) == []  # still held: the holder is told when it finishes
    assert await any_store.finish_webhook(job.id, {"seen": 2}, claim.pending, now, None, claim.lease)
    assert await _due(any_store) == [job.id]  # revision 3 came after the claim: due again at once
    again = await any_store.claim_webhook(job.id, now, now + 30)
    assert again is not None and again.pending == 3 and again.state == {"seen": 2}
    assert await any_store.finish_webhook(job.id, {"seen": 3}, again.pending, now, None, again.lease)
    assert await _due(any_store) == []
    assert await any_store.webhook_state(job.id) == {"seen": 3}


async def test_a_lapsed_claim_can_be_taken_and_its_late_result_is_refused(any_store: Store) -> None:
    job = _hooked(frozenset({"completed"}))
    await any_store.create_job(job, "", PAYLOAD)
    await any_store.save_revision(finish(job, JobState.CANCELLED, T0))
    now = time.time() + 1
    first = await any_store.claim_webhook(job.id, now, now + 5)
    assert first is not None
    second = await any_store.claim_webhook(job.id, now + 6, now + 11)  # the first holder went silent
    assert second is not None
    # The first holder comes back late: what it would store is refused, and the claim stays the second's.
    assert not await any_store.finish_webhook(job.id, {"late": True}, first.pending, now, None, first.lease)
    assert await any_store.claim_webhook(job.id, now + 7, now + 12) is None
    assert await any_store.webhook_state(job.id) in (None, {})
    # The second holder's retry time is kept.
    assert await any_store.finish_webhook(job.id, {"retry": True}, second.pending, now, now + 60, second.lease)
    assert await any_store.webhooks_due(now + 59, 100) == []
    assert [i for i, _ in await any_store.webhooks_due(now + 61, 100)] == [job.id]
    assert await any_store.webhook_state(job.id) == {"retry": True}


async def test_deleting_a_job_drops_its_webhook(any_store: Store) -> None:
    job = _hooked(frozenset({"completed"}))
    await any_store.create_job(job, "", PAYLOAD)
    await any_store.save_revision(finish(job, JobState.CANCELLED, T0))
    await any_store.delete(job.id)
    assert await _due(any_store) == []
    assert await any_store.webhook_state(job.id) is None


async def test_due_webhooks_come_in_pages(any_store: Store) -> None:
    jobs = [_hooked(frozenset({"completed"})) for _ in range(3)]
    for job in jobs:
        await any_store.create_job(job, "", PAYLOAD)
        await any_store.save_revision(finish(job, JobState.CANCELLED, T0))
    now = time.time() + 1
    first, second = await any_store.webhooks_due(now, 2, 0), await any_store.webhooks_due(now, 2, 2)
    assert len(first) == 2 and len(second) == 1
    assert {i for i, _ in first + second} == {j.id for j in jobs}  # longest due first, none twice
