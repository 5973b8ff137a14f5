"""The fake RunPod serverless endpoint is faithful: the official runpod 1.12.0 SDK works against it, errors and all.

Two halves: the SDK's ``Endpoint`` and ``AsyncioEndpoint`` (in their own venv, harness/runpod_sdk.py) against the
fake as a subprocess, each SDK run done once per module and checked by several tests; and quick in-process checks
of the wire and of the fault knobs with aiohttp. The protocol record is docs/research/runpod.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from harness.fakes.common import TRANSCRIPTION, FakeProcess, Faults
from harness.fakes.runpod import FakeRunPod, RunPodSettings
from harness.runpod_sdk import run_sdk
from harness.webhook_receiver import Answer, Receiver

KEY = "rp-sekret-key"
UNAUTHORIZED = "401 Unauthorized | Make sure Runpod API key is set and valid."  # runpod/endpoint/helpers.py
TOKS = ["tok0", "tok1", "tok2"]


def defaults(**changes: Any) -> dict[str, Any]:
    """Every fault and setting back to its default (and the stats cleared), then ``changes``."""
    settings = {k: sorted(v) if isinstance(v, frozenset) else v for k, v in dataclasses.asdict(RunPodSettings()).items()}
    return {**Faults().to_json(), **settings, "reset_stats": True, **changes}


# ---------------------------------------------------------------------------------------------------------------
# The SDK against the fake as a subprocess
# ---------------------------------------------------------------------------------------------------------------

FAST = {"queue_seconds": 0.2, "runsync_wait_seconds": 1.0, "webhook_retry_seconds": 0.2}


@pytest.fixture(scope="module")
def fake_proc() -> Iterator[FakeProcess]:
    fake = FakeProcess("harness.fakes.runpod", "--token", KEY, "--settings", json.dumps({**FAST, "seed": 3}))
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def hooks() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def by_step(out: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    steps: dict[str, list[dict[str, Any]]] = {}
    for result in out["results"]:
        steps.setdefault(result["step"], []).append(result)
    return steps


@pytest.fixture(scope="module")
def tour(fake_proc: FakeProcess, hooks: Receiver) -> dict[str, Any]:
    """One SDK run through the whole client, as the docs use it."""
    fake_proc.control(**defaults(**FAST))
    hooks.script = [Answer(status=500)]  # the first webhook delivery fails, and is tried again
    out = run_sdk(fake_proc.url, KEY, [
        {"step": "run", "input": {"steps": 3, "delay": 0.1}},
        {"step": "run_sync", "input": {"steps": 2, "delay": 0.05}},
        {"step": "run_sync", "input": {"steps": 3, "delay": 0.5}},  # outlasts /runsync's 1 s: the SDK polls /status
        {"step": "stream", "input": {"steps": 4, "delay": 0.4}},
        {"step": "cancel", "input": {"steps": 50, "delay": 0.1}},
        {"step": "run", "input": {"steps": 1, "delay": 0.05, "fail": "boom"}},
        {"step": "run", "input": {"input": {"steps": 50, "delay": 0.1}, "webhook": hooks.url("/rp"),
                                  "policy": {"executionTimeout": 400}}},
        {"step": "health"},
        {"step": "wrong_key", "input": {"steps": 1}},
        {"step": "status", "input": "no-such-job"},
        {"step": "async", "input": {"steps": 2, "delay": 0.2}, "timeout": 10},
        {"step": "async_errors", "input": {"steps": 1, "delay": 0.05}, "timeout": 10},
    ])
    hooks.wait_for(lambda: len(hooks.received) >= 2, "the timed-out job's webhook, tried twice", timeout=10)
    return {"out": out, "steps": by_step(out), "stats": fake_proc.stats(), "hooks": list(hooks.received)}


def test_sdk_reads_the_base_url_from_the_environment(tour: dict[str, Any], fake_proc: FakeProcess) -> None:
    assert tour["out"]["version"] == "1.12.0"
    assert tour["out"]["base"] == fake_proc.url
    assert set(tour["stats"]["authorization"]) == {f"Bearer {KEY}", "Bearer not-the-key"}


def test_sdk_run_status_output(tour: dict[str, Any]) -> None:
    run = tour["steps"]["run"][0]
    assert "error" not in run, run
    assert run["id"].endswith("-u1")
    assert run["status_first"] == "IN_QUEUE"  # queue_seconds: 0.2
    assert run["output"] == TOKS  # a generator handler's aggregated stream
    assert run["status_after"] == "COMPLETED"
    assert tour["stats"]["jobs"][run["id"]]["status"] == "COMPLETED"


def test_sdk_run_sync_answered_at_once_or_polled(tour: dict[str, Any]) -> None:
    quick, slow = tour["steps"]["run_sync"]
    assert quick["output"] == ["tok0", "tok1"] and quick["seconds"] < 1.0
    assert slow["output"] == TOKS and slow["seconds"] >= 1.5  # /runsync gave up after 1 s; Job.output polled /status
    sync_ids = [job for job, info in tour["stats"]["jobs"].items() if info["sync"]]
    assert len(sync_ids) == 2 and all(job.startswith("sync-") for job in sync_ids)
    assert tour["stats"]["requests"]["runsync"] == 2


def test_sdk_stream_yields_every_chunk_once(tour: dict[str, Any]) -> None:
    stream = tour["steps"]["stream"][0]
    assert stream["chunks"] == ["tok0", "tok1", "tok2", "tok3"]
    assert stream["status_after"] == "COMPLETED" and stream["output"] == stream["chunks"]
    job = tour["stats"]["jobs"][stream["id"]]
    assert job["handed_out"] == 4
    # the SDK sleeps 1 s before each /stream call and stops at a final status with an empty stream
    assert stream["seconds"] >= 2.0


def test_sdk_cancel(tour: dict[str, Any]) -> None:
    cancel = tour["steps"]["cancel"][0]
    assert cancel["cancel"] == {"id": cancel["id"], "status": "CANCELLED"}
    assert cancel["status_after"] == "CANCELLED"


def test_sdk_failed_job_gives_no_output_and_no_exception(tour: dict[str, Any]) -> None:
    failed = tour["steps"]["run"][1]
    assert "error" not in failed
    assert failed["output"] is None and failed["status_after"] == "FAILED"


def test_sdk_passes_webhook_and_policy_through(tour: dict[str, Any]) -> None:
    timed_out = tour["steps"]["run"][2]
    assert timed_out["output"] is None and timed_out["status_after"] == "TIMED_OUT"
    hooks = [hook for hook in tour["hooks"] if hook.job.get("id") == timed_out["id"]]
    assert [hook.answered for hook in hooks] == [500, 200]  # the failed delivery was tried again
    assert hooks[0].path == "/rp" and hooks[0].body == hooks[1].body
    body = hooks[0].job
    assert body["status"] == "TIMED_OUT" and 350 <= body["executionTime"] < 2000 and "output" not in body
    assert tour["stats"]["jobs"][timed_out["id"]]["webhook"].endswith("/rp")


def test_sdk_health(tour: dict[str, Any]) -> None:
    health = tour["steps"]["health"][0]["health"]
    assert health == {"jobs": {"completed": 4, "failed": 1, "inProgress": 0, "inQueue": 0, "retried": 0},
                      "workers": {"idle": 2, "running": 0}}


def test_sdk_errors_wrong_key_and_unknown_job(tour: dict[str, Any]) -> None:
    wrong = tour["steps"]["wrong_key"][0]["error"]
    assert (wrong["type"], wrong["module"], wrong["message"]) == ("RuntimeError", "builtins", UNAUTHORIZED)
    missing = tour["steps"]["status"][0]["error"]
    assert (missing["type"], missing["module"]) == ("HTTPError", "requests.exceptions")
    assert missing["message"].startswith("404 Client Error")


def test_sdk_asyncio_endpoint(tour: dict[str, Any]) -> None:
    result = tour["steps"]["async"][0]
    assert "error" not in result, result
    assert (result["status_first"], result["output"], result["status_after"]) == ("IN_QUEUE", ["tok0", "tok1"],
                                                                                  "COMPLETED")
    assert result["chunks"] == ["tok0", "tok1"]
    assert result["cancel"]["status"] == "CANCELLED" and result["cancelled_status"] == "CANCELLED"
    assert result["health"]["jobs"]["completed"] >= 6
    assert result["purge"] == {"removed": 0, "status": "completed"}


def test_sdk_asyncio_endpoint_errors(tour: dict[str, Any]) -> None:
    result = tour["steps"]["async_errors"][0]
    assert "error" not in result, result
    assert result["failed_output"] is None and result["failed_status"] == "FAILED"
    # AsyncioEndpoint reads the 401's JSON body ({"error": ...}) as if it were a job: KeyError on "id"
    assert (result["wrong_key"]["type"], result["wrong_key"]["message"]) == ("KeyError", "'id'")


@pytest.fixture(scope="module")
def rough(fake_proc: FakeProcess) -> dict[str, Any]:
    """One SDK run through the queue and the fault knobs, switched between steps."""
    fake_proc.control(**defaults(**FAST))
    out = run_sdk(fake_proc.url, KEY, [
        {"step": "control", "input": {"workers": 0}},
        {"step": "submit", "input": {"steps": 1}},
        {"step": "submit", "input": {"steps": 1}},
        {"step": "health"},
        {"step": "purge_queue"},
        {"step": "status"},  # the purged job
        {"step": "control", "input": {"workers": 2, "throttle_rate": 1.0, "targets": ["run"], "max_faults": 1}},
        {"step": "submit", "input": {"steps": 1}},  # POST /run answered 429: the SDK does not retry a POST
        {"step": "control", "input": {"targets": ["status"], "max_faults": 3}},
        {"step": "run", "input": {"steps": 1, "delay": 0.05}},  # two 429s to GET /status, retried after Retry-After
        {"step": "control", "input": {"throttle_rate": 0.0, "stream_cut_after": 1}},
        {"step": "stream", "input": {"steps": 6, "delay": 0.4}},
        {"step": "control", "input": {"stream_cut_after": None, "fail_rate": 1.0, "fail_statuses": [503],
                                      "max_faults": None}},
        {"step": "status"},  # a 503 without Retry-After is not retried
        {"step": "control", "input": {"fail_rate": 0.0, "reset_rate": 1.0, "targets": ["run"]}},
        {"step": "submit", "input": {"steps": 1}},  # a reset POST /run is not retried either
        {"step": "control", "input": {"reset_rate": 0.0, "bad_token": True}},
        {"step": "health"},
    ])
    return {"out": out, "steps": by_step(out), "stats": fake_proc.stats()}


def test_sdk_health_and_purge_of_a_queue(rough: dict[str, Any]) -> None:
    health = rough["steps"]["health"][0]["health"]
    assert health["jobs"]["inQueue"] == 2 and health["workers"] == {"idle": 0, "running": 0}
    assert rough["steps"]["purge_queue"][0]["purge"] == {"removed": 2, "status": "completed"}
    purged = rough["steps"]["status"][0]["error"]
    assert purged["type"] == "HTTPError" and purged["message"].startswith("404 Client Error")


def test_sdk_throttling_a_post_raises_and_a_get_is_retried(rough: dict[str, Any]) -> None:
    throttled = rough["steps"]["submit"][2]["error"]
    assert (throttled["type"], throttled["module"]) == ("HTTPError", "requests.exceptions")
    assert throttled["message"].startswith("429 Client Error")
    run = rough["steps"]["run"][0]
    assert "error" not in run and run["output"] == ["tok0"]
    assert run["seconds"] >= 2.0  # urllib3 slept Retry-After (1 s) twice
    assert rough["stats"]["faults"]["throttle"] == 3


def test_sdk_stream_rides_a_cut_but_loses_its_chunks(rough: dict[str, Any]) -> None:
    stream = rough["steps"]["stream"][0]
    assert "error" not in stream, stream  # urllib3 retried the reset GET, so the SDK never saw it
    full = [f"tok{i}" for i in range(6)]
    assert stream["output"] == full
    assert rough["stats"]["faults"]["stream_cut"] >= 1
    assert len(stream["chunks"]) < len(full) and all(chunk in full for chunk in stream["chunks"])
    assert stream["chunks"] == sorted(stream["chunks"])


def test_sdk_server_error_reset_and_bad_token_raise(rough: dict[str, Any]) -> None:
    error = rough["steps"]["status"][1]["error"]
    assert error["type"] == "HTTPError" and error["message"].startswith("503 Server Error")
    reset = rough["steps"]["submit"][3]["error"]
    assert (reset["type"], reset["module"]) == ("ConnectionError", "requests.exceptions")
    assert rough["steps"]["health"][1]["error"]["message"] == UNAUTHORIZED
    assert rough["stats"]["faults"] == {"throttle": 3, "stream_cut": rough["stats"]["faults"]["stream_cut"],
                                        "error": 1, "reset": 1, "bad_token": 1}
    assert rough["stats"]["requests"]["run"] == 6  # 2 queued, 1 throttled, 1 run, 1 stream, 1 reset: none retried


# ---------------------------------------------------------------------------------------------------------------
# In process, with aiohttp
# ---------------------------------------------------------------------------------------------------------------

AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeRunPod]:
    async with FakeRunPod(token=KEY, settings=RunPodSettings(stream_wait_seconds=0.5)) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as client:
        yield client


async def call(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    async with session.request(method, url, json=body) as resp:
        return resp.status, await resp.json()


async def run(session: aiohttp.ClientSession, fake: FakeRunPod, inputs: Any, **extra: Any) -> str:
    status, body = await call(session, "POST", f"{fake.url}/ep/run", {"input": inputs, **extra})
    assert status == 200 and body["status"] == "IN_QUEUE", body
    return body["id"]


async def status_of(session: aiohttp.ClientSession, fake: FakeRunPod, job_id: str) -> dict[str, Any]:
    code, body = await call(session, "GET", f"{fake.url}/ep/status/{job_id}")
    assert code == 200, body
    return body


async def until(session: aiohttp.ClientSession, fake: FakeRunPod, job_id: str, *states: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while (body := await status_of(session, fake, job_id))["status"] not in states:
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.02)
    return body


async def test_status_shape_through_the_job_life(fake: FakeRunPod, session: aiohttp.ClientSession) -> None:
    fake.configure(queue_seconds=0.2)
    job_id = await run(session, fake, {"steps": 3, "delay": 0.1})
    assert await status_of(session, fake, job_id) == {"id": job_id, "status": "IN_QUEUE"}
    body = await until(session, fake, job_id, "IN_PROGRESS")
    assert set(body) == {"id", "status", "delayTime", "workerId"} and body["delayTime"] >= 190
    body = await until(session, fake, job_id, "COMPLETED")
    assert body["output"] == TOKS and 290 <= body["executionTime"] < 2000
    assert set(body) == {"id", "status", "delayTime", "executionTime", "workerId", "output"}
    assert fake.stats.creates == {job_id: 1} and fake.stats.requests["run"] == 1


async def test_failed_and_plain_handlers(fake: FakeRunPod, session: aiohttp.ClientSession) -> None:
    failing = await run(session, fake, {"steps": 2, "delay": 0.01, "fail": "CUDA out of memory"})
    body = await until(session, fake, failing, "FAILED")
    assert body["error"] == "CUDA out of memory" and "output" not in body
    code, stream = await call(session, "GET", f"{fake.url}/ep/stream/{failing}")
    assert code == 200 and stream == {"status": "FAILED", "stream": [{"output": "tok0"}, {"output": "tok1"}]}  # streamed, then failed
    audio = await run(session, fake, {"audio": "UklGRg==", "steps": 2, "delay": 0.01})
    assert (await until(session, fake, audio, "COMPLETED"))["output"] == {"text": TRANSCRIPTION}
    assert (await call(session, "GET", f"{fake.url}/ep/stream/{audio}"))[1] == {"status": "COMPLETED", "stream": []}


async def test_stream_long_polls_and_hands_each_chunk_out_once(fake: FakeRunPod, session: aiohttp.ClientSession) -> None:
    job_id = await run(session, fake, {"steps": 3, "delay": 0.2})
    url = f"{fake.url}/ep/stream/{job_id}"
    started = time.monotonic()
    code, body = await call(session, "GET", url)  # nothing yet: held until the first chunk
    assert code == 200 and body == {"status": "IN_PROGRESS", "stream": [{"output": "tok0"}]}
    assert 0.15 <= time.monotonic() - started < 0.5
    assert (await call(session, "GET", f"{url}?wait=0"))[1] == {"status": "IN_PROGRESS", "stream": []}  # no wait
    await asyncio.sleep(0.5)
    body = (await call(session, "POST", url))[1]  # POST works too (the Go SDK's way)
    assert body == {"status": "COMPLETED", "stream": [{"output": "tok1"}, {"output": "tok2"}]}
    started = time.monotonic()
    assert (await call(session, "GET", url))[1] == {"status": "COMPLETED", "stream": []}  # final: answered at once
    assert time.monotonic() - started < 0.3
    assert (await status_of(session, fake, job_id))["output"] == TOKS  # /status still has it all


async def test_runsync_and_status_sync(fake: FakeRunPod, session: aiohttp.ClientSession) -> None:
    code, body = await call(session, "POST", f"{fake.url}/ep/runsync", {"input": {"steps": 2, "delay": 0.05}})
    assert code == 200 and body["status"] == "COMPLETED" and body["output"] == ["tok0", "tok1"]
    assert body["id"].startswith("sync-")
    fake.configure(runsync_wait_seconds=0.2)
    code, body = await call(session, "POST", f"{fake.url}/ep/runsync", {"input": {"steps": 3, "delay": 0.3}})
    assert body["status"] == "IN_PROGRESS" and "output" not in body
    code, done = await call(session, "GET", f"{fake.url}/ep/status-sync/{body['id']}?wait=5000")
    assert done["status"] == "COMPLETED" and done["output"] == TOKS
    started = time.monotonic()  # ?wait=ms holds /runsync longer than the setting
    code, body = await call(session, "POST", f"{fake.url}/ep/runsync?wait=3000", {"input": {"steps": 2, "delay": 0.3}})
    assert body["status"] == "COMPLETED" and time.monotonic() - started >= 0.55


async def test_auth_and_error_answers(fake: FakeRunPod) -> None:
    async with aiohttp.ClientSession() as bare:
        code, body = await call(bare, "GET", f"{fake.url}/ep/health")
        assert code == 401 and set(body) == {"error"}
        bare.headers["Authorization"] = "Bearer wrong"
        assert (await call(bare, "GET", f"{fake.url}/ep/health"))[0] == 401
        bare.headers["Authorization"] = KEY  # the docs' curl sends the bare key
        assert (await call(bare, "GET", f"{fake.url}/ep/health"))[0] == 200
        job_id = await run(bare, fake, {"steps": 0})
        assert await call(bare, "GET", f"{fake.url}/ep/status/nope") == (404, {"error": "request does not exist"})
        assert (await call(bare, "GET", f"{fake.url}/other/status/{job_id}"))[0] == 404  # another endpoint's job
        for bad in ([1], {"no": "input"}, {"input": {}, "policy": {"executionTimeout": "soon"}},
                    {"input": {}, "webhook": 7}):
            code, body = await call(bare, "POST", f"{fake.url}/ep/run", bad)
            assert code == 400 and set(body) == {"error"}, bad
        fake.configure(max_run_bytes=100, endpoints=["ep"])
        assert (await call(bare, "POST", f"{fake.url}/ep/run", {"input": "x" * 200}))[0] == 413
        assert (await call(bare, "GET", f"{fake.url}/nope/health"))[0] == 404
        assert (await call(bare, "GET", f"{fake.url}/ep/nothing-here"))[0] == 404


async def test_injected_5xx_and_429(fake: FakeRunPod, session: aiohttp.ClientSession) -> None:
    fake.configure(fail_rate=1.0, fail_statuses=[502], targets=["status"])
    job_id = await run(session, fake, {"steps": 0})  # /run is spared
    code, body = await call(session, "GET", f"{fake.url}/ep/status/{job_id}")
    assert code == 502 and body == {"error": "injected 502 on status"}
    fake.configure(fail_rate=0.0, throttle_rate=1.0, retry_after=3, targets=["run"])
    async with session.post(f"{fake.url}/ep/run", json={"input": {}}) as resp:
        assert resp.status == 429 and resp.headers["Retry-After"] == "3" and set(await resp.json()) == {"error"}
    assert fake.stats.faults == {"error": 1, "throttle": 1} and len(fake.stats.creates) == 1


async def test_execution_timeout_then_retry(fake: FakeRunPod, session: aiohttp.ClientSession) -> None:
    job_id = await run(session, fake, {"steps": 50, "delay": 0.05}, policy={"executionTimeout": 200})
    body = await until(session, fake, job_id, "TIMED_OUT", "COMPLETED")
    assert body["status"] == "TIMED_OUT" and 190 <= body["executionTime"] < 1000 and "output" not in body
    assert await call(session, "POST", f"{fake.url}/ep/retry/{job_id}") == (200, {"id": job_id, "status": "IN_QUEUE"})
    assert (await status_of(session, fake, job_id))["retries"] == 1
    assert (await until(session, fake, job_id, "TIMED_OUT"))["retries"] == 1  # the same policy, again
    health = (await call(session, "GET", f"{fake.url}/ep/health"))[1]
    assert health["jobs"]["retried"] == 1
    done = await run(session, fake, {"steps": 0})
    await until(session, fake, done, "COMPLETED")
    code, body = await call(session, "POST", f"{fake.url}/ep/retry/{done}")
    assert code == 400 and "COMPLETED" in body["error"]
    assert fake.stats.creates == {job_id: 1, done: 1} and fake.snapshot()["jobs"][job_id]["runs"] == 2


async def test_ttl_times_out_a_queued_job(fake: FakeRunPod, session: aiohttp.ClientSession) -> None:
    fake.configure(workers=0)
    job_id = await run(session, fake, {"steps": 1}, policy={"ttl": 200})
    body = await until(session, fake, job_id, "TIMED_OUT")
    assert body["delayTime"] >= 190 and "executionTime" not in body and "workerId" not in body


async def test_workers_queue_cancel_and_purge(fake: FakeRunPod, session: aiohttp.ClientSession) -> None:
    fake.configure(workers=1)
    first = await run(session, fake, {"steps": 20, "delay": 0.05})
    second = await run(session, fake, {"steps": 1, "delay": 0.01})
    third = await run(session, fake, {"steps": 1, "delay": 0.01})
    await until(session, fake, first, "IN_PROGRESS")
    assert (await status_of(session, fake, second))["status"] == "IN_QUEUE"
    health = (await call(session, "GET", f"{fake.url}/ep/health"))[1]
    assert health == {"jobs": {"completed": 0, "failed": 0, "inProgress": 1, "inQueue": 2, "retried": 0},
                      "workers": {"idle": 0, "running": 1}}
    assert await call(session, "POST", f"{fake.url}/ep/cancel/{second}") == (200, {"id": second, "status": "CANCELLED"})
    assert await call(session, "POST", f"{fake.url}/ep/purge-queue") == (200, {"removed": 1, "status": "completed"})
    assert (await call(session, "GET", f"{fake.url}/ep/status/{third}"))[0] == 404
    await call(session, "POST", f"{fake.url}/ep/cancel/{first}")
    chunks = fake.jobs[first].chunks[:]
    await asyncio.sleep(0.15)
    assert fake.jobs[first].chunks == chunks and (await status_of(session, fake, first))["status"] == "CANCELLED"
    # cancelling a job that has ended changes nothing
    assert await call(session, "POST", f"{fake.url}/ep/cancel/{first}") == (200, {"id": first, "status": "CANCELLED"})


async def test_finished_jobs_are_forgotten_after_their_ttl(fake: FakeRunPod, session: aiohttp.ClientSession) -> None:
    fake.configure(job_ttl_seconds=0.2, sync_job_ttl_seconds=0.1)
    job_id = await run(session, fake, {"steps": 0})
    await until(session, fake, job_id, "COMPLETED")
    sync_id = (await call(session, "POST", f"{fake.url}/ep/runsync", {"input": {"steps": 0}}))[1]["id"]
    await asyncio.sleep(0.15)
    assert (await call(session, "GET", f"{fake.url}/ep/status/{sync_id}"))[0] == 404
    assert (await call(session, "GET", f"{fake.url}/ep/status/{job_id}"))[0] == 200
    await asyncio.sleep(0.1)
    assert (await call(session, "GET", f"{fake.url}/ep/stream/{job_id}"))[0] == 404


class Hooks:
    """A webhook receiver in the test's loop: it answers ``script`` (then 200) and keeps what it got."""

    def __init__(self) -> None:
        self.got: list[tuple[float, dict[str, Any]]] = []
        self.script: list[int] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append((time.monotonic(), await request.json()))
        return web.Response(status=self.script.pop(0) if self.script else 200)


@pytest.fixture
async def hooks_url() -> AsyncIterator[tuple[Hooks, str]]:
    hooks = Hooks()
    app = web.Application()
    app.router.add_post("/hook", hooks.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield hooks, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]
    await runner.cleanup()


async def wait_for(condition: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_webhook_retries_repeats_and_drops(fake: FakeRunPod, session: aiohttp.ClientSession,
                                                 hooks_url: tuple[Hooks, str]) -> None:
    hooks, url = hooks_url
    fake.configure(webhook_retry_seconds=0.2, webhook_retries=2)
    hooks.script = [500, 503]
    job_id = await run(session, fake, {"steps": 1, "delay": 0.01}, webhook=url)
    await wait_for(lambda: len(hooks.got) == 3, "three tries")
    assert [body for _, body in hooks.got] == [await status_of(session, fake, job_id)] * 3  # /status's body
    assert hooks.got[1][0] - hooks.got[0][0] >= 0.19 and hooks.got[2][0] - hooks.got[1][0] >= 0.19
    assert [entry["result"] for entry in fake.webhook_log] == [500, 503, 200]

    hooks.got.clear()
    hooks.script = [500, 500, 500]  # every try fails: given up after webhook_retries
    await run(session, fake, {"steps": 0}, webhook=url)
    await wait_for(lambda: len(hooks.got) == 3, "three failed tries")
    await asyncio.sleep(0.3)
    assert len(hooks.got) == 3

    hooks.got.clear()
    fake.configure(webhook_repeat_rate=1.0)
    cancelled = await run(session, fake, {"steps": 50, "delay": 0.05}, webhook=url)
    await call(session, "POST", f"{fake.url}/ep/cancel/{cancelled}")
    await wait_for(lambda: len(hooks.got) == 2, "the repeated delivery")
    assert [body["status"] for _, body in hooks.got] == ["CANCELLED", "CANCELLED"] and hooks.got[0][1]["id"] == cancelled

    hooks.got.clear()
    fake.configure(webhook_repeat_rate=0.0, webhook_drop_rate=1.0)
    dropped = await run(session, fake, {"steps": 0}, webhook=url)
    await until(session, fake, dropped, "COMPLETED")
    await asyncio.sleep(0.2)
    assert hooks.got == [] and fake.stats.faults["webhook_drop"] == 1 and fake.stats.faults["webhook_repeat"] == 1


async def test_stream_cut_resets_and_loses_the_chunks(fake: FakeRunPod, session: aiohttp.ClientSession) -> None:
    fake.configure(stream_cut_after=1)
    job_id = await run(session, fake, {"steps": 4, "delay": 0.15})
    url = f"{fake.url}/ep/stream/{job_id}"
    assert (await call(session, "POST", url))[1]["stream"] == [{"output": "tok0"}]
    await asyncio.sleep(0.2)
    with pytest.raises(aiohttp.ClientConnectionError):  # POST: aiohttp does not retry it
        await call(session, "POST", url)
    got = (await call(session, "POST", url))[1]["stream"]  # after the cut: from the next new chunk on
    assert got and got[0]["output"] in ("tok2", "tok3")
    assert fake.stats.faults["stream_cut"] == 1
    assert (await until(session, fake, job_id, "COMPLETED"))["output"] == ["tok0", "tok1", "tok2", "tok3"]

    fake.configure(stream_cut_after=0, stream_cut_loses_chunks=False)  # every answer with chunks cut, nothing lost
    job_id = await run(session, fake, {"steps": 2, "delay": 0.01})
    await until(session, fake, job_id, "COMPLETED")
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(session, "POST", f"{fake.url}/ep/stream/{job_id}")
    assert fake.jobs[job_id].handed_out == 0


async def test_control_route_takes_the_settings(fake: FakeRunPod, session: aiohttp.ClientSession) -> None:
    code, config = await call(session, "POST", f"{fake.url}/_control", {"queue_seconds": 0.5, "workers": 3})
    assert code == 200 and config["settings"]["queue_seconds"] == 0.5 and config["settings"]["workers"] == 3
    assert (await call(session, "POST", f"{fake.url}/_control", {"no_such_knob": 1}))[0] == 400
    job_id = await run(session, fake, {"steps": 0})
    stats = (await call(session, "GET", f"{fake.url}/_stats"))[1]
    assert stats["jobs"][job_id]["status"] == "IN_QUEUE" and stats["creates"] == {job_id: 1}
