"""End to end: a real gateway process, the real client, over gRPC."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from gateway_client import (
    AlreadyExistsError,
    AsyncClient,
    Client,
    FailedPreconditionError,
    GatewayError,
    JobCancelledError,
    JobFailedError,
    JobState,
    NotFoundError,
    Output,
)
from harness import ServerProcess, error_info, wait_until

SERVICE = pb.DESCRIPTOR.services_by_name["GatewayService"].full_name  # inferencegateway.gateway.v1.GatewayService


def test_submit_watch_fetch(echo_server: ServerProcess) -> None:
    with Client(echo_server.target) as client:
        future = client.submit("echo", {"delay_ms": 300, "steps": 3, "note": "hi"}, labels={"team": "a"})
        assert future.job.state is JobState.QUEUED and future.job.revision == 1
        result = future.result(timeout=30)
        assert result == Output({"delay_ms": 300, "steps": 3, "note": "hi"})
        assert future.done() and future.job.state is JobState.SUCCEEDED
        assert client.fetch(future.job_id).result == result
        job = client.get(future.job_id)
        assert job.labels == {"team": "a"} and job.progress == 1.0 and job.expire_time is not None
        assert job.done and job.expire_time.tzinfo is not None  # aware datetimes, in UTC


def test_watch_snapshot_then_every_change_in_order(echo_server: ServerProcess) -> None:
    with Client(echo_server.target) as client:
        job, _ = client.submit_job("echo", {"delay_ms": 600, "steps": 6})
        updates = list(client.watch(job.id))
    revisions = [u.revision for u in updates]
    assert revisions == list(range(revisions[0], revisions[0] + len(revisions)))  # consecutive, no repeats
    assert updates[-1].state is JobState.SUCCEEDED and all(not u.done for u in updates[:-1])
    progress = [u.progress for u in updates]
    assert progress == sorted(progress) and progress[-1] == 1.0


def test_watch_after_revision_replays_what_was_missed(echo_server: ServerProcess) -> None:
    with Client(echo_server.target) as client:
        future = client.submit("echo", {"delay_ms": 200, "steps": 4})
        future.result(timeout=30)
        everything = list(client.watch(future.job_id, after_revision=0))
        assert len(everything) == 1 and everything[0].done  # a finished job: the snapshot, then the end
        replay = list(client.watch(future.job_id, after_revision=2))
        assert [j.revision for j in replay] == list(range(3, everything[0].revision + 1))
        assert replay[-1].state is JobState.SUCCEEDED
        assert list(client.watch(future.job_id, after_revision=everything[0].revision)) == []
        with pytest.raises(GatewayError) as ahead:
            list(client.watch(future.job_id, after_revision=99))
        assert ahead.value.code is grpc.StatusCode.OUT_OF_RANGE and ahead.value.reason == "REVISION_AHEAD"


def test_hundred_watchers_of_one_job_see_the_same_revisions(echo_server: ServerProcess) -> None:
    async def run() -> None:
        async with AsyncClient(echo_server.target) as client:
            job, _ = await client.submit_job("echo", {"delay_ms": 1500, "steps": 5})

            async def follow() -> list[tuple[int, JobState, float]]:
                # From revision 1 on, whenever each one starts: every watcher's whole stream is the same.
                return [(j.revision, j.state, j.progress) async for j in client.watch(job.id, after_revision=1)]

            results = await asyncio.gather(*(follow() for _ in range(100)))
        first = results[0]
        assert [r for r, _, _ in first] == list(range(2, first[-1][0] + 1)) and first[-1][1] is JobState.SUCCEEDED
        assert len(first) >= 7  # running, five progress steps, succeeded
        for revisions in results:
            assert revisions == first

    asyncio.run(run())


def test_heartbeats_while_idle(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server('heartbeat_seconds = 0.2\n[routes.echo]\nbackend = "echo"\n')
    async def run() -> None:
        async with AsyncClient(server.target) as client:
            job, _ = await client.submit_job("echo", {"delay_ms": 1200})
            kinds = [type(item).__name__ async for item in client.watch(job.id, heartbeats=True)]
        assert kinds.count("Heartbeat") >= 3 and kinds[-1] == "Job"

    asyncio.run(run())


def test_errors_carry_code_and_reason(echo_server: ServerProcess) -> None:
    with Client(echo_server.target) as client:
        with pytest.raises(GatewayError) as missing:
            client.get("0" * 32)
        assert missing.value.code is grpc.StatusCode.NOT_FOUND and missing.value.reason == "JOB_NOT_FOUND"
        with pytest.raises(GatewayError) as route:
            client.submit_job("nope", {})
        assert route.value.code is grpc.StatusCode.NOT_FOUND and route.value.reason == "ROUTE_NOT_FOUND"
        with pytest.raises(GatewayError) as bad:
            client.submit_job("echo", {"delay_ms": -1, "steps": "x"})
        assert bad.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert {f for f, _ in bad.value.field_violations} == {"inputs.delay_ms", "inputs.steps"}
        running, _ = client.submit_job("echo", {"delay_ms": 2000})
        with pytest.raises(GatewayError) as early:
            client.fetch(running.id)
        assert early.value.code is grpc.StatusCode.FAILED_PRECONDITION and early.value.reason == "JOB_NOT_DONE"
        assert isinstance(early.value, FailedPreconditionError)
        assert client.fetch(running.id, wait=30).result == Output({"delay_ms": 2000})


def test_failed_job_reports_its_reason(echo_server: ServerProcess) -> None:
    with Client(echo_server.target) as client:
        future = client.submit("echo", {"fail_with": "the model fell over"})
        with pytest.raises(JobFailedError) as failed:
            future.result(timeout=30)
        assert failed.value.reason == "ECHO_FAILURE" and failed.value.message == "the model fell over"
        assert future.job.state is JobState.FAILED and future.job.error is not None
        job, result = client.fetch(future.job_id)
        assert result is None and job.error is not None and job.error.reason == "ECHO_FAILURE"


def test_cancel_running_and_queued_jobs(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server('[routes.echo]\nbackend = "echo"\nworkers = 1\n')
    with Client(server.target) as client:
        running = client.submit("echo", {"delay_ms": 30_000, "steps": 300})
        queued = client.submit("echo", {"delay_ms": 10})
        deadline = time.monotonic() + 10
        while client.get(running.job_id).state is not JobState.RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get(queued.job_id).queue_position == 1
        assert queued.cancel()
        with pytest.raises(JobCancelledError):
            queued.result(timeout=10)
        assert queued.cancelled()
        started = time.monotonic()
        job = client.cancel(running.job_id)  # answers at once: the running job ends on its stream
        assert job.state in (JobState.RUNNING, JobState.CANCELLED) and time.monotonic() - started < 2
        with pytest.raises(JobCancelledError) as cancelled:
            running.result(timeout=10)
        ended = cancelled.value.job
        assert ended.state is JobState.CANCELLED and ended.done and running.cancelled()
        assert ended.error is not None and ended.error.code is grpc.StatusCode.CANCELLED
        assert client.cancel(running.job_id).state is JobState.CANCELLED  # idempotent
        # The worker is free for the next job.
        assert client.submit("echo", {"x": 1}).result(timeout=10) == Output({"x": 1})


def test_idempotent_submit(echo_server: ServerProcess) -> None:
    with Client(echo_server.target) as client:
        first, existing = client.submit_job("echo", {"a": 1}, request_id="order-42", labels={"k": "v"})
        assert not existing
        again, existing = client.submit_job("echo", {"a": 1}, request_id="order-42", labels={"k": "v"})
        assert existing and again.id == first.id
        with pytest.raises(GatewayError) as conflict:
            client.submit_job("echo", {"a": 2}, request_id="order-42", labels={"k": "v"})
        assert conflict.value.code is grpc.StatusCode.ALREADY_EXISTS
        assert conflict.value.reason == "REQUEST_ID_CONFLICT" and conflict.value.metadata["jobId"] == first.id
        assert isinstance(conflict.value, AlreadyExistsError)


def test_list_filters_and_paginates(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server()
    with Client(server.target) as client:
        for i in range(7):
            client.submit("echo", {"i": i}, labels={"batch": "b1" if i % 2 else "b2"}).result(timeout=10)
        client.submit("echo", {"fail_with": "no"}, labels={"batch": "b1"}).exception(timeout=10)
        page = client.list(page_size=3)
        assert len(page.jobs) == 3 and page.next_page_token
        everything = list(client.iter_jobs())
        assert len(everything) == 8
        ids = [j.id for j in everything]
        assert ids == sorted(ids, reverse=True)  # newest first
        b1 = list(client.iter_jobs(labels={"batch": "b1"}))
        assert len(b1) == 4
        failed = list(client.iter_jobs(states=["FAILED"]))
        assert len(failed) == 1 and failed[0].state is JobState.FAILED
        assert list(client.iter_jobs(route="other")) == []
        with pytest.raises(GatewayError) as token:
            client.list(page_token=page.next_page_token, route="echo")
        assert token.value.reason == "INVALID_PAGE_TOKEN"


def test_delete_forgets_the_job(echo_server: ServerProcess) -> None:
    with Client(echo_server.target) as client:
        finished = client.submit("echo", {})
        finished.result(timeout=10)
        client.delete(finished.job_id)
        with pytest.raises(NotFoundError) as gone:
            client.get(finished.job_id)
        assert gone.value.reason == "JOB_NOT_FOUND"
        future = client.submit("echo", {"delay_ms": 10_000})
        with pytest.raises(FailedPreconditionError) as active:
            client.delete(future.job_id)  # still running: only with force
        assert active.value.reason == "JOB_NOT_DONE"
        wait_until(lambda: future.job.state is JobState.RUNNING, "the future's stream to see the job run")
        client.delete(future.job_id, force=True)  # cancelled first, then forgotten
        with pytest.raises(JobCancelledError) as cancelled:
            future.result(timeout=10)
        assert cancelled.value.code is grpc.StatusCode.CANCELLED and cancelled.value.reason == "CANCELLED"
        with pytest.raises(NotFoundError) as forgotten:
            client.get(future.job_id)
        assert forgotten.value.code is grpc.StatusCode.NOT_FOUND and forgotten.value.reason == "JOB_NOT_FOUND"


def test_expiry(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server('retention_seconds = 1.0\nsweep_interval_seconds = 0.2\n[routes.echo]\nbackend = "echo"\n')
    with Client(server.target) as client:
        future = client.submit("echo", {"x": 1})
        future.result(timeout=10)
        assert client.fetch(future.job_id).result == Output({"x": 1})
        deadline = time.monotonic() + 10
        while True:  # swept within about retention + sweep interval
            try:
                client.get(future.job_id)
            except NotFoundError:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for call in (lambda: client.fetch(future.job_id), lambda: list(client.watch(future.job_id)),
                     lambda: client.get(future.job_id)):
            with pytest.raises(GatewayError) as expired:
                call()
            assert expired.value.code is grpc.StatusCode.NOT_FOUND and expired.value.reason == "JOB_EXPIRED"
        assert list(client.iter_jobs()) == []


def test_auth_and_tenant_isolation(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(
        '[auth]\nenabled = true\n[auth.tokens]\nalpha-token = "alpha"\nbeta-token = "beta"\n'
        '[routes.echo]\nbackend = "echo"\n'
    )
    with Client(server.target) as anonymous:
        with pytest.raises(GatewayError) as missing:
            anonymous.submit_job("echo", {})
        assert missing.value.code is grpc.StatusCode.UNAUTHENTICATED and missing.value.reason == "MISSING_TOKEN"
    with Client(server.target, token="wrong") as wrong:
        with pytest.raises(GatewayError) as invalid:
            wrong.list()
        assert invalid.value.code is grpc.StatusCode.UNAUTHENTICATED and invalid.value.reason == "INVALID_TOKEN"
    with Client(server.target, token="alpha-token") as alpha, Client(server.target, token="beta-token") as beta:
        # Beta's dashboard stream is open throughout: it must see beta's job and never one of alpha's.
        beta_saw: list[str] = []
        opened = threading.Event()

        def beta_dashboard() -> None:
            for job in beta.watch_jobs(timeout=20):
                opened.set()
                beta_saw.append(job.id)
                if job.id == beta_marker[0] and job.state.done:
                    return

        beta_marker: list[str] = []
        first = beta.submit("echo", {"first": True, "delay_ms": 1500})  # active: on the stream at once
        beta_marker.append(first.job_id)
        reader = threading.Thread(target=beta_dashboard, daemon=True)
        reader.start()
        assert opened.wait(10)
        future = alpha.submit("echo", {"secret": 1})
        future.result(timeout=10)
        for call in (lambda: beta.get(future.job_id), lambda: beta.fetch(future.job_id),
                     lambda: beta.cancel(future.job_id), lambda: list(beta.watch(future.job_id)),
                     lambda: beta.delete(future.job_id)):
            with pytest.raises(GatewayError) as hidden:
                call()
            assert hidden.value.code is grpc.StatusCode.NOT_FOUND and hidden.value.reason == "JOB_NOT_FOUND"
        first.result(timeout=10)
        reader.join(20)
        assert beta_saw and set(beta_saw) == {first.job_id}  # alpha's job never appeared on beta's stream
        assert [j.id for j in beta.iter_jobs()] == [first.job_id] and len(list(alpha.iter_jobs())) == 1
        # The same request_id in two tenants is two jobs.
        a, _ = alpha.submit_job("echo", {}, request_id="same")
        b, existing = beta.submit_job("echo", {}, request_id="same")
        assert a.id != b.id and not existing
    assert server.health() == health_pb2.HealthCheckResponse.SERVING  # health needs no token


def test_watch_jobs_stream_for_dashboards(echo_server: ServerProcess) -> None:
    with Client(echo_server.target) as client:
        seen: list[tuple[str, JobState]] = []
        opened = threading.Event()
        marker = client.submit("echo", {"delay_ms": 60_000}, labels={"dash": "yes"})

        def dashboard() -> None:
            for job in client.watch_jobs(labels={"dash": "yes"}):
                opened.set()  # the marker, as an active job or as a change: the stream is open
                if job.id != marker.job_id:
                    seen.append((job.id, job.state))
                if sum(1 for _, s in seen if s.done) >= 3:
                    return

        thread = threading.Thread(target=dashboard, daemon=True)
        thread.start()
        assert opened.wait(10)
        futures = [client.submit("echo", {"delay_ms": 100 * i}, labels={"dash": "yes"}) for i in range(3)]
        client.submit("echo", {}, labels={"dash": "no"}).result(timeout=10)
        for f in futures:
            f.result(timeout=10)
        thread.join(timeout=10)
        assert not thread.is_alive()
        marker.cancel()
        ids = {f.job_id for f in futures}
        assert {job_id for job_id, _ in seen} == ids
        assert {job_id for job_id, state in seen if state is JobState.SUCCEEDED} == ids


def test_health_and_reflection(echo_server: ServerProcess) -> None:
    assert echo_server.health("") == health_pb2.HealthCheckResponse.SERVING
    assert echo_server.health(SERVICE) == health_pb2.HealthCheckResponse.SERVING
    assert echo_server.health("route/echo") == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as unknown:
        echo_server.health("route/nope")
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
    with grpc.insecure_channel(echo_server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


def test_oversized_and_malformed_requests(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server('max_receive_bytes = 100000\n[routes.echo]\nbackend = "echo"\n')
    with Client(server.target) as client:
        with pytest.raises(GatewayError) as big:
            client.submit_job("echo", {"blob": "x" * 200_000})
        assert big.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED and big.value.reason == "REQUEST_TOO_LARGE"
    with grpc.insecure_channel(server.target) as channel:
        raw = channel.unary_unary(f"/{SERVICE}/Submit")
        with pytest.raises(grpc.RpcError) as malformed:
            raw(b"\xff\xff\xff\xff", timeout=5)
        assert malformed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        stub = pb_grpc.GatewayServiceStub(channel)
        assert stub.Submit(pb.SubmitRequest(route="echo", inputs={}), timeout=5).job.id  # still healthy


def _raw_submit_error(target: str, size: int) -> grpc.RpcError:
    """The refusal of a raw Submit (no client-side checks) of about ``size`` bytes."""
    request = pb.SubmitRequest(route="echo")
    request.inputs.update({"blob": "x" * size})
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)]) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary(f"/{SERVICE}/Submit")(request.SerializeToString(), timeout=60)
    return refused.value


def test_every_oversized_request_is_refused_with_its_reason_and_limit(make_server) -> None:  # type: ignore[no-untyped-def]
    """Past the receive limit, by a little or by far more than gRPC's old 4 MiB of headroom: each
    refusal is RESOURCE_EXHAUSTED REQUEST_TOO_LARGE naming the limit and the size. Past
    max_refused_request_bytes gRPC refuses from the length prefix; the client still names the reason."""
    server = make_server('max_receive_bytes = 1048576\nmax_refused_request_bytes = 16777216\n'
                         '[routes.echo]\nbackend = "echo"\n')
    for size in (1_100_000, 6 * 1024 * 1024, 15 * 1024 * 1024):
        refused = _raw_submit_error(server.target, size)
        assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, size
        info = error_info(refused)[1]
        assert info.reason == "REQUEST_TOO_LARGE", size
        assert info.metadata["limitBytes"] == "1048576" and int(info.metadata["sizeBytes"]) > size
    beyond = _raw_submit_error(server.target, 20 * 1024 * 1024)
    assert beyond.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    with Client(server.target) as client:
        with pytest.raises(GatewayError) as far:
            client.submit_job("echo", {"blob": "x" * (20 * 1024 * 1024)})
        assert far.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED and far.value.reason == "REQUEST_TOO_LARGE"
        assert int(far.value.metadata["sizeBytes"]) > 20 * 1024 * 1024
        assert client.submit_job("echo", {"n": 1}).job.id  # still serving


def test_a_request_of_the_default_limit_plus_8_mib_names_its_limit(echo_server: ServerProcess) -> None:
    refused = _raw_submit_error(echo_server.target, 40 * 1024 * 1024)
    info = error_info(refused)[1]
    assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and info.reason == "REQUEST_TOO_LARGE"
    assert info.metadata["limitBytes"] == str(32 * 1024 * 1024)


def test_one_request_id_submitted_at_once_makes_one_job(echo_server: ServerProcess) -> None:
    """Many Submits with the same request_id racing in one process: one job, every answer names it, and
    exactly one says it made it."""
    barrier = threading.Barrier(8)
    answers: list[tuple[str, bool]] = []
    lock = threading.Lock()
    with Client(echo_server.target) as client:
        def submit() -> None:
            barrier.wait(10)
            job, existing = client.submit_job("echo", {"n": 1}, request_id="race-1")
            with lock:
                answers.append((job.id, existing))

        threads = [threading.Thread(target=submit) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(answers) == 8 and len({job_id for job_id, _ in answers}) == 1
        assert sorted(existing for _, existing in answers) == [False] + [True] * 7
        assert [j.id for j in client.iter_jobs() if j.request_id == "race-1"] == [answers[0][0]]
