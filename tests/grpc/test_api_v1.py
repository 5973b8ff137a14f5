"""The v1 contract over the wire, with the generated stub (as any language sees it): Fetch's wait,
Cancel at once, Delete with force, Job.done, and the error model's domain and metadata keys."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from harness import ServerProcess


@pytest.fixture
def stub(echo_server: ServerProcess) -> Iterator[pb_grpc.GatewayServiceStub]:
    channel = grpc.insecure_channel(echo_server.target)
    yield pb_grpc.GatewayServiceStub(channel)
    channel.close()


def _submit(stub: pb_grpc.GatewayServiceStub, **inputs: object) -> pb.Job:
    struct = struct_pb2.Struct()
    struct.update(inputs)
    return stub.Submit(pb.SubmitRequest(route="echo", inputs=struct), timeout=30).job


def _error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo")


def _running(stub: pb_grpc.GatewayServiceStub) -> pb.Job:
    job = _submit(stub, delay_ms=60_000, steps=600)
    for response in stub.Watch(pb.WatchRequest(job_id=job.id), timeout=30):
        if response.WhichOneof("event") == "update" and response.update.job.state == pb.JOB_STATE_RUNNING:
            return response.update.job
    raise AssertionError("never ran")


def test_fetch_waits_up_to_its_timeout_and_answers_the_job_as_it_is(stub: pb_grpc.GatewayServiceStub) -> None:
    job = _running(stub)
    try:
        started = time.monotonic()
        request = pb.FetchRequest(job_id=job.id, timeout=duration_pb2.Duration(nanos=300_000_000))
        answer = stub.Fetch(request, timeout=30)
        assert time.monotonic() - started >= 0.3
        assert not answer.job.done and answer.job.state == pb.JOB_STATE_RUNNING
        assert answer.WhichOneof("result") is None

        # A call deadline shorter than the timeout: still an answer, before the deadline.
        request = pb.FetchRequest(job_id=job.id, timeout=duration_pb2.Duration(seconds=60))
        started = time.monotonic()
        answer = stub.Fetch(request, timeout=2)
        assert time.monotonic() - started < 2 and not answer.job.done

        with pytest.raises(grpc.RpcError) as not_done:  # no timeout: "not yet" is an error
            stub.Fetch(pb.FetchRequest(job_id=job.id), timeout=30)
        assert not_done.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _error_info(not_done.value).reason == "JOB_NOT_DONE"
        with pytest.raises(grpc.RpcError) as negative:
            stub.Fetch(pb.FetchRequest(job_id=job.id, timeout=duration_pb2.Duration(seconds=-1)), timeout=30)
        assert negative.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        stub.Cancel(pb.CancelRequest(job_id=job.id), timeout=30)


def test_fetch_with_a_timeout_answers_the_result_when_the_job_ends_in_time(stub: pb_grpc.GatewayServiceStub) -> None:
    job = _submit(stub, delay_ms=300, steps=2, x=1)
    answer = stub.Fetch(pb.FetchRequest(job_id=job.id, timeout=duration_pb2.Duration(seconds=30)), timeout=40)
    assert answer.job.done and answer.job.state == pb.JOB_STATE_SUCCEEDED
    assert answer.WhichOneof("result") == "output" and answer.output.struct_value.fields["x"].number_value == 1


def test_cancel_answers_at_once_and_the_stream_ends_cancelled(stub: pb_grpc.GatewayServiceStub) -> None:
    job = _running(stub)
    started = time.monotonic()
    asked = stub.Cancel(pb.CancelRequest(job_id=job.id), timeout=30).job
    assert time.monotonic() - started < 1.0
    assert asked.state in (pb.JOB_STATE_RUNNING, pb.JOB_STATE_CANCELLED)
    updates = [r.update.job for r in stub.Watch(pb.WatchRequest(job_id=job.id), timeout=30)
               if r.WhichOneof("event") == "update"]
    assert updates[-1].state == pb.JOB_STATE_CANCELLED and updates[-1].done
    assert all(not j.done for j in updates[:-1])
    assert updates[-1].error.code == grpc.StatusCode.CANCELLED.value[0]


def test_delete_refuses_an_active_job_unless_forced(stub: pb_grpc.GatewayServiceStub) -> None:
    job = _running(stub)
    with pytest.raises(grpc.RpcError) as refused:
        stub.Delete(pb.DeleteRequest(job_id=job.id), timeout=30)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = _error_info(refused.value)
    assert info.reason == "JOB_NOT_DONE" and info.metadata["jobId"] == job.id
    assert not stub.Get(pb.GetRequest(job_id=job.id), timeout=30).job.done  # still there, still running
    stub.Delete(pb.DeleteRequest(job_id=job.id, force=True), timeout=30)
    with pytest.raises(grpc.RpcError) as gone:
        stub.Get(pb.GetRequest(job_id=job.id), timeout=30)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND and _error_info(gone.value).reason == "JOB_NOT_FOUND"


def test_errors_carry_the_service_domain_and_lower_camel_case_metadata(stub: pb_grpc.GatewayServiceStub) -> None:
    cases = [
        lambda: stub.Get(pb.GetRequest(job_id="0" * 32), timeout=30),
        lambda: stub.Submit(pb.SubmitRequest(route="nope", inputs=struct_pb2.Struct()), timeout=30),
    ]
    for call in cases:
        with pytest.raises(grpc.RpcError) as failed:
            call()
        info = _error_info(failed.value)
        assert info.domain == "gateway.inferencegateway.dev"
        assert info.metadata and all("_" not in key and key[:1].islower() for key in info.metadata), info.metadata


def test_done_is_set_exactly_on_the_terminal_revision(stub: pb_grpc.GatewayServiceStub) -> None:
    job = _submit(stub, delay_ms=200, steps=2, fail_with="boom")
    assert not job.done
    updates = [r.update.job for r in stub.Watch(pb.WatchRequest(job_id=job.id), timeout=30)
               if r.WhichOneof("event") == "update"]
    assert [j.done for j in updates] == [False] * (len(updates) - 1) + [True]
    assert updates[-1].state == pb.JOB_STATE_FAILED
    listed = stub.List(pb.ListRequest(), timeout=30).jobs
    assert any(j.id == job.id and j.done for j in listed)


@pytest.mark.parametrize("priority", [-1, 6, 1000])
def test_a_priority_out_of_range_is_invalid_argument_naming_the_field(stub: pb_grpc.GatewayServiceStub,
                                                                      priority: int) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        stub.Submit(pb.SubmitRequest(route="echo", inputs=struct_pb2.Struct(), priority=priority), timeout=30)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _error_info(refused.value).reason == "INVALID_REQUEST"
    assert "priority" in (refused.value.details() or "")


def test_priority_comes_back_on_the_job_and_defaults_to_3(stub: pb_grpc.GatewayServiceStub) -> None:
    urgent = stub.Submit(pb.SubmitRequest(route="echo", inputs=struct_pb2.Struct(), priority=1), timeout=30).job
    plain = _submit(stub)
    assert (urgent.priority, plain.priority) == (1, 3)
    assert stub.Get(pb.GetRequest(job_id=urgent.id), timeout=30).job.priority == 1
