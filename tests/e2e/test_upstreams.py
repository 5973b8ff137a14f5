"""The hosted upstream profiles (fal, Replicate, RunPod) against their faithful fakes (harness/fakes,
each proven by its provider's own client in tests/http), as real processes: one job is one upstream
job whatever befalls it, its outputs, logs and queue position reach Watch, and it ends with the
upstream's real outcome."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from gateway_client import Client, JobFailedError, JobState, Output
from harness import ServerProcess, wait_until
from harness.fakes.common import TOKEN, FakeProcess


@dataclass(frozen=True)
class Profile:
    name: str
    module: str
    settings: Callable[[str], dict[str, Any]]  # the route's own keys, given the fake's URL
    token_env: str
    logs: bool = True      # the provider reports the job's log
    partial: bool = True   # ... and its partial outputs while it runs

    def route(self, url: str, **extra: Any) -> str:
        keys = {"backend": f'"{self.name}"', "url": f'"{url}"', "token_env": f'"{self.token_env}"',
                "poll_interval_seconds": 0.3, "poll_max_seconds": 0.6, "retry_initial_seconds": 0.05,
                "retry_max_seconds": 0.3, "max_retries": 12, "deadline_seconds": 60, "stream_idle_seconds": 5,
                **self.settings(url), **extra}
        return "[routes.up]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())


PROFILES = {
    "fal": Profile("fal", "harness.fakes.fal", lambda url: {"model": '"fake-owner/fake-app"'}, "FAL_KEY",
                   partial=False),
    "replicate": Profile("replicate", "harness.fakes.replicate", lambda url: {"model": '"acme/streamer"'},
                         "REPLICATE_API_TOKEN"),
    "runpod": Profile("runpod", "harness.fakes.runpod", lambda url: {"endpoint_id": '"ep123"'}, "RUNPOD_API_KEY",
                      logs=False),
}


@pytest.fixture(params=sorted(PROFILES))
def profile(request: pytest.FixtureRequest) -> Profile:
    return PROFILES[request.param]


@pytest.fixture
def fake(profile: Profile) -> Iterator[FakeProcess]:
    process = FakeProcess(profile.module, "--token", TOKEN)
    yield process
    process.stop()


@pytest.fixture
def gateway(make_server, profile: Profile, fake: FakeProcess) -> Callable[..., ServerProcess]:  # type: ignore[no-untyped-def]
    def start(prefix: str = "", **extra: Any) -> ServerProcess:
        server: ServerProcess = make_server(prefix + profile.route(fake.url, **extra), env={profile.token_env: TOKEN})
        server.wait_serving("route/up", timeout=30)
        return server

    return start


def webhooks_taken(stats: dict[str, Any]) -> int:
    """Deliveries of the fake's webhooks that the gateway answered 200 (each fake lists its attempts)."""
    return sum(1 for attempt in stats.get("webhooks", [])
               if 200 in (attempt.get("answer"), attempt.get("status"), attempt.get("result")))


def creates(fake: FakeProcess) -> int:
    return int(fake.stats()["total_creates"])


def test_a_job_streams_its_outputs_and_logs_and_ends_with_the_upstreams_output(gateway, fake: FakeProcess,  # type: ignore[no-untyped-def]
                                                                             profile: Profile) -> None:
    server = gateway()
    with Client(server.target) as client:
        job, _ = client.submit_job("up", {"steps": 4, "delay": 0.2, "prefix": "w"})
        seen = list(client.watch(job.id))
        result = client.fetch(job.id).result
    states = [j.state for j in seen]
    assert states[0] is JobState.QUEUED and states[-1] is JobState.SUCCEEDED and JobState.RUNNING in states
    if profile.logs:
        assert "step 3" in seen[-1].logs and any("step 0" in j.logs and not j.done for j in seen)
    if profile.partial:
        assert [s.text for s in seen[-1].segments] == ["w0", "w1", "w2", "w3"]
        assert any(0 < len(j.segments) < 4 for j in seen)  # while it ran
    assert isinstance(result, Output) and "w3" in str(result.value)
    assert creates(fake) == 1
    assert list(fake.stats()["authorization"]) and all(TOKEN in a for a in fake.stats()["authorization"])


def test_a_failed_upstream_job_fails_with_its_error(gateway, fake: FakeProcess) -> None:  # type: ignore[no-untyped-def]
    server = gateway()
    with Client(server.target) as client:
        job, _ = client.submit_job("up", {"steps": 1, "delay": 0.1, "fail": "the model broke"})
        with pytest.raises(JobFailedError) as caught:
            client.future(job.id).result(timeout=30)
    assert caught.value.reason == "UPSTREAM_JOB_FAILED" and "the model broke" in str(caught.value)


def test_cancel_cancels_upstream(gateway, fake: FakeProcess) -> None:  # type: ignore[no-untyped-def]
    server = gateway()
    with Client(server.target) as client:
        job, _ = client.submit_job("up", {"steps": 100, "delay": 0.1})
        wait_until(lambda: client.get(job.id).state is JobState.RUNNING, "the job to run upstream", timeout=20)
        client.cancel(job.id)
        wait_until(lambda: sum(v for k, v in fake.stats()["requests"].items() if "cancel" in k) >= 1,
                   "the upstream cancel", timeout=10)
    assert client is not None


@pytest.mark.parametrize("faults", [{"fail_rate": 0.2, "throttle_rate": 0.1, "retry_after": 0},
                                    {"reset_rate": 0.2}, {"stream_cut_after": 2}])
def test_jobs_end_with_the_upstreams_outcome_under_faults(gateway, fake: FakeProcess, faults: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    server = gateway()
    fake.control(seed=11, **faults)
    with Client(server.target) as client:
        jobs = [client.submit_job("up", {"steps": 3, "delay": 0.1, "prefix": f"j{i}-"})[0] for i in range(6)]
        finals = [list(client.watch(job.id))[-1] for job in jobs]
        results = [client.fetch(job.id).result for job in jobs]
    # A reset after the create was sent leaves it unknown whether the upstream took the job: such a job
    # fails UPSTREAM_SUBMIT_INTERRUPTED and is not sent again. Every other job ends with its output.
    interrupted = [j for j in finals if j.error is not None and j.error.reason == "UPSTREAM_SUBMIT_INTERRUPTED"]
    succeeded = [i for i, j in enumerate(finals) if j.state is JobState.SUCCEEDED]
    assert len(interrupted) + len(succeeded) == 6, [j.error for j in finals]
    assert len(interrupted) <= 2 if "reset_rate" in faults else not interrupted
    assert all(f"j{i}-2" in str(results[i].value) for i in succeeded)  # type: ignore[union-attr]
    assert creates(fake) == len(succeeded)  # none submitted twice (the fake resets before it creates)


def test_ten_watchers_cost_no_more_upstream_requests_than_one(gateway, fake: FakeProcess) -> None:  # type: ignore[no-untyped-def]
    server = gateway()

    def requests_for(watchers: int) -> dict[str, int]:
        fake.control(reset_stats=True)
        with Client(server.target) as client:
            job, _ = client.submit_job("up", {"steps": 3, "delay": 0.3})
            threads = [threading.Thread(target=lambda: list(client.watch(job.id))) for _ in range(watchers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        return dict(fake.stats()["requests"])

    one, ten = requests_for(1), requests_for(10)
    # A request per watcher would add nine or more; a stream that ends early and a fallback poll (timing, on a
    # loaded machine) add a few whatever the watchers.
    assert sum(ten.values()) <= sum(one.values()) + 3, (one, ten)
    assert creates(fake) == 1


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_kill9_mid_job_resumes_without_a_second_submit(gateway, fake: FakeProcess, request: pytest.FixtureRequest,  # type: ignore[no-untyped-def]
                                                       store: str) -> None:
    prefix = ""
    if store == "redis":
        redis = request.getfixturevalue("redis_process")
        redis.flush()
        prefix = f'store = "{redis.url}"\nlease_seconds = 2\n'
    server = gateway(prefix)
    with Client(server.target) as client:
        job, _ = client.submit_job("up", {"steps": 12, "delay": 0.25})
        wait_until(lambda: client.get(job.id).state is JobState.RUNNING, "the job to run upstream", timeout=20)
    server.kill()
    server.restart()
    with Client(server.target) as client:
        final = list(client.watch(job.id, timeout=60))[-1]
        result = client.fetch(job.id).result
    assert final.state is JobState.SUCCEEDED, final
    assert isinstance(result, Output) and "tok11" in str(result.value)
    assert creates(fake) == 1


def test_webhooks_lost_repeated_or_out_of_order_change_nothing(gateway, fake: FakeProcess, profile: Profile) -> None:  # type: ignore[no-untyped-def]
    """The gateway asks for the provider's webhooks (it has an HTTP face): with some lost, every one sent
    twice (and Replicate's non-final ones out of order), every job still ends once, with its outputs in order.
    The event streams are cut and the fallback poll is slow, so that a webhook (fal's and RunPod's come only
    at the end) is not beaten by the stream and answered "already ended"."""
    server = gateway(poll_interval_seconds=2, poll_max_seconds=2)
    faults: dict[str, Any] = {"webhook_repeat_rate": 1.0, "webhook_drop_rate": 0.3, "seed": 5, "stream_cut_after": 0}
    if profile.name == "replicate":
        faults["webhook_shuffle"] = True
    fake.control(**faults)
    with Client(server.target) as client:
        jobs = [client.submit_job("up", {"steps": 4, "delay": 0.1, "prefix": f"j{i}-"})[0] for i in range(4)]
        finals = [list(client.watch(job.id))[-1] for job in jobs]
    assert all(j.state is JobState.SUCCEEDED for j in finals), [j.error for j in finals]
    if profile.partial:
        assert all([s.text for s in j.segments] == [f"j{i}-{k}" for k in range(4)] for i, j in enumerate(finals))
    assert creates(fake) == 4
    stats = fake.stats()
    assert webhooks_taken(stats) >= 1, "the gateway took none of the fake's webhooks"


def test_webhooks_reach_the_worker_that_runs_the_job_through_another_replica(  # type: ignore[no-untyped-def]
        make_server, profile: Profile, fake: FakeProcess, redis_process) -> None:
    """The provider posts to an API replica that runs no jobs; it passes each webhook over Redis to the
    worker process that runs the job (the API answers 200 only when a runner took it). The event streams
    are cut and the fallback poll is slow, so that the webhooks are what ends the jobs."""
    redis_process.flush()
    fake.control(stream_cut_after=0)
    config = (f'store = "{redis_process.url}"\nshutdown_grace_seconds = 0\n'
              + profile.route(fake.url, poll_interval_seconds=20, poll_max_seconds=20))
    env = {profile.token_env: TOKEN}
    api: ServerProcess = make_server(config, env=env, args=("--workers", "0"))
    worker: ServerProcess = make_server(f'public_url = "{api.http_url}"\n' + config, env=env, command="worker",
                                        args=("--route", "up", "--workers", "4"))
    worker.wait_serving("route/up", timeout=30)
    with Client(api.target) as client:
        jobs = [client.submit_job("up", {"steps": 3, "delay": 0.1, "prefix": f"j{i}-"})[0] for i in range(3)]
        finals = [list(client.watch(job.id, timeout=60))[-1] for job in jobs]
    assert all(j.state is JobState.SUCCEEDED for j in finals), [j.error for j in finals]
    assert webhooks_taken(fake.stats()) >= 3
    assert creates(fake) == 3


SUBMIT_TARGET = {"fal": "submit", "replicate": "create_model", "runpod": "run"}  # each fake's create route


def test_a_create_the_upstream_refuses_for_a_while_is_run_again_by_the_routes_retry_policy(  # type: ignore[no-untyped-def]
        gateway, fake: FakeProcess, profile: Profile) -> None:
    """The provider answers 503 to the first four creates: with one HTTP retry per run, the first two runs end
    UPSTREAM_UNAVAILABLE (the upstream never took the job: transient), and the route's retry policy runs the job
    a third time, which the provider takes. One prediction upstream; the job's attempt says 3."""
    fake.control(fail_rate=1.0, fail_statuses=[503], targets=[SUBMIT_TARGET[profile.name]], max_faults=4)
    server = gateway(max_retries=1, retry_initial_seconds=0.05, retry_max_seconds=0.05,
                     retry="{ max_attempts = 3, initial_backoff_seconds = 0.1 }")
    with Client(server.target) as client:
        job, _ = client.submit_job("up", {"steps": 2, "delay": 0.05, "prefix": "r"})
        final = list(client.watch(job.id, timeout=60))[-1]
    assert final.state is JobState.SUCCEEDED, final.error
    assert final.attempt == 3 and creates(fake) == 1
