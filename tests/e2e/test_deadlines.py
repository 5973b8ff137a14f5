"""Deadlines: a job past its queue_timeout (QUEUED too long) or run_timeout (RUNNING too long) ends
FAILED, with reason QUEUE_TIMEOUT or RUN_TIMEOUT, within a second of the deadline, in both stores; a
running backend is stopped as a cancel stops it (its worker is free for the next job at once). With
Redis, the API replica that took the job may be gone: any process ends it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from gateway_client import Client, InvalidArgumentError, Job, JobFailedError, JobState
from harness import ServerProcess, cli, wait_until
from harness.redis import RedisProcess

ROUTES = """
[routes.echo]
backend = "echo"
workers = 1
[routes.slow]
backend = "echo"
workers = 4
run_timeout_seconds = 1.5
"""
LONG = {"delay_ms": 60_000, "steps": 600}


@dataclass
class Gateway:
    api: ServerProcess  # where calls go
    others: list[ServerProcess]  # the workers, with Redis


def _on_redis(make_server: Callable[..., ServerProcess], redis: RedisProcess,
              lease_seconds: float = 2) -> tuple[str, ServerProcess, ServerProcess]:
    """(its config, an API replica running no jobs, a worker serving the echo route) on an emptied Redis."""
    redis.flush()
    config = f'store = "{redis.url}"\nshutdown_grace_seconds = 0\nlease_seconds = {lease_seconds}\n' + ROUTES
    api = make_server(config, args=("--workers", "0"))
    worker = make_server(config, command="worker")
    worker.wait_serving("route/echo")
    return config, api, worker


@pytest.fixture(params=["sqlite", "redis"])
def gateway(request: pytest.FixtureRequest, make_server: Callable[..., ServerProcess]) -> Iterator[Gateway]:
    if request.param == "sqlite":
        yield Gateway(make_server(ROUTES), [])
        return
    _config, api, worker = _on_redis(make_server, request.getfixturevalue("redis_process"))
    yield Gateway(api, [worker])


def _failed(client: Client, job_id: str) -> Job:
    with pytest.raises(JobFailedError) as caught:
        client.future(job_id).result(timeout=60)
    return caught.value.job


def test_a_job_running_past_its_run_timeout_fails_at_once_and_frees_its_worker(gateway: Gateway) -> None:
    with Client(gateway.api.target) as client:
        job, _ = client.submit_job("echo", LONG, run_timeout=1.0)
        assert (job.queue_timeout, job.run_timeout) == (None, 1.0)
        ended = _failed(client, job.id)
        assert ended.error is not None and ended.error.reason == "RUN_TIMEOUT"
        assert ended.start_time is not None and ended.finish_time is not None
        ran = (ended.finish_time - ended.start_time).total_seconds()
        assert 1.0 <= ran < 2.0, f"ended {ran:.2f} s after it started"
        # The route's one worker is free again: the next job runs, and to its end.
        assert client.submit("echo", {"delay_ms": 10}).result(timeout=60).value == {"delay_ms": 10}


def test_a_route_default_run_timeout_applies_unless_submit_sets_one(gateway: Gateway) -> None:
    with Client(gateway.api.target) as client:
        defaulted, _ = client.submit_job("slow", LONG)
        longer, _ = client.submit_job("slow", {"delay_ms": 2500}, run_timeout=30.0)
        assert _failed(client, defaulted.id).error.reason == "RUN_TIMEOUT"  # type: ignore[union-attr]
        assert client.future(longer.id).result(timeout=60).value == {"delay_ms": 2500}


def test_a_job_queued_past_its_queue_timeout_fails_without_running(gateway: Gateway) -> None:
    with Client(gateway.api.target) as client:
        busy, _ = client.submit_job("echo", LONG)  # the route's one worker
        wait_until(lambda: client.get(busy.id).state is JobState.RUNNING, "the first job to run")
        waiting, _ = client.submit_job("echo", {"delay_ms": 10}, queue_timeout=1.0)
        ended = _failed(client, waiting.id)
        assert ended.error is not None and ended.error.reason == "QUEUE_TIMEOUT"
        assert ended.start_time is None  # it never ran
        assert ended.finish_time is not None
        waited = (ended.finish_time - ended.create_time).total_seconds()
        assert 1.0 <= waited < 2.0, f"ended {waited:.2f} s after it was created"
        client.cancel(busy.id)


def test_with_redis_any_process_ends_a_queued_job_past_its_deadline(
    make_server: Callable[..., ServerProcess], redis_process: RedisProcess,
) -> None:
    config, api, _worker = _on_redis(make_server, redis_process)
    with Client(api.target) as client:
        busy, _ = client.submit_job("echo", LONG)
        wait_until(lambda: client.get(busy.id).state is JobState.RUNNING, "the first job to run")
        waiting, _ = client.submit_job("echo", {"delay_ms": 10}, queue_timeout=2.0)
    api.kill()  # the replica that took it is gone; the worker's process ends it
    other = make_server(config, args=("--workers", "0"))
    with Client(other.target) as client:
        ended = _failed(client, waiting.id)
        assert ended.error is not None and ended.error.reason == "QUEUE_TIMEOUT"
        assert (ended.finish_time - ended.create_time).total_seconds() < 3.0  # type: ignore[operator]


@pytest.mark.parametrize("seconds", [0.0, -1.0, 31 * 24 * 3600.0])
def test_a_timeout_out_of_range_is_refused(make_server: Callable[..., ServerProcess], seconds: float) -> None:
    server = make_server(ROUTES)
    with Client(server.target) as client:
        for name in ("queue_timeout", "run_timeout"):
            with pytest.raises(InvalidArgumentError) as caught:
                client.submit_job("echo", {}, **{name: seconds})  # type: ignore[arg-type]
            assert [field for field, _ in caught.value.field_violations] == [name]


def test_the_cli_sets_the_timeouts(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server(ROUTES)
    done = cli(server.target, "submit", "--route", "echo", "--inputs", '{"delay_ms": 10}', "--queue-timeout", "5",
               "--run-timeout", "2.5")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)["job"]
    assert (job["queueTimeout"], job["runTimeout"]) == ("5s", "2.500s")


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_a_job_taken_over_keeps_its_run_deadline(make_server: Callable[..., ServerProcess],
                                                 redis_process: RedisProcess, how: str) -> None:
    """Its worker killed (or drained by SIGTERM) mid-run, another worker takes the job over and ends it at
    the deadline counted from its first start, not from the takeover."""
    config, api, first = _on_redis(make_server, redis_process, lease_seconds=1)
    with Client(api.target) as client:
        job, _ = client.submit_job("echo", LONG, run_timeout=4.0)
        wait_until(lambda: client.get(job.id).state is JobState.RUNNING, "the job to run")
        began = client.get(job.id).start_time
        getattr(first, how)()
        second = make_server(config, command="worker")
        second.wait_serving("route/echo")
        ended = _failed(client, job.id)
    assert ended.error is not None and ended.error.reason == "RUN_TIMEOUT"
    ran = (ended.finish_time - began).total_seconds()  # type: ignore[operator]
    assert 4.0 <= ran < 5.0, f"ended {ran:.2f} s after its first start"
