"""The fake OctoAI endpoint is faithful: the real octoai-sdk 0.2.0 works against it, errors and all.

Two halves: the SDK (in its own venv, see harness/octoai_sdk.py) against the fake as a subprocess, and quick
in-process checks of the fake's wire behaviour with aiohttp.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from harness import FIXTURES
from harness.fakes.octoai import MAX_BODY_BYTES, REQUEST_ID_HEADER, FakeOctoAI, FakeProcess, Faults, whisper_output
from harness.octoai_sdk import run_sdk_snippet

AUDIO = FIXTURES / "seashells.wav"
TOKEN = "sekret-token"
SEASHELLS = "She sells seashells by the seashore"


# ---------------------------------------------------------------------------------------------------------------
# The fake as a subprocess, driven through /_control, and the real SDK against it
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake_proc() -> Iterator[FakeProcess]:
    fake = FakeProcess("--token", TOKEN, "--pending-seconds", "0.3", "--running-seconds", "0.4",
                       "--faults", json.dumps({"seed": 7}))
    yield fake
    fake.stop()


@pytest.fixture
def fake(fake_proc: FakeProcess) -> FakeProcess:
    fake_proc.control(reset=True)
    return fake_proc


def sdk(fake: FakeProcess, *steps: str, token: str | None = TOKEN, **kwargs: Any) -> dict[str, Any]:
    return run_sdk_snippet(fake.url, AUDIO, token=token, steps=steps or ("health", "async", "sync"), **kwargs)


def test_fake_subprocess_takes_its_command_line(fake: FakeProcess) -> None:
    config = fake.control()
    assert config["faults"]["seed"] == 7 and config["token_required"] is True
    assert config["timing"]["pending_seconds"] == 0.3 and config["timing"]["running_seconds"] == 0.4


def test_sdk_snippet_gets_the_whisper_output(fake: FakeProcess) -> None:
    out = sdk(fake)
    assert "error" not in out, out
    result = out["result"]
    assert SEASHELLS in result["response"]["segments"][0]["text"]  # the seed's own check
    assert result["transcription"] == " She sells seashells by the seashore."
    assert result["inputs"] == {"language": "en", "task": "transcribe",
                                "audio": base64.b64encode(AUDIO.read_bytes()).decode()}
    assert result["audio_duration_s"] == pytest.approx(2.5, abs=0.05)
    assert out["infer"] == result  # the sync call runs the same model
    assert out["health_status"] == 200
    assert out["user_agent"] == "octoai-0.2.0"
    job_id = out["future"]["response_id"]
    assert out["future"]["poll_url"] == f"{fake.url}/v1/requests/{job_id}"

    stats = fake.stats()
    assert (stats["posts"], stats["async_posts"], stats["sync_posts"]) == (2, 1, 1)
    # is_future_ready until ready, then get_future_result polls once more before fetching
    assert out["not_ready_polls"] >= 1  # 0.7 s of pending+running outlasts the first poll
    assert stats["polls"] == {job_id: out["not_ready_polls"] + 2}
    assert stats["result_fetches"] == {job_id: 1}
    assert stats["healthchecks"] == 1
    assert stats["user_agents"] == {"octoai-0.2.0": 2 + stats["total_polls"] + 1 + 1}
    assert set(stats["authorization"]) == {f"Bearer {TOKEN}"}  # sent on polls and fetches too
    assert stats["total_faults"] == 0


def test_sdk_health_check_waits_out_a_cold_start(fake: FakeProcess) -> None:
    fake.control(cold_start_calls=2)
    out = sdk(fake, "health")
    assert out.get("health_status") == 200, out
    assert out["health_seconds"] >= 2.0  # the SDK sleeps 1 s after each 503
    assert fake.stats()["healthchecks"] == 3


def test_sdk_health_check_gives_up_with_a_server_error(fake: FakeProcess) -> None:
    fake.control(cold_start_calls=1000)
    out = sdk(fake, "health", health_timeout=1.5)
    assert out["error"]["type"] == "OctoAIServerError" and out["error"]["module"] == "octoai.errors"
    assert out["error"]["message"].startswith("Server error: 503")
    assert "cold start" in out["error"]["message"]  # the fake's JSON error body, quoted by the SDK
    assert 2 <= fake.stats()["healthchecks"] <= 3


@pytest.mark.parametrize(
    ("changes", "steps", "token", "step", "error", "prefix", "counter"),
    [
        # a 4xx to the POST: utils.retry raises at once, no retry
        ({"post_status": 400}, ("async",), TOKEN, "infer_async", "OctoAIClientError", "Client error: 400", "posts"),
        ({"post_status": 422}, ("sync",), TOKEN, "infer", "OctoAIClientError", "Client error: 422", "posts"),
        # a wrong token, and the fake's "bad token" switch, also on the health check (4xx: no wait)
        ({}, ("async",), "wrong-token", "infer_async", "OctoAIClientError", "Client error: 401", "posts"),
        ({"bad_token": True}, ("health",), TOKEN, "health", "OctoAIClientError", "Client error: 401", "healthchecks"),
        # polls are not retried: a 5xx is an OctoAIServerError, a 429 a "Throttling error"
        ({"fail_rate": 1.0, "targets": ["poll"]}, ("async",), TOKEN, "is_future_ready", "OctoAIServerError",
         "Server error: 50", "total_polls"),
        ({"throttle_rate": 1.0, "targets": ["poll"]}, ("async",), TOKEN, "is_future_ready", "OctoAIClientError",
         "Throttling error: 429", "total_polls"),
        # a result fetch that keeps failing
        ({"failing_results": "*"}, ("async",), TOKEN, "get_future_result", "OctoAIServerError",
         "Server error: 500", "total_result_fetches"),
    ],
    ids=["post-400", "sync-post-422", "wrong-token", "bad-token-health", "poll-5xx", "poll-429", "result-5xx"],
)
def test_sdk_raises_its_own_errors_for_the_fakes_answers(
        fake: FakeProcess, changes: dict[str, Any], steps: tuple[str, ...], token: str, step: str, error: str,
        prefix: str, counter: str) -> None:
    fake.control(**changes)
    out = sdk(fake, *steps, token=token)
    assert out.get("error"), out
    assert (out["error"]["step"], out["error"]["type"], out["error"]["module"]) == (step, error, "octoai.errors")
    assert out["error"]["message"].startswith(prefix), out["error"]
    assert '"error": {"code": ' in out["error"]["message"]  # the body is quoted as the fake sent it
    assert fake.stats()[counter] == 1  # no retry of any of these


@pytest.mark.parametrize(
    ("changes", "steps", "posts"),
    [
        ({"fail_rate": 1.0, "max_faults": 2, "targets": ["predict"]}, ("async",), 3),
        # no cap: the seeded RNG (seed 4) fails the first POST and lets the second through
        ({"fail_rate": 0.5, "fail_statuses": [502, 503], "seed": 4, "targets": ["predict"]}, ("async",), 2),
        ({"throttle_rate": 1.0, "max_faults": 1, "targets": ["predict"]}, ("sync",), 2),
    ],
    ids=["5xx-twice", "5xx-seeded-half", "429-once-sync"],
)
def test_sdk_post_retries_ride_out_injected_faults(
        fake: FakeProcess, changes: dict[str, Any], steps: tuple[str, ...], posts: int) -> None:
    fake.control(**changes)
    started = time.monotonic()
    out = sdk(fake, *steps)
    elapsed = time.monotonic() - started
    assert "error" not in out, out
    answer = out["result"] if "async" in steps else out["infer"]
    assert SEASHELLS in answer["response"]["segments"][0]["text"]
    stats = fake.stats()
    assert stats["posts"] == posts and stats["random_faults"] == posts - 1
    assert elapsed >= {2: 1.0, 3: 3.0}[posts]  # the SDK's back-off: 1 s, then 2 s, each plus up to 1 s of jitter


def test_sdk_does_not_retry_a_reset_post(fake: FakeProcess) -> None:
    """A dropped connection is not an HTTP status: utils.retry lets httpx's exception through, unretried."""
    fake.control(reset_rate=1.0, targets=["predict"])
    out = sdk(fake, "async")
    assert out["error"]["step"] == "infer_async"
    assert out["error"]["module"].startswith("httpx"), out["error"]
    stats = fake.stats()
    assert stats["posts"] == 1 and stats["faults"] == {"reset": 1}


def test_sdk_waits_through_slow_answers(fake: FakeProcess) -> None:
    fake.control(slow_rate=1.0, slow_seconds=0.5, targets=["poll", "result"])
    out = sdk(fake, "async")
    assert SEASHELLS in out["result"]["response"]["segments"][0]["text"], out
    stats = fake.stats()
    assert stats["faults"]["slow"] == stats["total_polls"] + stats["total_result_fetches"]


# ---------------------------------------------------------------------------------------------------------------
# In process, with aiohttp
# ---------------------------------------------------------------------------------------------------------------

INPUTS = {"language": "en", "task": "transcribe", "audio": base64.b64encode(b"not really audio").decode()}
ASYNC = {"X-OctoAI-Async": "1"}


async def submit(session: aiohttp.ClientSession, fake: FakeOctoAI, inputs: Any = INPUTS) -> dict[str, Any]:
    async with session.post(f"{fake.url}/predict", json=inputs, headers=ASYNC) as resp:
        assert resp.status == 201, await resp.text()
        return await resp.json()


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as resp:
        return resp.status, await resp.json()


async def test_async_job_goes_pending_running_completed() -> None:
    def output_fn(inputs: dict[str, Any]) -> dict[str, Any]:
        return {"echo": inputs, "n": len(inputs)}

    async with FakeOctoAI(pending_seconds=0.3, running_seconds=0.3, output_fn=output_fn) as fake, \
            aiohttp.ClientSession() as session:
        async with session.post(f"{fake.url}/predict", json=INPUTS, headers=ASYNC) as resp:
            assert resp.status == 201 and resp.headers[REQUEST_ID_HEADER]
            future = await resp.json()
        job_id = future["response_id"]
        assert future["poll_url"] == f"{fake.url}/v1/requests/{job_id}"
        assert await get(session, future["poll_url"]) == (200, {"status": "pending"})
        await asyncio.sleep(0.35)
        assert await get(session, future["poll_url"]) == (200, {"status": "running"})
        status, body = await get(session, f"{fake.url}/v1/responses/{job_id}")
        assert status == 404 and body["error"]["code"] == 404  # not yet
        await asyncio.sleep(0.35)
        status, body = await get(session, future["poll_url"])
        assert body == {"status": "completed", "response_url": f"{fake.url}/v1/responses/{job_id}"}
        assert await get(session, body["response_url"]) == (200, output_fn(INPUTS))

        started = time.monotonic()
        async with session.post(f"{fake.url}/predict", json={"x": 1}) as resp:  # sync: runs the job
            assert resp.status == 200 and await resp.json() == {"echo": {"x": 1}, "n": 1}
        assert time.monotonic() - started >= 0.3

        assert (fake.stats.posts, fake.stats.async_posts, fake.stats.sync_posts) == (2, 1, 1)
        assert fake.stats.polls == {job_id: 3} and fake.stats.result_fetches == {job_id: 2}


async def test_default_output_is_the_whisper_template() -> None:
    assert SEASHELLS in whisper_output({})["response"]["segments"][0]["text"]
    assert whisper_output({"diarize": True})["response"]["segments"][0]["speaker"] == "SPEAKER_00"
    audio = base64.b64encode(AUDIO.read_bytes()).decode()
    assert whisper_output({"audio": audio})["audio_duration_s"] == pytest.approx(2.5, abs=0.05)


async def test_wire_errors_auth_unknown_ids_bad_bodies() -> None:
    async with FakeOctoAI(token="t") as fake, aiohttp.ClientSession() as session:
        async with session.post(f"{fake.url}/predict", json=INPUTS) as resp:
            assert resp.status == 401 and (await resp.json())["error"]["code"] == 401
        async with session.post(f"{fake.url}/predict", json=INPUTS, headers={"Authorization": "Bearer x"}) as resp:
            assert resp.status == 401
        auth = {"Authorization": "Bearer t"}
        async with aiohttp.ClientSession(headers=auth) as authed:
            assert (await get(authed, f"{fake.url}/v1/requests/nope"))[0] == 404
            assert (await get(authed, f"{fake.url}/v1/responses/nope"))[0] == 404
            async with authed.post(f"{fake.url}/predict", data=b"not json{",
                                   headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == 400
            async with authed.post(f"{fake.url}/predict", json=[1, 2]) as resp:
                assert resp.status == 400
            async with authed.post(f"{fake.url}/predict", data=b"x" * (MAX_BODY_BYTES + 1)) as resp:
                assert resp.status == 413 and (await resp.json())["error"]["code"] == 413
            big = {"audio": "A" * (MAX_BODY_BYTES - 100)}  # just under the limit is fine
            async with authed.post(f"{fake.url}/predict", json=big, headers=ASYNC) as resp:
                assert resp.status == 201
            assert (await get(authed, f"{fake.url}/healthcheck")) == (200, {"status": "ok"})
        assert fake.stats.posts == 6 and fake.stats.total_faults == 0


async def test_throttle_answers_429_with_retry_after() -> None:
    async with FakeOctoAI(faults=Faults(throttle_rate=1.0, retry_after=7)) as fake, \
            aiohttp.ClientSession() as session:
        async with session.post(f"{fake.url}/predict", json=INPUTS, headers=ASYNC) as resp:
            assert resp.status == 429 and resp.headers["Retry-After"] == "7"
            assert (await resp.json())["error"]["fault"] == "throttle"
        assert fake.stats.faults == {"throttle": 1}


async def test_faults_hit_only_the_selected_routes() -> None:
    async with FakeOctoAI(pending_seconds=0, running_seconds=0) as fake, aiohttp.ClientSession() as session:
        fake.faults.fail_rate, fake.faults.fail_statuses, fake.faults.targets = 1.0, (502,), frozenset({"poll"})
        future = await submit(session, fake)  # the POST is spared
        status, body = await get(session, future["poll_url"])
        assert status == 502 and body["error"]["fault"] == "error"
        assert (await get(session, f"{fake.url}/v1/responses/{future['response_id']}"))[0] == 200
        assert (await get(session, f"{fake.url}/healthcheck"))[0] == 200
        fake.faults.targets = frozenset({"predict", "poll", "result", "health"})
        assert (await get(session, f"{fake.url}/healthcheck"))[0] == 502
        assert fake.stats.faults == {"error": 2}


async def test_max_faults_then_answers() -> None:
    async with FakeOctoAI(faults=Faults(fail_rate=1.0, fail_statuses=(503,), max_faults=2)) as fake, \
            aiohttp.ClientSession() as session:
        statuses = []
        for _ in range(3):
            async with session.post(f"{fake.url}/predict", json=INPUTS, headers=ASYNC) as resp:
                statuses.append(resp.status)
        assert statuses == [503, 503, 201] and fake.stats.posts == 3


async def test_seeded_faults_are_reproducible() -> None:
    async def statuses(seed: int) -> list[int]:
        async with FakeOctoAI(faults=Faults(fail_rate=0.3, throttle_rate=0.3, seed=seed)) as fake, \
                aiohttp.ClientSession() as session:
            out = []
            for _ in range(20):
                async with session.get(f"{fake.url}/v1/requests/x") as resp:
                    out.append(resp.status)
            return out

    first = await statuses(3)
    assert first == await statuses(3)
    assert {404, 429} <= set(first) and any(s >= 500 for s in first)


async def test_reset_drops_the_connection() -> None:
    async with FakeOctoAI(faults=Faults(reset_rate=1.0, targets=frozenset({"predict", "poll"}))) as fake, \
            aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.post(f"{fake.url}/predict", json=INPUTS, headers=ASYNC) as resp:
                await resp.read()
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(f"{fake.url}/v1/requests/x") as resp:
                await resp.read()
        # aiohttp itself retries an idempotent request once after a dropped connection: 1 or 2 polls
        assert fake.stats.posts == 1 and fake.stats.total_polls in (1, 2)
        assert fake.stats.faults == {"reset": 1 + fake.stats.total_polls}
        fake.faults.reset_rate = 0.0  # the server is still fine afterwards
        assert (await submit(session, fake))["response_id"]


async def test_slow_answers() -> None:
    async with FakeOctoAI(faults=Faults(slow_rate=1.0, slow_seconds=0.3, targets=frozenset({"health"}))) as fake, \
            aiohttp.ClientSession() as session:
        started = time.monotonic()
        assert (await get(session, f"{fake.url}/healthcheck"))[0] == 200
        assert time.monotonic() - started >= 0.3 and fake.stats.faults == {"slow": 1}


async def test_stuck_jobs_stay_pending() -> None:
    async with FakeOctoAI(pending_seconds=0.05, running_seconds=0.05) as fake, aiohttp.ClientSession() as session:
        fake.faults.stuck_pending = True
        stuck = await submit(session, fake)
        fake.faults.stuck_pending = False
        later = await submit(session, fake)
        other = await submit(session, fake)
        fake.faults.stuck_jobs = frozenset({later["response_id"]})  # stuck by id, after the fact
        await asyncio.sleep(0.3)
        assert await get(session, stuck["poll_url"]) == (200, {"status": "pending"})
        assert await get(session, later["poll_url"]) == (200, {"status": "pending"})
        assert (await get(session, other["poll_url"]))[1]["status"] == "completed"
        fake.faults.stuck_jobs = frozenset()
        assert (await get(session, later["poll_url"]))[1]["status"] == "completed"


async def test_result_fetch_keeps_failing_for_one_job() -> None:
    async with FakeOctoAI(pending_seconds=0, running_seconds=0) as fake, aiohttp.ClientSession() as session:
        bad, good = await submit(session, fake), await submit(session, fake)
        fake.faults.failing_results = frozenset({bad["response_id"]})
        fake.faults.result_fail_status = 502
        for _ in range(3):
            assert (await get(session, f"{fake.url}/v1/responses/{bad['response_id']}"))[0] == 502
        assert (await get(session, f"{fake.url}/v1/responses/{good['response_id']}"))[0] == 200
        assert (await get(session, bad["poll_url"]))[1]["status"] == "completed"  # polls still say completed
        assert fake.stats.faults == {"failing_result": 3}


async def test_bad_token_and_post_status() -> None:
    async with FakeOctoAI(pending_seconds=0, running_seconds=0) as fake, aiohttp.ClientSession() as session:
        future = await submit(session, fake)
        fake.faults.bad_token = True
        for url in (future["poll_url"], f"{fake.url}/healthcheck", f"{fake.url}/v1/responses/x"):
            status, body = await get(session, url)
            assert status == 401 and body["error"]["fault"] == "bad_token"
        fake.faults.bad_token = False
        fake.faults.post_status = 404
        async with session.post(f"{fake.url}/predict", json=INPUTS, headers=ASYNC) as resp:
            assert resp.status == 404 and (await resp.json())["error"]["fault"] == "post_status"
        assert (await get(session, future["poll_url"]))[0] == 200


async def test_cold_start_by_calls_and_by_seconds() -> None:
    async with FakeOctoAI(cold_start_calls=2) as fake, aiohttp.ClientSession() as session:
        assert [(await get(session, f"{fake.url}/healthcheck"))[0] for _ in range(3)] == [503, 503, 200]
        fake.configure(cold_start_calls=0, cold_start_seconds=0.3)
        assert (await get(session, f"{fake.url}/healthcheck"))[0] == 503
        await asyncio.sleep(0.35)
        assert (await get(session, f"{fake.url}/healthcheck"))[0] == 200
        assert fake.stats.healthchecks == 5


async def test_result_ttl_and_output_errors() -> None:
    def boom(inputs: dict[str, Any]) -> Any:
        raise RuntimeError("model crashed")

    async with FakeOctoAI(pending_seconds=0, running_seconds=0, result_ttl_seconds=0.2, output_fn=boom) as fake, \
            aiohttp.ClientSession() as session:
        future = await submit(session, fake)
        status, body = await get(session, f"{fake.url}/v1/responses/{future['response_id']}")
        assert status == 500 and "model crashed" in body["error"]["message"]
        async with session.post(f"{fake.url}/predict", json=INPUTS) as resp:
            assert resp.status == 500
        await asyncio.sleep(0.3)
        assert (await get(session, future["poll_url"]))[0] == 404  # forgotten


async def test_control_and_stats_endpoints() -> None:
    async with FakeOctoAI(token="t", faults=Faults(seed=5)) as fake, aiohttp.ClientSession() as session:
        async with session.post(f"{fake.url}/_control",
                                json={"fail_rate": 1.0, "fail_statuses": [500], "targets": ["health"]}) as resp:
            config = await resp.json()
        assert config["faults"]["fail_rate"] == 1.0 and config["faults"]["targets"] == ["health"]
        assert fake.faults.fail_rate == 1.0 and fake.faults.targets == frozenset({"health"})
        headers = {"Authorization": "Bearer t"}
        async with session.get(f"{fake.url}/healthcheck", headers=headers) as resp:
            assert resp.status == 500
        status, stats = await get(session, f"{fake.url}/_stats")  # no token needed, never faulted
        assert status == 200 and stats["healthchecks"] == 1 and stats["faults"] == {"error": 1}
        assert stats["user_agents"] and stats["authorization"] == {"Bearer t": 1}
        async with session.post(f"{fake.url}/_control", json={"no_such_knob": 1}) as resp:
            assert resp.status == 400
        async with session.post(f"{fake.url}/_control", json={"targets": ["everything"]}) as resp:
            assert resp.status == 400
        async with session.post(f"{fake.url}/_control", json={"reset": True}) as resp:
            config = await resp.json()
        assert config["faults"]["fail_rate"] == 0.0 and config["faults"]["seed"] == 5
        assert fake.stats.healthchecks == 0
        status, config = await get(session, f"{fake.url}/_control")
        assert status == 200 and config["token_required"] is True
