"""Submit's receive slots (gateway.api.gate): a caller that has not authenticated takes none (headers
and no body, an oversized message, a 16 KiB header: all of them refused, holding nothing), an
authenticated one holds its slots only while its call lasts (a cancel or a deadline gives them back
at once), and a slot that comes free goes to the tenant holding the fewest."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import grpc
import pytest
from google.protobuf import struct_pb2
from inferencegateway.gateway.v1 import gateway_pb2 as pb

from gateway.api.gate import Slots
from tests.conftest import ServerProcess, error_info, wait_until

MiB = 1024 * 1024
SLOTS = 3  # max_inflight_submit_bytes / max_receive_bytes
CONFIG = f"""max_receive_bytes = {MiB}
max_inflight_submit_bytes = {SLOTS * MiB}
[auth]
enabled = true
[auth.tokens]
alpha-token = "alpha"
beta-token = "beta"
[routes.echo]
backend = "echo"
"""
SUBMIT = "/inferencegateway.gateway.v1.GatewayService/Submit"
ALPHA = (("authorization", "Bearer alpha-token"),)
BETA = (("authorization", "Bearer beta-token"),)


def _request() -> bytes:
    return pb.SubmitRequest(route="echo", inputs=struct_pb2.Struct()).SerializeToString()


class Silent:
    """Calls that send their headers and never a message (a request iterator that never yields)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._call = channel.stream_unary(SUBMIT)
        self._stop = threading.Event()
        self.calls: list[grpc.Future] = []

    def _never(self) -> Iterator[bytes]:
        self._stop.wait()
        return
        yield b""

    def open(self, n: int, metadata: tuple[tuple[str, str], ...] = (), timeout: float = 60.0) -> list[grpc.Future]:
        opened = [self._call.future(self._never(), metadata=metadata, timeout=timeout) for _ in range(n)]
        self.calls += opened
        return opened

    def close(self) -> None:
        self._stop.set()
        for call in self.calls:
            call.cancel()


@pytest.fixture
def gateway(make_server: Callable[..., ServerProcess]) -> Iterator[tuple[grpc.Channel, Silent]]:
    server = make_server(CONFIG)
    with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", -1)]) as channel:
        silent = Silent(channel)
        try:
            yield channel, silent
        finally:
            silent.close()


def _submit(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ALPHA, timeout: float = 5.0) -> bytes:
    return channel.unary_unary(SUBMIT)(_request(), metadata=metadata, timeout=timeout)


def _all_slots_held(channel: grpc.Channel) -> bool:
    """Whether a Submit now waits (its deadline passes while the slots are held by others)."""
    try:
        _submit(channel, timeout=0.5)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED, exc
        return True
    return False


def test_strangers_take_no_receive_slots(gateway: tuple[grpc.Channel, Silent]) -> None:
    channel, silent = gateway
    headers_only = silent.open(3 * SLOTS)
    with_a_wrong_token = silent.open(3 * SLOTS, metadata=(("authorization", "Bearer nobody"),))
    padded = silent.open(3 * SLOTS, metadata=(("x-padding", "p" * 16 * 1024),))
    oversized = [channel.unary_unary(SUBMIT).future(b"\0" * (2 * MiB), timeout=60) for _ in range(3 * SLOTS)]
    # An authenticated Submit goes through at once, whatever the strangers keep open.
    assert pb.SubmitResponse.FromString(_submit(channel)).job.id
    for call in headers_only + with_a_wrong_token + oversized:
        error = call.exception(timeout=10)
        assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED, error
        assert error_info(error)[1].reason in ("MISSING_TOKEN", "INVALID_TOKEN")
    for call in padded:  # refused by gRPC itself, for its header
        error = call.exception(timeout=10)
        assert error is not None and error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert pb.SubmitResponse.FromString(_submit(channel)).job.id


def test_slots_come_back_at_once_on_cancel_and_deadline(gateway: tuple[grpc.Channel, Silent]) -> None:
    channel, silent = gateway
    holders = silent.open(SLOTS, metadata=ALPHA)
    wait_until(lambda: _all_slots_held(channel), "the silent Submits to hold every slot")
    for call in holders:
        call.cancel()
    assert pb.SubmitResponse.FromString(_submit(channel)).job.id

    expiring = silent.open(SLOTS, metadata=ALPHA, timeout=2.0)
    wait_until(lambda: all(call.done() for call in expiring), "the silent Submits' deadlines")
    assert all(call.exception().code() == grpc.StatusCode.DEADLINE_EXCEEDED for call in expiring)  # type: ignore[union-attr]
    assert pb.SubmitResponse.FromString(_submit(channel)).job.id


def test_a_slot_that_comes_free_goes_to_the_tenant_holding_fewest(gateway: tuple[grpc.Channel, Silent]) -> None:
    channel, silent = gateway
    holders = silent.open(SLOTS, metadata=ALPHA)
    wait_until(lambda: _all_slots_held(channel), "alpha's silent Submits to hold every slot")
    silent.open(2 * SLOTS, metadata=ALPHA)  # alpha waits for more: first come, beta would wait for them all
    beta = channel.unary_unary(SUBMIT).future(_request(), metadata=BETA, timeout=30)
    holders[0].cancel()  # (beta's call may reach the gate only after this slot went to alpha's next)
    try:
        beta.result(timeout=3)
    except grpc.FutureTimeoutError:
        holders[1].cancel()
    assert pb.SubmitResponse.FromString(beta.result(timeout=10)).job.id


def test_a_call_without_a_message_is_refused_with_a_reason(gateway: tuple[grpc.Channel, Silent]) -> None:
    channel, _ = gateway
    with pytest.raises(grpc.RpcError) as refused:
        channel.stream_unary(SUBMIT)(iter(()), metadata=ALPHA, timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(refused.value)[1].reason == "MALFORMED_REQUEST"


def test_slots_are_shared_fairly_and_cancelled_waiters_leave_no_trace() -> None:
    async def scenario() -> None:
        slots = Slots(2)
        await slots.take("a")
        await slots.take("a")
        order: list[str] = []

        async def wait(tenant: str) -> None:
            await slots.take(tenant)
            order.append(tenant)

        a_waits = [asyncio.create_task(wait("a")) for _ in range(3)]
        gone = asyncio.create_task(wait("c"))
        b_waits = asyncio.create_task(wait("b"))
        await asyncio.sleep(0)
        gone.cancel()  # a waiter whose call ended takes nothing
        await asyncio.sleep(0)
        slots.give_back("a")
        await asyncio.sleep(0)
        assert order == ["b"]  # b held none; a held one
        slots.give_back("a")
        await asyncio.sleep(0)
        assert order == ["b", "a"] and slots.free == 0 and dict(slots.held) == {"a": 1, "b": 1}
        for task in a_waits:
            task.cancel()
        await asyncio.gather(*a_waits, b_waits, gone, return_exceptions=True)
        slots.give_back("a")
        slots.give_back("b")
        assert slots.free == 2 and not slots.held and not slots._waiting

    asyncio.run(scenario())
