"""Redis restarted under load (append-only persistence on): two replicas keep running and streaming
their jobs, reconnect, and every watcher sees every revision of every job once, in order, to the end."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import grpc
from google.protobuf import struct_pb2
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from harness import ECHO_CONFIG, ServerProcess
from harness.redis import RedisProcess

JOBS = 12


def _watch(stub: pb_grpc.GatewayServiceStub, job_id: str, into: list[pb.Job]) -> None:
    for response in stub.Watch(pb.WatchRequest(job_id=job_id), timeout=120):
        if response.WhichOneof("event") == "update":
            into.append(response.update.job)


def test_redis_restarted_under_load_loses_and_repeats_nothing(
        tmp_path: Path, make_server: Callable[..., ServerProcess]) -> None:
    redis = RedisProcess(tmp_path / "redis").start()
    try:
        config = f'store = "{redis.url}"\nheartbeat_seconds = 0.2\nshutdown_grace_seconds = 0\n' + ECHO_CONFIG
        a, b = make_server(config), make_server(config)
        channels = [grpc.insecure_channel(s.target) for s in (a, b)]
        stubs = [pb_grpc.GatewayServiceStub(c) for c in channels]
        jobs = []
        for i in range(JOBS):
            inputs = struct_pb2.Struct()
            inputs.update({"delay_ms": 3000, "steps": 30, "i": i})
            jobs.append(stubs[i % 2].Submit(pb.SubmitRequest(route="echo", inputs=inputs), timeout=30).job)
        seen: dict[str, list[pb.Job]] = {job.id: [] for job in jobs}
        watchers = [threading.Thread(target=_watch, args=(stubs[(i + 1) % 2], job.id, seen[job.id]), daemon=True)
                    for i, job in enumerate(jobs)]  # each job watched through the replica it was not sent to
        for watcher in watchers:
            watcher.start()
        # Wait until every job has made some progress, then take Redis away and bring it back.
        for job in jobs:
            for response in stubs[0].Watch(pb.WatchRequest(job_id=job.id), timeout=60):
                if response.WhichOneof("event") == "update" and response.update.job.progress >= 0.1:
                    break
        redis.kill()
        redis.start()
        for watcher in watchers:
            watcher.join(timeout=120)
        for job in jobs:
            revisions = [j.revision for j in seen[job.id]]
            assert revisions == list(range(revisions[0], revisions[-1] + 1)), (job.id, revisions)
            assert seen[job.id][-1].done and seen[job.id][-1].state == pb.JOB_STATE_SUCCEEDED, seen[job.id][-1]
            fetched = stubs[0].Fetch(pb.FetchRequest(job_id=job.id), timeout=30)
            assert fetched.output.struct_value.fields["i"].number_value == jobs.index(job)
        for channel in channels:
            channel.close()
    finally:
        redis.stop()
