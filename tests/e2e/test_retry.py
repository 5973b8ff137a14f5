"""Retry through the real servers, clients and CLI: the Retry RPC runs a FAILED or CANCELLED job again as a
new job linked to the old one (once per job, whichever replica is asked), and a route's retry policy runs
a transiently failing job again itself, the job staying RUNNING and its attempt counting the runs. With
SQLite, one process; with Redis, two API replicas and two worker processes on one redis-server."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from gateway_client import Client, FailedPreconditionError, JobState, NotFoundError
from harness import ServerProcess, cli, wait_until
from harness.gateway import redis_replicas
from harness.metrics import scrape, value
from harness.redis import RedisProcess

TOKENS = {"alice": "alice-token", "bob": "bob-token"}
CONFIG = (
    '[auth]\nenabled = true\n[auth.tokens]\n' + "".join(f'{token} = "{tenant}"\n' for tenant, token in TOKENS.items())
    + '[routes.echo]\nbackend = "echo"\nworkers = 4\n'
    '[routes.flaky]\nbackend = "echo"\nworkers = 4\n'
    '[routes.flaky.retry]\nmax_attempts = 3\ninitial_backoff_seconds = 0.3\nbackoff_multiplier = 2\n'
    '[routes.patient]\nbackend = "echo"\nworkers = 4\n[routes.patient.retry]\nmax_attempts = 3\n'
    'initial_backoff_seconds = 30\n'
)


@dataclass
class Deployment:
    apis: list[ServerProcess]  # Submit goes to the first, Retry and reads to the last


@pytest.fixture(params=["sqlite", "redis"])
def deployment(request: pytest.FixtureRequest, make_server: Callable[..., ServerProcess]) -> Iterator[Deployment]:
    if request.param == "sqlite":
        yield Deployment([make_server(CONFIG)])
        return
    redis: RedisProcess = request.getfixturevalue("redis_process")
    redis.flush()
    apis = redis_replicas(make_server, redis.url, CONFIG, "flaky")
    yield Deployment(apis)


def _clients(deployment: Deployment, tenant: str = "alice") -> tuple[Client, Client]:
    return (Client(deployment.apis[0].target, token=TOKENS[tenant]),
            Client(deployment.apis[-1].target, token=TOKENS[tenant]))


def test_retry_runs_a_failed_job_again_as_a_new_job_linked_both_ways(deployment: Deployment) -> None:
    first, other = _clients(deployment)
    with first, other:
        inputs = {"fail_with": "broken", "x": [1, 2]}
        failed = first.submit_job("echo", inputs, labels={"team": "a"}, priority=2, queue_timeout=600,
                                  run_timeout=300).job
        ended = list(first.watch(failed.id))[-1]
        assert ended.state is JobState.FAILED and ended.error is not None and ended.error.reason == "ECHO_FAILURE"
        retried, existing = other.retry_job(failed.id)
        assert not existing and retried.id != failed.id and retried.retry_of == failed.id
        assert (retried.route, dict(retried.labels), retried.priority) == ("echo", {"team": "a"}, 2)
        assert (retried.queue_timeout, retried.run_timeout) == (600, 300)
        again = list(other.watch(retried.id))[-1]
        assert again.state is JobState.FAILED and again.retry_of == failed.id  # the same inputs: the same failure
        assert other.fetch(retried.id).job.retry_of == failed.id
        # The old job names its retry, through either replica; a second Retry answers the same job.
        assert first.get(failed.id).retried_by == retried.id and other.fetch(failed.id).job.retried_by == retried.id
        for client in (first, other):
            same, existing = client.retry_job(failed.id)
            assert existing and same.id == retried.id
        # The retry can be retried in turn.
        third, existing = first.retry_job(retried.id)
        assert not existing and third.retry_of == retried.id and third.id not in (failed.id, retried.id)
        assert first.get(retried.id).retried_by == third.id


def test_retry_runs_a_cancelled_job_with_its_inputs(deployment: Deployment) -> None:
    first, other = _clients(deployment)
    with first, other:
        job = first.submit_job("echo", {"delay_ms": 60_000, "steps": 60, "payload": "é" * 100}).job
        wait_until(lambda: first.get(job.id).state is JobState.RUNNING, "the job to run")
        first.cancel(job.id)
        assert list(first.watch(job.id))[-1].state is JobState.CANCELLED
        retried, _ = other.retry_job(job.id)
        assert other.get(retried.id).state in (JobState.QUEUED, JobState.RUNNING)
        wait_until(lambda: other.get(retried.id).state is JobState.RUNNING, "the retry to run")
        other.cancel(retried.id)
        quick, _ = first.submit_job("echo", {"payload": "é" * 100, "fail_with": "x"}).job, None
        list(first.watch(quick.id))
        retried_quick, _ = other.retry_job(quick.id)
        result = other.fetch(list(other.watch(retried_quick.id))[-1].id)
        assert result.job.state is JobState.FAILED and result.job.error is not None
        assert result.job.error.message == "x"  # its very inputs, fail_with and all


def test_retry_refuses_what_it_cannot_run_again(deployment: Deployment) -> None:
    first, other = _clients(deployment)
    with first, other, Client(deployment.apis[-1].target, token=TOKENS["bob"]) as bob:
        done = first.submit_job("echo", {}).job
        assert list(first.watch(done.id))[-1].state is JobState.SUCCEEDED
        with pytest.raises(FailedPreconditionError) as succeeded:
            other.retry_job(done.id)
        assert succeeded.value.reason == "JOB_NOT_RETRYABLE"
        running = first.submit_job("echo", {"delay_ms": 60_000, "steps": 60}).job
        with pytest.raises(FailedPreconditionError) as not_done:
            other.retry_job(running.id)
        assert not_done.value.reason == "JOB_NOT_DONE"
        first.cancel(running.id)
        list(first.watch(running.id))
        with pytest.raises(NotFoundError):  # another tenant's job is not there for bob
            bob.retry_job(running.id)
        with pytest.raises(NotFoundError):
            other.retry_job("0" * 32)
        assert other.get(running.id).retried_by == ""  # nothing was made


def test_the_cli_retries_a_job_and_prints_the_retry_response(deployment: Deployment) -> None:
    api = deployment.apis[-1]
    with Client(deployment.apis[0].target, token=TOKENS["alice"]) as client:
        failed = client.submit_job("echo", {"fail_with": "no"}).job
        list(client.watch(failed.id))
    done = cli(api.target, "retry", failed.id, token=TOKENS["alice"])
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["job"]["retryOf"] == failed.id and answer["existing"] is False
    again = json.loads(cli(api.target, "retry", failed.id, token=TOKENS["alice"]).stdout)
    assert again["job"]["id"] == answer["job"]["id"] and again["existing"] is True
    refused = cli(api.target, "retry", answer["job"]["id"], token=TOKENS["alice"])  # queued or running: not done
    if refused.returncode != 0:
        assert "FAILED_PRECONDITION JOB_NOT_DONE" in refused.stderr


def test_a_transient_failure_runs_again_with_backoff_and_the_attempt_counts_the_runs(deployment: Deployment) -> None:
    first, other = _clients(deployment)
    with first, other:
        started = time.monotonic()
        job = first.submit_job("flaky", {"fail_attempts": 2, "steps": 2, "delay_ms": 20}).job
        seen = list(other.watch(job.id))
        final = seen[-1]
        assert final.state is JobState.SUCCEEDED and final.attempt == 3, final
        assert time.monotonic() - started >= 0.3 + 0.6  # the backoffs: 0.3 s, then 0.6 s
        attempts = [j.attempt for j in seen]
        assert attempts == sorted(attempts) and {1, 2, 3} <= set(attempts)
        states = [j.state for j in seen]
        running = states.index(JobState.RUNNING)
        assert all(s is JobState.RUNNING for s in states[running:-1])  # it never went back to the queue
        assert other.get(job.id).attempt == 3 and other.fetch(job.id).job.attempt == 3
    if len(deployment.apis) == 1:  # (with Redis the worker processes count them, on their own listeners)
        retries = value(scrape(deployment.apis[0].http_url), "gateway_job_retries_total", route="flaky",
                        reason="ECHO_TRANSIENT_FAILURE")
        assert retries == 2


def test_retries_stop_at_max_attempts_and_only_transient_failures_are_retried(deployment: Deployment) -> None:
    first, other = _clients(deployment)
    with first, other:
        hopeless = first.submit_job("flaky", {"fail_attempts": 10}).job
        permanent = first.submit_job("flaky", {"fail_with": "a bug"}).job
        plain_route = first.submit_job("echo", {"fail_attempts": 1}).job  # no policy: one run
        ends = {j.id: list(other.watch(j.id))[-1] for j in (hopeless, permanent, plain_route)}
        assert ends[hopeless.id].state is JobState.FAILED and ends[hopeless.id].attempt == 3
        assert ends[hopeless.id].error is not None and ends[hopeless.id].error.reason == "ECHO_TRANSIENT_FAILURE"
        assert ends[permanent.id].attempt == 1 and ends[permanent.id].error.reason == "ECHO_FAILURE"  # type: ignore[union-attr]
        assert ends[plain_route.id].attempt == 1 and ends[plain_route.id].state is JobState.FAILED
        # The Retry RPC starts a new job from attempt 1, with the policy's runs again.
        retried, _ = other.retry_job(hopeless.id)
        assert retried.attempt == 1
        assert list(other.watch(retried.id))[-1].attempt == 3


def test_a_cancel_during_the_backoff_ends_the_job_at_once(deployment: Deployment) -> None:
    first, other = _clients(deployment)
    with first, other:
        job = first.submit_job("patient", {"fail_attempts": 10}).job  # then 30 s before its second run
        wait_until(lambda: other.get(job.id).attempt >= 2, "the first run to fail")
        asked = time.monotonic()
        other.cancel(job.id)
        final = list(first.watch(job.id))[-1]
        assert final.state is JobState.CANCELLED and time.monotonic() - asked < 2.0
