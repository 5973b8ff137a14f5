"""Load generators, each run in a process of its own so it never shares the server's event loop.

    python -m bench.load '{"mode": "submit", "target": "127.0.0.1:PORT", ...}'

Prints JSON lines on stdout: progress events (``{"event": "attached", ...}``) and, last,
``{"event": "result", ...}`` (or ``{"event": "error", "message": ...}``). Modes:

``submit``: closed-loop Submit load. ``concurrency`` callers over ``channels`` channels (separate
TCP connections), each sending the same pre-serialized SubmitRequest bytes (route echo, inputs {},
label ``bench=<label>``; with ``request_ids`` a unique request_id is appended to each) through a raw
stub with identity serializers, as fast as answers come. Completions are counted for
``duration_s`` after ``warmup_s``. With ``verify``, it then checks with List that the jobs it
submitted really ran: the backlog (QUEUED + RUNNING) at the end of the window, how long it took
to drain, and how many ended SUCCEEDED.

``watch``: push latency. ``jobs`` x ``per_job`` Watch streams over ``channels`` channels (at most ``attach_window``
opening at once). Against
the gateway (``kind: gateway``) it first submits the jobs (echo, ``delay_ms``), then opens the
streams; against the bare server it opens them on group ids and, once all are attached, calls
Fire. It prints ``attached`` when every stream has its first message (and, with ``wait_go``,
waits for a line on stdin before going on), then records when each stream receives the terminal
revision: latency = receipt time - ``Job.finish_time`` (server clock, same machine).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import traceback
from collections import Counter
from typing import Any

import grpc
from google.protobuf import struct_pb2
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from harness.stats import percentile

SUBMIT = "/inferencegateway.gateway.v1.GatewayService/Submit"
WATCH = "/inferencegateway.gateway.v1.GatewayService/Watch"
FIRE = "/bench.v1.Bare/Fire"
TERMINAL = frozenset({pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED})


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def make_channels(target: str, count: int) -> list[grpc.aio.Channel]:
    """``count`` channels on separate TCP connections (no shared subchannel pool)."""
    return [
        grpc.aio.insecure_channel(target, options=[
            ("grpc.use_local_subchannel_pool", 1),
            ("bench.channel_index", i),
            ("grpc.max_receive_message_length", -1),
        ])
        for i in range(count)
    ]


async def _ready(channels: list[grpc.aio.Channel]) -> None:
    async with asyncio.timeout(20):
        await asyncio.gather(*(ch.channel_ready() for ch in channels))


def _request_id_field(request_id: str) -> bytes:
    """SubmitRequest field 5 (request_id), to append to pre-serialized bytes (ids < 128 bytes)."""
    data = request_id.encode()
    assert len(data) < 128
    return b"\x2a" + bytes([len(data)]) + data


def submit_request(label: str, inputs: dict[str, Any] | None = None) -> bytes:
    struct = struct_pb2.Struct()
    if inputs:
        struct.update(inputs)
    return pb.SubmitRequest(route="echo", inputs=struct, labels={"bench": label}).SerializeToString()


# -- submit --------------------------------------------------------------------------------------


async def _count(stub: pb_grpc.GatewayServiceStub, label: str, states: list[int]) -> int:
    total, token = 0, ""
    while True:
        response = await stub.List(
            pb.ListRequest(page_size=1000, page_token=token, states=states, labels={"bench": label}),  # type: ignore[arg-type]
            timeout=60,
        )
        total += len(response.jobs)
        token = response.next_page_token
        if not token:
            return total


async def run_submit(spec: dict[str, Any]) -> dict[str, Any]:
    label = spec["label"]
    channels = make_channels(spec["target"], spec["channels"])
    await _ready(channels)
    calls = [ch.unary_unary(SUBMIT) for ch in channels]  # no serializers: bytes in, bytes out
    base = submit_request(label)
    with_ids = bool(spec.get("request_ids"))
    state = {"counting": False, "stopping": False}
    ok = 0
    counted = 0
    errors: Counter[str] = Counter()
    latencies: list[float] = []

    async def worker(k: int) -> None:
        nonlocal ok, counted
        call = calls[k % len(calls)]
        seq = 0
        while not state["stopping"]:
            data = base + _request_id_field(f"{label}-{k}-{seq}") if with_ids else base
            seq += 1
            start = time.perf_counter()
            try:
                await call(data, timeout=30)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
                await asyncio.sleep(0.01)
                continue
            ok += 1
            if state["counting"]:
                counted += 1
                latencies.append(time.perf_counter() - start)

    workers = [asyncio.create_task(worker(k)) for k in range(spec["concurrency"])]
    try:
        await asyncio.sleep(spec["warmup_s"])
        state["counting"] = True
        t0, c0 = time.perf_counter(), time.process_time()
        emit("window_start")  # the coordinator reads the server's CPU time at these two events
        await asyncio.sleep(spec["duration_s"])
        state["counting"] = False
        t1, c1 = time.perf_counter(), time.process_time()
        emit("window_end")
        state["stopping"] = True
        await asyncio.wait_for(asyncio.gather(*workers), 60)
    finally:
        for task in workers:
            task.cancel()
    window = t1 - t0
    latencies.sort()
    result: dict[str, Any] = {
        "label": label,
        "throughput": counted / window,
        "completed_in_window": counted,
        "window_s": window,
        "submitted_ok": ok,
        "client_cpu_us_per_submit": (c1 - c0) / max(1, counted) * 1e6,
        "errors": dict(errors),
        "latency_p50_ms": (percentile(latencies, 0.5) or 0) * 1000,
        "latency_p99_ms": (percentile(latencies, 0.99) or 0) * 1000,
    }
    if spec.get("verify"):
        stub = pb_grpc.GatewayServiceStub(channels[0])
        active = [pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING]
        backlog = await _count(stub, label, active)
        result["backlog_at_end"] = backlog
        remaining = backlog
        deadline = time.perf_counter() + spec.get("drain_timeout_s", 60)
        while remaining and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
            remaining = await _count(stub, label, active)
        result["drain_s"] = time.perf_counter() - t1
        result["backlog_after_drain"] = remaining
        result["succeeded"] = await _count(stub, label, [pb.JOB_STATE_SUCCEEDED])
        result["failed_or_cancelled"] = await _count(stub, label, [pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED])
    await asyncio.gather(*(ch.close() for ch in channels))
    return result


# -- watch ---------------------------------------------------------------------------------------


async def run_watch(spec: dict[str, Any]) -> dict[str, Any]:
    n_jobs, per_job = spec["jobs"], spec["per_job"]
    total = n_jobs * per_job
    timeout = spec.get("timeout_s", 120.0)
    channels = make_channels(spec["target"], spec["channels"])
    await _ready(channels)
    watch_calls = [ch.unary_stream(WATCH) for ch in channels]
    gateway = spec["kind"] == "gateway"

    if gateway:
        # submit_target: another replica (the jobs are submitted there and watched here).
        submit_channel = grpc.aio.insecure_channel(spec["submit_target"]) if spec.get("submit_target") else channels[0]
        submit = submit_channel.unary_unary(SUBMIT)
        data = submit_request(spec["tag"], {"delay_ms": spec["delay_ms"]})
        t_submit = time.time()
        answers = await asyncio.gather(*(submit(data, timeout=30) for _ in range(n_jobs)))
        job_ids = [pb.SubmitResponse.FromString(a).job.id for a in answers]
        if submit_channel is not channels[0]:
            await submit_channel.close()
    else:
        t_submit = time.time()
        job_ids = [f"{spec['tag']}-g{j}" for j in range(n_jobs)]
    t_start = time.time()

    attached = 0
    all_attached = asyncio.Event()
    attach_times: list[float] = []
    receipts: list[tuple[float, float]] = []  # (received, finish_time)
    late = 0
    heartbeats = 0
    errors: Counter[str] = Counter()

    # At most this many streams opening at once: a burst of thousands of new calls overflows gRPC
    # C-core's queue of calls not yet taken by the (Python) server, which cancels the excess
    # (grpc.server.max_pending_requests 1000, hard limit 3000) -- for the bare server too.
    opening = asyncio.Semaphore(spec.get("attach_window", 500))

    async def watcher(index: int, job_id: str) -> None:
        nonlocal attached, late, heartbeats
        await opening.acquire()
        request = pb.WatchRequest(job_id=job_id).SerializeToString()
        call = watch_calls[index % len(watch_calls)](request, timeout=timeout)
        first = True
        try:
            async for raw in call:
                received = time.time()
                message = pb.WatchResponse.FromString(raw)
                if message.WhichOneof("event") != "update":
                    heartbeats += 1
                    continue
                job = message.update.job
                terminal = job.state in TERMINAL
                if first:
                    first = False
                    opening.release()
                    attach_times.append(received)
                    attached += 1
                    if terminal:
                        late += 1
                    if attached == total:
                        all_attached.set()
                if terminal:
                    receipts.append((received, job.finish_time.seconds + job.finish_time.nanos / 1e9))
                    return
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] += 1
        finally:
            if first:  # never attached: do not leave the others waiting for it
                opening.release()
                attached += 1
                if attached == total:
                    all_attached.set()

    tasks = [
        asyncio.create_task(watcher(i, job_ids[i % n_jobs])) for i in range(total)
    ]
    try:
        await asyncio.wait_for(all_attached.wait(), timeout)
        t_attached = time.time()
        emit("attached", attach_s=t_attached - t_start, streams=len(attach_times))
        if spec.get("wait_go"):
            line = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline), 60)
            if line.strip() != "go":
                raise RuntimeError(f"expected 'go' on stdin, got {line!r}")
        if not gateway:
            await channels[0].unary_unary(FIRE)(",".join(job_ids).encode(), timeout=30)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout)
    finally:
        for task in tasks:
            task.cancel()
    latencies = sorted((received - finished) * 1000 for received, finished in receipts)
    finishes = [finished for _, finished in receipts]
    if finishes and attach_times and min(finishes) < max(attach_times):
        late += 1  # a job ended before every stream was attached: the round does not count
    result = {
        "streams": total,
        "received": len(latencies),
        "late": late,
        "attach_s": t_attached - t_start,
        "submit_s": t_start - t_submit,
        "heartbeats": heartbeats,
        "errors": dict(errors),
        "finish_spread_ms": (max(finishes) - min(finishes)) * 1000 if finishes else None,
        "p50_ms": percentile(latencies, 0.50),
        "p90_ms": percentile(latencies, 0.90),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": latencies[-1] if latencies else None,
        "min_ms": latencies[0] if latencies else None,
    }
    await asyncio.gather(*(ch.close() for ch in channels))
    return result


MODES = {"submit": run_submit, "watch": run_watch}


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        result = asyncio.run(MODES[spec["mode"]](spec))
    except BaseException as exc:
        emit("error", message=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        sys.exit(1)
    emit("result", **result)


if __name__ == "__main__":
    main()
