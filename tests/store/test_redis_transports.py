"""The Redis store's other transports, end to end: a Unix socket (``unix://PATH?db=N``) and TLS
(``rediss://HOST:PORT/DB?ssl_ca_certs=CA``, the server's certificate checked against the CA). Two API
replicas and a worker process share a real redis-server through each: a job submitted through A,
run by the worker, is watched (each revision from then on, in order) and fetched through B, and a job running on
the worker is cancelled through A. The TLS port speaks nothing but TLS and the socket is the only
way the processes are told, so a process that fell back to plain TCP could not work at all."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from urllib.parse import quote

import grpc
import pytest
from google.protobuf import struct_pb2
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from harness import ECHO_CONFIG, ServerProcess
from harness.certs import Authority
from harness.redis import RedisProcess


def _submit(stub: pb_grpc.GatewayServiceStub, **inputs: object) -> pb.Job:
    struct = struct_pb2.Struct()
    struct.update(inputs)
    return stub.Submit(pb.SubmitRequest(route="echo", inputs=struct), timeout=30).job


@pytest.mark.parametrize("transport", ["unix", "tls"])
def test_replicas_and_a_worker_share_redis_over(transport: str, redis_transports: RedisProcess,
                                                make_server: Callable[..., ServerProcess]) -> None:
    redis_transports.flush()
    url = redis_transports.unix_url if transport == "unix" else redis_transports.tls_url
    config = f'store = "{url}"\nlease_seconds = 2\nshutdown_grace_seconds = 0\n' + ECHO_CONFIG
    a = make_server(config, args=("--workers", "0"))
    b = make_server(config, args=("--workers", "0"))
    worker = make_server(config, command="worker", args=("--route", "echo", "--workers", "2"))
    worker.wait_serving("route/echo")
    with grpc.insecure_channel(a.target) as channel_a, grpc.insecure_channel(b.target) as channel_b:
        stub_a, stub_b = pb_grpc.GatewayServiceStub(channel_a), pb_grpc.GatewayServiceStub(channel_b)
        job = _submit(stub_a, delay_ms=600, steps=3, x=7)
        seen = [r.update.job for r in stub_b.Watch(pb.WatchRequest(job_id=job.id), timeout=60)
                if r.WhichOneof("event") == "update"]
        # the job as it was when the watch began, then every revision after it, in order
        assert [j.revision for j in seen] == list(range(seen[0].revision, seen[-1].revision + 1))
        assert seen[-1].state == pb.JOB_STATE_SUCCEEDED and seen[-1].revision == 6
        fetched = stub_b.Fetch(pb.FetchRequest(job_id=job.id), timeout=30)
        assert fetched.output.struct_value.fields["x"].number_value == 7

        # A job running on the worker, cancelled through A: the cancel reaches the worker.
        long = _submit(stub_a, delay_ms=30000, steps=300)
        for response in stub_b.Watch(pb.WatchRequest(job_id=long.id), timeout=60):
            if response.WhichOneof("event") == "update" and response.update.job.state == pb.JOB_STATE_RUNNING:
                break
        stub_a.Cancel(pb.CancelRequest(job_id=long.id), timeout=30)
        last = [r.update.job for r in stub_b.Watch(pb.WatchRequest(job_id=long.id), timeout=60)
                if r.WhichOneof("event") == "update"][-1]
        assert last.state == pb.JOB_STATE_CANCELLED
        assert last.progress < 0.5  # stopped by the cancel, not run to its end


def test_a_redis_with_a_password_from_a_file_and_tls(tmp_path_factory: pytest.TempPathFactory,
                                                     make_server: Callable[..., ServerProcess]) -> None:
    """Redis as production runs it: requirepass with protected mode on, and TLS. The password comes from
    store_password_file (a mounted Secret), never in the settings; it is in no log line; a wrong one stops the
    start with one line."""
    folder = tmp_path_factory.mktemp("redis-auth-tls")
    Authority(folder).issue("server")
    password = secrets.token_urlsafe(24) + "@:/"  # characters a URL must escape
    redis = RedisProcess(tmp_path_factory.mktemp("redis-auth"), tls=folder, password=password).start()
    try:
        assert "NOAUTH" in redis.command_without_auth("PING")
        secret = tmp_path_factory.mktemp("secret") / "password"
        secret.write_text(password + "\n")
        config = (f'store = "{redis.tls_url}"\nstore_password_file = "{secret}"\nlease_seconds = 2\n'
                  'shutdown_grace_seconds = 0\n' + ECHO_CONFIG)
        api = make_server(config, args=("--workers", "0"))
        worker = make_server(config, command="worker", args=("--route", "echo", "--workers", "2"))
        worker.wait_serving("route/echo")
        with grpc.insecure_channel(api.target) as channel:
            stub = pb_grpc.GatewayServiceStub(channel)
            job = _submit(stub, x=5)
            last = [r.update.job for r in stub.Watch(pb.WatchRequest(job_id=job.id), timeout=60)
                    if r.WhichOneof("event") == "update"][-1]
            assert last.state == pb.JOB_STATE_SUCCEEDED
        for process in (api, worker):
            assert password not in process.log() and quote(password, safe="") not in process.log()
        secret.write_text("not-the-password")
        wrong = make_server(config, start=False)
        with pytest.raises(RuntimeError) as failed:
            wrong.start()
        assert "password" in str(failed.value).lower() or "auth" in str(failed.value).lower()
    finally:
        redis.stop()
