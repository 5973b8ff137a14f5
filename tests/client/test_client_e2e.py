"""The client library's behaviours against real gateway processes: futures and waiting on many,
per-call timeout and metadata, retries, Fetch's wait, Cancel and Delete, the jobs stream's resume
token."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from gateway_client import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    NO_RETRY,
    AsyncClient,
    Client,
    DeadlineExceededError,
    FailedPreconditionError,
    Job,
    JobCancelledError,
    JobFailedError,
    JobState,
    Output,
    ResourceExhaustedError,
    RetryPolicy,
    UnauthenticatedError,
    UnavailableError,
    as_completed,
    async_as_completed,
    async_wait,
    wait,
)
from harness import ServerProcess, wait_until

ONE_WORKER_ONE_QUEUED = '[routes.echo]\nbackend = "echo"\nworkers = 1\nmax_queue = 1\n'
AUTH = '[auth]\nenabled = true\n[auth.tokens]\nalpha-token = "alpha"\n[routes.echo]\nbackend = "echo"\n'


def _until(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    wait_until(condition, timeout=timeout, interval=0.02)


# -- futures ---------------------------------------------------------------------------------------


def test_cancelled_is_a_bool_that_never_raises(echo_server: ServerProcess) -> None:
    with Client(echo_server.target) as client:
        ok = client.submit("echo", {"delay_ms": 300})
        doomed = client.submit("echo", {"delay_ms": 60_000})
        failed = client.submit("echo", {"fail_with": "no"})
        assert ok.cancelled() is False and doomed.cancelled() is False  # before done
        assert ok.result(timeout=10) == Output({"delay_ms": 300}) and ok.cancelled() is False
        assert isinstance(failed.exception(timeout=10), JobFailedError) and failed.cancelled() is False
        assert doomed.cancel() is True
        assert isinstance(doomed.exception(timeout=10), JobCancelledError) and doomed.cancelled() is True
        assert ok.cancel() is False  # already done
        abandoned = client.submit("echo", {"delay_ms": 60_000})
    assert abandoned.cancelled() is True  # the client closed before the job ended: no exception either
    with Client(echo_server.target) as client:
        client.cancel(abandoned.job_id)

    async def run() -> None:
        async with AsyncClient(echo_server.target) as client:
            fut = await client.submit("echo", {"delay_ms": 60_000})
            assert fut.cancelled() is False
            with pytest.raises(asyncio.InvalidStateError):
                fut.result()
            assert await fut.cancel() is True
            with pytest.raises(JobCancelledError):
                await fut
            assert fut.cancelled() is True and fut.job.done and fut.job.state is JobState.CANCELLED
            quick = await client.submit("echo", {"n": 1})
            assert await quick == Output({"n": 1}) and quick.cancelled() is False and quick.result().value == {"n": 1}

    asyncio.run(run())


def test_wait_and_as_completed(echo_server: ServerProcess) -> None:
    with Client(echo_server.target) as client:
        slow = client.submit("echo", {"delay_ms": 60_000})
        fast = [client.submit("echo", {"delay_ms": 200 * i, "i": i}) for i in range(3)]
        done, not_done = wait([slow, *fast], timeout=30, return_when=FIRST_COMPLETED)
        assert done and done <= set(fast) and slow in not_done
        done, not_done = wait(fast, timeout=30, return_when=ALL_COMPLETED)
        assert done == set(fast) and not not_done
        done, not_done = wait([slow], timeout=0.2)
        assert not done and not_done == {slow}
        order = [f.result().value["i"] for f in as_completed(fast, timeout=30)]
        assert sorted(order) == [0, 1, 2]
        failing = client.submit("echo", {"fail_with": "boom", "delay_ms": 100})
        done, _ = wait([slow, failing], timeout=30, return_when=FIRST_EXCEPTION)
        assert done == {failing}
        with pytest.raises(TimeoutError):  # the builtin one, on every Python
            list(as_completed([slow, *fast], timeout=0.3))
        with pytest.raises(TimeoutError):
            slow.result(timeout=0.1)
        assert slow.cancel()

    async def run() -> None:
        async with AsyncClient(echo_server.target) as client:
            slow = await client.submit("echo", {"delay_ms": 60_000})
            fast = [await client.submit("echo", {"delay_ms": 200 * i, "i": i}) for i in range(3)]
            done, pending = await async_wait([slow, *fast], timeout=30, return_when=FIRST_COMPLETED)
            assert done and done <= set(fast) and slow in pending
            seen = [f.result().value["i"] async for f in async_as_completed(fast, timeout=30)]
            assert sorted(seen) == [0, 1, 2]
            done, pending = await async_wait([slow], timeout=0.2)
            assert not done and pending == {slow}
            with pytest.raises(TimeoutError):
                async for _ in async_as_completed([slow], timeout=0.2):
                    pass
            assert await slow.cancel()

    asyncio.run(run())


# -- per-call timeout and metadata -----------------------------------------------------------------


def test_per_call_and_client_timeouts(echo_server: ServerProcess) -> None:
    with Client(echo_server.target) as client:
        job, _ = client.submit_job("echo", {"delay_ms": 60_000})
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            list(client.watch(job.id, timeout=0.5))  # the whole stream's limit
        assert time.monotonic() - started < 5
        client.delete(job.id, force=True)
    # A peer that accepts connections and never answers: only the deadline ends a call.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        with Client(target, timeout=30) as client:
            started = time.monotonic()
            with pytest.raises(DeadlineExceededError):
                client.get("0" * 32, timeout=0.3)  # per call
            assert time.monotonic() - started < 5
        with Client(target, timeout=0.3) as hasty:
            started = time.monotonic()
            with pytest.raises(DeadlineExceededError):
                hasty.list()  # the client's default
            assert time.monotonic() - started < 5


def test_per_call_and_client_metadata(make_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = make_server(AUTH)
    token = [("authorization", "Bearer alpha-token")]
    with Client(server.target) as client:
        with pytest.raises(UnauthenticatedError):
            client.list()
        job, _ = client.submit_job("echo", {}, metadata=token)
        assert client.get(job.id, metadata=token).id == job.id
        assert [j.id for j in client.iter_jobs(metadata=token)] == [job.id]
        assert client.fetch(job.id, wait=10, metadata=token).job.done
    with Client(server.target, metadata=token) as client:
        assert client.list().jobs[0].id == job.id


# -- retries ---------------------------------------------------------------------------------------


def test_unavailable_is_retried_where_it_is_safe(make_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = make_server()
    patient = RetryPolicy(max_attempts=200, initial_backoff=0.05, max_backoff=0.2)
    with Client(server.target, retry=patient) as client, Client(server.target, retry=NO_RETRY) as hasty:
        job, _ = client.submit_job("echo", {"delay_ms": 60_000})
        server.kill()
        with pytest.raises(UnavailableError):
            hasty.get(job.id)  # retrying turned off
        with pytest.raises(UnavailableError):
            client.delete(job.id, force=True)  # never retried: a second Delete would answer NOT_FOUND
        restarted = threading.Thread(target=server.start)
        restarted.start()
        try:
            assert client.get(job.id, timeout=60).id == job.id  # retried until the server is back
        finally:
            restarted.join()
        client.delete(job.id, force=True)


def test_queue_full_is_retried_after_the_servers_delay(make_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = make_server(ONE_WORKER_ONE_QUEUED)
    with Client(server.target) as client, Client(server.target, retry=NO_RETRY) as hasty:
        client.submit("echo", {"delay_ms": 100}).result(timeout=10)  # the route learns a job's duration
        running = client.submit("echo", {"delay_ms": 1500})
        _until(lambda: client.get(running.job_id).state is JobState.RUNNING)
        client.submit("echo", {})  # queued: the queue is now full
        with pytest.raises(ResourceExhaustedError) as full:
            hasty.submit_job("echo", {"n": 3})
        assert full.value.reason == "QUEUE_FULL" and full.value.retry_delay is not None
        delay = full.value.retry_delay
        started = time.monotonic()
        third = client.submit("echo", {"n": 3}, timeout=60)  # waits the RetryInfo delay, then succeeds
        assert time.monotonic() - started >= delay - 0.05  # jitter shortens backoffs, never the server's delay
        assert third.result(timeout=30) == Output({"n": 3})


# -- Fetch, Cancel, Delete -------------------------------------------------------------------------


def test_fetch_waits_then_answers_the_job_as_it_is(echo_server: ServerProcess) -> None:
    with Client(echo_server.target) as client:
        job, _ = client.submit_job("echo", {"delay_ms": 60_000})
        with pytest.raises(FailedPreconditionError) as early:
            client.fetch(job.id)  # no wait: at once
        assert early.value.reason == "JOB_NOT_DONE"
        started = time.monotonic()
        fetched = client.fetch(job.id, wait=0.5)
        assert 0.4 < time.monotonic() - started < 10
        assert not fetched.done and fetched.result is None and fetched.job.state is JobState.RUNNING
        fetched = client.fetch(job.id, wait=0.5, timeout=0.2)  # the call's deadline wins: no DEADLINE_EXCEEDED
        assert not fetched.done
        quick, _ = client.submit_job("echo", {"delay_ms": 300, "q": 1})
        job_then, result = client.fetch(quick.id, wait=30)
        assert job_then.done and result == Output({"delay_ms": 300, "q": 1})
        client.delete(job.id, force=True)


def test_cancel_answers_at_once_and_the_job_ends_on_its_stream(echo_server: ServerProcess) -> None:
    with Client(echo_server.target) as client:
        future = client.submit("echo", {"delay_ms": 60_000, "steps": 600})
        _until(lambda: client.get(future.job_id).state is JobState.RUNNING)
        started = time.monotonic()
        answered = client.cancel(future.job_id)
        assert time.monotonic() - started < 2  # no waiting for the job to stop
        assert answered.state in (JobState.RUNNING, JobState.CANCELLED)
        with pytest.raises(JobCancelledError) as ended:
            future.result(timeout=10)
        assert ended.value.job.state is JobState.CANCELLED and ended.value.job.done
        updates = list(client.watch(future.job_id, after_revision=answered.revision))
        assert updates == [] or updates[-1].state is JobState.CANCELLED


def test_delete_needs_force_for_an_active_job(echo_server: ServerProcess) -> None:
    with Client(echo_server.target) as client:
        future = client.submit("echo", {"delay_ms": 60_000})
        with pytest.raises(FailedPreconditionError) as refused:
            client.delete(future.job_id)
        assert refused.value.reason == "JOB_NOT_DONE"
        client.delete(future.job_id, force=True)
        assert future.exception(timeout=10) is not None  # NOT_FOUND or CANCELLED: the job is gone


# -- the jobs stream -------------------------------------------------------------------------------


def test_watch_jobs_resume_token(echo_server: ServerProcess) -> None:
    labels = {"resume": "yes"}
    with Client(echo_server.target) as client:
        before = client.submit("echo", {}, labels=labels)
        before.result(timeout=10)
        marker = client.submit("echo", {"delay_ms": 60_000}, labels=labels)
        with client.watch_jobs(labels=labels) as changes:
            assert changes.resume_token == ""
            first = next(changes)  # the active jobs first: the marker
            assert first.id == marker.job_id and changes.resume_token
            token = changes.resume_token
        after = client.submit("echo", {"a": 1}, labels=labels)
        after.result(timeout=10)
        marker.cancel()
        with pytest.raises(JobCancelledError):
            marker.result(timeout=10)
        seen: dict[str, Job] = {}
        with client.watch_jobs(labels=labels, resume_token=token) as resumed:
            for job in resumed:  # every job changed since the token, as it is now
                seen[job.id] = job
                if {after.job_id, marker.job_id} <= seen.keys() and seen[marker.job_id].done:
                    break
            assert resumed.resume_token and resumed.resume_token != token
        assert before.job_id not in seen  # unchanged since the token
        assert seen[after.job_id].state is JobState.SUCCEEDED


def test_watch_jobs_resumes_by_itself_across_a_restart(make_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = make_server()
    with Client(server.target) as client:
        seen: list[Job] = []
        first_seen = threading.Event()

        def dashboard() -> None:
            with client.watch_jobs() as changes:
                for job in changes:
                    seen.append(job)
                    first_seen.set()
                    if job.labels.get("n") == "2" and job.done:
                        return

        thread = threading.Thread(target=dashboard, daemon=True)
        one = client.submit("echo", {"delay_ms": 60_000}, labels={"n": "1"})
        thread.start()
        assert first_seen.wait(10)
        server.kill()
        server.start()
        two = client.submit("echo", {}, labels={"n": "2"})
        assert two.result(timeout=30) == Output({})
        thread.join(30)
        assert not thread.is_alive()
        assert {one.job_id, two.job_id} <= {j.id for j in seen}
        client.delete(one.job_id, force=True)


def test_watch_yields_heartbeats_only_when_asked(make_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = make_server('heartbeat_seconds = 0.2\n[routes.echo]\nbackend = "echo"\n')
    with Client(server.target) as client:
        job, _ = client.submit_job("echo", {"delay_ms": 1000})
        items = list(client.watch(job.id, heartbeats=True))
        beats = [i for i in items if not isinstance(i, Job)]
        assert beats and all(b.time is not None and b.time.tzinfo is not None for b in beats)
        assert all(b.revision <= items[-1].revision for b in beats) and isinstance(items[-1], Job)
        assert all(isinstance(i, Job) for i in client.watch(job.id))


def test_the_futures_submit_takes_the_deadlines_too(echo_server: ServerProcess) -> None:
    with Client(echo_server.target) as client:
        future = client.submit("echo", {"delay_ms": 60_000, "steps": 60}, run_timeout=0.5, queue_timeout=300)
        assert future.job is not None and (future.job.run_timeout, future.job.queue_timeout) == (0.5, 300)
        with pytest.raises(JobFailedError) as failed:
            future.result(timeout=30)
        assert failed.value.reason == "RUN_TIMEOUT"
