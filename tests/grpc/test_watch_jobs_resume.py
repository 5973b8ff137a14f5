"""WatchJobs over the wire: every message carries a resume token, and a dashboard that reconnects
with it (even to a restarted server) gets the jobs that changed while it was away, finished ones
included, and nothing it had already seen."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2
from grpc_status import rpc_status
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from harness import ECHO_CONFIG, ServerProcess

CONFIG = "heartbeat_seconds = 0.2\n" + ECHO_CONFIG


def _submit(stub: pb_grpc.GatewayServiceStub, **inputs: object) -> str:
    struct = struct_pb2.Struct()
    struct.update(inputs)
    return str(stub.Submit(pb.SubmitRequest(route="echo", inputs=struct), timeout=30).job.id)


def _finish(stub: pb_grpc.GatewayServiceStub, job_id: str) -> None:
    request = pb.FetchRequest(job_id=job_id, timeout=duration_pb2.Duration(seconds=30))
    assert stub.Fetch(request, timeout=40).job.done


def _until_heartbeat(stream: Iterator[pb.WatchJobsResponse]) -> tuple[dict[str, pb.Job], str]:
    """The jobs a stream sends up to its first heartbeat, and the last resume token."""
    jobs: dict[str, pb.Job] = {}
    token = ""
    for response in stream:
        assert response.resume_token, "every message carries a resume token"
        token = response.resume_token
        if response.WhichOneof("event") == "heartbeat":
            return jobs, token
        jobs[response.job.id] = response.job
    raise AssertionError("the stream ended")


def test_watch_jobs_resumes_across_a_restart(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server(CONFIG)
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        seen_before = _submit(stub, x=0)
        _finish(stub, seen_before)
        stream = stub.WatchJobs(pb.WatchJobsRequest(), timeout=60)
        _, token = _until_heartbeat(stream)
        stream.cancel()
        away = [_submit(stub, x=i) for i in range(1, 4)]
        for job_id in away:
            _finish(stub, job_id)

    server.restart()
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        after_restart = _submit(stub, x=4)
        _finish(stub, after_restart)
        stream = stub.WatchJobs(pb.WatchJobsRequest(resume_token=token), timeout=60)
        jobs, token = _until_heartbeat(stream)
        stream.cancel()
        assert set(jobs) == {*away, after_restart}  # and not the job seen before the token
        assert all(job.done and job.state == pb.JOB_STATE_SUCCEEDED for job in jobs.values())

        # Resuming from the latest token: nothing to catch up on; then live changes as usual.
        stream = stub.WatchJobs(pb.WatchJobsRequest(resume_token=token), timeout=60)
        caught_up, _ = _until_heartbeat(stream)
        assert caught_up == {}
        live = _submit(stub, x=5)
        states = []
        for response in stream:
            if response.WhichOneof("event") == "job" and response.job.id == live:
                states.append(response.job.state)
                if response.job.done:
                    break
        stream.cancel()
        assert states[-1] == pb.JOB_STATE_SUCCEEDED


@pytest.mark.parametrize("token", ["garbage", "eyJzIjoib3RoZXIiLCJwIjoxfQ"])
def test_watch_jobs_refuses_a_foreign_token(echo_server: ServerProcess, token: str) -> None:
    with grpc.insecure_channel(echo_server.target) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            next(iter(stub.WatchJobs(pb.WatchJobsRequest(resume_token=token), timeout=30)))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(refused.value)
        assert status is not None and "INVALID_RESUME_TOKEN" in str(status.details[0].value)


def test_a_stream_cut_in_its_opening_snapshot_resumes_with_the_rest(echo_server: ServerProcess) -> None:
    with grpc.insecure_channel(echo_server.target) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        label = {"snapshot": "cut"}
        flt = pb.WatchJobsRequest(labels=label)
        active = []
        for i in range(6):
            struct = struct_pb2.Struct()
            struct.update({"delay_ms": 60_000, "i": i})
            active.append(stub.Submit(pb.SubmitRequest(route="echo", inputs=struct, labels=label), timeout=30).job.id)
        stream = stub.WatchJobs(flt, timeout=60)
        first = [next(stream) for _ in range(2)]  # two of the six, then the stream is cut
        stream.cancel()
        assert all(r.WhichOneof("event") == "job" for r in first)
        resumed = stub.WatchJobs(pb.WatchJobsRequest(labels=label, resume_token=first[-1].resume_token), timeout=60)
        rest, _ = _until_heartbeat(resumed)
        resumed.cancel()
        assert {r.job.id for r in first} | set(rest) == set(active)  # nothing of the snapshot lost
        for job_id in active:
            stub.Cancel(pb.CancelRequest(job_id=job_id), timeout=10)
