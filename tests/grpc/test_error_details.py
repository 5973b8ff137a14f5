"""Error details stay small and keep their reason, whatever the size of the input they are about:
messages and ErrorInfo metadata quote a short prefix of user input, so gRPC never replaces the
status with its own "metadata size exceeds hard limit" (which has no ErrorInfo)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from gateway.errors import MAX_MESSAGE, FieldViolation, InvalidArgument, clip
from harness import ServerProcess, error_info

HUGE = "x" * 200_000


@pytest.mark.parametrize("call", ["get", "watch", "cancel", "label", "route", "request_id"])
def test_huge_user_input_gets_a_small_error_with_its_reason(echo_server: ServerProcess, call: str) -> None:
    with grpc.insecure_channel(echo_server.target) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            if call == "get":
                stub.Get(pb.GetRequest(job_id=HUGE), timeout=10)
            elif call == "watch":
                list(stub.Watch(pb.WatchRequest(job_id=HUGE), timeout=10))
            elif call == "cancel":
                stub.Cancel(pb.CancelRequest(job_id=HUGE), timeout=10)
            else:
                inputs = struct_pb2.Struct()
                request = pb.SubmitRequest(route="echo", inputs=inputs)
                if call == "label":
                    request.labels[HUGE] = "v"
                elif call == "route":
                    request.route = HUGE
                else:
                    request.request_id = HUGE
                stub.Submit(request, timeout=10)
        error = refused.value
        assert error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), error
        status, info = error_info(error)
        assert info.reason and info.reason != "ERROR"
        assert len(status.message) <= MAX_MESSAGE and len(status.SerializeToString()) < 4096
        assert all(len(v) <= 256 for v in info.metadata.values())
        # The server is fine afterwards.
        assert stub.Submit(pb.SubmitRequest(route="echo", inputs=struct_pb2.Struct()), timeout=10).job.id


def test_clip_keeps_a_prefix_and_says_how_long_the_text_was() -> None:
    assert clip("short") == "short"
    clipped = clip("y" * 1000, 100)
    assert len(clipped) <= 100 and clipped.startswith("y" * 60) and "(1000 characters)" in clipped
    error = InvalidArgument.fields(FieldViolation(f"labels[{HUGE!r}]", HUGE))
    assert len(error.field_violations[0].field) <= 128 and len(error.field_violations[0].description) <= 256


def test_submits_beyond_the_inflight_byte_budget_are_refused_before_parsing() -> None:
    from gateway.api.servicer import _Admitted, _InflightBytes, _Rejected, _submit_deserializer

    inflight = _InflightBytes(3_000_000)
    parse = _submit_deserializer(32 * 1024 * 1024, inflight)
    big = pb.SubmitRequest(route="whisper", transcription=pb.TranscriptionRequest(audio=b"\1" * 1_400_000))
    data = big.SerializeToString()
    first, second = parse(data), parse(data)
    assert isinstance(first, _Admitted) and isinstance(second, _Admitted) and inflight.held == 2 * len(data)
    third = parse(data)  # would pass 3 MB
    assert isinstance(third, _Rejected) and third.error.reason == "SUBMIT_BYTES_IN_FLIGHT"
    assert third.error.retry_after == 1.0 and inflight.held == 2 * len(data)
    inflight.give_back(first.size)
    assert isinstance(parse(data), _Admitted)  # room again
    # A request alone passes whatever its size; a malformed one gives its bytes back at once.
    alone = _InflightBytes(1000)
    assert isinstance(_submit_deserializer(32 * 1024 * 1024, alone)(data), _Admitted)
    empty = _InflightBytes(1000)
    assert isinstance(_submit_deserializer(1 << 20, empty)(b"\xff\xff\xff"), _Rejected) and empty.held == 0


def test_a_large_submit_alone_passes_and_the_budget_is_given_back(make_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = make_server("max_inflight_submit_bytes = 1048576\n[routes.echo]\nbackend = \"echo\"\n")
    with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", -1)]) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        inputs = struct_pb2.Struct()
        inputs.update({"blob": "z" * 3_000_000})  # three times the budget, alone
        for _ in range(3):  # each one's bytes were given back, or the next would be refused
            assert stub.Submit(pb.SubmitRequest(route="echo", inputs=inputs), timeout=30).job.id


def test_audio_too_large_names_its_limit_and_the_size() -> None:
    from gateway.backends.audio import probe

    with pytest.raises(InvalidArgument) as refused:
        probe(b"\1" * 5000, "transcription.audio", 4096, 60.0)
    error = refused.value
    assert error.reason == "AUDIO_TOO_LARGE"
    assert error.metadata == {"limit_bytes": "4096", "size_bytes": "5000"}
    assert error.field_violations[0].field == "transcription.audio"
