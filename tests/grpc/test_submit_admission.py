"""Submit's receive slots (gateway.api.gate): a caller that has not authenticated takes none (headers
and no body, an oversized message, a 16 KiB header: all of them refused, holding nothing), an
authenticated one holds its slots only while its call lasts (a cancel or a deadline gives them back
at once), and a slot that comes free goes to the tenant holding the fewest.

And every other RPC (unary and server-streaming alike) authenticates before its message is read:
strangers sending large bodies or none are refused at once and cost the server no memory, while
authenticated calls work as before, are counted by the metrics, and their requests are bounded
(REQUEST_TOO_LARGE beyond SMALL_REQUEST_BYTES, far above the largest legitimate one)."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from gateway.api.gate import Slots
from gateway.api.servicer import SMALL_REQUEST_BYTES
from harness import ServerProcess, error_info, wait_until

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


# -- every other RPC: authenticated before its message is read -----------------------------------

SERVICE = "/inferencegateway.gateway.v1.GatewayService"
BIG = 8 * MiB  # a request under gRPC's own limit (max_receive_bytes + 4 MiB): gRPC would receive it whole
GUARDED_CONFIG = f"""max_receive_bytes = {16 * MiB}
[auth]
enabled = true
[auth.tokens]
alpha-token = "alpha"
[routes.echo]
backend = "echo"
"""


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("guarded"), GUARDED_CONFIG).start()
    yield server
    server.stop()


def _never(stop: threading.Event) -> Iterator[bytes]:
    """A request iterator that sends no message (until ``stop``)."""
    stop.wait(60)
    return
    yield b""


def _kib(status: str, field: str) -> int:
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/<pid>/status")


class PeakRss:
    """The largest resident size of a process while the block runs, above what it was before, in bytes:
    the kernel's high-water mark, reset at the start (clear_refs), and a sampler for where it cannot be."""

    def __init__(self, pid: int) -> None:
        self.status = Path(f"/proc/{pid}/status")
        self.clear_refs = Path(f"/proc/{pid}/clear_refs")
        self.peak = 0
        self.growth = 0

    def _rss(self) -> int:
        return _kib(self.status.read_text(), "VmRSS") * 1024

    def __enter__(self) -> PeakRss:
        self.before = self._rss()
        try:
            self.clear_refs.write_text("5")  # the high-water mark starts again from the resident size
            self.hwm = True
        except OSError:
            self.hwm = False
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sampler.join()
        peak = max(self.peak, self._rss())
        if self.hwm:
            peak = max(peak, _kib(self.status.read_text(), "VmHWM") * 1024)
        self.growth = peak - self.before


def _refused_unauthenticated(call: grpc.Future, deadline: float) -> None:
    error = call.exception(timeout=max(0.0, deadline - time.monotonic()))
    assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNAUTHENTICATED, error
    assert error_info(error)[1].reason in ("MISSING_TOKEN", "INVALID_TOKEN")


def test_strangers_make_no_rpc_buffer_its_message(guarded: ServerProcess) -> None:
    n = 6
    body = pb.GetRequest(job_id="x" * BIG).SerializeToString()  # well-formed: only the token is wrong
    watch_body = pb.WatchRequest(job_id="x" * BIG).SerializeToString()
    wrong = (("authorization", "Bearer nobody"),)
    with grpc.insecure_channel(guarded.target, options=[("grpc.max_send_message_length", -1)]) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        job = stub.Submit(pb.SubmitRequest(route="echo", inputs=struct_pb2.Struct()), metadata=ALPHA, timeout=10).job
        assert stub.Get(pb.GetRequest(job_id=job.id), metadata=ALPHA, timeout=10).job.id == job.id  # warm
        pid = guarded.proc.pid  # type: ignore[union-attr]
        stop = threading.Event()
        started = time.monotonic()
        with PeakRss(pid) as rss:
            calls: list[grpc.Future] = []
            for i in range(n):
                metadata = wrong if i % 2 else ()
                calls.append(channel.unary_unary(f"{SERVICE}/Get").future(body, metadata=metadata, timeout=60))
                calls.append(channel.unary_stream(f"{SERVICE}/Watch")(watch_body, metadata=metadata, timeout=60))
                calls.append(channel.stream_unary(f"{SERVICE}/Get").future(_never(stop), metadata=metadata, timeout=60))
                calls.append(channel.stream_stream(f"{SERVICE}/Watch")(_never(stop), metadata=metadata, timeout=60))
            for method in ("Fetch", "Cancel", "Delete", "List"):
                calls.append(channel.unary_unary(f"{SERVICE}/{method}").future(body, timeout=60))
            calls.append(channel.unary_stream(f"{SERVICE}/WatchJobs")(body, timeout=60))
            deadline = started + 10  # promptly: a call that waited for its message would wait for its deadline
            for call in calls:
                _refused_unauthenticated(call, deadline)
        stop.set()
        for call in calls:
            call.cancel()
        # 2 * n * 8 MiB of messages were sent: received whole, they would have cost all of it and more.
        assert rss.growth < 16 * MiB, f"the server grew by {rss.growth / MiB:.1f} MiB"
        # An authenticated caller is served throughout.
        assert stub.Get(pb.GetRequest(job_id=job.id), metadata=ALPHA, timeout=10).job.id == job.id


def _scrape(server: ServerProcess) -> dict[tuple[str, str, str], float]:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {(sample.name, sample.labels.get("method", sample.labels.get("rpc", "")), sample.labels.get("code", "")):
            sample.value for family in text_string_to_metric_families(text) for sample in family.samples}


def test_authenticated_calls_work_and_are_counted(guarded: ServerProcess) -> None:
    before = _scrape(guarded)
    with grpc.insecure_channel(guarded.target) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        inputs = struct_pb2.Struct()
        inputs.update({"n": 1})
        job = stub.Submit(pb.SubmitRequest(route="echo", inputs=inputs, labels={"k": "v"}), metadata=ALPHA,
                          timeout=10).job
        assert stub.Get(pb.GetRequest(job_id=job.id), metadata=ALPHA, timeout=10).job.id == job.id
        watch = stub.Watch(pb.WatchRequest(job_id=job.id), metadata=ALPHA, timeout=30)
        updates = [u for u in watch if u.HasField("update")]  # pre-serialized bytes, parsed here
        watch.cancel()
        assert updates and updates[-1].update.job.state == pb.JOB_STATE_SUCCEEDED
        fetched = stub.Fetch(pb.FetchRequest(job_id=job.id), metadata=ALPHA, timeout=10)
        assert fetched.job.done and fetched.output.struct_value["n"] == 1
        # The largest filter a caller has a use for (64 labels of the longest keys and values, 4-byte
        # characters) is well under the small requests' bound.
        labels = {f"k{i:02d}" + "x" * 60: "\U0001F600" * 256 for i in range(64)}
        largest = pb.ListRequest(page_size=1000, labels=labels, route="echo", states=[pb.JOB_STATE_SUCCEEDED])
        assert 64 * 1024 < largest.ByteSize() < SMALL_REQUEST_BYTES / 3
        assert not stub.List(largest, metadata=ALPHA, timeout=10).jobs
        assert [j.id for j in stub.List(pb.ListRequest(labels={"k": "v"}), metadata=ALPHA, timeout=10).jobs] == [job.id]
        page = stub.List(pb.ListRequest(page_size=1), metadata=ALPHA, timeout=10)
        if page.next_page_token:
            stub.List(pb.ListRequest(page_size=1, page_token=page.next_page_token), metadata=ALPHA, timeout=10)
        jobs = stub.WatchJobs(pb.WatchJobsRequest(labels={"k": "v"}), metadata=ALPHA, timeout=30)
        second = stub.Submit(pb.SubmitRequest(route="echo", inputs=inputs, labels={"k": "v"}), metadata=ALPHA,
                             timeout=10).job
        seen = next(m for m in jobs if m.HasField("job") and m.job.id == second.id)
        assert seen.resume_token
        jobs.cancel()
        assert stub.Cancel(pb.CancelRequest(job_id=second.id), metadata=ALPHA, timeout=10).job.id == second.id
        stub.Delete(pb.DeleteRequest(job_id=second.id, force=True), metadata=ALPHA, timeout=10)
        with pytest.raises(grpc.RpcError) as gone:
            stub.Get(pb.GetRequest(job_id=second.id), metadata=ALPHA, timeout=10)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as stranger:
            stub.Get(pb.GetRequest(job_id=job.id), timeout=10)
        assert stranger.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(stranger.value)[1].reason == "MISSING_TOKEN"

    def moved(name: str, method: str, code: str = "") -> float:
        return after.get((name, method, code), 0.0) - before.get((name, method, code), 0.0)

    wait_until(lambda: _scrape(guarded).get(("gateway_watch_streams", "Watch", ""), 0.0) == 0.0, "the streams' ends")
    after = _scrape(guarded)
    assert moved("gateway_rpcs_total", "Get", "OK") == 1
    assert moved("gateway_rpcs_total", "Get", "NOT_FOUND") == 1
    assert moved("gateway_rpcs_total", "Get", "UNAUTHENTICATED") == 1
    assert moved("gateway_rpcs_total", "List", "OK") >= 3
    for method in ("Fetch", "Cancel", "Delete"):
        assert moved("gateway_rpcs_total", method, "OK") == 1, method
    assert moved("gateway_rpcs_total", "Watch", "OK") + moved("gateway_rpcs_total", "Watch", "CANCELLED") == 1
    assert moved("gateway_rpcs_total", "WatchJobs", "CANCELLED") == 1
    assert after.get(("gateway_watch_streams", "WatchJobs", ""), 0.0) == 0.0


def test_small_requests_are_bounded_and_need_a_message(guarded: ServerProcess) -> None:
    with grpc.insecure_channel(guarded.target, options=[("grpc.max_send_message_length", -1)]) as channel:
        size = SMALL_REQUEST_BYTES + 1024
        for method, request in (("Get", pb.GetRequest(job_id="x" * size)), ("List", pb.ListRequest(page_token="x" * size))):
            with pytest.raises(grpc.RpcError) as large:
                channel.unary_unary(f"{SERVICE}/{method}")(request.SerializeToString(), metadata=ALPHA, timeout=10)
            assert large.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            info = error_info(large.value)[1]
            assert info.reason == "REQUEST_TOO_LARGE" and info.metadata["limitBytes"] == str(SMALL_REQUEST_BYTES)
        with pytest.raises(grpc.RpcError) as large_watch:
            list(channel.unary_stream(f"{SERVICE}/Watch")(pb.WatchRequest(job_id="x" * size).SerializeToString(),
                                                           metadata=ALPHA, timeout=10))
        assert error_info(large_watch.value)[1].reason == "REQUEST_TOO_LARGE"
        with pytest.raises(grpc.RpcError) as none:
            channel.stream_unary(f"{SERVICE}/Get")(iter(()), metadata=ALPHA, timeout=10)
        assert none.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(none.value)[1].reason == "MALFORMED_REQUEST"
        with pytest.raises(grpc.RpcError) as none_watch:
            list(channel.stream_stream(f"{SERVICE}/Watch")(iter(()), metadata=ALPHA, timeout=10))
        assert error_info(none_watch.value)[1].reason == "MALFORMED_REQUEST"
