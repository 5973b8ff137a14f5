"""The bare baseline: a plain grpc.aio server with the gateway's method names and nothing behind them.

    python -m bench.bare [--listen 127.0.0.1:0] [--uvloop]

Prints ``{"event": "serving", "grpc": "127.0.0.1:PORT"}`` once serving, like ``gateway serve``.

- ``/inferencegateway.gateway.v1.GatewayService/Submit``: answers the bytes of a fixed, realistic SubmitResponse (a
  QUEUED job at revision 1) to whatever it is sent, without parsing it. Identity serializers.
- ``/inferencegateway.gateway.v1.GatewayService/Watch``: a fan-out group per ``job_id``. Each stream sends the group's
  snapshot (a RUNNING job at revision 2), awaits the group's ``asyncio.Event``, sends the group's
  final message (a SUCCEEDED job at revision 3 whose ``finish_time`` is when it was fired), and ends.
  Every message is serialized once per group and the same bytes go to every stream.
- ``/bench.v1.Bare/Fire``: the request is comma-separated job ids; each group is stamped with the
  current time and released. Answers empty bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from inferencegateway.gateway.v1 import gateway_pb2 as pb

SERVICE = "inferencegateway.gateway.v1.GatewayService"
FIRE_SERVICE = "bench.v1.Bare"


def _ts(value: float) -> timestamp_pb2.Timestamp:
    seconds = int(value)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=int((value - seconds) * 1e9))


def _job(job_id: str, state: int, revision: int, now: float, finished: float | None = None) -> pb.Job:
    job = pb.Job(
        id=job_id, route="echo", state=state, revision=revision, create_time=_ts(now - 1.0),  # type: ignore[arg-type]
        labels={"bench": "bare"},
    )
    if revision >= 2:
        job.start_time.CopyFrom(_ts(now - 0.5))
    if finished is not None:
        job.progress = 1.0
        job.done = True
        job.finish_time.CopyFrom(_ts(finished))
        job.expire_time.CopyFrom(_ts(finished + 86400))
    return job


SUBMIT_RESPONSE = pb.SubmitResponse(
    job=pb.Job(
        id="0197a3b2c4d5e6f708192a3b4c5d6e7f", route="echo", state=pb.JOB_STATE_QUEUED, revision=1,
        create_time=_ts(time.time()), labels={"bench": "bare"}, queue_position=1,
    )
).SerializeToString()


class _Group:
    __slots__ = ("event", "final", "job_id", "refs", "snapshot")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.event = asyncio.Event()
        self.snapshot = pb.WatchResponse(
            update=pb.JobUpdate(job=_job(job_id, pb.JOB_STATE_RUNNING, 2, time.time()))
        ).SerializeToString()
        self.final = b""
        self.refs = 0


class Bare:
    def __init__(self) -> None:
        self.groups: dict[str, _Group] = {}

    async def submit(self, request: bytes, context: Any) -> bytes:
        return SUBMIT_RESPONSE

    async def watch(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        job_id = pb.WatchRequest.FromString(request).job_id
        group = self.groups.get(job_id)
        if group is None:
            group = self.groups[job_id] = _Group(job_id)
        group.refs += 1
        try:
            yield group.snapshot
            await group.event.wait()
            yield group.final
        finally:
            group.refs -= 1
            if group.refs == 0 and self.groups.get(job_id) is group:
                del self.groups[job_id]

    async def fire(self, request: bytes, context: Any) -> bytes:
        for job_id in request.decode().split(","):
            group = self.groups.get(job_id)
            if group is None or group.event.is_set():
                continue
            now = time.time()
            group.final = pb.WatchResponse(
                update=pb.JobUpdate(job=_job(job_id, pb.JOB_STATE_SUCCEEDED, 3, now, finished=now))
            ).SerializeToString()
            group.event.set()
        return b""

    def handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        return (
            grpc.method_handlers_generic_handler(SERVICE, {
                "Submit": grpc.unary_unary_rpc_method_handler(self.submit),
                "Watch": grpc.unary_stream_rpc_method_handler(self.watch),
            }),
            grpc.method_handlers_generic_handler(FIRE_SERVICE, {
                "Fire": grpc.unary_unary_rpc_method_handler(self.fire),
            }),
        )


async def serve(listen: str) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(Bare().handlers())
    port = server.add_insecure_port(listen)
    await server.start()
    host = listen.rsplit(":", 1)[0]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"event": "serving", "grpc": f"{host}:{port}"}), flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--uvloop", action="store_true", help="serve on uvloop (the gateway's default loop)")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(args.listen))
    else:
        asyncio.run(serve(args.listen))


if __name__ == "__main__":
    main()
