"""Prometheus metrics at /metrics, scraped from a real gateway while real jobs run (echo, whisper, and an
OctoAI upstream, the faithful fake): the counters and histograms move as the jobs do, RPCs are counted
by their final status code, open Watch streams are a gauge, and a worker process serves its own
metrics on metrics_listen. And JSON log lines about a job carry its id, route and tenant."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from gateway_client import Client, InvalidArgumentError, JobFailedError, NotFoundError
from harness import FIXTURES, ServerProcess, wait_until
from harness.fakes.octoai import TOKEN, FakeProcess
from harness.fakes.octoai import route_config as upstream_config
from harness.metrics import scrape, value


@pytest.fixture
def upstream() -> Iterator[FakeProcess]:
    fake = FakeProcess("--token", TOKEN, "--pending-seconds", "0.2", "--running-seconds", "0.2")
    yield fake
    fake.stop()


def test_counters_move_as_jobs_run(make_server: Callable[..., ServerProcess], upstream: FakeProcess) -> None:
    config = ('log_json = true\n[routes.echo]\nbackend = "echo"\n[routes.whisper]\nbackend = "whisper"\n'
              + upstream_config(upstream.url))
    server = make_server(config, env={"UPSTREAM_TOKEN": TOKEN})
    server.wait_serving("route/whisper")
    server.wait_serving("route/upstream", timeout=20)
    before = scrape(server.http_url)
    with Client(server.target, timeout=60) as client:
        done = [client.submit("echo", {"n": i, "delay_ms": 50}) for i in range(3)]
        failing = client.submit("echo", {"fail_with": "the model fell over"})
        spoken = client.transcribe(FIXTURES / "seashells.wav")
        upstream_job = client.submit("upstream", {"language": "en", "task": "transcribe", "audio": "AAAA"})
        for future in (*done, spoken, upstream_job):
            future.result(timeout=120)
        with pytest.raises(JobFailedError):
            failing.result(timeout=60)
        with pytest.raises(NotFoundError):
            client.get("0" * 32)
        with pytest.raises(InvalidArgumentError):
            client.submit("echo", {"delay_ms": -1})
        with pytest.raises(NotFoundError):
            client.submit("nowhere", {})

        # A Watch held open is counted while it is open.
        slow = client.submit("echo", {"delay_ms": 3000, "steps": 3})
        stream = client.watch(slow.job_id)
        first = threading.Event()

        def consume() -> None:
            for _ in stream:
                first.set()

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        assert first.wait(30)
        wait_until(lambda: value(scrape(server.http_url), "gateway_watch_streams", rpc="Watch") >= 1, "an open Watch")
        slow.result(timeout=60)
        reader.join(30)
    after = scrape(server.http_url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("gateway_jobs_submitted_total", route="echo") == 5
    assert moved("gateway_jobs_submitted_total", route="whisper") == 1
    assert moved("gateway_submits_refused_total", route="echo", reason="INVALID_REQUEST") == 1
    assert moved("gateway_submits_refused_total", route="", reason="ROUTE_NOT_FOUND") == 1
    assert moved("gateway_jobs_finished_total", route="echo", state="SUCCEEDED") == 4
    assert moved("gateway_jobs_finished_total", route="echo", state="FAILED", reason="ECHO_FAILURE") == 1
    assert moved("gateway_jobs_finished_total", route="whisper", state="SUCCEEDED") == 1
    assert moved("gateway_jobs_finished_total", route="upstream", state="SUCCEEDED") == 1
    assert moved("gateway_queue_wait_seconds_count", route="echo") == 5
    assert moved("gateway_job_run_seconds_count", route="echo") == 5
    assert moved("gateway_job_run_seconds_sum", route="echo") >= 3.0  # the slow one ran 3 s
    assert moved("gateway_whisper_real_time_factor_count", route="whisper") == 1
    assert moved("gateway_upstream_requests_total", outcome="2xx") >= 3  # submit, polls, result
    assert moved("gateway_rpcs_total", method="Submit", code="OK") == 7
    assert moved("gateway_rpcs_total", method="Get", code="NOT_FOUND") == 1
    assert moved("gateway_rpcs_total", method="Watch") >= 1
    assert moved("gateway_store_commit_batch_size_count", store="sqlite") >= 1
    assert moved("gateway_store_commit_seconds_count", store="sqlite") >= 1
    assert value(after, "gateway_watch_streams", rpc="Watch") == 0  # closed again
    assert ("gateway_queue_depth", (("route", "echo"),)) in after

    # JSON log lines about a job name it: the failed echo job's line carries its id, route and tenant.
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    about = [line for line in lines if line.get("job_id") == failing.job_id]
    assert about and all(line["route"] == "echo" and line["tenant"] == "default" for line in about)


def test_process_runtime_build_and_route_up_series_and_no_created_series(
        make_server: Callable[..., ServerProcess]) -> None:
    server = make_server('[routes.echo]\nbackend = "echo"\n[routes.broken]\nbackend = "whisper"\n'
                         'model = "/nonexistent/model"\n', env={"GATEWAY_COMMIT": "abc123def456"})
    wait_until(lambda: ("gateway_route_up", (("route", "broken"),)) in scrape(server.http_url), "the route's series")
    with Client(server.target) as client:
        client.submit("echo", {}).result(timeout=30)
    samples = scrape(server.http_url)
    assert value(samples, "gateway_route_up", route="echo") == 1
    assert value(samples, "gateway_route_up", route="broken") == 0  # its model cannot load
    build = [labels for (name, labels) in samples if name == "gateway_build_info"]
    assert len(build) == 1 and dict(build[0])["commit"] == "abc123def456" and dict(build[0])["version"]
    assert value(samples, "process_resident_memory_bytes") > 10_000_000
    assert value(samples, "process_open_fds") > 0 and value(samples, "process_cpu_seconds_total") > 0
    assert any(name == "python_info" for name, _ in samples)
    assert any(name.startswith("python_gc_") for name, _ in samples)
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    assert "_created" not in text  # counters and histograms carry no second, _created series


def test_a_worker_serves_its_metrics_on_metrics_listen(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server('metrics_listen = "127.0.0.1:0"\n[routes.echo]\nbackend = "echo"\n', start=False)
    server.start()
    port_line = [line for line in server.log().splitlines() if "metrics on port" in line]
    assert port_line, server.log()
    port = int(port_line[-1].rsplit(" ", 1)[1])
    samples = scrape(f"http://127.0.0.1:{port}")
    assert ("gateway_queue_depth", (("route", "echo"),)) in samples
