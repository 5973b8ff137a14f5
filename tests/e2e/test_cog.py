"""The cog backend against a real Cog model server (cog 0.23 from PyPI, harness/cog_server.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway_client import Client, JobFailedError, JobState, Output
from harness import ServerProcess, wait_until
from harness.cog_server import CogServer
from harness.redis import RedisProcess
from harness.webhook_relay import RelayProcess


def cog_route(url: str, **extra: Any) -> str:
    settings = {"backend": '"cog"', "url": f'"{url}"', "poll_interval_seconds": 0.5, "poll_max_seconds": 1.0,
                "retry_initial_seconds": 0.05, "retry_max_seconds": 0.5, "health_interval_seconds": 0.5,
                "deadline_seconds": 60, **extra}
    return "[routes.cog]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())


@pytest.fixture
def cog(tmp_path: Path) -> Iterator[CogServer]:
    server = CogServer("stream", tmp_path / "cog").start()
    yield server
    server.stop()


def test_outputs_and_logs_reach_watch_as_revisions(make_server, cog: CogServer) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = make_server(cog_route(cog.url))
    server.wait_serving("route/cog", timeout=30)
    with Client(server.target) as client:
        job, _ = client.submit_job("cog", {"steps": 4, "delay": 0.3, "prefix": "w"})
        seen = list(client.watch(job.id))
        result = client.fetch(job.id).result
    states = [j.state for j in seen]
    assert states[0] is JobState.QUEUED and states[-1] is JobState.SUCCEEDED and JobState.RUNNING in states
    assert [s.text for s in seen[-1].segments] == ["w0", "w1", "w2", "w3"]
    partial = [len(j.segments) for j in seen]
    assert partial == sorted(partial) and len(set(partial)) >= 3  # outputs arrived one by one
    assert "step 3 of 4" in seen[-1].logs and "stderr line 0" in seen[-1].logs
    assert any(0 < j.progress < 1 for j in seen)  # from the log's "NN%|"
    assert isinstance(result, Output) and result.value == ["w0", "w1", "w2", "w3"]
    assert len(cog.runs()) == 1


def test_a_failing_prediction_fails_the_job_with_cogs_error(make_server, cog: CogServer) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = make_server(cog_route(cog.url))
    server.wait_serving("route/cog", timeout=30)
    with Client(server.target) as client:
        job, _ = client.submit_job("cog", {"steps": 1, "delay": 0.1, "fail": "the model broke"})
        final = list(client.watch(job.id))[-1]
        with pytest.raises(JobFailedError) as caught:
            client.future(job.id).result(timeout=30)
    assert final.state is JobState.FAILED and final.error is not None
    assert final.error.reason == "UPSTREAM_JOB_FAILED" and "the model broke" in final.error.message
    assert caught.value.reason == "UPSTREAM_JOB_FAILED"


def test_cancel_cancels_the_prediction(make_server, cog: CogServer) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = make_server(cog_route(cog.url))
    server.wait_serving("route/cog", timeout=30)
    with Client(server.target) as client:
        job, _ = client.submit_job("cog", {"steps": 200, "delay": 0.1})
        wait_until(lambda: len(client.get(job.id).segments) >= 2, "two outputs", timeout=20)
        client.cancel(job.id)  # (answers at once; the job ends CANCELLED once Cog has the cancel)
        assert list(client.watch(job.id))[-1].state is JobState.CANCELLED
        wait_until(lambda: cog.health().get("status") == "READY", "Cog's slot freed by the cancel", timeout=10)
        # The slot is free for the next job at once (the cancelled one is not running on).
        second, _ = client.submit_job("cog", {"steps": 1, "delay": 0.1})
        assert list(client.watch(second.id))[-1].state is JobState.SUCCEEDED


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_kill9_or_sigterm_of_the_gateway_never_runs_a_prediction_twice(make_server, cog: CogServer, how: str) -> None:  # type: ignore[no-untyped-def]
    """kill -9, or a SIGTERM whose drain ends before the prediction: the restarted gateway re-attaches to
    the prediction still running (a stopping gateway does not cancel it)."""
    server: ServerProcess = make_server("shutdown_grace_seconds = 0\n" + cog_route(cog.url))
    server.wait_serving("route/cog", timeout=30)
    with Client(server.target) as client:
        job, _ = client.submit_job("cog", {"steps": 12, "delay": 0.25})
        wait_until(lambda: len(client.get(job.id).segments) >= 2, "two outputs", timeout=20)
    server.kill() if how == "kill" else server.stop()
    server.restart()
    with Client(server.target) as client:
        final = list(client.watch(job.id))[-1]
        result = client.fetch(job.id).result
    assert final.state is JobState.SUCCEEDED, final
    assert isinstance(result, Output) and result.value == [f"tok{i}" for i in range(12)]
    assert [s.text for s in final.segments] == [f"tok{i}" for i in range(12)]
    assert len(cog.runs()) == 1  # re-attached with the same PUT, not run again


def test_kill9_while_the_prediction_ends_gets_the_retried_final_webhook(make_server, cog: CogServer) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = make_server(cog_route(cog.url))
    server.wait_serving("route/cog", timeout=30)
    with Client(server.target) as client:
        job, _ = client.submit_job("cog", {"steps": 3, "delay": 0.5})
        wait_until(lambda: len(client.get(job.id).segments) >= 1, "an output", timeout=20)
    server.kill()
    wait_until(lambda: len(cog.runs()) == 1 and cog.health().get("status") == "READY", "the prediction ended", timeout=20)
    server.restart()
    with Client(server.target) as client:
        final = list(client.watch(job.id))[-1]
    assert final.state is JobState.SUCCEEDED, final
    assert len(cog.runs()) == 1  # its result came by Cog's retried webhook; the PUT was not sent again


def test_a_restarted_cog_server_fails_the_job_without_running_it_again(make_server, cog: CogServer) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = make_server(cog_route(cog.url))
    server.wait_serving("route/cog", timeout=30)
    with Client(server.target) as client:
        job, _ = client.submit_job("cog", {"steps": 100, "delay": 0.1})
        wait_until(lambda: len(client.get(job.id).segments) >= 1, "an output", timeout=20)
        cog.kill()
        cog.start()
        final = list(client.watch(job.id, timeout=30))[-1]
    assert final.state is JobState.FAILED and final.error is not None and final.error.reason == "UPSTREAM_LOST"
    assert len(cog.runs()) == 1


def test_redis_webhooks_reach_the_worker_and_a_takeover_reattaches(make_server, redis_process: RedisProcess,  # type: ignore[no-untyped-def]
                                                                   cog: CogServer) -> None:
    """An API replica takes Cog's webhooks and passes them on, over Redis, to the worker process that runs
    the job; when that worker is killed, the one that takes the job over re-attaches to the same prediction."""
    redis_process.flush()
    config = f'store = "{redis_process.url}"\nshutdown_grace_seconds = 0\nlease_seconds = 2\n' + cog_route(cog.url)
    api: ServerProcess = make_server(config, args=("--workers", "0"))
    worker_config = f'public_url = "{api.http_url}"\n' + config

    def worker() -> ServerProcess:
        process: ServerProcess = make_server(worker_config, command="worker", args=("--route", "cog", "--workers", "1"))
        process.wait_serving("route/cog", timeout=30)
        return process

    first = worker()
    with Client(api.target) as client:
        job, _ = client.submit_job("cog", {"steps": 16, "delay": 0.25})
        wait_until(lambda: len(client.get(job.id).segments) >= 2, "outputs through the API's webhooks", timeout=20)
        first.kill()
        worker()
        final = list(client.watch(job.id, timeout=60))[-1]
    assert final.state is JobState.SUCCEEDED, final
    assert [s.text for s in final.segments] == [f"tok{i}" for i in range(16)]
    assert len(cog.runs()) == 1


def test_webhooks_lost_repeated_reordered_or_refused_change_nothing(make_server, cog: CogServer) -> None:  # type: ignore[no-untyped-def]
    """Cog's webhooks pass through a relay that loses half of the others, sends each twice, late and out
    of order, and refuses the final one twice (Cog retries it): the job still ends once, every output in
    order, the prediction run once."""
    relay = RelayProcess(drop_rate=0.5, repeat_rate=1.0, delay_max_seconds=0.4, fail_final_first=2, seed=3)
    try:
        server: ServerProcess = make_server(f'public_url = "{relay.url}"\n' + cog_route(cog.url))
        relay.control(target=server.http_url)
        server.wait_serving("route/cog", timeout=30)
        with Client(server.target) as client:
            job, _ = client.submit_job("cog", {"steps": 10, "delay": 0.15})
            seen = list(client.watch(job.id, timeout=60))
        stats = relay.stats()
    finally:
        relay.stop()
    final = seen[-1]
    assert final.state is JobState.SUCCEEDED, final
    assert [s.text for s in final.segments] == [f"tok{i}" for i in range(10)]
    counts = [len(j.segments) for j in seen]
    assert counts == sorted(counts)  # never backwards
    assert stats["dropped"] >= 1 and stats["final_refused"] == 2
    assert len(cog.runs()) == 1
