"""Tenant isolation on jobs that are still active: another tenant's every call on a queued or running
job, by id, over each face (gRPC, the OctoAI facade, the dashboard's API), is refused exactly as a call
on a job that does not exist, and does nothing to the job.

Refusing is not enough. A call may act first and check the tenant only when it reads the job back to
answer (a Cancel that cancels, then answers NOT_FOUND): the intruder sees the refusal it should, and the
owner's job is gone. So the owner watches its job from the start, and the test holds the job to what
it would have done alone: queued and still queued after the intruder's calls (same revision), running
and still running, then SUCCEEDED with its whole output, its revision history that of an echo job left
alone (no revision more, none CANCELLED), and not deleted.

Both stores: the embedded SQLite store (one process, which also runs the jobs), and Redis with two API
replicas that run no jobs and a ``gateway worker`` process that does; there the owner goes through one
replica and the intruder through the other. The route runs one job at a time, so a first job holds the
worker and the job under test waits behind it (queued) for as long as the intruder needs.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, json_format, struct_pb2
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from harness import ServerProcess, error_info, wait_until
from harness.redis import RedisProcess

AUTH = '[auth]\nenabled = true\n[auth.tokens]\nalpha-token = "alpha"\nbeta-token = "beta"\n'
OWNER = (("authorization", "Bearer alpha-token"),)
INTRUDER = (("authorization", "Bearer beta-token"),)
INTRUDER_HTTP = {"Authorization": "Bearer beta-token"}
STEPS = 4
# Long enough for the intruder's calls (about 20, and as many checks by the owner) to fit in each
# phase on a loaded machine; the job under test still ends within seconds.
HOLD_MS = 4000
RUN_MS = 4000


@dataclass
class Gateways:
    """Where the owner and the intruder send their calls (the same process for SQLite)."""

    owner: ServerProcess
    intruder: ServerProcess


def _start(workdir: Path, config: str, **kwargs: Any) -> ServerProcess:
    workdir.mkdir()
    return ServerProcess(workdir, config, **kwargs).start()


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def gateways(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    """One set of processes per store, shared by the module's tests."""
    root = tmp_path_factory.mktemp(f"isolation-{request.param}")
    servers: list[ServerProcess] = []
    try:
        if request.param == "sqlite":
            servers.append(_start(root / "one", AUTH + '[routes.echo]\nbackend = "echo"\nworkers = 1\n'))
            yield Gateways(servers[0], servers[0])
        else:
            redis: RedisProcess = request.getfixturevalue("redis_process")
            redis.flush()
            config = (f'store = "{redis.url}"\nheartbeat_seconds = 0.2\nshutdown_grace_seconds = 0\n'
                      'lease_seconds = 1.0\n' + AUTH + '[routes.echo]\nbackend = "echo"\n')
            servers.append(_start(root / "a", config, args=("--workers", "0")))
            servers.append(_start(root / "b", config, args=("--workers", "0")))
            worker = _start(root / "worker", config, command="worker", args=("--route", "echo", "--workers", "1"))
            servers.append(worker)
            worker.wait_serving("route/echo")
            yield Gateways(servers[0], servers[1])
    finally:
        for server in servers:
            try:
                server.stop(timeout=20)
            except Exception:
                server.kill()


# -- the calls -------------------------------------------------------------------------------------


def _http(method: str, url: str, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method, headers=headers, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def _grpc_refusal(call: Callable[[], object]) -> tuple[str, str, str]:
    """The refusal the call met: (code, reason, message); fails if it was answered."""
    with pytest.raises(grpc.RpcError) as refused:
        call()
    error = refused.value
    return error.code().name, error_info(error)[1].reason, error.details() or ""  # type: ignore[attr-defined]


def _intruder_calls(gateways: Gateways, stub: pb_grpc.GatewayServiceStub) -> dict[str, Callable[[str], object]]:
    """Every call on one job by id, as the intruder makes it: each answers what it met, as data to
    compare (a refusal of gRPC's, or an HTTP status and body)."""
    base = gateways.intruder.http_url
    dashboard = {**INTRUDER_HTTP, "X-Dashboard": "1"}
    wait = duration_pb2.Duration(seconds=5)
    return {
        "Get": lambda job_id: _grpc_refusal(lambda: stub.Get(pb.GetRequest(job_id=job_id), metadata=INTRUDER,
                                                             timeout=30)),
        "Watch": lambda job_id: _grpc_refusal(lambda: list(stub.Watch(pb.WatchRequest(job_id=job_id),
                                                                      metadata=INTRUDER, timeout=30))),
        "Watch after a revision": lambda job_id: _grpc_refusal(lambda: list(stub.Watch(
            pb.WatchRequest(job_id=job_id, after_revision=1), metadata=INTRUDER, timeout=30))),
        "Fetch": lambda job_id: _grpc_refusal(lambda: stub.Fetch(pb.FetchRequest(job_id=job_id), metadata=INTRUDER,
                                                                 timeout=30)),
        "Fetch waiting": lambda job_id: _grpc_refusal(lambda: stub.Fetch(pb.FetchRequest(job_id=job_id, timeout=wait),
                                                                         metadata=INTRUDER, timeout=30)),
        "Cancel": lambda job_id: _grpc_refusal(lambda: stub.Cancel(pb.CancelRequest(job_id=job_id),
                                                                   metadata=INTRUDER, timeout=30)),
        "Delete": lambda job_id: _grpc_refusal(lambda: stub.Delete(pb.DeleteRequest(job_id=job_id),
                                                                   metadata=INTRUDER, timeout=30)),
        "Delete with force": lambda job_id: _grpc_refusal(lambda: stub.Delete(
            pb.DeleteRequest(job_id=job_id, force=True), metadata=INTRUDER, timeout=30)),
        "GET /v1/requests": lambda job_id: _http("GET", f"{base}/v1/requests/{job_id}", INTRUDER_HTTP),
        "GET /v1/responses": lambda job_id: _http("GET", f"{base}/v1/responses/{job_id}", INTRUDER_HTTP),
        "GET /api/dashboard/jobs/{id}": lambda job_id: _http("GET", f"{base}/api/dashboard/jobs/{job_id}",
                                                             INTRUDER_HTTP),
        "GET /api/dashboard/jobs/{id}?after=1": lambda job_id: _http(
            "GET", f"{base}/api/dashboard/jobs/{job_id}?after=1", INTRUDER_HTTP),
        "POST /api/dashboard/jobs/{id}/cancel": lambda job_id: _http(
            "POST", f"{base}/api/dashboard/jobs/{job_id}/cancel", dashboard),
    }


def _hidden(answer: object, job_id: str, unknown: str) -> object:
    """The answer with the job's id written as the unknown one's: equal to the unknown job's answer
    exactly when the call gave no hint that the job exists."""
    return json.loads(json.dumps(answer).replace(job_id, unknown))


# -- the owner's view ------------------------------------------------------------------------------


class Follower:
    """The owner's Watch of its job from its first revision to its last, on a thread of its own."""

    def __init__(self, stub: pb_grpc.GatewayServiceStub, job_id: str) -> None:
        self.seen: list[pb.Job] = []
        self.running = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._follow, args=(stub, job_id), daemon=True)
        self._thread.start()

    def _follow(self, stub: pb_grpc.GatewayServiceStub, job_id: str) -> None:
        try:
            for response in stub.Watch(pb.WatchRequest(job_id=job_id), metadata=OWNER, timeout=120):
                if response.WhichOneof("event") == "update":
                    self.seen.append(response.update.job)
                    if response.update.job.state == pb.JOB_STATE_RUNNING:
                        self.running.set()
        except BaseException as exc:  # reported by join
            self.error = exc

    def join(self) -> list[pb.Job]:
        self._thread.join(120)
        assert not self._thread.is_alive(), "the owner's Watch did not end"
        assert self.error is None, f"the owner's Watch broke: {self.error!r}"
        return self.seen


def _submit(stub: pb_grpc.GatewayServiceStub, inputs: dict[str, Any]) -> pb.Job:
    struct = struct_pb2.Struct()
    struct.update(inputs)
    return stub.Submit(pb.SubmitRequest(route="echo", inputs=struct), metadata=OWNER, timeout=30).job


def _get(stub: pb_grpc.GatewayServiceStub, job_id: str) -> pb.Job:
    return stub.Get(pb.GetRequest(job_id=job_id), metadata=OWNER, timeout=30).job


def _intrude(calls: dict[str, Callable[[str], object]], owner: pb_grpc.GatewayServiceStub, job: pb.Job,
             unknown: str, phase: str) -> None:
    """Every call by the intruder; after each, the owner's job is as it was (for a queued job: the same
    revision, since nothing else changes it while it waits; for a running one: still running)."""
    for name, call in calls.items():
        expected = call(unknown)
        answer = call(job.id)
        assert _hidden(answer, job.id, unknown) == _hidden(expected, job.id, unknown), \
            f"{name} on a {phase} job gave a hint: {answer}, not {expected}"
        code = expected[0]
        assert code in ("NOT_FOUND", 404), f"{name} on an unknown job: {expected}"
        try:
            now = _get(owner, job.id)
        except grpc.RpcError as error:
            pytest.fail(f"after the intruder's {name}, the owner cannot get its {phase} job: {error.code().name}")
        assert now.state == job.state, f"after the intruder's {name}, the {phase} job is {pb.JobState.Name(now.state)}"
        if phase == "queued":
            assert now.revision == job.revision, f"the intruder's {name} changed the queued job (revision {now.revision})"


def test_another_tenant_can_do_nothing_to_an_active_job(gateways: Gateways) -> None:
    with grpc.insecure_channel(gateways.owner.target) as owner_channel, \
            grpc.insecure_channel(gateways.intruder.target) as intruder_channel:
        owner = pb_grpc.GatewayServiceStub(owner_channel)
        intruder = pb_grpc.GatewayServiceStub(intruder_channel)
        calls = _intruder_calls(gateways, intruder)
        holder = _submit(owner, {"delay_ms": HOLD_MS})  # takes the route's one worker
        wait_until(lambda: _get(owner, holder.id).state == pb.JOB_STATE_RUNNING, "the first job to run")
        inputs = {"delay_ms": RUN_MS, "steps": STEPS, "secret": "alpha's", "payload": list(range(50))}
        job = _submit(owner, inputs)
        follower = Follower(owner, job.id)
        unknown = job.id[:-4] + ("0000" if job.id[-4:] != "0000" else "ffff")  # the same form, no such job

        queued = _get(owner, job.id)
        assert queued.state == pb.JOB_STATE_QUEUED, "the job under test did not wait behind the first"
        _intrude(calls, owner, queued, unknown, "queued")
        assert _get(owner, holder.id).state == pb.JOB_STATE_RUNNING, "the intruder's calls outlasted the first job"

        assert follower.running.wait(HOLD_MS / 1000 + 30), "the job under test never ran"
        running = _get(owner, job.id)
        assert running.state == pb.JOB_STATE_RUNNING
        _intrude(calls, owner, running, unknown, "running")
        assert _get(owner, job.id).state == pb.JOB_STATE_RUNNING, "the intruder's calls outlasted the job"

        seen = follower.join()
        # Its whole output, and its history that of an echo job nobody touched: queued (a revision
        # for each queue position it was told), one start, one revision a step, then SUCCEEDED.
        fetched = owner.Fetch(pb.FetchRequest(job_id=job.id), metadata=OWNER, timeout=30)
        assert fetched.job.state == pb.JOB_STATE_SUCCEEDED
        assert json_format.MessageToDict(fetched.output) == inputs
        revisions = [j.revision for j in seen]
        assert revisions == list(range(1, revisions[-1] + 1)), revisions
        states = [j.state for j in seen]
        first_running = states.index(pb.JOB_STATE_RUNNING)
        assert set(states[:first_running]) == {pb.JOB_STATE_QUEUED}
        assert states[first_running:] == [pb.JOB_STATE_RUNNING] * (STEPS + 1) + [pb.JOB_STATE_SUCCEEDED], states
        assert [round(j.progress * STEPS) for j in seen[first_running + 1:first_running + 1 + STEPS]] == \
            list(range(1, STEPS + 1))
        assert not any(j.HasField("error") for j in seen)
        # The store holds the same history (read through the intruder's replica, as the owner).
        stored = [response.update.job for response in intruder.Watch(pb.WatchRequest(job_id=job.id, after_revision=1),
                                                                      metadata=OWNER, timeout=30)
                  if response.WhichOneof("event") == "update"]
        assert [(j.revision, j.state, j.progress) for j in stored] == [(j.revision, j.state, j.progress)
                                                                       for j in seen[1:]]
        # Not deleted: the owner still lists it and gets it, with its last revision.
        assert _get(owner, job.id).revision == revisions[-1]
        listed = owner.List(pb.ListRequest(), metadata=OWNER, timeout=30).jobs
        assert job.id in [j.id for j in listed]
        # Nor did the intruder ever see it in its own lists.
        assert job.id not in [j.id for j in intruder.List(pb.ListRequest(), metadata=INTRUDER, timeout=30).jobs]
        status, body = _http("GET", f"{gateways.intruder.http_url}/api/dashboard/jobs", INTRUDER_HTTP)
        assert status == 200 and job.id not in [j["id"] for j in body["jobs"]]
