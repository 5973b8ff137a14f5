"""A Redis that refuses writes (out of memory under ``maxmemory`` with noeviction; the same path serves
MISCONF, a Redis that cannot persist, and READONLY, a replica during a failover): new jobs are refused
with UNAVAILABLE STORE_UNAVAILABLE, the gateway reports NOT_SERVING, accepted jobs are not stranded
(their revisions wait and go through, in order), and it all comes back by itself once Redis accepts
writes again."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
import redis
from google.protobuf import duration_pb2, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from harness import ServerProcess, error_info, wait_until
from harness.redis import RedisProcess


def _health(channel: grpc.Channel) -> int:
    return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status)


def test_a_redis_out_of_memory_refuses_new_jobs_strands_none_and_heals(
    redis_process: RedisProcess, make_server: Callable[..., ServerProcess],
) -> None:
    redis_process.flush()
    server = make_server(f'store = "{redis_process.url}"\n[routes.echo]\nbackend = "echo"\nworkers = 4\n')
    admin = redis.Redis.from_url(redis_process.url)
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.GatewayServiceStub(channel)
            inputs = struct_pb2.Struct()
            inputs.update({"delay_ms": 3000, "steps": 60})
            accepted = stub.Submit(pb.SubmitRequest(route="echo", inputs=inputs), timeout=10).job
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", "1")  # full: every write refused with OOM
            # The running job's progress revisions are refused now: the gateway notices, stops serving.
            wait_until(lambda: _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING, "NOT_SERVING")
            with pytest.raises(grpc.RpcError) as refused:
                stub.Submit(pb.SubmitRequest(route="echo", inputs=struct_pb2.Struct()), timeout=10)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            assert error_info(refused.value)[1].reason == "STORE_UNAVAILABLE"
            admin.config_set("maxmemory", "0")  # room again
            wait_until(lambda: _health(channel) == health_pb2.HealthCheckResponse.SERVING, "SERVING again")
            done = stub.Fetch(pb.FetchRequest(job_id=accepted.id, timeout=duration_pb2.Duration(seconds=30)), timeout=40)
            assert done.job.state == pb.JOB_STATE_SUCCEEDED  # not stranded: its writes waited and went through
            replay = stub.Watch(pb.WatchRequest(job_id=accepted.id, after_revision=1), timeout=30)
            revisions = [u.update.job.revision for u in replay if u.WhichOneof("event") == "update"]
            assert revisions == list(range(2, done.job.revision + 1))  # every revision once, in order
            again = stub.Submit(pb.SubmitRequest(route="echo", inputs=struct_pb2.Struct()), timeout=10).job
            fetched = stub.Fetch(pb.FetchRequest(job_id=again.id, timeout=duration_pb2.Duration(seconds=30)), timeout=40)
            assert fetched.job.state == pb.JOB_STATE_SUCCEEDED
    finally:
        admin.config_set("maxmemory", "0")
        admin.close()
