"""Several gateway processes sharing one real Redis: a job submitted through replica A is watched,
fetched and listed through replica B; watchers cut off by A's kill -9 resume on B with nothing missed
or repeated; one request_id sent through both replicas at once makes one job."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from harness import ECHO_CONFIG, ServerProcess, error_info
from harness.redis import RedisProcess


@pytest.fixture
def replicas(redis_process: RedisProcess, make_server: Callable[..., ServerProcess]) -> Iterator[
        tuple[ServerProcess, ServerProcess]]:
    redis_process.flush()
    config = (f'store = "{redis_process.url}"\nheartbeat_seconds = 0.2\nshutdown_grace_seconds = 0\n'
              'lease_seconds = 2\n' + ECHO_CONFIG)
    yield make_server(config), make_server(config)


def _stub(server: ServerProcess) -> tuple[grpc.Channel, pb_grpc.GatewayServiceStub]:
    channel = grpc.insecure_channel(server.target)
    return channel, pb_grpc.GatewayServiceStub(channel)


def _submit(stub: pb_grpc.GatewayServiceStub, request_id: str = "", **inputs: object) -> pb.SubmitResponse:
    struct = struct_pb2.Struct()
    struct.update(inputs)
    return stub.Submit(pb.SubmitRequest(route="echo", inputs=struct, request_id=request_id), timeout=30)


def _revisions(stub: pb_grpc.GatewayServiceStub, job_id: str, after: int = 0,
               until: Callable[[pb.Job], bool] = lambda job: False) -> list[pb.Job]:
    jobs = []
    for response in stub.Watch(pb.WatchRequest(job_id=job_id, after_revision=after), timeout=60):
        if response.WhichOneof("event") == "update":
            jobs.append(response.update.job)
            if until(response.update.job):
                break
    return jobs


def test_submit_through_a_watch_fetch_and_list_through_b(replicas: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = replicas
    channel_a, stub_a = _stub(a)
    channel_b, stub_b = _stub(b)
    with channel_a, channel_b:
        dashboard = stub_b.WatchJobs(pb.WatchJobsRequest(), timeout=60)
        first = next(iter(dashboard))  # B's dashboard is open before the job exists
        assert first.resume_token
        job = _submit(stub_a, delay_ms=600, steps=3, x=1).job
        seen = _revisions(stub_b, job.id)
        assert [j.revision for j in seen] == list(range(seen[0].revision, seen[-1].revision + 1))
        assert seen[-1].done and seen[-1].state == pb.JOB_STATE_SUCCEEDED and seen[-1].revision == 6
        fetched = stub_b.Fetch(pb.FetchRequest(job_id=job.id), timeout=30)
        assert fetched.output.struct_value.fields["x"].number_value == 1
        assert [j.id for j in stub_b.List(pb.ListRequest(), timeout=30).jobs] == [job.id]
        states = []
        for response in dashboard:
            if response.WhichOneof("event") == "job" and response.job.id == job.id:
                states.append(response.job.state)
                if response.job.done:
                    break
        dashboard.cancel()
        assert states[-1] == pb.JOB_STATE_SUCCEEDED


def test_watchers_of_a_killed_replica_resume_on_the_other(replicas: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = replicas
    channel_a, stub_a = _stub(a)
    channel_b, stub_b = _stub(b)
    with channel_a, channel_b:
        job = _submit(stub_a, delay_ms=4000, steps=40).job
        # One watcher on A until the job has made some progress; one on B throughout.
        on_b: list[pb.Job] = []
        following = threading.Thread(target=lambda: on_b.extend(_revisions(stub_b, job.id)), daemon=True)
        following.start()
        on_a = _revisions(stub_a, job.id, until=lambda j: j.progress >= 0.2)
        a.kill()  # the job stops with A, mid-run; B takes it over once A's lease lapses (attempt 2)
        last = on_a[-1].revision
        a.restart()
        rest = _revisions(stub_b, job.id, after=last)
        following.join(timeout=60)
    resumed = on_a + rest
    for stream in (resumed, on_b):
        revisions = [j.revision for j in stream]
        assert revisions == list(range(revisions[0], revisions[-1] + 1)), revisions  # none missed, none twice
        assert stream[-1].done and stream[-1].state == pb.JOB_STATE_SUCCEEDED
    assert [j.revision for j in on_b][-1] == [j.revision for j in resumed][-1]


def _race(call: Callable[[pb_grpc.GatewayServiceStub], pb.SubmitResponse],
          *stubs: pb_grpc.GatewayServiceStub) -> list[pb.SubmitResponse]:
    """Makes the call through every stub at the same moment (a barrier); answers every response."""
    answers: list[pb.SubmitResponse] = []
    barrier = threading.Barrier(len(stubs))

    def send(stub: pb_grpc.GatewayServiceStub) -> None:
        barrier.wait()
        answers.append(call(stub))

    threads = [threading.Thread(target=send, args=(stub,)) for stub in stubs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return answers


def test_one_request_id_through_both_replicas_at_once_makes_one_job(
        replicas: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = replicas
    channel_a, stub_a = _stub(a)
    channel_b, stub_b = _stub(b)
    with channel_a, channel_b:
        for round_ in range(10):
            answers = _race(lambda stub, n=round_: _submit(stub, request_id=f"order-{n}", n=n), stub_a, stub_b)
            assert len(answers) == 2 and answers[0].job.id == answers[1].job.id
            assert sorted(r.existing for r in answers) == [False, True]
        request = pb.FetchRequest(job_id=answers[0].job.id, timeout=duration_pb2.Duration(seconds=30))
        assert stub_b.Fetch(request, timeout=40).job.done


def test_a_job_running_on_a_is_cancelled_through_b(replicas: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = replicas
    channel_a, stub_a = _stub(a)
    channel_b, stub_b = _stub(b)
    with channel_a, channel_b:
        job = _submit(stub_a, delay_ms=30_000, steps=300).job
        _revisions(stub_b, job.id, until=lambda j: j.state == pb.JOB_STATE_RUNNING)
        answer = stub_b.Cancel(pb.CancelRequest(job_id=job.id), timeout=30).job
        assert answer.state in (pb.JOB_STATE_RUNNING, pb.JOB_STATE_CANCELLED)
        for stub in (stub_a, stub_b):  # both replicas' watchers see the end
            end = _revisions(stub, job.id)[-1]
            assert end.done and end.state == pb.JOB_STATE_CANCELLED
        # A's worker lets the job go: its later writes are refused, nothing follows the end.
        after = stub_a.Get(pb.GetRequest(job_id=job.id), timeout=30).job
        assert after.state == pb.JOB_STATE_CANCELLED and after.revision == end.revision


def _refusal(call: Callable[[], object]) -> grpc.RpcError | None:
    try:
        call()
    except grpc.RpcError as error:
        return error
    return None


def _reason(error: grpc.RpcError) -> str:
    return error_info(error)[1].reason


def _until_done(stub: pb_grpc.GatewayServiceStub, job_id: str) -> None:
    """Cancel answers at once; the job ends (and leaves the queue) when its end is stored: wait for that."""
    request = pb.FetchRequest(job_id=job_id, timeout=duration_pb2.Duration(seconds=10))
    assert stub.Fetch(request, timeout=20).job.state == pb.JOB_STATE_CANCELLED


@pytest.fixture
def api_replicas(redis_process: RedisProcess, make_server: Callable[..., ServerProcess]) -> Iterator[
        tuple[ServerProcess, ServerProcess]]:
    """Two API replicas that run no jobs (--workers 0): what is queued stays queued."""
    redis_process.flush()
    config = (f'store = "{redis_process.url}"\nshutdown_grace_seconds = 0\n'
              '[routes.echo]\nbackend = "echo"\nmax_queue = 4\nmax_queued_bytes = 6000\n')
    yield make_server(config, args=("--workers", "0")), make_server(config, args=("--workers", "0"))


def test_max_queue_holds_across_replicas_submitting_at_once(api_replicas: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = api_replicas
    channel_a, stub_a = _stub(a)
    channel_b, stub_b = _stub(b)
    with channel_a, channel_b:
        outcomes: list[object] = []
        lock = threading.Lock()
        barrier = threading.Barrier(10)

        def send(stub: pb_grpc.GatewayServiceStub, n: int) -> None:
            barrier.wait()
            try:
                result: object = _submit(stub, n=n)
            except grpc.RpcError as error:
                result = error
            with lock:
                outcomes.append(result)

        threads = [threading.Thread(target=send, args=(stub_a if n % 2 else stub_b, n)) for n in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        accepted = [o for o in outcomes if isinstance(o, pb.SubmitResponse)]
        refused = [o for o in outcomes if isinstance(o, grpc.RpcError)]
        # Each replica alone would have let up to four through: the store's count lets four in all.
        assert len(accepted) == 4 and len(refused) == 6
        assert all(e.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and _reason(e) == "QUEUE_FULL" for e in refused)
        # A queued job cancelled frees its place for the next Submit, through either replica.
        stub_a.Cancel(pb.CancelRequest(job_id=accepted[0].job.id), timeout=10)
        _until_done(stub_b, accepted[0].job.id)
        assert _submit(stub_b, n=99).job.id
        assert _refusal(lambda: _submit(stub_a, n=100)) is not None


def test_queued_input_bytes_are_bounded_across_replicas(api_replicas: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = api_replicas
    channel_a, stub_a = _stub(a)
    channel_b, stub_b = _stub(b)
    blob = "x" * 1800  # about 1.8 kB of input each: three fit under the route's 6,000 bytes, a fourth does not
    with channel_a, channel_b:
        first = _submit(stub_a, blob=blob)
        _submit(stub_b, blob=blob)
        _submit(stub_a, blob=blob)
        refused = _refusal(lambda: _submit(stub_b, blob=blob))
        assert refused is not None and refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _reason(refused) == "QUEUE_BYTES_FULL" and "6000" in (refused.details() or "")
        assert _submit(stub_b, blob="small").job.id  # a small one still fits
        # A job that ends gives its bytes back: the big one fits again.
        stub_b.Cancel(pb.CancelRequest(job_id=first.job.id), timeout=10)
        _until_done(stub_a, first.job.id)
        assert _submit(stub_a, blob=blob).job.id
