"""Fair share and priority through the real servers and clients: tenants (bearer tokens) share a route's
workers in weighted round robin, and a tenant's more urgent jobs start first. With SQLite, one
process; with Redis, two API replicas and two worker processes on one redis-server, the heavy tenant
submitting through one replica and the light one through the other."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from gateway_client import NO_RETRY, Client, Job, JobState, ResourceExhaustedError
from harness import ServerProcess, cli, wait_until
from harness.gateway import redis_replicas
from harness.redis import RedisProcess

TOKENS = {"heavy": "heavy-token", "light": "light-token", "boss": "boss-token", "capped": "capped-token",
          "metered": "metered-token", "single": "single-token"}
CONFIG = (
    '[auth]\nenabled = true\n[auth.tokens]\n' + "".join(f'{token} = "{tenant}"\n' for tenant, token in TOKENS.items())
    + '[tenants.boss]\nweight = 4\n[tenants.capped]\nmax_queued = 4\n'
    '[tenants.metered]\nsubmit_rate = 5\nsubmit_burst = 1\n[tenants.single]\nmax_running = 1\n'
    '[routes.echo]\nbackend = "echo"\nworkers = 1\n'
)
RUN = {"delay_ms": 150}


@dataclass
class Deployment:
    apis: list[ServerProcess]  # where calls go: the heavy tenant's to the first, the others' to the last
    workers: int  # the route's workers in all


@pytest.fixture(params=["sqlite", "redis"])
def deployment(request: pytest.FixtureRequest, make_server: Callable[..., ServerProcess]) -> Iterator[Deployment]:
    if request.param == "sqlite":
        yield Deployment([make_server(CONFIG)], 1)
        return
    redis: RedisProcess = request.getfixturevalue("redis_process")
    redis.flush()
    apis = redis_replicas(make_server, redis.url, CONFIG, "echo")
    yield Deployment(apis, 2)


def _client(deployment: Deployment, tenant: str) -> Client:
    api = deployment.apis[0] if tenant == "heavy" else deployment.apis[-1]
    return Client(api.target, token=TOKENS[tenant])


def _started_before(job: Job, others: list[Job]) -> int:
    assert job.start_time is not None
    return sum(1 for o in others if o.start_time is not None and o.start_time < job.start_time)


def test_a_light_tenant_starts_within_a_job_of_a_heavy_backlog(deployment: Deployment) -> None:
    with _client(deployment, "heavy") as heavy, _client(deployment, "light") as light:
        backlog = [heavy.submit_job("echo", RUN).job for _ in range(40)]
        wait_until(lambda: heavy.get(backlog[0].id).state is not JobState.QUEUED, "the backlog to start")
        mine = light.submit("echo", {"delay_ms": 1})
        done = mine.result(timeout=60)
        ended = light.get(mine.job_id)
        assert done.value == {"delay_ms": 1} and ended.start_time is not None
        heavy_jobs = [heavy.get(j.id) for j in backlog]
        # FIFO: after all 40. Fair share: after those running when it came, and at most one more per worker.
        assert _started_before(ended, heavy_jobs) <= 3 * deployment.workers, [j.state for j in heavy_jobs]
        assert sum(j.state is JobState.QUEUED for j in heavy_jobs) >= 20  # the backlog was still there
        for job in backlog:
            heavy.cancel(job.id)


def test_weights_share_the_workers(deployment: Deployment) -> None:
    with _client(deployment, "heavy") as heavy, _client(deployment, "boss") as boss:
        blockers = [heavy.submit_job("echo", {"delay_ms": 1500}).job for _ in range(deployment.workers)]
        for blocker in blockers:
            wait_until(lambda b=blocker: heavy.get(b.id).state is JobState.RUNNING, "the workers to be busy")
        mine = [heavy.submit_job("echo", {"delay_ms": 50}).job for _ in range(10)]
        bosses = [boss.submit_job("echo", {"delay_ms": 50}).job for _ in range(10)]
        for job in mine:
            heavy.future(job.id).result(timeout=60)
        for job in bosses:
            boss.future(job.id).result(timeout=60)
        ran = sorted([*(heavy.get(j.id) for j in mine), *(boss.get(j.id) for j in bosses)],
                     key=lambda j: j.start_time)  # type: ignore[arg-type,return-value]
        first = ran[:10]
        # Weight 4 against 1: about four of boss's for each of heavy's while both have jobs waiting.
        assert sum(j.id in {b.id for b in bosses} for j in first) >= 7, [j.id for j in first]


def test_priority_orders_a_tenants_jobs_and_comes_back_on_the_job(deployment: Deployment) -> None:
    with _client(deployment, "light") as client:
        blockers = [client.submit_job("echo", {"delay_ms": 1500}).job for _ in range(deployment.workers)]
        for blocker in blockers:
            wait_until(lambda b=blocker: client.get(b.id).state is JobState.RUNNING, "the workers to be busy")
        jobs = [client.submit_job("echo", {"delay_ms": 30}, priority=p).job for p in (5, 4, 3, 2, 1)]
        assert [j.priority for j in jobs] == [5, 4, 3, 2, 1]
        for job in jobs:
            client.future(job.id).result(timeout=60)
        ended = sorted((client.get(j.id) for j in jobs), key=lambda j: j.start_time)  # type: ignore[arg-type,return-value]
        started = [j.priority for j in ended]
        # One worker: exactly most urgent first. Two: each start is at most one place off.
        assert started[:deployment.workers] == sorted(started[:deployment.workers])
        assert all(abs(p - (i + 1)) <= deployment.workers - 1 for i, p in enumerate(started)), started
        with pytest.raises(ValueError, match="priority"):  # the client's own check, before any call
            client.submit_job("echo", {}, priority=6)
        assert client.submit("echo", {}, priority=2).job.priority == 2  # the future's submit takes it too


def test_the_cli_and_the_http_face_take_a_priority_and_refuse_a_bad_one(deployment: Deployment) -> None:
    api = deployment.apis[-1]
    done = cli(api.target, "submit", "--route", "echo", "--inputs", "{}", "--priority", "1", token=TOKENS["light"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["job"]["priority"] == 1
    bad = cli(api.target, "submit", "--route", "echo", "--inputs", "{}", "--priority", "9", token=TOKENS["light"])
    assert bad.returncode == 2 and "--priority" in bad.stderr
    # The OctoAI facade: the X-Gateway-Priority header.
    for value, status in (("1", 201), ("9", 400), ("high", 400)):
        request = urllib.request.Request(
            f"{api.http_url}/echo/predict", data=b"{}", method="POST",
            headers={"Authorization": f"Bearer {TOKENS['light']}", "Content-Type": "application/json",
                     "X-OctoAI-Async": "1", "X-Gateway-Priority": value})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                got, body = answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            got, body = error.code, json.loads(error.read())
        assert got == status, body
        if status == 201:
            with Client(api.target, token=TOKENS["light"]) as client:
                assert client.get(body["response_id"]).priority == 1
        else:
            assert body["error"]["code"] == "INVALID_ARGUMENT" and "X-Gateway-Priority" in body["error"]["message"]


def test_max_queued_holds_for_submits_at_once_through_every_replica(deployment: Deployment) -> None:
    with _client(deployment, "heavy") as heavy:
        busy = [heavy.submit_job("echo", {"delay_ms": 60_000}).job for _ in range(deployment.workers)]
        for job in busy:
            wait_until(lambda j=job: heavy.get(j.id).state is JobState.RUNNING, "the workers to be busy")
        clients = [Client(api.target, token=TOKENS["capped"], retry=NO_RETRY) for api in deployment.apis]

        def submit(i: int) -> str:
            try:
                clients[i % len(clients)].submit_job("echo", {"i": i})
            except ResourceExhaustedError as exc:
                assert exc.retry_delay is not None and exc.metadata["maxQueued"] == "4"
                return exc.reason
            return "OK"

        with ThreadPoolExecutor(12) as pool:
            outcomes = list(pool.map(submit, range(12)))
        for client in clients:
            client.close()
        assert outcomes.count("OK") == 4 and outcomes.count("TENANT_QUEUE_FULL") == 8, outcomes
        for job in busy:
            heavy.cancel(job.id)


def test_the_client_waits_out_the_submit_rate_by_itself(deployment: Deployment) -> None:
    with _client(deployment, "metered") as client:
        began = time.monotonic()
        jobs = [client.submit_job("echo", {"i": i}).job for i in range(4)]  # a burst of 1, then 5 per second
        took = time.monotonic() - began
    assert len({j.id for j in jobs}) == 4
    assert took >= 0.5, f"4 Submits at 5 per second after a burst of 1 took only {took:.2f} s"


def test_max_running_holds_across_every_worker_process(deployment: Deployment) -> None:
    with _client(deployment, "single") as single, _client(deployment, "light") as light:
        mine = [single.submit_job("echo", {"delay_ms": 300}).job for _ in range(4)]
        theirs = [light.submit_job("echo", {"delay_ms": 300}).job for _ in range(2 * deployment.workers)]
        most = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = [single.get(j.id).state for j in mine]
            most = max(most, states.count(JobState.RUNNING))
            if all(s is JobState.SUCCEEDED for s in states):
                break
            time.sleep(0.02)  # (sampling how many run at once, not waiting for a condition)
        for job in theirs:
            light.future(job.id).result(timeout=60)
        assert all(single.get(j.id).state is JobState.SUCCEEDED for j in mine)
        assert most == 1, f"{most} of its jobs ran at once, with max_running = 1"


def test_the_submit_answer_carries_the_fair_position_in_one_process(make_server: Callable[..., ServerProcess]) -> None:
    """With SQLite (one process) the Submit answer's queue_position is the job's place in the scheduler's order,
    as Get reads it, not the count of jobs ahead in arrival order."""
    server = make_server(CONFIG)
    with Client(server.target, token=TOKENS["heavy"]) as heavy, Client(server.target, token=TOKENS["light"]) as light:
        blocker = heavy.submit_job("echo", {"delay_ms": 30_000}).job
        wait_until(lambda: heavy.get(blocker.id).state is JobState.RUNNING, "the worker to be busy")
        backlog = [heavy.submit_job("echo", {"delay_ms": 10}).job for _ in range(6)]
        assert [j.queue_position for j in backlog] == [1, 2, 3, 4, 5, 6]
        mine = light.submit_job("echo", {"delay_ms": 10}).job
        assert mine.queue_position <= 2, mine.queue_position  # its tenant's turn comes next (or after one)
        assert mine.queue_position == light.get(mine.id).queue_position
        for job in (blocker, *backlog):
            heavy.cancel(job.id)
