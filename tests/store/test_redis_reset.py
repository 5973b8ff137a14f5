"""Redis that forgets: restarted without its data, or flushed, while jobs run and are watched.

The gateway notices (its data's epoch changed), makes again what it owns (the queue's consumer group,
the scripts), ends every stream of a lost job with DATA_LOSS (a Watch, a Fetch that waits, a client
future), answers NOT_FOUND for it on every replica alike, ends WatchJobs streams (their positions
belong to the data that went), says NOT_SERVING while Redis is unreachable, and runs the jobs
submitted afterwards as if nothing had happened.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2
from grpc_health.v1 import health_pb2
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from harness import ECHO_CONFIG, ServerProcess, error_info, wait_until
from harness.redis import RedisProcess

pytestmark = pytest.mark.slow


class Outcome:
    """How a streaming or waiting call ended, filled in by a thread of its own."""

    def __init__(self, call: Callable[[], object]) -> None:
        self.error: grpc.RpcError | None = None
        self.finished = threading.Event()
        self.open = threading.Event()  # a stream's first message came: the server holds it

        def run() -> None:
            try:
                answer = call()
                if isinstance(answer, Iterator):
                    for _ in answer:
                        self.open.set()
            except grpc.RpcError as exc:
                self.error = exc
            finally:
                self.finished.set()

        threading.Thread(target=run, daemon=True).start()

    def reason(self) -> tuple[grpc.StatusCode, str]:
        assert self.finished.wait(30), "the call did not end"
        assert self.error is not None, "the call ended without an error"
        return self.error.code(), error_info(self.error)[1].reason


class Deployment:
    """Two API replicas (no workers) and an echo worker process, on one redis-server."""

    def __init__(self, make_server: Callable[..., ServerProcess], redis: RedisProcess) -> None:
        config = (f'store = "{redis.url}"\nheartbeat_seconds = 0.2\nshutdown_grace_seconds = 0\nlease_seconds = 2\n'
                  + ECHO_CONFIG)
        self.a = make_server(config, args=("--workers", "0"))
        self.b = make_server(config, args=("--workers", "0"))
        self.worker = make_server(config, command="worker", args=("--route", "echo", "--workers", "4"))
        self.worker.wait_serving("route/echo")
        self._channels = [grpc.insecure_channel(s.target) for s in (self.a, self.b)]
        self.stub_a, self.stub_b = (pb_grpc.GatewayServiceStub(c) for c in self._channels)

    def submit(self, stub: pb_grpc.GatewayServiceStub, **inputs: object) -> pb.Job:
        struct = struct_pb2.Struct()
        struct.update(inputs)
        return stub.Submit(pb.SubmitRequest(route="echo", inputs=struct), timeout=30).job

    def running(self, job_id: str) -> None:
        wait_until(lambda: self.stub_a.Get(pb.GetRequest(job_id=job_id), timeout=10).job.progress > 0,
                   "the job to make progress", timeout=30)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis", appendonly=False).start()
    yield server
    server.stop()


@pytest.fixture
def deployment(make_server: Callable[..., ServerProcess], redis: RedisProcess) -> Iterator[Deployment]:
    deployment = Deployment(make_server, redis)
    yield deployment
    deployment.close()


def _not_found(stub: pb_grpc.GatewayServiceStub, job_id: str) -> bool:
    try:
        stub.Get(pb.GetRequest(job_id=job_id), timeout=10)
    except grpc.RpcError as exc:
        return exc.code() == grpc.StatusCode.NOT_FOUND
    return False


def _lose_and_recover(deployment: Deployment, lose: Callable[[], None]) -> None:
    d = deployment
    job = d.submit(d.stub_a, delay_ms=60_000, steps=600)
    d.running(job.id)
    fetch = Outcome(lambda: d.stub_a.Fetch(pb.FetchRequest(job_id=job.id, timeout=duration_pb2.Duration(seconds=100)),
                                           timeout=120))
    jobs_stream = Outcome(lambda: d.stub_a.WatchJobs(pb.WatchJobsRequest(), timeout=120))
    watch = Outcome(lambda: d.stub_b.Watch(pb.WatchRequest(job_id=job.id), timeout=120))
    for stream in (jobs_stream, watch):  # (the Fetch, sent first on the same connection, is waiting by then)
        assert stream.open.wait(30), "the stream did not open"

    lose()

    assert watch.reason() == (grpc.StatusCode.DATA_LOSS, "JOB_LOST")
    assert fetch.reason() == (grpc.StatusCode.DATA_LOSS, "JOB_LOST")
    assert jobs_stream.reason() == (grpc.StatusCode.DATA_LOSS, "STORE_RESET")
    for stub in (d.stub_a, d.stub_b):  # every replica answers alike
        wait_until(lambda stub=stub: _not_found(stub, job.id), "the lost job to be NOT_FOUND")  # type: ignore[misc]

    after = d.submit(d.stub_b, delay_ms=200, steps=2, x=3)  # the queue works again, without a restart
    updates = [r.update.job for r in d.stub_a.Watch(pb.WatchRequest(job_id=after.id), timeout=60)
               if r.WhichOneof("event") == "update"]
    assert updates[-1].state == pb.JOB_STATE_SUCCEEDED
    fetched = d.stub_a.Fetch(pb.FetchRequest(job_id=after.id), timeout=10)
    assert fetched.output.struct_value.fields["x"].number_value == 3


def test_a_flushed_redis_ends_the_lost_jobs_streams_and_runs_new_jobs(
        deployment: Deployment, redis: RedisProcess) -> None:
    _lose_and_recover(deployment, redis.flush)


def test_a_redis_restarted_empty_is_unhealthy_while_gone_then_runs_new_jobs(
        deployment: Deployment, redis: RedisProcess) -> None:
    d = deployment

    def restart_empty() -> None:
        redis.kill()
        for process in (d.a, d.worker):  # unreachable: no process says it is fine
            wait_until(lambda process=process: process.health() == health_pb2.HealthCheckResponse.NOT_SERVING,  # type: ignore[misc]
                       "NOT_SERVING while Redis is gone")
        redis.start()
        for process in (d.a, d.b, d.worker):
            wait_until(lambda process=process: process.health() == health_pb2.HealthCheckResponse.SERVING,  # type: ignore[misc]
                       "SERVING once Redis is back")

    _lose_and_recover(deployment, restart_empty)


def _save(redis: RedisProcess) -> None:
    """A snapshot of the data as it is now (dump.rdb), which a restart without AOF loads again."""
    import socket

    with socket.create_connection(("127.0.0.1", redis.port), timeout=10) as sock:
        sock.sendall(b"SAVE\r\n")
        assert sock.recv(16).startswith(b"+OK")


def test_a_redis_that_went_back_in_time_ends_the_watchers_and_finishes_the_job_from_there(
        deployment: Deployment, redis: RedisProcess) -> None:
    """What a failover to a replica that was behind does: the data is older than what was published."""
    d = deployment
    job = d.submit(d.stub_a, delay_ms=8000, steps=80, x=5)
    d.running(job.id)
    _save(redis)
    saved = d.stub_a.Get(pb.GetRequest(job_id=job.id), timeout=10).job.revision
    watch = Outcome(lambda: d.stub_b.Watch(pb.WatchRequest(job_id=job.id), timeout=120))
    assert watch.open.wait(30)
    wait_until(lambda: d.stub_a.Get(pb.GetRequest(job_id=job.id), timeout=10).job.revision > saved + 5,
               "revisions after the snapshot")
    redis.kill()
    redis.start()  # from the snapshot: behind what the gateway published

    assert watch.reason() == (grpc.StatusCode.DATA_LOSS, "JOB_ROLLED_BACK")
    updates = [r.update.job for r in d.stub_b.Watch(pb.WatchRequest(job_id=job.id), timeout=120)
               if r.WhichOneof("event") == "update"]  # watched again from the start: every revision once, to the end
    revisions = [u.revision for u in updates]
    assert revisions == list(range(revisions[0], revisions[-1] + 1)), revisions
    assert updates[-1].state == pb.JOB_STATE_SUCCEEDED
    fetched = d.stub_a.Fetch(pb.FetchRequest(job_id=job.id), timeout=10)
    assert fetched.output.struct_value.fields["x"].number_value == 5
