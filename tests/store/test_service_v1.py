"""The API v1 contract in the job service: Watch updates carry only new segments, WatchJobs resumes,
Fetch waits with a timeout, Cancel answers at once, Delete refuses an active job unless forced."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.errors import FailedPrecondition, InvalidArgument
from gateway.hub import RING_SIZE
from gateway.jobs import Job, JobState, Segment
from gateway.service import Heartbeat, JobService, Update
from gateway.settings import EchoRoute
from gateway.store import JobFilter
from tests.helpers.jobs import FakeClock
from tests.helpers.service import TENANT, make_settings, running, state_of, submit, until

pytestmark = pytest.mark.usefixtures("every_store")


def _segments(first: int, count: int) -> list[Segment]:
    return [Segment(float(i), i + 1.0, f" segment {i}") for i in range(first, first + count)]


def _rebuild(transcript: list[Segment], update: Update) -> list[Segment]:
    """What a client does with a Watch update: keep the prefix, append what the update carries."""
    offset = update.segments_offset
    assert offset <= len(transcript), "a gap: the update starts past what the watcher holds"
    return transcript[:offset] + list(update.segments)


async def _running_job(service: JobService) -> Job:
    job = await submit(service, delay_ms=60_000, steps=1)
    await until(lambda: _is_running(service, job.id))
    return job


async def _is_running(service: JobService, job_id: str) -> bool:
    return await state_of(service, job_id) is JobState.RUNNING


async def _next_update(stream: object) -> Update:
    while True:
        item = await stream.__anext__()  # type: ignore[attr-defined]
        if isinstance(item, Update):
            return item


async def test_watch_updates_carry_only_the_segments_they_add(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path, EchoRoute(workers=1)), FakeClock()) as gw:
        service = gw.service
        job = await _running_job(service)
        await service.lifecycle.report(job.id, 0.1, _segments(0, 2))
        stream = service.watch(TENANT, job.id)
        first = await _next_update(stream)
        assert first.whole and first.segments_offset == 0 and len(first.job.segments) == 2
        transcript = _rebuild([], first)
        batches = [_segments(2, 1), [], _segments(3, 3)]
        for batch in batches:
            await service.lifecycle.report(job.id, 0.5, batch)
            update = await _next_update(stream)
            assert not update.whole and update.segments_offset == len(transcript)
            assert list(update.segments) == batch  # only the new ones
            transcript = _rebuild(transcript, update)
        assert transcript == _segments(0, 6)
        await service.cancel(TENANT, job.id)
        last = await _next_update(stream)
        assert last.job.state is JobState.CANCELLED and _rebuild(transcript, last) == _segments(0, 6)
        await stream.aclose()


async def test_watch_resumed_after_any_revision_rebuilds_the_same_transcript(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path, EchoRoute(workers=1)), FakeClock()) as gw:
        service = gw.service
        job = await _running_job(service)
        for i in range(5):
            await service.lifecycle.report(job.id, i / 10, _segments(i * 2, i % 3))  # 0, 1 or 2 new segments
        await service.cancel(TENANT, job.id)
        whole: list[Segment] = []
        history: list[tuple[int, list[Segment]]] = []  # (revision, transcript as of it)
        async for item in service.watch(TENANT, job.id, after_revision=1):
            if isinstance(item, Update):
                whole = _rebuild(whole, item)
                history.append((item.job.revision, whole))
        final_revision, final = history[-1]
        assert len(final) == 4 and final_revision > 1
        for revision, transcript in history:
            resumed = transcript
            async for item in service.watch(TENANT, job.id, after_revision=revision):
                if isinstance(item, Update):
                    assert not item.whole
                    resumed = _rebuild(resumed, item)
            assert resumed == final, f"resumed after revision {revision}"


async def test_a_watcher_the_ring_left_behind_gets_every_revision_from_the_store(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path, EchoRoute(workers=1)), FakeClock()) as gw:
        service = gw.service
        job = await _running_job(service)
        stream = service.watch(TENANT, job.id)
        first = await _next_update(stream)
        transcript, last = _rebuild([], first), first.job.revision
        for i in range(RING_SIZE + 5):  # the watcher reads nothing meanwhile
            await service.lifecycle.report(job.id, 0.5, _segments(i, 1))
        while len(transcript) < RING_SIZE + 5:
            update = await _next_update(stream)
            assert not update.whole and update.job.revision == last + 1  # each revision, none skipped
            transcript, last = _rebuild(transcript, update), update.job.revision
        assert transcript == _segments(0, RING_SIZE + 5)
        await stream.aclose()


async def test_watch_jobs_resumes_with_the_jobs_that_changed_meanwhile(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path, EchoRoute(workers=1), heartbeat_seconds=0.05), FakeClock()) as gw:
        service = gw.service
        before = await submit(service, x=0)
        async with asyncio.timeout(10):
            await service.fetch(TENANT, before.id, wait=30)
        stream = service.watch_jobs(TENANT, JobFilter())
        beat = await stream.__anext__()  # nothing active: a heartbeat with the position
        assert isinstance(beat, Heartbeat) and beat.position > 0
        token = service.resume_token(beat.position)
        await stream.aclose()

        finished = [await submit(service, x=i) for i in range(1, 4)]
        async with asyncio.timeout(10):
            for job in finished:
                await service.fetch(TENANT, job.id, wait=30)
        untouched = (await service.get(TENANT, before.id)).revision

        seen: dict[str, Job] = {}
        positions = []
        resumed = service.watch_jobs(TENANT, JobFilter(), token)
        async with asyncio.timeout(10):
            async for item in resumed:
                if isinstance(item, Heartbeat):
                    positions.append(item.position)
                    break
                event, position = item
                seen[event.job.id] = event.job
                positions.append(position)
        await resumed.aclose()
        assert set(seen) == {j.id for j in finished}  # not `before`: it did not change meanwhile
        assert all(job.state is JobState.SUCCEEDED for job in seen.values())
        assert positions == sorted(positions)
        assert (await service.get(TENANT, before.id)).revision == untouched

        # A resume token from the stream's end: nothing to catch up on.
        quiet = service.watch_jobs(TENANT, JobFilter(), service.resume_token(positions[-1]))
        async with asyncio.timeout(10):
            assert isinstance(await quiet.__anext__(), Heartbeat)
        await quiet.aclose()


@pytest.mark.parametrize("token", ["", "not base64!", "eyJzIjoiMTIzIiwicCI6MX0"])  # the last: another store
async def test_watch_jobs_refuses_tokens_it_did_not_issue(tmp_path: Path, token: str) -> None:
    async with running(make_settings(tmp_path), FakeClock()) as gw:
        stream = gw.service.watch_jobs(TENANT, JobFilter(), token or "x")
        with pytest.raises(InvalidArgument) as refused:
            await stream.__anext__()
        assert refused.value.reason == "INVALID_RESUME_TOKEN"


async def test_fetch_wait_answers_the_job_as_it_is_when_the_wait_ends(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path, EchoRoute(workers=1)), FakeClock()) as gw:
        service = gw.service
        job = await _running_job(service)
        async with asyncio.timeout(5):
            current, result = await service.fetch(TENANT, job.id, wait=0.2)
        assert current.state is JobState.RUNNING and not current.terminal and result is None
        with pytest.raises(FailedPrecondition) as not_done:
            await service.fetch(TENANT, job.id)
        assert not_done.value.reason == "JOB_NOT_DONE"
        with pytest.raises(InvalidArgument):
            await service.fetch(TENANT, job.id, wait=-1)
        await service.cancel(TENANT, job.id)


async def test_delete_refuses_an_active_job_unless_forced(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path, EchoRoute(workers=1)), FakeClock()) as gw:
        service = gw.service
        job = await _running_job(service)
        queued = await submit(service, x=1)
        for active in (job, queued):
            with pytest.raises(FailedPrecondition) as refused:
                await service.delete(TENANT, active.id)
            assert refused.value.reason == "JOB_NOT_DONE"
            assert not (await service.get(TENANT, active.id)).terminal  # untouched
        await service.delete(TENANT, job.id, force=True)
        await service.delete(TENANT, queued.id, force=True)
        for gone in (job, queued):
            with pytest.raises(Exception) as missing:
                await service.get(TENANT, gone.id)
            assert getattr(missing.value, "reason", "") == "JOB_NOT_FOUND"


async def test_cancel_answers_at_once_and_the_stream_shows_the_end(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path, EchoRoute(workers=1)), FakeClock()) as gw:
        service = gw.service
        job = await _running_job(service)
        queued = await submit(service, x=1)
        assert (await service.cancel(TENANT, queued.id)).state is JobState.CANCELLED
        asked = await service.cancel(TENANT, job.id)
        assert asked.state is JobState.RUNNING
        async with asyncio.timeout(10):
            states = [i.job.state async for i in service.watch(TENANT, job.id) if isinstance(i, Update)]
        assert states[-1] is JobState.CANCELLED
