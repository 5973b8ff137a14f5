"""The fake fal queue is faithful: the official fal-client 1.0.3 works against it, errors, retries and all.

Two halves: the client (in its own venv, see harness/fal_sdk.py) against the fake as a subprocess over TLS, written
as a user writes it with only the host environment changed; and quick in-process checks, over plain http, of the
wire details the client does not look at (status codes, the status stream, webhooks) and of the fault knobs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.certs import Authority
from harness.checks import wait_until
from harness.fakes.common import TRANSCRIPTION, FakeProcess, Faults
from harness.fakes.fal import FakeFal, FalSettings, verify_webhook
from harness.fal_sdk import ensure_sdk_venv, run_fal_script
from harness.webhook_receiver import Answer, Receiver

KEY = "fal-test-key"
APP = "fake-owner/fake-app"
AUTH = {"Authorization": f"Key {KEY}"}
SETTINGS: dict[str, Any] = {"queue_seconds": 0.3, "queue_ahead": 2}
# Everything /_control knows, at its defaults (the fixture puts them back before each test).
DEFAULTS = {**Faults().to_json(), **dataclasses.asdict(FalSettings(**SETTINGS))}


# ---------------------------------------------------------------------------------------------------------------
# The official client against the fake as a subprocess, over TLS
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    ca = Authority(tmp_path_factory.mktemp("fal-pki"))
    server = ca.issue("fal-server")
    return ca.path, server.cert, server.key


@pytest.fixture(scope="module")
def fal_proc(pki: tuple[Path, Path, Path]) -> Iterator[FakeProcess]:
    ensure_sdk_venv()  # once; quick when it exists
    ca, cert, key = pki
    fake = FakeProcess("harness.fakes.fal", "--token", KEY, "--tls-cert", str(cert), "--tls-key", str(key),
                       "--settings", json.dumps({**SETTINGS, "seed": 3}), ca_file=ca)
    yield fake
    fake.stop()


@pytest.fixture
def fake(fal_proc: FakeProcess) -> FakeProcess:
    fal_proc.control(reset_stats=True, **DEFAULTS)
    return fal_proc


def sdk(fake: FakeProcess, script: str, ca: Path, key: str = KEY) -> dict[str, Any]:
    """Runs a client script; its events by ``kind`` (the last of each)."""
    return {event["kind"]: event for event in run_fal_script(script, fake.url, key=key, ca_file=ca)}


def test_fake_serves_tls_and_takes_its_command_line(fal_proc: FakeProcess) -> None:
    """The first test of the module: the fake still has the settings of its command line."""
    assert fal_proc.url.startswith("https://127.0.0.1:")
    config = fal_proc.control()
    assert config["token_required"] is True and config["faults"]["seed"] == 3
    assert config["settings"] == dataclasses.asdict(FalSettings(**SETTINGS))


SUBMIT_SCRIPT = r'''
import fal_client
APP = "fake-owner/fake-app"
handle = fal_client.submit(APP + "/sub/path", arguments={"steps": 3, "delay": 0.05}, hint="runner-7", priority="low",
                           start_timeout=30)
emit(kind="handle", request_id=handle.request_id, status_url=handle.status_url, response_url=handle.response_url,
     cancel_url=handle.cancel_url)
emit(kind="first", **status_of(handle.status(with_logs=True)))
emit(kind="events", events=[status_of(e) for e in handle.iter_events(with_logs=True, interval=0.05)])
emit(kind="get", result=handle.get())
emit(kind="status_logs", **status_of(fal_client.status(APP, handle.request_id, with_logs=True)))
emit(kind="status_plain", **status_of(fal_client.status(APP, handle.request_id)))
emit(kind="result", result=fal_client.result(APP, handle.request_id))
'''


def test_submit_status_iter_events_get_status_result(fake: FakeProcess, pki: tuple[Path, Path, Path]) -> None:
    out = sdk(fake, SUBMIT_SCRIPT, pki[0])
    rid = out["handle"]["request_id"]
    base = f"{fake.url}/{APP}/requests/{rid}"  # owner/app only: the sub path is not in the URLs
    assert (out["handle"]["response_url"], out["handle"]["status_url"], out["handle"]["cancel_url"]) == (
        base, f"{base}/status", f"{base}/cancel")
    assert out["first"]["type"] == "Queued" and out["first"]["position"] in (0, 1, 2)
    events = out["events"]["events"]
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "Completed" and "InProgress" in kinds and kinds.count("Completed") == 1
    assert kinds == sorted(kinds, key=["Queued", "InProgress", "Completed"].index)  # never goes back
    positions = [e["position"] for e in events if e["type"] == "Queued"]
    assert positions == sorted(positions, reverse=True)  # counts down
    assert events[-1]["logs"] == ["step 0", "step 1", "step 2"]  # polled with logs: every line so far
    assert events[-1]["metrics"]["inference_time"] > 0.1 and events[-1]["error"] is None
    assert out["get"]["result"] == {"outputs": ["tok0", "tok1", "tok2"]}
    assert out["status_logs"]["logs"] == ["step 0", "step 1", "step 2"]
    assert out["status_plain"]["type"] == "Completed" and out["status_plain"]["logs"] is None  # no logs unasked
    assert out["result"]["result"] == out["get"]["result"]

    stats = fake.stats()
    assert stats["creates"] == {rid: 1}
    request = stats["fal_requests"][rid]
    assert (request["app"], request["path"], request["status"]) == (APP, "sub/path", "COMPLETED")
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["x-fal-runner-hint"] == "runner-7" and headers["x-fal-queue-priority"] == "low"
    assert headers["x-fal-request-timeout"] == "30.0" and headers["user-agent"] == "fal-client/1.0.3 (python)"
    assert set(stats["authorization"]) == {f"Key {KEY}"}
    assert stats["requests"]["submit"] == 1 and stats["requests"]["result"] == 2 and stats["faults"] == {}


SUBSCRIBE_SCRIPT = r'''
import asyncio, fal_client
APP = "fake-owner/fake-app"
updates, enqueued = [], []
result = fal_client.subscribe(APP, arguments={"audio": "https://example.invalid/a.wav", "steps": 2, "delay": 0.05},
                              with_logs=True, on_enqueue=enqueued.append,
                              on_queue_update=lambda s: updates.append(status_of(s)))
emit(kind="subscribe", result=result, enqueued=enqueued, updates=updates)

async def main():
    handle = await fal_client.submit_async(APP, arguments={"steps": 2, "delay": 0.05, "prefix": "a"})
    first = status_of(await handle.status(with_logs=True))
    events = [status_of(e) async for e in handle.iter_events(with_logs=True, interval=0.05)]
    emit(kind="async_handle", request_id=handle.request_id, first=first, events=events, result=await handle.get())
    seen = []
    result = await fal_client.subscribe_async(APP, arguments={"steps": 1, "delay": 0.01, "prefix": "s"},
                                              with_logs=True, on_queue_update=lambda s: seen.append(status_of(s)))
    emit(kind="async_subscribe", result=result, updates=seen)
    emit(kind="async_status", **status_of(await fal_client.status_async(APP, handle.request_id, with_logs=True)))
    emit(kind="async_result", result=await fal_client.result_async(APP, handle.request_id))
asyncio.run(main())
'''


def test_subscribe_sync_and_the_async_client(fake: FakeProcess, pki: tuple[Path, Path, Path]) -> None:
    out = sdk(fake, SUBSCRIBE_SCRIPT, pki[0])
    sub = out["subscribe"]
    assert sub["result"] == {"text": TRANSCRIPTION}
    assert len(sub["enqueued"]) == 1
    assert sub["updates"][0]["type"] == "Queued" and sub["updates"][-1]["type"] == "Completed"
    assert sub["updates"][-1]["logs"] == ["step 0", "step 1"]

    handle = out["async_handle"]
    assert handle["first"]["type"] == "Queued" and handle["events"][-1]["type"] == "Completed"
    assert handle["result"] == {"outputs": ["a0", "a1"]}
    assert out["async_subscribe"]["result"] == {"outputs": ["s0"]}
    assert out["async_subscribe"]["updates"][-1]["type"] == "Completed"
    assert out["async_status"]["type"] == "Completed" and out["async_status"]["logs"] == ["step 0", "step 1"]
    assert out["async_result"]["result"] == handle["result"]
    assert fake.stats()["requests"]["submit"] == 3


FAIL_SCRIPT = r'''
import fal_client
APP = "fake-owner/fake-app"
handle = fal_client.submit(APP, arguments={"steps": 1, "delay": 0.01, "fail": "CUDA out of memory"})
try:
    handle.get()
except fal_client.FalClientHTTPError as exc:
    emit(kind="get_error", **error_of(exc))
emit(kind="status", **status_of(handle.status(with_logs=True)))
try:
    fal_client.subscribe(APP, arguments={"steps": 0, "fail": "prompt is too long", "fail_status": 422})
except fal_client.FalClientHTTPError as exc:
    emit(kind="subscribe_error", **error_of(exc))
try:
    fal_client.status(APP, "no-such-request")
except fal_client.FalClientHTTPError as exc:
    emit(kind="unknown_error", **error_of(exc))
'''


def test_a_failed_run_completes_with_an_error_and_its_result_raises(
        fake: FakeProcess, pki: tuple[Path, Path, Path]) -> None:
    out = sdk(fake, FAIL_SCRIPT, pki[0])
    error = out["get_error"]
    assert (error["type"], error["status_code"], error["message"]) == ("FalClientHTTPError", 500, "CUDA out of memory")
    assert out["status"]["type"] == "Completed" and out["status"]["error"] == "CUDA out of memory"
    assert out["status"]["logs"] == ["step 0"]
    assert (out["subscribe_error"]["status_code"], out["subscribe_error"]["message"]) == (422, "prompt is too long")
    assert out["unknown_error"]["status_code"] == 404
    assert fake.stats()["requests"]["result"] == 2  # a 500 or 422 is not retried


CANCEL_SCRIPT = r'''
import time, fal_client
APP = "fake-owner/fake-app"
queued = fal_client.submit(APP, arguments={"steps": 2, "delay": 0.05})
queued.cancel()
emit(kind="queued_status", **status_of(list(queued.iter_events(with_logs=True, interval=0.05))[-1]))
try:
    queued.get()
except fal_client.FalClientHTTPError as exc:
    emit(kind="queued_get", **error_of(exc))

running = fal_client.submit(APP, arguments={"steps": 100, "delay": 0.05})
while not isinstance(running.status(), fal_client.InProgress):
    time.sleep(0.05)
fal_client.cancel(APP, running.request_id)
events = [status_of(e) for e in running.iter_events(with_logs=True, interval=0.05)]
emit(kind="running_final", **events[-1])
try:
    fal_client.cancel(APP, running.request_id)
except fal_client.FalClientHTTPError as exc:
    emit(kind="cancel_again", **error_of(exc), body=exc.response.json())
'''


def test_cancel_a_queued_and_a_running_request(fake: FakeProcess, pki: tuple[Path, Path, Path]) -> None:
    fake.control(queue_seconds=0.6)
    out = sdk(fake, CANCEL_SCRIPT, pki[0])
    assert out["queued_status"]["type"] == "Completed" and out["queued_status"]["error"] == "Request was cancelled"
    assert out["queued_status"]["logs"] == [] and out["queued_status"]["metrics"] == {"inference_time": None}
    assert (out["queued_get"]["status_code"], out["queued_get"]["message"]) == (400, "Request was cancelled")
    final = out["running_final"]
    assert final["type"] == "Completed" and final["error"] == "Request was cancelled"
    assert len(final["logs"]) < 100  # stopped early, at its next step
    again = out["cancel_again"]
    assert again["status_code"] == 400 and again["body"] == {"status": "ALREADY_COMPLETED"}
    stats = fake.stats()
    assert len(stats["creates"]) == 2 and all(stats["fal_requests"][rid]["canceled"] for rid in stats["creates"])


AUTH_SCRIPT = r'''
import fal_client
try:
    fal_client.submit("fake-owner/fake-app", arguments={})
except fal_client.FalClientHTTPError as exc:
    emit(kind="error", **error_of(exc))
'''


def test_a_wrong_key_is_a_401(fake: FakeProcess, pki: tuple[Path, Path, Path]) -> None:
    out = sdk(fake, AUTH_SCRIPT, pki[0], key="not-the-key")
    assert out["error"]["type"] == "FalClientHTTPError" and out["error"]["status_code"] == 401
    stats = fake.stats()
    assert stats["authorization"] == {"Key not-the-key": 1} and stats["total_creates"] == 0


RETRY_SCRIPT = r'''
import fal_client
APP = "fake-owner/fake-app"
def attempt(what, call):
    before = stats()["requests"]
    try:
        value = call()
        out = {"ok": True, "value": status_of(value) if isinstance(value, fal_client.Status) else value}
    except Exception as exc:
        out = {"ok": False, "error": error_of(exc)}
    after = stats()["requests"]
    emit(kind=what, calls={k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)},
         **out)

control(throttle_rate=1.0, max_faults=2, targets=["submit"])
handle = None
def submit():
    global handle
    handle = fal_client.submit(APP, arguments={"steps": 1, "delay": 0.01})
    return handle.request_id
attempt("throttled_submit", submit)
handle.get()

control(reset_stats=True, throttle_rate=0.0, fail_rate=1.0, fail_statuses=[503], ingress_errors=True, targets=["status"])
attempt("ingress_status", lambda: handle.status())
control(reset_stats=True, ingress_errors=False)
attempt("app_503_status", lambda: handle.status())
control(reset_stats=True, fail_statuses=[500], max_faults=1)
attempt("500_status", lambda: handle.status())
control(reset_stats=True, fail_rate=0.0, reset_rate=1.0, max_faults=1, targets=["result"])
attempt("reset_result", lambda: handle.get())
'''


def test_the_clients_retries_against_injected_faults(fake: FakeProcess, pki: tuple[Path, Path, Path]) -> None:
    out = sdk(fake, RETRY_SCRIPT, pki[0])
    # 429 is retried (client.py RETRY_CODES): two throttled, the third goes through; one request created
    assert out["throttled_submit"]["ok"] and out["throttled_submit"]["calls"]["submit"] == 3
    # a 503 that looks like fal's ingress (nginx page, no X-Fal-Request-Id) is retried until the faults run out ...
    assert out["ingress_status"]["ok"] and out["ingress_status"]["value"]["type"] == "Completed"
    assert out["ingress_status"]["calls"]["status"] == 3
    # ... a JSON 503 (no nginx page) is not, nor is a 500
    for name, status in (("app_503_status", 503), ("500_status", 500)):
        assert not out[name]["ok"] and out[name]["error"]["status_code"] == status
        assert out[name]["calls"]["status"] == 1
    assert out["500_status"]["error"]["message"] == "injected 500 on status"
    # a dropped connection is a transport error: retried
    assert out["reset_result"]["ok"] and out["reset_result"]["value"] == {"outputs": ["tok0"]}
    assert out["reset_result"]["calls"]["result"] == 2


WEBHOOK_SCRIPT = r'''
import os, fal_client
handle = fal_client.submit("fake-owner/fake-app", arguments={"steps": 1, "delay": 0.01},
                           webhook_url=os.environ["HOOK_URL"])
emit(kind="handle", request_id=handle.request_id, result=handle.get())
'''


def test_submit_with_a_webhook_url_gets_a_signed_webhook(fake: FakeProcess, pki: tuple[Path, Path, Path]) -> None:
    receiver = Receiver().start()
    try:
        events = run_fal_script(WEBHOOK_SCRIPT, fake.url, key=KEY, ca_file=pki[0],
                                extra_env={"HOOK_URL": receiver.url("/fal/hook?token=abc")})
        rid = events[-1]["request_id"]
        receiver.wait_for(lambda: receiver.received, "the webhook", timeout=10)
        hook = receiver.received[0]
        assert hook.path == "/fal/hook?token=abc"
        assert json.loads(hook.body) == {"request_id": rid, "gateway_request_id": rid, "status": "OK",
                                         "payload": {"outputs": ["tok0"]}}
        with urllib.request.urlopen(f"{fake.url}/.well-known/jwks.json", timeout=10,
                                    context=ssl.create_default_context(cafile=str(pki[0]))) as resp:
            jwks = json.load(resp)
        headers = {k.title(): v for k, v in hook.headers.items()}
        assert headers["X-Fal-Webhook-Request-Id"] == rid and verify_webhook(jwks, headers, hook.body)
        assert not verify_webhook(jwks, headers, hook.body + b" ")
    finally:
        receiver.stop()


def test_the_subprocess_also_serves_plain_http() -> None:
    """What the gateway's own tests start: no TLS flags, an http origin in every URL it answers."""
    proc = FakeProcess("harness.fakes.fal", "--token", KEY, "--settings", json.dumps({"queue_seconds": 0}))
    try:
        assert proc.url.startswith("http://127.0.0.1:")
        request = urllib.request.Request(f"{proc.url}/{APP}", data=b'{"steps": 0}', method="POST",
                                         headers={**AUTH, "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            sub = json.load(resp)
        assert sub["status_url"].startswith(f"{proc.url}/{APP}/requests/")

        def completed() -> bool:
            with urllib.request.urlopen(urllib.request.Request(sub["status_url"], headers=AUTH), timeout=10) as r:
                return json.load(r)["status"] == "COMPLETED"
        wait_until(completed, "the request to complete", timeout=10)
        with urllib.request.urlopen(urllib.request.Request(sub["response_url"], headers=AUTH), timeout=10) as resp:
            assert json.load(resp) == {"outputs": []}
        assert proc.stats()["total_creates"] == 1
    finally:
        proc.stop()


# ---------------------------------------------------------------------------------------------------------------
# In process, over plain http, with aiohttp
# ---------------------------------------------------------------------------------------------------------------

async def submit(session: aiohttp.ClientSession, fake: FakeFal, body: Any, path: str = APP,
                 query: str = "") -> dict[str, Any]:
    async with session.post(f"{fake.url}/{path}{query}", json=body) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["X-Fal-Request-Id"]
        return await resp.json()


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as resp:
        return resp.status, await resp.json()


async def until(session: aiohttp.ClientSession, url: str, status: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = (await get(session, url))[1]
        if body["status"] == status:
            return body
        assert time.monotonic() < deadline, f"never {status}: {body}"
        await asyncio.sleep(0.02)


async def test_plain_http_wire_shapes() -> None:
    async with FakeFal(token=KEY, queue_seconds=0.2, queue_ahead=1) as fake, \
            aiohttp.ClientSession(headers=AUTH) as session:
        assert fake.url.startswith("http://")
        sub = await submit(session, fake, {"steps": 2, "delay": 0.05}, path=f"{APP}/v2/edit",
                           query="?fal_webhook=http%3A%2F%2F127.0.0.1%3A9%2Fhook")
        rid = sub["request_id"]
        base = f"{fake.url}/{APP}/requests/{rid}"
        assert sub == {"status": "IN_QUEUE", "request_id": rid, "gateway_request_id": rid, "queue_position": 1,
                       "response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}
        status, body = await get(session, sub["status_url"])
        assert status == 202 and body["status"] == "IN_QUEUE" and body["logs"] is None and body["metrics"] == {}
        assert (await get(session, sub["response_url"])) == (400, {"detail": "Request is still in progress"})
        body = await until(session, sub["status_url"] + "?logs=1", "IN_PROGRESS")
        assert "queue_position" not in body and isinstance(body["logs"], list)
        body = await until(session, sub["status_url"] + "?logs=true", "COMPLETED")
        assert [line["message"] for line in body["logs"]] == ["step 0", "step 1"]
        assert set(body["logs"][0]) == {"message", "level", "source", "timestamp"} and "error" not in body
        status, body = await get(session, sub["status_url"] + "?logs=0")
        assert status == 200 and body["logs"] is None and body["metrics"]["inference_time"] >= 0.1
        assert (await get(session, sub["response_url"])) == (200, {"outputs": ["tok0", "tok1"]})
        # unknown ids, another app's ids: 404
        assert (await get(session, f"{fake.url}/{APP}/requests/nope/status"))[0] == 404
        assert (await get(session, f"{fake.url}/other/app/requests/{rid}"))[0] == 404
        # a namespaced app keeps its namespace in the URLs
        ns = await submit(session, fake, {"steps": 0}, path="workflows/o/flow/step")
        assert ns["status_url"] == f"{fake.url}/workflows/o/flow/requests/{ns['request_id']}/status"
        assert (await until(session, ns["status_url"], "COMPLETED"))["status"] == "COMPLETED"
        assert (await get(session, ns["response_url"])) == (200, {"outputs": []})
        async with session.post(f"{fake.url}/{APP}", data=b"{not json") as resp:
            assert resp.status == 400 and "detail" in await resp.json()
        requests = fake.snapshot()["fal_requests"]
        assert requests[rid]["path"] == "v2/edit" and requests[rid]["webhook"] == "http://127.0.0.1:9/hook"
        assert requests[ns["request_id"]]["app"] == "workflows/o/flow"
        assert fake.stats.creates == {rid: 1, ns["request_id"]: 1}
    assert not fake._tasks  # stopped with the fake: nothing left running


async def read_stream(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    events = []
    async with session.get(url) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        async for line in resp.content:
            text = line.decode().strip()
            if text:
                assert text.startswith("data: ")
                events.append(json.loads(text.removeprefix("data: ")))
    return events


async def test_status_stream_sends_each_change_and_can_be_cut() -> None:
    async with FakeFal(token=KEY, queue_seconds=0.15, queue_ahead=2) as fake, \
            aiohttp.ClientSession(headers=AUTH) as session:
        sub = await submit(session, fake, {"steps": 3, "delay": 0.05})
        events = await read_stream(session, sub["status_url"] + "/stream?logs=1")
        assert [e.get("queue_position") for e in events if e["status"] == "IN_QUEUE"] == [2, 1, 0]
        assert events[-1]["status"] == "COMPLETED" and sum(e["status"] == "COMPLETED" for e in events) == 1
        assert events[-1]["metrics"]["inference_time"] > 0 and events[-1]["response_url"] == sub["response_url"]
        # each event carries the log lines new since the one before: together, each line once
        assert [line["message"] for e in events for line in e["logs"]] == ["step 0", "step 1", "step 2"]
        # after completion: one COMPLETED event (all the logs), then the end
        again = await read_stream(session, sub["status_url"] + "/stream?logs=1")
        assert [e["status"] for e in again] == ["COMPLETED"] and len(again[0]["logs"]) == 3
        plain = await read_stream(session, sub["status_url"] + "/stream")
        assert plain[0]["logs"] is None

        fake.faults.stream_cut_after = 2
        cut_sub = await submit(session, fake, {"steps": 2, "delay": 0.05})
        cut = await read_stream(session, cut_sub["status_url"] + "/stream")
        assert len(cut) == 2 and all(e["status"] != "COMPLETED" for e in cut)
        assert fake.stats.faults["stream_cut"] == 1
        fake.faults.stream_cut_after = None
        rest = await read_stream(session, cut_sub["status_url"] + "/stream")  # a reconnect picks up
        assert rest[-1]["status"] == "COMPLETED"


async def test_cancel_answers_and_outcomes() -> None:
    async with FakeFal(token=KEY, queue_seconds=0.3) as fake, aiohttp.ClientSession(headers=AUTH) as session:
        async def cancel(sub: dict[str, Any]) -> tuple[int, Any]:
            async with session.put(sub["cancel_url"]) as resp:
                return resp.status, await resp.json()

        queued = await submit(session, fake, {"steps": 1})
        assert await cancel(queued) == (202, {"status": "CANCELLATION_REQUESTED"})
        body = await until(session, queued["status_url"], "COMPLETED")
        assert body["error"] == "Request was cancelled" and body["metrics"] == {"inference_time": None}
        assert await get(session, queued["response_url"]) == (400, {"detail": "Request was cancelled"})
        assert await cancel(queued) == (400, {"status": "ALREADY_COMPLETED"})
        assert await cancel({"cancel_url": f"{fake.url}/{APP}/requests/nope/cancel"}) == (404, {"status": "NOT_FOUND"})

        fake.configure(queue_seconds=0.0)
        running = await submit(session, fake, {"steps": 50, "delay": 0.02})
        await until(session, running["status_url"], "IN_PROGRESS")
        assert (await cancel(running))[0] == 202
        body = await until(session, running["status_url"] + "?logs=1", "COMPLETED")
        assert body["error"] == "Request was cancelled" and len(body["logs"]) < 50

        fake.configure(honor_cancel=False)  # an app without a cancel handler: the run goes on
        stubborn = await submit(session, fake, {"steps": 3, "delay": 0.02})
        await until(session, stubborn["status_url"], "IN_PROGRESS")
        assert (await cancel(stubborn))[0] == 202
        body = await until(session, stubborn["status_url"], "COMPLETED")
        assert "error" not in body and (await get(session, stubborn["response_url"]))[0] == 200
        assert fake.snapshot()["fal_requests"][stubborn["request_id"]]["cancel_requested"] is True


async def test_failed_runs_answer_their_status_and_detail() -> None:
    async with FakeFal(token=KEY, queue_seconds=0.0, fail_status=503) as fake, \
            aiohttp.ClientSession(headers=AUTH) as session:
        failed = await submit(session, fake, {"steps": 0, "fail": "boom"})
        body = await until(session, failed["status_url"], "COMPLETED")
        assert body["error"] == "boom"
        async with session.get(failed["response_url"]) as resp:
            assert resp.status == 503 and await resp.json() == {"detail": "boom"}
            assert resp.headers["X-Fal-Request-Id"] == failed["request_id"]  # the app's error, not ingress
        own = await submit(session, fake, {"steps": 0, "fail": "bad", "fail_status": 422})
        await until(session, own["status_url"], "COMPLETED")
        assert await get(session, own["response_url"]) == (422, {"detail": "bad"})


async def test_webhooks_are_signed_retried_repeated_and_dropped() -> None:
    receiver = Receiver().start()
    try:
        async with FakeFal(token=KEY, queue_seconds=0.0, webhook_retry_seconds=0.05) as fake, \
                aiohttp.ClientSession(headers=AUTH) as session:
            jwks = (await get(session, f"{fake.url}/.well-known/jwks.json"))[1]
            hook = f"?fal_webhook={receiver.url('/h')}"

            async def hooks_of(rid: str, count: int) -> list[Any]:
                deadline = time.monotonic() + 5
                while len(mine := [r for r in receiver.received if r.job["request_id"] == rid]) < count:
                    assert time.monotonic() < deadline, receiver.received
                    await asyncio.sleep(0.02)
                return mine

            # the receiver fails twice: retried, delivered on the third attempt
            receiver.script = [Answer(status=500), Answer(drop=True)]
            ok = await submit(session, fake, {"steps": 0}, query=hook)
            got = await hooks_of(ok["request_id"], 3)
            assert [r.answered for r in got] == [500, 0, 200]
            assert all(verify_webhook(jwks, {k.title(): v for k, v in r.headers.items()}, r.body) for r in got)
            assert got[-1].job == {"request_id": ok["request_id"], "gateway_request_id": ok["request_id"],
                                   "status": "OK", "payload": {"outputs": []}}
            # a failed run: status ERROR, the error body as payload
            failed = await submit(session, fake, {"steps": 0, "fail": "boom"}, query=hook)
            assert (await hooks_of(failed["request_id"], 1))[0].job == {
                "request_id": failed["request_id"], "gateway_request_id": failed["request_id"], "status": "ERROR",
                "error": "Invalid status code: 500", "payload": {"detail": "boom"}}
            # repeated: the same webhook twice
            fake.configure(webhook_repeat_rate=1.0)
            twice = await submit(session, fake, {"steps": 0}, query=hook)
            got = await hooks_of(twice["request_id"], 2)
            assert got[0].body == got[1].body
            # dropped: never sent
            fake.configure(webhook_repeat_rate=0.0, webhook_drop_rate=1.0)
            lost = await submit(session, fake, {"steps": 0}, query=hook)
            await until(session, lost["status_url"], "COMPLETED")
            await asyncio.sleep(0.2)
            assert not [r for r in receiver.received if r.job["request_id"] == lost["request_id"]]
            # a receiver that keeps failing: 1 + webhook_retries attempts, then given up
            fake.configure(webhook_drop_rate=0.0, webhook_retries=2)
            receiver.default = Answer(status=503)
            doomed = await submit(session, fake, {"steps": 0}, query=hook)
            assert len(await hooks_of(doomed["request_id"], 3)) == 3
            await asyncio.sleep(0.5)
            log = [w for w in fake.snapshot()["webhooks"] if w["request_id"] == doomed["request_id"]]
            assert [w["answer"] for w in log] == [503, 503, 503]
            assert {w["answer"] for w in fake.snapshot()["webhooks"] if w["request_id"] == lost["request_id"]} == {
                "dropped"}
    finally:
        receiver.stop()


async def test_faults_errors_throttles_ingress_pages_bad_token() -> None:
    async with FakeFal(token=KEY, queue_seconds=0.0) as fake, aiohttp.ClientSession(headers=AUTH) as session:
        sub = await submit(session, fake, {"steps": 0})
        fake.configure(fail_rate=1.0, fail_statuses=[502], targets=["status"], max_faults=1)
        async with session.get(sub["status_url"]) as resp:
            assert resp.status == 502 and await resp.json() == {"detail": "injected 502 on status"}
        assert (await get(session, sub["status_url"]))[0] == 200  # max_faults reached; the submit was spared
        fake.configure(ingress_errors=True, max_faults=None, targets=["result"], fail_statuses=[504])
        async with session.get(sub["response_url"]) as resp:
            assert resp.status == 504 and resp.content_type == "text/html" and "nginx" in await resp.text()
            assert "X-Fal-Request-Id" not in resp.headers
        fake.configure(fail_rate=0.0, throttle_rate=1.0, retry_after=4, targets=["submit"])
        async with session.post(f"{fake.url}/{APP}", json={}) as resp:
            assert resp.status == 429 and resp.headers["Retry-After"] == "4" and "detail" in await resp.json()
        fake.configure(throttle_rate=0.0, bad_token=True)
        async with session.get(sub["status_url"]) as resp:
            assert resp.status == 401 and "detail" in await resp.json()
        fake.configure(bad_token=False)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as bearer:
            assert (await get(bearer, sub["status_url"]))[0] == 401  # fal keys go as "Key <key>"
        assert (await get(session, f"{fake.url}/.well-known/jwks.json"))[0] == 200
        async with aiohttp.ClientSession() as anonymous:
            assert (await get(anonymous, f"{fake.url}/.well-known/jwks.json"))[0] == 200  # public
        assert fake.stats.faults == {"error": 2, "throttle": 1, "bad_token": 1}
        assert len(fake.requests) == 1
