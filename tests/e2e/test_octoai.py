"""The octoai backend against the faithful fake upstream (a real HTTP server process)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

from gateway_client import Client, JobFailedError, JobState, Output
from harness import FIXTURES, ServerProcess
from harness.fakes.octoai import TOKEN, FakeProcess
from harness.fakes.octoai import route_config as config


@pytest.fixture
def upstream() -> Iterator[FakeProcess]:
    fake = FakeProcess("--token", TOKEN, "--pending-seconds", "0.4", "--running-seconds", "0.4")
    yield fake
    fake.stop()


@pytest.fixture
def gateway(make_server, upstream: FakeProcess):  # type: ignore[no-untyped-def]
    def start(**extra: Any) -> ServerProcess:
        return make_server(config(upstream.url, **extra), env={"UPSTREAM_TOKEN": TOKEN})

    return start


def test_upstream_job_pending_running_completed(gateway, upstream: FakeProcess) -> None:  # type: ignore[no-untyped-def]
    server = gateway()
    server.wait_serving("route/upstream", timeout=20)
    with Client(server.target) as client:
        job, _ = client.submit_job("upstream", {"language": "en", "task": "transcribe", "audio": "AAAA"})
        states = [j.state for j in client.watch(job.id)]
        result = client.fetch(job.id).result
    assert states[0] is JobState.QUEUED and states[-1] is JobState.SUCCEEDED
    assert JobState.RUNNING in states  # upstream "running" became RUNNING
    assert isinstance(result, Output) and result.value["transcription"] == " She sells seashells by the seashore."
    stats = upstream.stats()
    assert stats["posts"] == 1 and stats["total_result_fetches"] == 1
    assert list(stats["authorization"]) == [f"Bearer {TOKEN}"]
    assert any(agent.startswith("inference-gateway/") for agent in stats["user_agents"])


def test_typed_transcription_request_is_sent_as_template_inputs(gateway, upstream: FakeProcess) -> None:  # type: ignore[no-untyped-def]
    server = gateway()
    with Client(server.target) as client:
        future = client.transcribe(FIXTURES / "seashells.wav", route="upstream", language="en", result_type=Output)
        result = future.result(timeout=30)
    assert isinstance(result, Output)  # an upstream route answers its JSON, typed request or not
    assert result.value["inputs"]["task"] == "transcribe" and result.value["inputs"]["language"] == "en"
    assert 2.4 < result.value["audio_duration_s"] < 2.6  # the fake decoded our base64 WAV


def test_jobs_succeed_under_thirty_percent_faults(gateway, upstream: FakeProcess) -> None:  # type: ignore[no-untyped-def]
    upstream.control(fail_rate=0.1, throttle_rate=0.1, reset_rate=0.1, retry_after=0, seed=7,
                     targets=["predict", "poll", "result"])
    server = gateway()
    with Client(server.target) as client:
        futures = [client.submit("upstream", {"n": i}) for i in range(12)]
        results = [f.result(timeout=120) for f in futures]
    assert [r.value["inputs"]["n"] for r in results] == list(range(12))  # type: ignore[union-attr]
    stats = upstream.stats()
    assert stats["random_faults"] >= 5  # the faults really happened
    assert stats["async_posts"] == 12  # and no job was submitted twice


def test_ten_watchers_cost_no_more_polls_than_one(gateway, upstream: FakeProcess) -> None:  # type: ignore[no-untyped-def]
    upstream.control(pending_seconds=1.5, running_seconds=0.5)
    server = gateway(poll_initial_seconds=0.2, poll_max_seconds=0.2)
    with Client(server.target) as client:
        one, _ = client.submit_job("upstream", {"watchers": 1})
        ten, _ = client.submit_job("upstream", {"watchers": 10})
        threads = [threading.Thread(target=lambda: list(client.watch(one.id)))]
        threads += [threading.Thread(target=lambda: list(client.watch(ten.id))) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    polls = sorted(upstream.stats()["polls"].values())  # keyed by the upstream's ids: one per job
    assert len(polls) == 2
    assert polls[1] <= polls[0] + 1  # one poll loop per job, whoever watches
    assert polls[1] <= 14  # ~2 s at 0.2 s (with jitter), not 10x that


def test_never_completing_upstream_job_fails_at_the_deadline(gateway, upstream: FakeProcess) -> None:  # type: ignore[no-untyped-def]
    upstream.control(stuck_pending=True)
    server = gateway(deadline_seconds=1.5)
    with Client(server.target) as client:
        with pytest.raises(JobFailedError) as failed:
            client.submit("upstream", {}).result(timeout=30)
    assert failed.value.reason == "UPSTREAM_DEADLINE_EXCEEDED" and "pending" in failed.value.message


def test_result_that_keeps_failing_fails_the_job(gateway, upstream: FakeProcess) -> None:  # type: ignore[no-untyped-def]
    upstream.control(failing_results=["*"])
    server = gateway(max_retries=3)
    with Client(server.target) as client:
        with pytest.raises(JobFailedError) as failed:
            client.submit("upstream", {}).result(timeout=30)
    assert failed.value.reason == "UPSTREAM_UNAVAILABLE" and "result" in failed.value.message
    assert upstream.stats()["total_result_fetches"] == 4


def test_upstream_refusing_the_submission(gateway, upstream: FakeProcess) -> None:  # type: ignore[no-untyped-def]
    upstream.control(post_status=422)
    server = gateway()
    with Client(server.target) as client:
        with pytest.raises(JobFailedError) as failed:
            client.submit("upstream", {}).result(timeout=30)
    assert failed.value.reason == "UPSTREAM_REJECTED" and "422" in failed.value.message
    assert upstream.stats()["posts"] == 1  # a 4xx is not retried


def test_upstream_auth_failure_is_a_clear_reason(make_server, upstream: FakeProcess) -> None:  # type: ignore[no-untyped-def]
    server = make_server(config(upstream.url), env={"UPSTREAM_TOKEN": "wrong-token"})
    with Client(server.target) as client:
        with pytest.raises(JobFailedError) as failed:
            client.submit("upstream", {}).result(timeout=30)
    assert failed.value.reason == "UPSTREAM_UNAUTHORIZED"
    assert "401" in failed.value.message and "credentials" in failed.value.message


def test_kill9_mid_poll_resumes_without_a_second_post(gateway, upstream: FakeProcess) -> None:  # type: ignore[no-untyped-def]
    upstream.control(pending_seconds=3.0)
    server = gateway()
    with Client(server.target) as client:
        future = client.submit("upstream", {"resume": True})
        deadline = time.monotonic() + 10
        while sum(upstream.stats()["polls"].values()) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.kill()
        polls_before = upstream.stats()["total_polls"]
        server.start()
        result = future.result(timeout=60)
    assert isinstance(result, Output) and result.value["inputs"] == {"resume": True}
    stats = upstream.stats()
    assert stats["posts"] == 1 and stats["total_polls"] > polls_before


def test_route_health_follows_the_upstream_healthcheck(make_server) -> None:  # type: ignore[no-untyped-def]
    fake = FakeProcess("--cold-start-seconds", "2")
    try:
        server = make_server(config(fake.url))
        assert server.health("route/upstream") == health_pb2.HealthCheckResponse.NOT_SERVING
        server.wait_serving("route/upstream", timeout=20)
        fake.control(cold_start_seconds=60, restart_cold=True)  # the upstream scales to zero
        deadline = time.monotonic() + 10
        while server.health("route/upstream") == health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        fake.stop()



# -- the upstream is a trust boundary -------------------------------------------------------------


def _foreign(upstream: FakeProcess) -> str:
    """The same fake under another origin (localhost instead of 127.0.0.1): what a spoofed upstream
    would name; any request the gateway sent there would show in the fake's counts."""
    return upstream.url.replace("127.0.0.1", "localhost")


def _fails_with(server: ServerProcess, reason: str) -> JobFailedError:
    with Client(server.target) as client:
        future = client.submit("upstream", {"n": 1})
        with pytest.raises(JobFailedError) as failed:
            future.result(timeout=60)
    assert failed.value.reason == reason, failed.value
    return failed.value


def test_a_poll_url_on_another_origin_is_not_followed(gateway, upstream: FakeProcess) -> None:  # type: ignore[no-untyped-def]
    assert upstream.url.startswith("http://127.0.0.1:")
    upstream.control(foreign_base=_foreign(upstream))
    server = gateway()
    error = _fails_with(server, "UPSTREAM_URL_NOT_ALLOWED")
    assert "localhost" in error.message and "allowed_origins" in error.message
    stats = upstream.stats()
    assert stats["posts"] == 1 and stats["total_polls"] == 0  # never polled there, so the token never went there


def test_a_redirect_to_another_origin_is_refused(gateway, upstream: FakeProcess) -> None:  # type: ignore[no-untyped-def]
    upstream.control(redirect_polls=_foreign(upstream))
    server = gateway()
    _fails_with(server, "UPSTREAM_URL_NOT_ALLOWED")
    assert upstream.stats()["total_polls"] == 1  # the one that answered the redirect; not followed


def test_allowed_origins_lets_a_configured_host_through(gateway, upstream: FakeProcess) -> None:  # type: ignore[no-untyped-def]
    upstream.control(foreign_base=_foreign(upstream))
    server = gateway(allowed_origins=f'["{_foreign(upstream)}"]')
    with Client(server.target) as client:
        result = client.submit("upstream", {"n": 2}).result(timeout=60)
    assert isinstance(result, Output) and result.value["inputs"] == {"n": 2}
    assert set(upstream.stats()["authorization"]) == {f"Bearer {TOKEN}"}


def test_a_huge_poll_answer_fails_the_job_without_being_read(gateway, upstream: FakeProcess) -> None:  # type: ignore[no-untyped-def]
    upstream.control(answer_padding=5_000_000)
    server = gateway(max_answer_bytes=65536)
    error = _fails_with(server, "UPSTREAM_ANSWER_TOO_LARGE")
    assert "65536" in error.message
